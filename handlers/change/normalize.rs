use super::projection::lookup;
use super::{Change, DeleteKind, Operation, PartitionKeyPaths};
use serde_json::{Map, Value};

/// Marks a latest-version document as deleted: `field` (a `/`-path) equal to `equals`.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftDelete {
    pub path: Vec<String>,
    pub equals: Value,
}

/// Which change feed mode an item came from, detected per item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeShape {
    LatestVersion,
    AllVersionsAndDeletes,
}

/// Why one feed item could not become a [`Change`]. Carries the item's position so the
/// dead-letter record and the host log can point at it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("item {index}{id}: {reason}", id = .id.as_ref().map(|i| format!(" (id `{i}`)")).unwrap_or_default())]
pub struct NormalizeError {
    pub index: usize,
    pub id: Option<String>,
    pub reason: String,
}

/// A feed item that could not be normalized, handed back untouched for the dead-letter store.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub error: NormalizeError,
    pub item: Value,
}

/// Turns raw change feed items into [`Change`]s for one route.
#[derive(Debug, Clone)]
pub struct Normalizer {
    partition_key: PartitionKeyPaths,
    soft_delete: Option<SoftDelete>,
}

impl Normalizer {
    pub fn new(partition_key: PartitionKeyPaths, soft_delete: Option<SoftDelete>) -> Self {
        Self {
            partition_key,
            soft_delete,
        }
    }

    /// Normalizes one item (taken by value: the document moves into the change, no copy).
    pub fn normalize(&self, index: usize, item: Value) -> Result<Change, Unreadable> {
        let fail = |id: Option<String>, reason: String| NormalizeError { index, id, reason };
        let Value::Object(item) = item else {
            let error = fail(
                None,
                format!("expected a JSON object, found {}", kind(&item)),
            );
            return Err(Unreadable { error, item });
        };
        let checked = match shape(&item) {
            ChangeShape::LatestVersion => self.check_latest_version(&item),
            ChangeShape::AllVersionsAndDeletes => self.check_all_versions(&item),
        };
        match checked {
            Ok(header) => Ok(header.into_change(item)),
            Err((id, reason)) => Err(Unreadable {
                error: fail(id, reason),
                item: Value::Object(item),
            }),
        }
    }

    /// Reads everything but the body from a latest-version document, by reference.
    fn check_latest_version(
        &self,
        doc: &Map<String, Value>,
    ) -> Result<Header, (Option<String>, String)> {
        let id = document_id(doc)?;
        let soft_deleted = self.soft_deleted(doc);
        let lsn = integer_field(doc, "_lsn").map_err(|r| (Some(id.clone()), r.to_string()))?;
        let ts = integer_field(doc, "_ts").map_err(|r| (Some(id.clone()), r.to_string()))?;
        Ok(Header {
            operation: if soft_deleted {
                Operation::Delete
            } else {
                Operation::Upsert
            },
            delete_kind: soft_deleted.then_some(DeleteKind::Soft),
            partition_key: self.partition_key.extract(doc),
            lsn,
            ts,
            etag: doc.get("_etag").and_then(Value::as_str).map(str::to_string),
            id,
            body: Body::Whole,
        })
    }

    /// Whether the document carries the route's soft-delete marker.
    fn soft_deleted(&self, doc: &Map<String, Value>) -> bool {
        self.soft_delete
            .as_ref()
            .is_some_and(|sd| lookup(doc, &sd.path).is_some_and(|v| v == &sd.equals))
    }

