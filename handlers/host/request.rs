use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// How many layers of JSON-string encoding we peel before giving up. The host sends two.
const MAX_ENCODING_LAYERS: usize = 4;

/// `Metadata.sys` as the host sends it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct SysMetadata {
    #[serde(rename = "MethodName", default)]
    pub method_name: Option<String>,
    #[serde(rename = "UtcNow", default)]
    pub utc_now: Option<String>,
    #[serde(rename = "RandGuid", default)]
    pub rand_guid: Option<String>,
}

/// `Metadata.RetryContext`: present only when the host's retry policy re-delivers.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RetryContext {
    /// 0 on the first execution, 1..=max on the retries.
    #[serde(rename = "RetryCount", default)]
    pub retry_count: i64,
    /// The function's `retry.maxRetryCount`; -1 retries forever.
    #[serde(rename = "MaxRetryCount", default)]
    pub max_retry_count: i64,
    #[serde(rename = "Exception", default)]
    pub exception: Option<Value>,
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(rename = "Data", borrow)]
    data: Option<BTreeMap<String, &'a RawValue>>,
    #[serde(rename = "Metadata", default)]
    metadata: Option<serde_json::Map<String, Value>>,
}

/// What `Metadata.RetryContext` says about this delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryState {
    /// Absent: the first execution (the host adds it only on retries).
    FirstOrUnknown,
    Retry(RetryContext),
    /// Present but not readable: the attempt number is unknown.
    Unreadable,
}

impl RetryState {
    pub fn context(&self) -> Option<&RetryContext> {
        match self {
            RetryState::Retry(c) => Some(c),
            _ => None,
        }
    }
}

/// An invocation request with the trigger's documents decoded into feed items.
#[derive(Debug)]
pub struct HostRequest {
    pub items: Vec<Value>,
    pub sys: SysMetadata,
    pub retry: RetryState,
}

fn retry_state(mut metadata: serde_json::Map<String, Value>) -> RetryState {
    match metadata.remove("RetryContext").map(unwrap_string_encoded) {
        None | Some(Value::Null) => RetryState::FirstOrUnknown,
        Some(v) => match serde_json::from_value::<RetryContext>(v) {
            Ok(ctx) => RetryState::Retry(ctx),
            // Present but unreadable: we cannot tell which attempt this is. Err towards
            // dead-lettering (treat it as the last) rather than losing the batch.
            Err(_) => RetryState::Unreadable,
        },
    }
}

/// `"{\"RetryCount\":1}"` -> `{"RetryCount":1}`; anything else unchanged.
fn unwrap_string_encoded(v: Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        other => other,
    }
}

/// Why a request body could not be decoded. Each says what was expected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the request body is not JSON: {0}")]
    NotJson(String),
    #[error("the request body has no `Data` object")]
    MissingData,
    #[error(
        "`Data` has no `{binding}` binding (it has: {present}); check the trigger's `name` in function.json"
    )]
    MissingBinding { binding: String, present: String },
    #[error("`Data.{binding}` is not a JSON array of documents: {source}")]
    NotAnArray {
        binding: String,
        #[source]
        source: DocumentsError,
    },
}

/// Why a binding's value is not an array of documents.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DocumentsError {
    /// serde_json's message (kept as text so the error compares and clones).
    #[error("{0}")]
    Json(String),
    #[error("found {0}")]
    Found(String),
    #[error("found an empty string")]
    Empty,
    #[error("more than {MAX_ENCODING_LAYERS} layers of string encoding")]
    TooDeep,
}

impl HostRequest {
    /// What the body's `Metadata.RetryContext` says, for a body that may not decode as a whole
    /// (None when it is not a JSON object at all).
    pub fn peek_retry(body: &[u8]) -> Option<RetryState> {
        #[derive(Deserialize)]
        struct MetadataOnly {
            #[serde(rename = "Metadata", default)]
            metadata: Option<serde_json::Map<String, Value>>,
        }
        let parsed: MetadataOnly = serde_json::from_slice(body).ok()?;
        Some(retry_state(parsed.metadata.unwrap_or_default()))
    }

