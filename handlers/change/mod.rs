//! One change model: every change feed item, whatever mode produced it, becomes a [`Change`].
//!
//! Data flows one way: `host` decodes the raw feed items, [`normalize`] turns each into a
//! [`Change`], and the pipeline hands the changes to the sinks. Nothing here does I/O.

mod normalize;
mod partition_key;
mod path;
pub mod projection;

pub use normalize::{ChangeShape, NormalizeError, Normalizer, SoftDelete, Unreadable, shape};
pub use partition_key::{PartitionKey, PartitionKeyPathError, PartitionKeyPaths};
pub use path::{DocPath, DocPathError};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What happened to a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// All-versions-and-deletes mode: the document was created.
    Create,
    /// All-versions-and-deletes mode: an existing document was replaced.
    Replace,
    /// Latest-version mode: created or replaced; the feed does not say which.
    Upsert,
    /// The document is gone (hard delete, TTL expiry, or a soft-delete marker).
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Replace => "replace",
            Operation::Upsert => "upsert",
            Operation::Delete => "delete",
        }
    }

    pub fn is_delete(self) -> bool {
        self == Operation::Delete
    }
}

/// Why a [`Operation::Delete`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteKind {
    /// All-versions-and-deletes mode: the document was deleted.
    Hard,
    /// All-versions-and-deletes mode: the document's TTL expired.
    TtlExpired,
    /// Latest-version mode: the document carries the configured soft-delete marker.
    Soft,
}

impl DeleteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteKind::Hard => "hard",
            DeleteKind::TtlExpired => "ttl_expired",
            DeleteKind::Soft => "soft",
        }
    }
}

/// One change to one document, normalized from any change feed mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub operation: Operation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_kind: Option<DeleteKind>,
    pub id: String,
    pub partition_key: PartitionKey,
    /// Logical sequence number of the change in its physical partition (`_lsn` or `metadata.lsn`).
    pub lsn: Option<i64>,
    /// Modification time in epoch seconds (`_ts`, or `metadata.crts` for deletes).
    pub ts: Option<i64>,
    /// The document's `_etag`, quotes included as Cosmos sends it.
    pub etag: Option<String>,
    /// The document body; `None` for hard deletes, which carry no body.
    pub document: Option<Map<String, Value>>,
}

impl Change {
    /// The ordering key used to decide which of two changes to the same document is newer:
    /// lsn first, then `_ts` (a missing value sorts first).
    pub fn version_key(&self) -> (i64, i64) {
        (self.lsn.unwrap_or(-1), self.ts.unwrap_or(-1))
    }
}