    /// Reads an all-versions-and-deletes item (`{"current", "metadata"}`), by reference.
    fn check_all_versions(
        &self,
        item: &Map<String, Value>,
    ) -> Result<Header, (Option<String>, String)> {
        let empty = Map::new();
        let metadata = item
            .get("metadata")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let op = metadata
            .get("operationType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let lsn = integer_field(metadata, "lsn").map_err(|r| (None, format!("metadata: {r}")))?;
        let crts = integer_field(metadata, "crts").map_err(|r| (None, format!("metadata: {r}")))?;
        match op {
            "create" | "replace" => {
                let doc = match item.get("current") {
                    Some(Value::Object(doc)) => doc,
                    Some(other) => {
                        return Err((
                            None,
                            format!("`current` must be an object, found {}", kind(other)),
                        ));
                    }
                    None => return Err((None, format!("a `{op}` item has no `current` document"))),
                };
                let id = document_id(doc)?;
                let ts = integer_field(doc, "_ts")
                    .map_err(|r| (Some(id.clone()), r.to_string()))?
                    .or(crts);
                let lsn = match lsn {
                    Some(l) => Some(l),
                    None => {
                        integer_field(doc, "_lsn").map_err(|r| (Some(id.clone()), r.to_string()))?
                    }
                };
                // An application that marks documents deleted does so in this mode too: the
                // marker is a delete for the sinks, as in latest-version mode.
                let soft_deleted = self.soft_deleted(doc);
                Ok(Header {
                    operation: if soft_deleted {
                        Operation::Delete
                    } else if op == "create" {
                        Operation::Create
                    } else {
                        Operation::Replace
                    },
                    delete_kind: soft_deleted.then_some(DeleteKind::Soft),
                    partition_key: self.partition_key.extract(doc),
                    lsn,
                    ts,
                    etag: doc.get("_etag").and_then(Value::as_str).map(str::to_string),
                    id,
                    body: Body::Current,
                })
            }
            "delete" => {
                let id = match metadata.get("id") {
                    Some(Value::String(id)) if !id.is_empty() => id.clone(),
                    _ => return Err((None, "a delete item has no `metadata.id` string".into())),
                };
                // `{}` is the legitimate "none" partition; a missing key is not: guessing
                // would delete the wrong key in partition-keyed sinks.
                let partition_key = match metadata.get("partitionKey") {
                    Some(Value::Object(pk)) => self.partition_key.extract_from_metadata(pk),
                    _ => {
                        return Err((
                            Some(id),
                            "a delete item has no `metadata.partitionKey` object".into(),
                        ));
                    }
                };
                let ttl_expired =
                    metadata.get("timeToLiveExpired").and_then(Value::as_bool) == Some(true);
                Ok(Header {
                    operation: Operation::Delete,
                    delete_kind: Some(if ttl_expired {
                        DeleteKind::TtlExpired
                    } else {
                        DeleteKind::Hard
                    }),
                    id,
                    partition_key,
                    lsn,
                    ts: crts,
                    etag: None,
                    body: Body::None,
                })
            }
            "" => Err((None, "`metadata.operationType` is missing".into())),
            other => Err((
                None,
                format!(
                    "unknown `metadata.operationType` `{other}` (expected create, replace or delete)"
                ),
            )),
        }
    }
}

/// Where a checked item's body is.
enum Body {
    /// The item is the document (latest-version mode).
    Whole,
    /// The document is the item's `current` (all-versions-and-deletes create / replace).
    Current,
    /// No body (all-versions-and-deletes delete).
    None,
}

/// Everything about a change except its body, read by reference so a failed check can hand the
/// item back untouched.
struct Header {
    operation: Operation,
    delete_kind: Option<DeleteKind>,
    id: String,
    partition_key: crate::change::PartitionKey,
    lsn: Option<i64>,
    ts: Option<i64>,
    etag: Option<String>,
    body: Body,
}

impl Header {
    fn into_change(self, mut item: Map<String, Value>) -> Change {
        let document = match self.body {
            Body::Whole => Some(item),
            Body::Current => match item.remove("current") {
                Some(Value::Object(doc)) => Some(doc),
                _ => unreachable!("checked: `current` is an object"),
            },
            Body::None => None,
        };
        Change {
            operation: self.operation,
            delete_kind: self.delete_kind,
            id: self.id,
            partition_key: self.partition_key,
            lsn: self.lsn,
            ts: self.ts,
            etag: self.etag,
            document,
        }
    }
}

/// All-versions-and-deletes items are `{"current": {...}, "metadata": {"operationType": ...}}`;
/// anything else is a latest-version document.
pub fn shape(item: &Map<String, Value>) -> ChangeShape {
    // All-versions-and-deletes items never carry a top-level `id`; latest-version documents
    // always do. Checking both keeps a user document that happens to have a `metadata`
    // field with an `operationType` from being read as a change to another document.
    match item.get("metadata") {
        Some(Value::Object(m)) if m.contains_key("operationType") && !item.contains_key("id") => {
            ChangeShape::AllVersionsAndDeletes
        }
        _ => ChangeShape::LatestVersion,
    }
}

fn document_id(doc: &Map<String, Value>) -> Result<String, (Option<String>, String)> {
    match doc.get("id") {
        Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        Some(Value::String(_)) => Err((None, "`id` is empty".into())),
        Some(other) => Err((
            None,
            format!("`id` must be a string, found {}", kind(other)),
        )),
        None => Err((None, "the document has no `id`".into())),
    }
}

/// A system field that must be an integer and is not.
#[derive(Debug, thiserror::Error)]
#[error("`{name}` must be an integer, found {found}")]
struct NotAnInteger {
    name: &'static str,
    found: String,
}

fn integer_field(
    map: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, NotAnInteger> {
    let not = |found: String| NotAnInteger { name, found };
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| not(n.to_string())),
        Some(other) => Err(not(kind(other).to_string())),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::PartitionKey;
    use serde_json::json;

    fn normalizer() -> Normalizer {
        Normalizer::new(
            PartitionKeyPaths::parse(&["/customerId"]).unwrap(),
            Some(SoftDelete {
                path: vec!["deleted".into()],
                equals: json!(true),
            }),
        )
    }

    #[test]
    fn latest_version_upsert() {
        let c = normalizer()
            .normalize(
                0,
                json!({"id": "o1", "customerId": "c1", "_lsn": 5, "_ts": 100, "_etag": "\"e\""}),
            )
            .unwrap();
        assert_eq!(c.operation, Operation::Upsert);
        assert_eq!(
            (c.id.as_str(), c.lsn, c.ts, c.etag.as_deref()),
            ("o1", Some(5), Some(100), Some("\"e\""))
        );
        assert_eq!(c.partition_key, PartitionKey(vec![Some(json!("c1"))]));
        assert!(c.document.is_some());
    }

    #[test]
    fn soft_delete_marker_is_a_delete_with_the_body() {
        let c = normalizer()
            .normalize(
                0,
                json!({"id": "o1", "customerId": "c1", "deleted": true, "ttl": 60, "_lsn": 6}),
            )
            .unwrap();
        assert_eq!(
            (c.operation, c.delete_kind),
            (Operation::Delete, Some(DeleteKind::Soft))
        );
        assert!(c.document.is_some());
        let not = normalizer()
            .normalize(0, json!({"id": "o1", "deleted": false}))
            .unwrap();
        assert_eq!(not.operation, Operation::Upsert);
    }

    #[test]
    fn all_versions_create_replace_delete_and_ttl() {
        let n = normalizer();
        let create = n
            .normalize(0, json!({"current": {"id": "o1", "customerId": "c1", "_ts": 10}, "metadata": {"operationType": "create", "lsn": 7, "crts": 10}}))
            .unwrap();
        assert_eq!(
            (create.operation, create.lsn, create.ts),
            (Operation::Create, Some(7), Some(10))
        );
        let replace = n
            .normalize(1, json!({"current": {"id": "o1", "customerId": "c1"}, "metadata": {"operationType": "replace", "lsn": 8, "crts": 11, "previousImageLSN": 7}}))
            .unwrap();
        assert_eq!(
            (replace.operation, replace.ts),
            (Operation::Replace, Some(11))
        );
        let delete = n
            .normalize(2, json!({"metadata": {"operationType": "delete", "lsn": 9, "crts": 12, "previousImageLSN": 8, "id": "o1", "partitionKey": {"customerId": "c1"}}}))
            .unwrap();
        assert_eq!(
            (delete.operation, delete.delete_kind),
            (Operation::Delete, Some(DeleteKind::Hard))
        );
        assert_eq!(
            (delete.id.as_str(), delete.lsn, delete.ts),
            ("o1", Some(9), Some(12))
        );
        assert_eq!(delete.partition_key.as_key_string(), "c1");
        assert!(delete.document.is_none());
        let ttl = n
            .normalize(3, json!({"metadata": {"operationType": "delete", "lsn": 10, "crts": 13, "id": "o2", "partitionKey": {}, "timeToLiveExpired": true}}))
            .unwrap();
        assert_eq!(ttl.delete_kind, Some(DeleteKind::TtlExpired));
        assert!(ttl.partition_key.is_none());
    }

    #[test]
    fn a_user_document_with_a_metadata_field_is_not_an_all_versions_item() {
        let doc = json!({"id": "log-1", "customerId": "c1", "_lsn": 5,
            "metadata": {"operationType": "delete", "id": "order-7", "partitionKey": {"customerId": "c1"}}});
        let c = normalizer().normalize(0, doc).unwrap();
        assert_eq!((c.operation, c.id.as_str()), (Operation::Upsert, "log-1"));
    }

    #[test]
    fn a_delete_without_its_partition_key_is_unreadable_not_a_guess() {
        let e = normalizer()
            .normalize(
                0,
                json!({"metadata": {"operationType": "delete", "lsn": 9, "id": "o1"}}),
            )
            .unwrap_err();
        assert!(
            e.error.reason.contains("metadata.partitionKey"),
            "{}",
            e.error
        );
    }

    #[test]
    fn malformed_items_are_explained() {
        let n = normalizer();
        let e = n.normalize(3, json!("x")).unwrap_err();
        assert_eq!(
            e.error.to_string(),
            "item 3: expected a JSON object, found a string"
        );
        assert_eq!(e.item, json!("x"));
        let reason = |v: Value| n.normalize(0, v).unwrap_err().error.reason;
        assert_eq!(reason(json!({"name": "no id"})), "the document has no `id`");
        assert_eq!(
            reason(json!({"id": 5})),
            "`id` must be a string, found a number"
        );
        let bad_lsn = json!({"id": "a", "_lsn": "x"});
        let e = n.normalize(1, bad_lsn.clone()).unwrap_err();
        assert_eq!(
            e.error.to_string(),
            "item 1 (id `a`): `_lsn` must be an integer, found a string"
        );
        assert_eq!(
            e.item, bad_lsn,
            "the raw item comes back untouched for the dead-letter store"
        );
        assert!(reason(json!({"metadata": {"operationType": "upsert"}})).contains("unknown"));
        assert!(
            reason(json!({"metadata": {"operationType": "delete", "lsn": 1}}))
                .contains("metadata.id")
        );
        let bad_current =
            json!({"current": [1], "metadata": {"operationType": "create", "lsn": 1}});
        assert_eq!(
            n.normalize(0, bad_current.clone()).unwrap_err().item,
            bad_current
        );
    }
}
