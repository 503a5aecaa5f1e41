//! Projection of a document onto the index's fields, with coercion to the EDM types, and the
//! document-id -> key encoding. A value that cannot be coerced is an error for that document,
//! naming the field.

use super::config::KeyEncoding;
use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Map, Number, Value};

use crate::change::projection::SYSTEM_PROPERTIES;

/// The text a document's key encodes: the id, or (default) the partition key and the id as a
/// JSON array, `["c1","order-1"]` (`{}` for an undefined component), which is unambiguous.
pub fn key_material(change: &crate::change::Change, source: super::config::KeySource) -> String {
    match source {
        super::config::KeySource::Id => change.id.clone(),
        super::config::KeySource::PartitionKeyAndId => {
            let mut parts: Vec<Value> = change
                .partition_key
                .0
                .iter()
                .map(|c| c.clone().unwrap_or_else(|| Value::Object(Map::new())))
                .collect();
            parts.push(Value::String(change.id.clone()));
            Value::Array(parts).to_string()
        }
    }
}

/// Why a change cannot become an index document (it is dead-lettered with this reason).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProjectError {
    #[error("id `{0}` has characters a search key cannot hold; set `key_encoding = \"base64url\"`")]
    KeyCharacters(String),
    #[error("{value} cannot be an {edm_type}")]
    NotA { value: String, edm_type: String },
    #[error("{0} is out of range for Edm.Int32")]
    OutOfRange(i64),
    #[error("{0} is not an ISO 8601 date/time (or epoch seconds)")]
    NotADate(String),
    #[error(
        "{0} is not a GeoJSON Point ({{\"type\":\"Point\",\"coordinates\":[lon,lat]}}) or {{lat, lon}}"
    )]
    NotAPoint(String),
    #[error("the index type `{0}` is not supported by the projection")]
    Unsupported(String),
    /// Where in the document (a field, an item) the inner error is.
    #[error("{at}: {inner}")]
    In {
        at: String,
        inner: Box<ProjectError>,
    },
}

impl ProjectError {
    fn at(at: String) -> impl FnOnce(ProjectError) -> ProjectError {
        move |inner| ProjectError::In {
            at,
            inner: Box::new(inner),
        }
    }
}

/// A document id as an index key. Keys allow letters, digits, `_`, `-` and `=`.
pub fn encode_key(id: &str, encoding: KeyEncoding) -> Result<String, ProjectError> {
    match encoding {
        KeyEncoding::Base64url => {
            Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes()))
        }
        KeyEncoding::None => {
            if !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '='))
            {
                Ok(id.to_string())
            } else {
                Err(ProjectError::KeyCharacters(id.to_string()))
            }
        }
    }
}

/// Decodes a key back to the document id (for reading results and in tests).
pub fn decode_key(key: &str, encoding: KeyEncoding) -> Option<String> {
    match encoding {
        KeyEncoding::Base64url => String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(key)
                .ok()?,
        )
        .ok(),
        KeyEncoding::None => Some(key.to_string()),
    }
}

/// One index field: where it comes from and what type it must be.
#[derive(Debug, Clone)]
pub struct FieldMapping {
    pub field: String,
    pub path: Vec<String>,
    pub edm_type: Option<String>,
}

pub fn mappings(
    fields: &[(String, crate::change::DocPath)],
    types: &std::collections::BTreeMap<String, String>,
) -> Vec<FieldMapping> {
    fields
        .iter()
        .map(|(field, path)| FieldMapping {
            field: field.clone(),
            path: path.segments().to_vec(),
            edm_type: types.get(field).cloned(),
        })
        .collect()
}

/// Projects a document. With explicit mappings, exactly those fields; otherwise every
/// top-level field (the index's fields only, when types are known).
pub fn project(
    doc: &Map<String, Value>,
    mappings: &[FieldMapping],
    types: &std::collections::BTreeMap<String, String>,
) -> Result<Map<String, Value>, ProjectError> {
    let mut out = Map::new();
    if mappings.is_empty() {
        // mergeOrUpload keeps fields a request omits: send null for every index field the
        // document no longer has, so a dropped field does not linger in the index.
        for name in types.keys() {
            out.insert(name.clone(), Value::Null);
        }
        for (name, value) in doc {
            if SYSTEM_PROPERTIES.contains(&name.as_str()) {
                continue;
            }
            match types.get(name) {
                Some(t) => {
                    out.insert(
                        name.clone(),
                        coerce(value, t).map_err(ProjectError::at(format!("field `{name}`")))?,
                    );
                }
                None if types.is_empty() => {
                    out.insert(name.clone(), value.clone());
                }
                None => {}
            }
        }
        return Ok(out);
    }
    for m in mappings {
        let value = lookup(doc, &m.path);
        let value = match &m.edm_type {
            Some(t) => coerce(&value, t).map_err(ProjectError::at(format!(
                "field `{}` (from `/{}`)",
                m.field,
                m.path.join("/")
            )))?,
            None => value,
        };
        out.insert(m.field.clone(), value);
    }
    Ok(out)
}

