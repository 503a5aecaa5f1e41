//! The table's batch identities (Delta `txn` actions), kept in memory and updated
//! incrementally, so that checking a batch against the table costs a hash lookup instead of a
//! log replay per batch (delta-rs replays the log for every `transaction_version` call).
//!
//! Loaded once when the table is opened: the last checkpoint's `txn` column plus the commits
//! after it. Then every new commit (ours and other writers') is read once and its `txn`
//! actions recorded. Entries older than the table's transaction retention are dropped, as
//! checkpoints drop them. If the log cannot be read this way (a V2 checkpoint, commit files
//! already cleaned up), the index says so and lookups fall back to delta-rs.
//!
//! Memory: one entry (a 128-bit digest of the identity, version, time) per batch within the
//! retention window, about 50 bytes: 1M batches in 30 days = ~50 MB.

use bytes::Bytes;
use deltalake::arrow::array::{Array, AsArray, StructArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int64Type};
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::{DeltaTable, DeltaTableError, Path};
use object_store::ObjectStoreExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct TxnIndex {
    entries: HashMap<u128, (i64, i64)>,
    /// Every `txn` in commits up to this version is in `entries`.
    through: u64,
    /// False when the log could not be read completely: misses must be checked with delta-rs.
    complete: bool,
    retention_ms: i64,
    /// When entries were last pruned (ms since the epoch).
    pruned_at: i64,
}

fn key(app_id: &str) -> u128 {
    let digest = Sha256::digest(app_id.as_bytes());
    u128::from_le_bytes(digest[..16].try_into().expect("16 bytes"))
}

#[derive(Deserialize)]
struct LastCheckpoint {
    version: u64,
    #[serde(default)]
    parts: Option<u64>,
    #[serde(default, rename = "v2Checkpoint")]
    v2_checkpoint: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Txn {
    app_id: String,
    version: i64,
    last_updated: Option<i64>,
}

#[derive(Deserialize)]
struct LogLine {
    txn: Option<Txn>,
}

impl TxnIndex {
    /// Reads every `txn` of the table's current version.
    pub async fn load(table: &DeltaTable, retention_ms: i64) -> Result<Self, DeltaTableError> {
        let mut index = TxnIndex {
            retention_ms,
            complete: true,
            ..Default::default()
        };
        let Some(version) = table.version() else {
            return Ok(index);
        };
        let store = table.object_store();
        let start = match store.get(&Path::from("_delta_log/_last_checkpoint")).await {
            Ok(found) => {
                let last: LastCheckpoint = serde_json::from_slice(&found.bytes().await?)
                    .map_err(|e| DeltaTableError::Generic(format!("_last_checkpoint: {e}")))?;
                if last.v2_checkpoint.is_some() || last.version > version {
                    index.complete = false;
                    index.through = version;
                    return Ok(index);
                }
                let parts = last.parts.unwrap_or(1);
                for part in 1..=parts {
                    let name = if last.parts.is_some() {
                        format!(
                            "_delta_log/{:020}.checkpoint.{part:010}.{parts:010}.parquet",
                            last.version
                        )
                    } else {
                        format!("_delta_log/{:020}.checkpoint.parquet", last.version)
                    };
                    let bytes = store.get(&Path::from(name)).await?.bytes().await?;
                    index.read_checkpoint(bytes)?;
                }
                last.version + 1
            }
            Err(object_store::Error::NotFound { .. }) => 0,
            Err(e) => return Err(e.into()),
        };
        index.through = start.saturating_sub(1);
        index.read_commits(table, start, version).await?;
        index.through = version;
        Ok(index)
    }

    /// Records the `txn` actions of commits after the last one read, up to the table's version.
    pub async fn catch_up(&mut self, table: &DeltaTable) -> Result<(), DeltaTableError> {
        let Some(version) = table.version() else {
            return Ok(());
        };
        if version > self.through {
            self.read_commits(table, self.through + 1, version).await?;
            self.through = version;
        }
        self.prune();
        Ok(())
    }

    /// The recorded version of a batch identity; `None` also when the index is incomplete
    /// (see [`TxnIndex::is_complete`]).
    /// Records a commit this process wrote directly at `version` (the version right after the
    /// last one the index read): its `txn` actions are known, so the log is not read back.
    pub fn record_own_commit(&mut self, version: u64, txns: &[deltalake::kernel::Transaction]) {
        debug_assert!(version == self.through + 1 || self.entries.is_empty());
        for t in txns {
            self.record(&t.app_id, t.version, t.last_updated);
        }
        self.through = version;
        self.prune();
    }

    pub fn get(&self, app_id: &str) -> Option<i64> {
        self.entries.get(&key(app_id)).map(|(v, _)| *v)
    }

    pub fn is_complete(&self) -> bool {
        self.complete
    }