    /// Decodes an invocation body, taking the documents from the trigger binding `binding`.
    pub fn decode(body: &[u8], binding: &str) -> Result<Self, DecodeError> {
        let raw: RawRequest<'_> =
            serde_json::from_slice(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        // Metadata is best effort, field by field: a malformed `sys` must neither lose the
        // documents nor the RetryContext that decides when to dead-letter.
        let mut metadata = raw.metadata.unwrap_or_default();
        // Some host versions serialize each Metadata value to a JSON string: accept both.
        let sys = metadata
            .remove("sys")
            .map(unwrap_string_encoded)
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let retry = retry_state(metadata);
        let data = raw.data.ok_or(DecodeError::MissingData)?;
        let value = data
            .get(binding)
            .ok_or_else(|| DecodeError::MissingBinding {
                binding: binding.to_string(),
                present: if data.is_empty() {
                    "nothing".into()
                } else {
                    data.keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })?;
        let items = binding_documents(value.get()).map_err(|source| DecodeError::NotAnArray {
            binding: binding.to_string(),
            source,
        })?;
        Ok(Self { items, sys, retry })
    }
}

/// The documents of a binding's value as it stands in the body: the host's double encoding
/// peeled in one pass when it is the ordinary kind, else layer by layer.
fn binding_documents(json: &str) -> Result<Vec<Value>, DocumentsError> {
    match super::unescape::peel_twice(json) {
        Some(text) => decode_layers(&text, MAX_ENCODING_LAYERS - 2),
        None => decode_documents(json),
    }
}

/// Peels JSON-string layers until it holds an array. The host double-encodes Cosmos documents
/// (`"\"[{...}]\""`); a plain array is accepted too.
pub fn decode_documents(json: &str) -> Result<Vec<Value>, DocumentsError> {
    decode_layers(json, MAX_ENCODING_LAYERS)
}

/// [`decode_documents`] with `layers` string layers left to peel.
fn decode_layers(json: &str, layers: usize) -> Result<Vec<Value>, DocumentsError> {
    let mut layer = std::borrow::Cow::Borrowed(json);
    for _ in 0..=layers {
        let current = layer.trim_start();
        match current.as_bytes().first() {
            Some(b'[') => {
                return serde_json::from_str::<Vec<Value>>(current)
                    .map_err(|e| DocumentsError::Json(e.to_string()));
            }
            Some(b'"') => {
                let inner = serde_json::from_str::<String>(current)
                    .map_err(|e| DocumentsError::Json(e.to_string()))?;
                layer = std::borrow::Cow::Owned(inner);
            }
            Some(_) => {
                let kind = match serde_json::from_str::<Value>(current) {
                    Ok(Value::Object(_)) => "an object".to_string(),
                    Ok(Value::Null) => "null".to_string(),
                    Ok(other) => format!("`{}`", truncate(&other.to_string(), 40)),
                    Err(e) => format!("invalid JSON ({e})"),
                };
                return Err(DocumentsError::Found(kind));
            }
            None => return Err(DocumentsError::Empty),
        }
    }
    Err(DocumentsError::TooDeep)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn double_encoded_single_encoded_and_plain_arrays() {
        let docs = json!([{"id": "a"}, {"id": "b"}]);
        let once = serde_json::to_string(&docs.to_string()).unwrap();
        let twice = serde_json::to_string(&once).unwrap();
        for data in [docs.to_string(), once, twice] {
            assert_eq!(
                decode_documents(&data).unwrap(),
                docs.as_array().unwrap().clone()
            );
        }
    }

    #[test]
    fn request_with_metadata_and_retry_context() {
        let body = json!({
            "Data": {"documents": serde_json::to_string(&serde_json::to_string(&json!([{"id": "x"}])).unwrap()).unwrap()},
            "Metadata": {"sys": {"MethodName": "orders", "UtcNow": "2025-01-01T00:00:00Z", "RandGuid": "g"},
                         "RetryContext": {"RetryCount": 2, "MaxRetryCount": 3, "Exception": {"Message": "boom"}}}
        });
        let req = HostRequest::decode(body.to_string().as_bytes(), "documents").unwrap();
        assert_eq!(req.items.len(), 1);
        assert_eq!(req.sys.method_name.as_deref(), Some("orders"));
        let retry = req.retry.context().unwrap();
        assert_eq!((retry.retry_count, retry.max_retry_count), (2, 3));
    }

    #[test]
    fn string_encoded_and_unreadable_retry_contexts() {
        let body = |rc: &str| {
            format!(r#"{{"Data": {{"documents": "[]"}}, "Metadata": {{"RetryContext": {rc}}}}}"#)
        };
        let encoded = HostRequest::decode(
            body(r#""{\"RetryCount\":3,\"MaxRetryCount\":3}""#).as_bytes(),
            "documents",
        )
        .unwrap();
        assert_eq!(encoded.retry.context().map(|c| c.retry_count), Some(3));
        let garbage =
            HostRequest::decode(body(r#"{"RetryCount": "three"}"#).as_bytes(), "documents")
                .unwrap();
        assert_eq!(garbage.retry, RetryState::Unreadable);
        let null = HostRequest::decode(body("null").as_bytes(), "documents").unwrap();
        assert_eq!(null.retry, RetryState::FirstOrUnknown);
    }

    #[test]
    fn errors_say_what_was_expected() {
        assert!(matches!(
            HostRequest::decode(b"{nope", "documents"),
            Err(DecodeError::NotJson(_))
        ));
        assert_eq!(
            HostRequest::decode(b"{}", "documents").unwrap_err(),
            DecodeError::MissingData
        );
        let e = HostRequest::decode(br#"{"Data": {"docs": "[]"}}"#, "documents").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`Data` has no `documents` binding (it has: `docs`); check the trigger's `name` in function.json"
        );
        let e =
            HostRequest::decode(br#"{"Data": {"documents": {"id": 1}}}"#, "documents").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`Data.documents` is not a JSON array of documents: found an object"
        );
        let e = HostRequest::decode(
            br#"{"Data": {"documents": "\"[{\\\"id\\\": \""}}"#,
            "documents",
        )
        .unwrap_err();
        assert!(matches!(e, DecodeError::NotAnArray { .. }), "{e}");
        let deep = (0..6).fold(json!([]).to_string(), |s, _| {
            serde_json::to_string(&s).unwrap()
        });
        assert!(
            decode_documents(&deep)
                .unwrap_err()
                .to_string()
                .contains("layers")
        );
    }

    #[test]
    fn a_body_peels_up_to_four_string_layers_of_its_binding() {
        let docs = json!([{"id": "a"}]);
        for layers in 0..=5 {
            let value = (0..layers).fold(docs.clone(), |v, _| Value::String(v.to_string()));
            let body = json!({"Data": {"documents": value, "other": {"x": [1]}}}).to_string();
            let decoded = HostRequest::decode(body.as_bytes(), "documents");
            match layers {
                0..=4 => assert_eq!(decoded.unwrap().items, docs.as_array().unwrap().clone()),
                _ => assert_eq!(
                    decoded.unwrap_err(),
                    DecodeError::NotAnArray {
                        binding: "documents".into(),
                        source: DocumentsError::TooDeep
                    }
                ),
            }
        }
        for (value, found) in [
            (json!(null), "null"),
            (json!(true), "`true`"),
            (json!(7), "`7`"),
            (json!(""), ""),
        ] {
            let body = json!({"Data": {"documents": value}}).to_string();
            let e = HostRequest::decode(body.as_bytes(), "documents").unwrap_err();
            let DecodeError::NotAnArray { source, .. } = e else {
                panic!("{e}")
            };
            match found {
                "" => assert_eq!(source, DocumentsError::Empty),
                _ => assert_eq!(source, DocumentsError::Found(found.into())),
            }
        }
    }

    #[test]
    fn malformed_metadata_does_not_lose_documents() {
        let body = br#"{"Data": {"documents": "[{\"id\":\"a\"}]"}, "Metadata": {"sys": {"MethodName": 5}, "RetryContext": {"RetryCount": 1, "MaxRetryCount": 2}}}"#;
        let decoded = HostRequest::decode(body, "documents").unwrap();
        assert_eq!(decoded.items.len(), 1);
        assert_eq!(decoded.sys, SysMetadata::default());
        assert_eq!(decoded.retry.context().unwrap().retry_count, 1);
    }
}
