use super::projection::lookup;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// The container's partition key definition: one path, or up to three for hierarchical keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionKeyPaths {
    /// Each path split into its segments: `/address/city` -> `["address", "city"]`.
    paths: Vec<Vec<String>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PartitionKeyPathError {
    #[error("partition key path `{0}` must start with `/` (for example `/customerId`)")]
    MissingSlash(String),
    #[error("partition key path `{0}` has an empty segment")]
    EmptySegment(String),
    #[error("a partition key needs one to three paths, got {0}")]
    Count(usize),
}

impl PartitionKeyPaths {
    pub fn parse<S: AsRef<str>>(paths: &[S]) -> Result<Self, PartitionKeyPathError> {
        if paths.is_empty() || paths.len() > 3 {
            return Err(PartitionKeyPathError::Count(paths.len()));
        }
        let mut split = Vec::with_capacity(paths.len());
        for p in paths {
            let path = super::DocPath::parse(p.as_ref()).map_err(|e| match e {
                super::DocPathError::MissingSlash(p) => PartitionKeyPathError::MissingSlash(p),
                super::DocPathError::EmptySegment(p) => PartitionKeyPathError::EmptySegment(p),
            })?;
            split.push(path.segments().to_vec());
        }
        Ok(Self { paths: split })
    }

    /// Each path split into its segments (`/address/city` -> `["address", "city"]`).
    pub fn segments(&self) -> &[Vec<String>] {
        &self.paths
    }

    /// Reads the key from a document body. A missing field is Cosmos' "undefined" component:
    /// a document without any key field lives in the "none" partition, which is not an error.
    pub fn extract(&self, doc: &Map<String, Value>) -> PartitionKey {
        PartitionKey(
            self.paths
                .iter()
                .map(|segments| lookup(doc, segments).cloned())
                .collect(),
        )
    }

    /// Reads the key from an all-versions-and-deletes delete's `metadata.partitionKey`,
    /// an object keyed by the path without its leading slash (`{"customerId": "c1"}`).
    /// Nested paths are accepted both as `"address/city"` keys and as nested objects.
    pub fn extract_from_metadata(&self, meta_pk: &Map<String, Value>) -> PartitionKey {
        PartitionKey(
            self.paths
                .iter()
                .map(|segments| {
                    let flat = segments.join("/");
                    meta_pk
                        .get(&flat)
                        .or_else(|| meta_pk.get(&format!("/{flat}")))
                        .or_else(|| lookup(meta_pk, segments))
                        .cloned()
                })
                .collect(),
        )
    }
}

/// A partition key value: one component per path; `None` is Cosmos' "undefined".
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionKey(pub Vec<Option<Value>>);

impl PartitionKey {
    /// True when every component is undefined: Cosmos' "none" partition.
    pub fn is_none(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// Cosmos' own wire form (the `x-ms-documentdb-partitionkey` header): a JSON array with
    /// `{}` for an undefined component, e.g. `["c1"]`, `["t1","u1"]`, `[{}]`.
    pub fn to_wire(&self) -> String {
        let items: Vec<Value> = self
            .0
            .iter()
            .map(|c| c.clone().unwrap_or_else(|| Value::Object(Map::new())))
            .collect();
        Value::Array(items).to_string()
    }

    /// The key of a [`PartitionKey::to_wire`] form (`{}` is an undefined component).
    pub fn from_wire(wire: &str) -> Option<Self> {
        let items: Vec<Value> = serde_json::from_str(wire).ok()?;
        Some(PartitionKey(
            items
                .into_iter()
                .map(|v| match v {
                    Value::Object(m) if m.is_empty() => None,
                    v => Some(v),
                })
                .collect(),
        ))
    }

    /// A plain string for systems that key by string (Event Hubs partition keys, Kafka keys,
    /// cache keys): a single string component as is, anything else in wire form.
    pub fn as_key_string(&self) -> String {
        match self.0.as_slice() {
            [Some(Value::String(s))] => s.clone(),
            _ => self.to_wire(),
        }
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_wire())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_wire_form_reads_back() {
        for pk in [
            PartitionKey(vec![Some(json!("c1"))]),
            PartitionKey(vec![None]),
            PartitionKey(vec![Some(json!("t")), Some(json!(1)), Some(Value::Null)]),
        ] {
            assert_eq!(PartitionKey::from_wire(&pk.to_wire()), Some(pk));
        }
        assert_eq!(PartitionKey::from_wire("c1"), None);
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn single_nested_and_hierarchical_paths() {
        let doc = obj(json!({"customerId": "c1", "address": {"city": "Graz"}, "tenant": 7}));
        let one = PartitionKeyPaths::parse(&["/customerId"]).unwrap();
        assert_eq!(one.extract(&doc).to_wire(), r#"["c1"]"#);
        assert_eq!(one.extract(&doc).as_key_string(), "c1");
        let nested = PartitionKeyPaths::parse(&["/address/city"]).unwrap();
        assert_eq!(nested.extract(&doc).as_key_string(), "Graz");
        let hier = PartitionKeyPaths::parse(&["/tenant", "/customerId"]).unwrap();
        assert_eq!(hier.extract(&doc).to_wire(), r#"[7,"c1"]"#);
    }

    #[test]
    fn missing_field_is_the_none_partition_not_an_error() {
        let pk = PartitionKeyPaths::parse(&["/customerId"]).unwrap();
        let key = pk.extract(&obj(json!({"id": "x"})));
        assert!(key.is_none());
        assert_eq!(key.to_wire(), "[{}]");
        // JSON null is a real value, distinct from undefined.
        let null_key = pk.extract(&obj(json!({"customerId": null})));
        assert!(!null_key.is_none());
        assert_eq!(null_key.to_wire(), "[null]");
    }

    #[test]
    fn delete_metadata_keys_flat_or_nested() {
        let pk = PartitionKeyPaths::parse(&["/address/city"]).unwrap();
        assert_eq!(
            pk.extract_from_metadata(&obj(json!({"address/city": "Linz"})))
                .as_key_string(),
            "Linz"
        );
        assert_eq!(
            pk.extract_from_metadata(&obj(json!({"address": {"city": "Wels"}})))
                .as_key_string(),
            "Wels"
        );
    }

    #[test]
    fn bad_paths_are_explained() {
        assert_eq!(
            PartitionKeyPaths::parse(&["customerId"])
                .unwrap_err()
                .to_string(),
            "partition key path `customerId` must start with `/` (for example `/customerId`)"
        );
        assert!(PartitionKeyPaths::parse(&["/a//b"]).is_err());
        assert!(PartitionKeyPaths::parse::<&str>(&[]).is_err());
    }
}