    fn record(&mut self, app_id: &str, version: i64, last_updated: Option<i64>) {
        self.entries
            .insert(key(app_id), (version, last_updated.unwrap_or(i64::MAX)));
    }

    /// Drops entries older than the retention: at most once a minute (a walk over every entry;
    /// per commit it cost more than the commit's own bookkeeping at 100k keys).
    fn prune(&mut self) {
        let now = chrono::Utc::now().timestamp_millis();
        if self.entries.len() <= 1024 || now - self.pruned_at < 60_000 {
            return;
        }
        self.pruned_at = now;
        let oldest = now - self.retention_ms;
        self.entries.retain(|_, (_, updated)| *updated >= oldest);
    }

    /// Reads commits `from..=to`; false (and the index marked incomplete) if one is missing.
    async fn read_commits(
        &mut self,
        table: &DeltaTable,
        from: u64,
        to: u64,
    ) -> Result<bool, DeltaTableError> {
        let log_store = table.log_store();
        for v in from..=to {
            match log_store.read_commit_entry(v).await? {
                Some(bytes) => self.read_commit(&bytes),
                None => {
                    self.complete = false;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn read_commit(&mut self, bytes: &Bytes) {
        for line in bytes.split(|b| *b == b'\n') {
            // Only lines with a txn action are parsed in full.
            if !line.windows(6).any(|w| w == b"\"txn\":") {
                continue;
            }
            if let Ok(LogLine { txn: Some(t) }) = serde_json::from_slice::<LogLine>(line) {
                self.record(&t.app_id, t.version, t.last_updated);
            }
        }
    }

    fn read_checkpoint(&mut self, bytes: Bytes) -> Result<(), DeltaTableError> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
        let roots = builder.parquet_schema().root_schema().get_fields();
        let Some(txn_root) = roots.iter().position(|f| f.name() == "txn") else {
            return Ok(());
        };
        let mask = ProjectionMask::roots(builder.parquet_schema(), [txn_root]);
        for batch in builder.with_projection(mask).build()? {
            let batch = batch?;
            let Some(txn) = batch.column_by_name("txn") else {
                continue;
            };
            // Other writers store these columns as LargeUtf8 / Utf8View or other integer
            // widths: cast to one layout instead of assuming ours (a wrong guess panics).
            let Some(txn) = txn.as_struct_opt() else {
                continue;
            };
            let txn: &StructArray = txn;
            let (Some(ids), Some(versions)) =
                (txn.column_by_name("appId"), txn.column_by_name("version"))
            else {
                continue;
            };
            let ids = cast(ids, &DataType::Utf8)?;
            let ids = ids.as_string::<i32>();
            let versions = cast(versions, &DataType::Int64)?;
            let versions = versions.as_primitive::<Int64Type>();
            let updated = match txn.column_by_name("lastUpdated") {
                Some(c) => Some(cast(c, &DataType::Int64)?),
                None => None,
            };
            let updated = updated.as_ref().map(|c| c.as_primitive::<Int64Type>());
            for row in 0..txn.len() {
                if txn.is_null(row) || ids.is_null(row) {
                    continue;
                }
                let last = updated
                    .as_ref()
                    .filter(|u| u.is_valid(row))
                    .map(|u| u.value(row));
                self.record(ids.value(row), versions.value(row), last);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{ArrayRef, Int32Array, LargeStringArray, RecordBatch};
    use deltalake::arrow::datatypes::{Field, Fields, Schema};
    use deltalake::parquet::arrow::ArrowWriter;
    use std::sync::Arc;

    /// A checkpoint as other writers lay it out: `txn.appId` as LargeUtf8, `version` as Int32.
    fn foreign_checkpoint() -> Bytes {
        let fields = Fields::from(vec![
            Field::new("appId", DataType::LargeUtf8, true),
            Field::new("version", DataType::Int32, true),
        ]);
        let txn = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(LargeStringArray::from(vec![
                    Some("batch-a"),
                    Some("batch-b"),
                ])) as ArrayRef,
                Arc::new(Int32Array::from(vec![Some(1), Some(2)])) as ArrayRef,
            ],
            None,
        );
        let schema = Arc::new(Schema::new(vec![Field::new(
            "txn",
            DataType::Struct(fields),
            true,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(txn)]).unwrap();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        Bytes::from(out)
    }

    #[test]
    fn a_checkpoint_with_other_column_types_is_read_not_panicked_on() {
        let mut index = TxnIndex {
            retention_ms: i64::MAX,
            complete: true,
            ..Default::default()
        };
        index.read_checkpoint(foreign_checkpoint()).unwrap();
        assert_eq!(index.get("batch-a"), Some(1));
        assert_eq!(index.get("batch-b"), Some(2));
        assert_eq!(index.get("batch-c"), None);
    }
}
