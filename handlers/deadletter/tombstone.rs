//! Tombstones: deletes remembered while older changes of the same documents wait for replay.
//!
//! A sink that overwrites state without conditions (Azure AI Search) is guarded on replay by
//! reading the version the target holds. A deleted document holds none, so an older upsert
//! replayed after the delete would bring it back, and no later change removes it. The delete
//! is therefore kept as a tombstone, `tombstones/{function}/{sink}/{digest of pk and id}.json`,
//! and replay skips an upsert that a newer tombstone hides.
//!
//! Written only when needed: an older change of the document can wait for replay only in a
//! record that exists before the delete is delivered (a lease's batches are delivered one
//! after another, and a batch is answered only once its records are written), so a delete is
//! tombstoned only when something of its sink waits in the store at that moment
//! ([`DeadLetterStore::holds_changes_for`]): one listing per batch with deletes, no write in
//! the common case. For the same reason, a tombstone written before every record of its sink
//! was replayed is no longer needed ([`DeadLetterStore::prune_tombstones`]).

use super::{DeadLetterError, DeadLetterStore, INPUT_SINK, PENDING, Stored, sanitize};
use crate::change::{Change, PartitionKey};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Instant;

pub const TOMBSTONES: &str = "tombstones";

/// A delete a sink received, as replay needs it to tell whether an upsert is older.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tombstone {
    pub id: String,
    pub partition_key: PartitionKey,
    pub lsn: Option<i64>,
    pub ts: Option<i64>,
}

impl Tombstone {
    pub fn of(delete: &Change) -> Self {
        Self {
            id: delete.id.clone(),
            partition_key: delete.partition_key.clone(),
            lsn: delete.lsn,
            ts: delete.ts,
        }
    }

    /// The delete's version, ordered as [`Change::version_key`].
    pub fn version_key(&self) -> (i64, i64) {
        (self.lsn.unwrap_or(-1), self.ts.unwrap_or(-1))
    }

    /// True when `change` is an upsert older than this delete (by lsn, then `_ts`), so that
    /// writing it would bring a deleted document back.
    pub fn hides(&self, change: &Change) -> bool {
        !change.operation.is_delete()
            && change.id == self.id
            && change.partition_key == self.partition_key
            && self.version_key() > change.version_key()
    }
}

/// `{function}/{sink}/{digest}.json`: one object per document, so a later delete overwrites it.
fn key(function: &str, sink: &str, id: &str, partition_key: &PartitionKey) -> String {
    let digest = Sha256::new()
        .chain_update(partition_key.to_wire())
        .chain_update([0])
        .chain_update(id)
        .finalize();
    format!(
        "{}/{}/{}.json",
        sanitize(function),
        sanitize(sink),
        hex::encode(&digest[..16])
    )
}