/// Reads a `/`-path. Through an array, the path continues into every element and the values
/// are collected: `/lines/sku` of `{"lines": [{"sku": "a"}, {"sku": "b"}]}` is `["a", "b"]`.
/// A missing field is null.
pub fn lookup(doc: &Map<String, Value>, path: &[String]) -> Value {
    fn walk(value: &Value, path: &[String]) -> Value {
        let Some((seg, rest)) = path.split_first() else {
            return value.clone();
        };
        match value {
            Value::Object(o) => o.get(seg).map(|v| walk(v, rest)).unwrap_or(Value::Null),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| walk(v, path))
                    .filter(|v| !v.is_null())
                    .collect(),
            ),
            _ => Value::Null,
        }
    }
    match path.split_first() {
        Some((first, rest)) => doc.get(first).map(|v| walk(v, rest)).unwrap_or(Value::Null),
        None => Value::Null,
    }
}

/// Coerces a JSON value to an EDM type. Null stays null.
pub fn coerce(value: &Value, edm_type: &str) -> Result<Value, ProjectError> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    if let Some(inner) = edm_type
        .strip_prefix("Collection(")
        .and_then(|t| t.strip_suffix(')'))
    {
        return match value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| coerce(v, inner).map_err(ProjectError::at(format!("item {i}"))))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            single => Ok(Value::Array(vec![coerce(single, inner)?])),
        };
    }
    let bad = || ProjectError::NotA {
        value: describe(value),
        edm_type: edm_type.to_string(),
    };
    match edm_type {
        "Edm.String" => match value {
            Value::String(_) => Ok(value.clone()),
            Value::Number(n) => Ok(Value::String(n.to_string())),
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            _ => Err(bad()),
        },
        "Edm.Int32" | "Edm.Int64" => {
            let n = match value {
                Value::Number(n) => n.as_i64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                        .map(|f| f as i64)
                }),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            }
            .ok_or_else(bad)?;
            if edm_type == "Edm.Int32" && i32::try_from(n).is_err() {
                return Err(ProjectError::OutOfRange(n));
            }
            Ok(Value::Number(n.into()))
        }
        "Edm.Double" | "Edm.Single" => match value {
            Value::Number(_) => Ok(value.clone()),
            Value::String(s) => match s.trim() {
                "NaN" | "INF" | "-INF" => Ok(Value::String(s.trim().to_string())),
                t => t
                    .parse::<f64>()
                    .ok()
                    .and_then(Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(bad),
            },
            _ => Err(bad()),
        },
        "Edm.Boolean" => match value {
            Value::Bool(_) => Ok(value.clone()),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
            _ => Err(bad()),
        },
        "Edm.DateTimeOffset" => datetime(value)
            .map(Value::String)
            .ok_or_else(|| ProjectError::NotADate(describe(value))),
        "Edm.GeographyPoint" => {
            geography_point(value).ok_or_else(|| ProjectError::NotAPoint(describe(value)))
        }
        "Edm.ComplexType" => match value {
            Value::Object(_) => Ok(value.clone()),
            _ => Err(bad()),
        },
        other => Err(ProjectError::Unsupported(other.to_string())),
    }
}

