//! What a sink that holds state can tell `verify`: the changelog's latest state per document,
//! Redis refresh keys, a search index. Each such sink answers in its own keys (the changelog
//! by partition key and id, Redis by the rendered key, AI Search by the index key) and says
//! which key and fields a container document becomes there, with the same projection it
//! writes with, so the comparison sees exactly what a delivery would have left.

use crate::change::Change;
use crate::sinks::SinkError;
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// What one side holds for a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// (lsn, `_ts`), a missing part as -1 (as [`Change::version_key`]).
    pub version: (i64, i64),
    /// The projected fields the sink keeps (only for the documents whose fields are compared).
    pub fields: Option<Map<String, Value>>,
}

/// What a change leaves in a sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub key: String,
    /// As the sink records versions ([`Held::version`]).
    pub version: (i64, i64),
    pub fields: Map<String, Value>,
}

/// Which documents' fields to bring back (a sample, or all).
pub type FieldsOf<'a> = &'a (dyn Fn(&str) -> bool + Send + Sync);

/// What a sink holds, listed whole.
#[derive(Debug, Default)]
pub struct Listing {
    pub held: BTreeMap<String, Held>,
    /// Set when the sink could not list everything it holds (say, keys on a Redis cluster):
    /// extras are then not looked for, and the report says why.
    pub extras_unchecked: Option<String>,
}

#[async_trait]
pub trait SinkState: Send + Sync {
    /// What a document's change leaves in this sink: its key, version and fields. `Err`: the
    /// sink refuses the document (the delivery would dead-letter it), and why.
    fn expect(&self, change: &Change) -> Result<Expected, String>;

    /// Everything the sink holds, by key, with the fields of the keys `fields_of` picks.
    /// `expected`: the keys the container's documents land under (a sink that cannot list
    /// everything reads at least these).
    async fn list(&self, expected: &[&str], fields_of: FieldsOf<'_>) -> Result<Listing, SinkError>;

    /// Removes what the sink holds under `key` (its document is gone from the container),
    /// through the sink's own guarded write: only while the sink still holds `held` (the
    /// version verify saw), so a live write since then wins. The delete's version is one lsn
    /// after `held`: the earliest the real delete can have been, so a later re-create of the
    /// document (a higher lsn) still wins over it. `function`: the route's, for the sink's
    /// records. `false`: not removed (the sink holds something newer now).
    async fn remove(&self, function: &str, key: &str, held: (i64, i64)) -> Result<bool, SinkError>;

    /// The document a key comes from, when the key says: so an extra can be looked up in the
    /// container before it is called one.
    fn document_of(&self, _key: &str) -> Option<Origin> {
        None
    }

    /// Whether every key of this sink leads back to its document ([`Self::document_of`]).
    fn traces_keys(&self) -> bool {
        false
    }

    /// Whether a document the sink lacks is drift (a cache whose keys expire lets them go).
    fn missing_is_drift(&self) -> bool {
        true
    }

    /// Whether a same-version document with other fields can be repaired by writing it again
    /// (an append-only changelog cannot rewrite a row it holds).
    fn rewrites_same_version(&self) -> bool {
        true
    }
}

/// Where a sink's key leads back to in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// (partition key wire form, id): one point read.
    Document(String, String),
    /// Only the id (a search key of the id alone): a query.
    Id(String),
}

/// The key of a document by partition key (wire form) and id, for sinks keyed that way.
pub fn document_key(partition_key_wire: &str, id: &str) -> String {
    serde_json::to_string(&[partition_key_wire, id]).expect("strings serialize")
}

/// The (partition key wire form, id) of a [`document_key`].
pub fn parse_document_key(key: &str) -> Option<(String, String)> {
    let [pk, id]: [String; 2] = serde_json::from_str(key).ok()?;
    Some((pk, id))
}

/// A batch context for writes `verify --repair` makes itself (not through the pipeline).
pub fn repair_context(function: &str, what: &str) -> crate::sinks::BatchContext {
    crate::sinks::BatchContext {
        function: function.to_string(),
        invocation_id: format!("verify-repair:{what}"),
        fingerprint: format!("verify-repair:{what}"),
        received_at: chrono::Utc::now(),
        replay: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_keys_round_trip_whatever_the_id_holds() {
        for (pk, id) in [("[\"c1\"]", "o1"), ("[{}]", "a\"b"), ("[\"t\",1]", "x,y")] {
            let key = document_key(pk, id);
            assert_eq!(parse_document_key(&key), Some((pk.into(), id.into())));
        }
        assert_eq!(parse_document_key("not a key"), None);
    }
}