impl DeadLetterStore {
    /// Whether anything that `sink` of `function` may still be given waits in the store:
    /// records of the sink, or of the function's input (replayed to every sink). Both tiers;
    /// stops at the first object found.
    ///
    /// Write-ahead records (`in-flight/`) do not count: every last attempt has one, so with
    /// no retry policy every batch would write tombstones. One left by a process that died
    /// counts once it is recovered into `pending/` - at the restart of a handler on the same
    /// machine at once, from another machine after a function timeout. A delete of one of its
    /// documents in that window is not tombstoned (docs/search.md says so).
    pub async fn holds_changes_for(
        &self,
        function: &str,
        sink: &str,
    ) -> Result<bool, DeadLetterError> {
        let (function, sink) = (sanitize(function), sanitize(sink));
        for (_, tier) in self.tiers() {
            for prefix in [
                format!("{function}/{sink}"),
                format!("{function}/{INPUT_SINK}"),
            ] {
                if tier.any_under(PENDING, &prefix).await? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Keeps a tombstone for each delete, before `deadline`; fails when any could not be kept.
    pub async fn put_tombstones(
        &self,
        function: &str,
        sink: &str,
        deletes: &[&Change],
        deadline: Instant,
    ) -> Result<Vec<Stored>, DeadLetterError> {
        let writes = deletes.iter().map(|d| {
            let body = serde_json::to_vec(&Tombstone::of(d)).expect("tombstones serialize");
            let key = key(function, sink, &d.id, &d.partition_key);
            async move { self.put_tiered(TOMBSTONES, &key, body, deadline).await }
        });
        futures::future::join_all(writes)
            .await
            .into_iter()
            .collect()
    }

    /// The newest tombstone kept for `change`'s document, in either tier.
    pub async fn tombstone(
        &self,
        function: &str,
        sink: &str,
        change: &Change,
    ) -> Result<Option<Tombstone>, DeadLetterError> {
        let key = key(function, sink, &change.id, &change.partition_key);
        let mut newest: Option<Tombstone> = None;
        for (_, tier) in self.tiers() {
            match tier.get(TOMBSTONES, &key).await {
                Ok(bytes) => {
                    let t: Tombstone = serde_json::from_slice(&bytes).map_err(|source| {
                        DeadLetterError::Record {
                            key: format!("{TOMBSTONES}/{key}"),
                            source,
                        }
                    })?;
                    if newest
                        .as_ref()
                        .is_none_or(|n| n.version_key() < t.version_key())
                    {
                        newest = Some(t);
                    }
                }
                Err(DeadLetterError::Store(object_store::Error::NotFound { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(newest)
    }

    /// Removes the tombstones written before `written_before` of every sink that has nothing
    /// left waiting in the store (call it with the time a replay of everything started, after
    /// it). Returns how many were removed.
    pub async fn prune_tombstones(
        &self,
        written_before: DateTime<Utc>,
    ) -> Result<usize, DeadLetterError> {
        let mut removed = 0;
        for (_, tier) in self.tiers() {
            let mut by_sink: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
            for listed in tier.list(TOMBSTONES).await? {
                let mut parts = listed.key.splitn(3, '/');
                if let (Some(f), Some(s), Some(_)) = (parts.next(), parts.next(), parts.next())
                    && listed.last_modified < written_before
                {
                    by_sink
                        .entry((f.to_string(), s.to_string()))
                        .or_default()
                        .push(listed.key.clone());
                }
            }
            for ((function, sink), keys) in by_sink {
                if self.holds_changes_for(&function, &sink).await? {
                    continue;
                }
                for key in keys {
                    tier.delete(TOMBSTONES, &key).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Operation;
    use crate::deadletter::{DeadLetterConfig, DeadLetterKind, DeadLetterRecord};
    use crate::storage::Location;
    use crate::testing::ChangeBuilder;
    use std::time::Duration;

    fn change(id: &str, pk: &str, op: Operation, lsn: i64) -> Change {
        let b = match op {
            Operation::Delete => ChangeBuilder::delete(id),
            _ => ChangeBuilder::upsert(id),
        };
        b.pk(pk).lsn(lsn).build()
    }

    #[test]
    fn a_tombstone_hides_older_upserts_of_its_document_only() {
        let t = Tombstone::of(&change("a", "p", Operation::Delete, 20));
        // (change, hidden)
        let cases = [
            (change("a", "p", Operation::Upsert, 10), true),
            (change("a", "p", Operation::Upsert, 30), false),
            (change("a", "p", Operation::Delete, 10), false),
            (change("a", "q", Operation::Upsert, 10), false),
            (change("b", "p", Operation::Upsert, 10), false),
        ];
        for (c, hidden) in cases {
            assert_eq!(t.hides(&c), hidden, "{c:?}");
        }
    }

    #[tokio::test]
    async fn tombstones_are_kept_read_back_and_pruned_only_when_nothing_waits() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(&DeadLetterConfig {
            primary: Location::parse("dl", Default::default(), dir.path()).unwrap(),
            fallback: None,
        })
        .unwrap();
        let soon = Instant::now() + Duration::from_secs(5);
        assert!(!store.holds_changes_for("orders", "search").await.unwrap());
        let older = DeadLetterRecord {
            changes: vec![change("a", "p", Operation::Upsert, 10)],
            ..DeadLetterRecord::new(
                DeadLetterKind::SinkFailure,
                "orders",
                "search",
                "inv".into(),
                "fp".into(),
                "down".into(),
            )
        };
        let stored = store.put(&older, soon).await.unwrap();
        assert!(store.holds_changes_for("orders", "search").await.unwrap());
        assert!(!store.holds_changes_for("orders", "other").await.unwrap());

        let delete = change("a", "p", Operation::Delete, 20);
        store
            .put_tombstones("orders", "search", &[&delete], soon)
            .await
            .unwrap();
        let kept = store
            .tombstone("orders", "search", &older.changes[0])
            .await
            .unwrap()
            .expect("kept");
        assert!(kept.hides(&older.changes[0]));
        assert_eq!(
            store
                .tombstone("orders", "other", &older.changes[0])
                .await
                .unwrap(),
            None
        );

        // Something still waits: kept.
        let later = Utc::now() + chrono::Duration::seconds(60);
        assert_eq!(store.prune_tombstones(later).await.unwrap(), 0);
        store.mark_replayed(&stored.key, &older).await.unwrap();
        // Written after the cut-off: kept.
        assert_eq!(
            store
                .prune_tombstones(Utc::now() - chrono::Duration::seconds(60))
                .await
                .unwrap(),
            0
        );
        assert_eq!(store.prune_tombstones(later).await.unwrap(), 1);
        assert_eq!(
            store
                .tombstone("orders", "search", &older.changes[0])
                .await
                .unwrap(),
            None
        );
    }
}