fn datetime(value: &Value) -> Option<String> {
    let utc: DateTime<Utc> = match value {
        Value::String(s) => {
            let s = s.trim();
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
            }
            if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
                t.and_utc()
            } else {
                NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .ok()?
                    .and_hms_opt(0, 0, 0)?
                    .and_utc()
            }
        }
        Value::Number(n) => DateTime::from_timestamp(n.as_i64()?, 0)?,
        _ => return None,
    };
    Some(utc.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn geography_point(value: &Value) -> Option<Value> {
    let obj = value.as_object()?;
    let (lon, lat) = if obj.get("type").and_then(Value::as_str) == Some("Point") {
        let c = obj.get("coordinates")?.as_array()?;
        (c.first()?.as_f64()?, c.get(1)?.as_f64()?)
    } else {
        let lat = obj.get("lat").or_else(|| obj.get("latitude"))?.as_f64()?;
        let lon = obj
            .get("lon")
            .or_else(|| obj.get("lng"))
            .or_else(|| obj.get("longitude"))?
            .as_f64()?;
        (lon, lat)
    };
    if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
        return None;
    }
    Some(serde_json::json!({"type": "Point", "coordinates": [lon, lat]}))
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(40).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_round_trip_and_are_legal() {
        for id in ["plain", "with space/and+slash", "ünï©ødé", "a=b_c-d"] {
            let key = encode_key(id, KeyEncoding::Base64url).unwrap();
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=')),
                "{key}"
            );
            assert_eq!(decode_key(&key, KeyEncoding::Base64url).unwrap(), id);
        }
        assert_eq!(encode_key("a=b_c-d", KeyEncoding::None).unwrap(), "a=b_c-d");
        assert!(
            encode_key("a/b", KeyEncoding::None)
                .unwrap_err()
                .to_string()
                .contains("base64url")
        );
    }

    #[test]
    fn coercion_to_edm_types() {
        assert_eq!(coerce(&json!(5), "Edm.String").unwrap(), json!("5"));
        assert_eq!(coerce(&json!("42"), "Edm.Int32").unwrap(), json!(42));
        assert_eq!(coerce(&json!(3.0), "Edm.Int64").unwrap(), json!(3));
        assert!(coerce(&json!(3.5), "Edm.Int32").is_err());
        assert!(
            coerce(&json!(5_000_000_000i64), "Edm.Int32")
                .unwrap_err()
                .to_string()
                .contains("out of range")
        );
        assert_eq!(coerce(&json!("2.5"), "Edm.Double").unwrap(), json!(2.5));
        assert_eq!(coerce(&json!("TRUE"), "Edm.Boolean").unwrap(), json!(true));
        assert_eq!(
            coerce(&json!("2024-04-14T14:30:00Z"), "Edm.DateTimeOffset").unwrap(),
            json!("2024-04-14T14:30:00Z")
        );
        assert_eq!(
            coerce(&json!("2024-04-14T16:30:00+02:00"), "Edm.DateTimeOffset").unwrap(),
            json!("2024-04-14T16:30:00+02:00")
        );
        assert_eq!(
            coerce(&json!("2024-07-15"), "Edm.DateTimeOffset").unwrap(),
            json!("2024-07-15T00:00:00Z")
        );
        assert_eq!(
            coerce(&json!(1713122455), "Edm.DateTimeOffset").unwrap(),
            json!("2024-04-14T19:20:55Z")
        );
        assert!(coerce(&json!("next tuesday"), "Edm.DateTimeOffset").is_err());
        assert_eq!(
            coerce(&json!(["a", 1]), "Collection(Edm.String)").unwrap(),
            json!(["a", "1"])
        );
        assert_eq!(
            coerce(&json!("solo"), "Collection(Edm.String)").unwrap(),
            json!(["solo"])
        );
        assert!(
            coerce(&json!([1, "x"]), "Collection(Edm.Int32)")
                .unwrap_err()
                .to_string()
                .starts_with("item 1")
        );
        let point = json!({"type": "Point", "coordinates": [13.04, 47.8]});
        assert_eq!(coerce(&point, "Edm.GeographyPoint").unwrap(), point);
        assert_eq!(
            coerce(&json!({"lat": 47.8, "lon": 13.04}), "Edm.GeographyPoint").unwrap(),
            point
        );
        assert!(
            coerce(
                &json!({"type": "Point", "coordinates": [200, 0]}),
                "Edm.GeographyPoint"
            )
            .is_err()
        );
        assert_eq!(coerce(&Value::Null, "Edm.Int32").unwrap(), Value::Null);
    }

    #[test]
    fn projection_names_the_field_that_fails() {
        let doc = json!({"id": "a", "total": "lots", "address": {"city": "Graz"}, "_rid": "x"})
            .as_object()
            .unwrap()
            .clone();
        let types = [
            ("total".to_string(), "Edm.Double".to_string()),
            ("city".to_string(), "Edm.String".to_string()),
        ]
        .into();
        let fields = [
            ("total".to_string(), "/total".parse().unwrap()),
            ("city".to_string(), "/address/city".parse().unwrap()),
        ];
        let e = project(&doc, &mappings(&fields, &types), &types).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `total` (from `/total`): \"lots\" cannot be an Edm.Double"
        );
        let ok = project(
            &doc,
            &mappings(
                &[("city".to_string(), "/address/city".parse().unwrap())],
                &types,
            ),
            &types,
        )
        .unwrap();
        assert_eq!(Value::Object(ok), json!({"city": "Graz"}));
        let lines = json!({"lines": [{"sku": "a"}, {"sku": "b"}, {"qty": 1}]})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            lookup(&lines, &["lines".into(), "sku".into()]),
            json!(["a", "b"])
        );
        assert_eq!(lookup(&lines, &["nope".into()]), Value::Null);
        let all = project(&doc, &[], &Default::default()).unwrap();
        assert!(!all.contains_key("_rid") && all.contains_key("address"));
    }
}
