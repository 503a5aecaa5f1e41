//! The changelog table's state and its commits. The table is opened (or created) once and kept
//! in memory; each group commit first catches up with other writers incrementally (only new
//! log entries are read), and delta-rs writes a checkpoint every `checkpoint_interval` commits.
//!
//! Idempotency: each batch is identified by its first change (id, partition key, lsn): a
//! re-delivery from the same change feed checkpoint starts with the same change, even if the
//! host cut the batch differently. The table records, per batch identity, the highest lsn it
//! holds (a Delta `txn` action, `txn.version`); a re-delivery appends only changes with a
//! higher lsn, usually none. A group commit carries one `txn` per batch in the group. Two
//! writers racing on the same batch conflict on the txn and the loser re-checks.

use super::error::ChangelogError;
use super::schema::{ChangelogSchema, PARTITION_COLUMN, conform, table_arrow_schema};
use super::txn_index::TxnIndex;
use crate::change::Change;
use crate::sinks::BatchContext;
use chrono::Utc;
use deltalake::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::datatypes::Int64Type;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::SaveMode;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use futures::future::try_join_all;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use url::Url;

/// How long the table remembers batch identities (the dedup window for re-deliveries and
/// replays). Older identities expire so the table state does not grow without bound.
pub const TXN_RETENTION: &str = "interval 30 days";
/// The same window for the in-memory index (kept equal to `TXN_RETENTION` by a test).
pub const TXN_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;
/// How long commit files are kept (older ones are removed when a checkpoint is written). The
/// changelog rows, not time travel, are the history; 7 days bounds the log's file count.
pub const LOG_RETENTION: &str = "interval 7 days";

/// The columns with min/max statistics (data skipping): the ones readers filter on. Not
/// `document` (large, never a useful filter), which would make every commit and checkpoint
/// heavier.
pub const STATS_COLUMNS: &str =
    "operation,delete_kind,id,partition_key,lsn,ts,function,ingest_time";

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub rows_written: usize,
    pub rows_already_present: usize,
    pub table_version: Option<u64>,
    /// How many invocations' batches the commit held (group commit).
    pub batches_in_commit: usize,
}

/// Where the table is and how it is made.
#[derive(Debug, Clone)]
pub struct TableSettings {
    pub url: Url,
    pub storage_options: HashMap<String, String>,
    pub schema: ChangelogSchema,
    pub checkpoint_interval: u64,
}

/// Turns the configured location into a table URL; local paths are resolved against the app
/// root. No I/O: the folder is created on the first append, so start-up stays fast and a
/// storage problem is a (retried) delivery failure, not a start-up crash.
pub fn table_url(location: &str, app_root: &Path) -> Result<Url, String> {
    if location.contains("://") {
        return Url::parse(location).map_err(|e| format!("`{location}` is not a valid URL: {e}"));
    }
    let path = std::path::absolute(app_root.join(location))
        .map_err(|e| format!("cannot resolve {location}: {e}"))?;
    Url::from_directory_path(&path)
        .map_err(|()| format!("{} is not an absolute path", path.display()))
}

/// The identity of a batch for the table's txn records.
pub fn batch_app_id(ctx: &BatchContext, sink: &str, changes: &[&Change]) -> String {
    // Changes from the feed always carry an lsn. A batch with a change that has none (hand-
    // made input) is identified by its whole fingerprint instead: only the exact same batch
    // is recognised again, and nothing is skipped on a guess.
    let Some(first) = changes
        .first()
        .filter(|_| changes.iter().all(|c| c.lsn.is_some()))
    else {
        return format!("fanout/{}/{sink}/batch-{}", ctx.function, ctx.fingerprint);
    };
    let mut h = Sha256::new();
    h.update(first.id.as_bytes());
    h.update([0]);
    h.update(first.partition_key.to_wire().as_bytes());
    h.update([0]);
    h.update(first.lsn.unwrap_or(-1).to_le_bytes());
    let digest = hex::encode(&h.finalize()[..16]);
    format!("fanout/{}/{sink}/{digest}", ctx.function)
}

/// One invocation's rows, encoded, waiting for a commit.
#[derive(Debug, Clone)]
pub struct PendingAppend {
    pub app_id: String,
    pub batch: RecordBatch,
}

fn builder(settings: &TableSettings) -> Result<DeltaTableBuilder, DeltaTableError> {
    Ok(DeltaTableBuilder::from_url(settings.url.clone())?
        .with_storage_options(settings.storage_options.clone()))
}

/// Opens an existing table (commands and readers).
pub async fn open(
    url: Url,
    storage_options: HashMap<String, String>,
) -> Result<DeltaTable, DeltaTableError> {
    DeltaTableBuilder::from_url(url)?
        .with_storage_options(storage_options)
        .load()
        .await
}

/// Opens the table, creating it if it does not exist. Several processes may race to create
/// it: the commit of version 0 succeeds for exactly one, the others load theirs.
pub async fn open_or_create(settings: &TableSettings) -> Result<DeltaTable, DeltaTableError> {
    if settings.url.scheme() == "file"
        && let Ok(path) = settings.url.to_file_path()
    {
        std::fs::create_dir_all(&path).map_err(|source| DeltaTableError::Io { source })?;
    }
    let mut table = builder(settings)?.build()?;
    if table.verify_deltatable_existence().await? {
        table.load().await?;
        return Ok(table);
    }
    let interval = settings.checkpoint_interval.to_string();
    let created = CreateBuilder::new()
        .with_location(settings.url.as_str())
        .with_storage_options(settings.storage_options.clone())
        .with_columns(settings.schema.delta_columns())
        .with_partition_columns([PARTITION_COLUMN])
        .with_save_mode(SaveMode::Ignore)
        .with_comment("Cosmos DB change feed changelog written by fanout (see docs/changelog.md)")
        .with_configuration_property(
            TableProperty::SetTransactionRetentionDuration,
            Some(TXN_RETENTION),
        )
        .with_configuration_property(TableProperty::CheckpointInterval, Some(interval))
        .with_configuration_property(TableProperty::LogRetentionDuration, Some(LOG_RETENTION))
        .with_configuration_property(TableProperty::DataSkippingStatsColumns, Some(STATS_COLUMNS))
        .await;
    match created {
        Ok(table) => Ok(table),
        // Another writer created it first: use theirs.
        Err(_) => open(settings.url.clone(), settings.storage_options.clone()).await,
    }
}

/// Adds the configured typed columns the table lacks (additive schema evolution; a metadata-
/// only commit). Concurrent appends by other writers conflict with it once and retry.
pub async fn evolve_schema(
    table: DeltaTable,
    schema: &ChangelogSchema,
) -> Result<DeltaTable, DeltaTableError> {
    let current = table.snapshot()?.schema();
    let missing: Vec<_> = schema
        .typed_fields()
        .into_iter()
        .filter(|f| current.field(f.name()).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(table);
    }
    tracing::info!(
        table = %table.table_url(),
        columns = ?missing.iter().map(|f| f.name().to_string()).collect::<Vec<_>>(),
        "adding typed columns to the changelog table"
    );
    table.add_columns().with_fields(missing).await
}

/// Appends every pending batch's new rows in one commit that records one `txn` per batch.
/// Returns one outcome per pending append, in order.
pub async fn commit_appends(
    table: &mut DeltaTable,
    index: &TxnIndex,
    appends: &[PendingAppend],
) -> Result<Vec<AppendOutcome>, ChangelogError> {
    let snapshot = table.snapshot()?;
    let log_store = table.log_store();
    // The in-memory index answers; delta-rs (a log replay each) only when it is incomplete.
    let recorded: Vec<Option<i64>> = try_join_all(appends.iter().map(|a| {
        let known = index.get(&a.app_id);
        let ask_log = known.is_none() && !index.is_complete();
        let log_store = log_store.clone();
        async move {
            if ask_log {
                snapshot
                    .transaction_version(log_store.as_ref(), &a.app_id)
                    .await
            } else {
                Ok(known)
            }
        }
    }))
    .await?;
    let table_schema = table_arrow_schema(table)?;
    let mut fresh_batches = Vec::new();
    let mut txns = Vec::new();
    let mut outcomes = Vec::new();
    for (append, recorded) in appends.iter().zip(&recorded) {
        let (fresh, version) = fresh_rows(append, *recorded)?;
        let rows = append.batch.num_rows();
        outcomes.push(AppendOutcome {
            rows_written: fresh.num_rows(),
            rows_already_present: rows - fresh.num_rows(),
            table_version: None,
            batches_in_commit: 0,
        });
        if fresh.num_rows() > 0 {
            txns.push(Transaction::new_with_last_update(
                &append.app_id,
                version,
                Some(Utc::now().timestamp_millis()),
            ));
            fresh_batches.push(conform(&fresh, &table_schema).map_err(ChangelogError::Permanent)?);
        }
    }
    let committed_batches = fresh_batches.len();
    let version = if fresh_batches.is_empty() {
        table.version()
    } else {
        let mut writer = RecordBatchWriter::for_table(table)?.with_commit_properties(
            CommitProperties::default().with_application_transactions(txns),
        );
        for batch in fresh_batches {
            writer.write(batch).await?;
        }
        Some(writer.flush_and_commit(table).await?)
    };
    for o in &mut outcomes {
        o.table_version = version;
        o.batches_in_commit = committed_batches;
    }
    Ok(outcomes)
}

/// The rows of a pending append the table does not have yet, and the txn version to record.
fn fresh_rows(
    append: &PendingAppend,
    recorded: Option<i64>,
) -> Result<(RecordBatch, i64), ChangelogError> {
    let lsns = append
        .batch
        .column_by_name("lsn")
        .ok_or_else(|| ChangelogError::Permanent("encoded batch has no lsn column".into()))?
        .as_primitive::<Int64Type>();
    let max_lsn = lsns.iter().flatten().max().unwrap_or(0);
    match recorded {
        None => Ok((append.batch.clone(), max_lsn)),
        // Rows without an lsn: the identity is the whole batch, which the table has.
        Some(upto) if lsns.null_count() > 0 => Ok((append.batch.slice(0, 0), upto)),
        Some(upto) => {
            let keep: BooleanArray = lsns
                .iter()
                .map(|l| Some(l.is_some_and(|l| l > upto)))
                .collect();
            let fresh = filter_record_batch(&append.batch, &keep)
                .map_err(|e| ChangelogError::Permanent(e.to_string()))?;
            Ok((fresh, max_lsn.max(upto)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_forms_of_the_txn_retention_agree() {
        let days = TXN_RETENTION_MS / (24 * 3600 * 1000);
        assert_eq!(TXN_RETENTION, format!("interval {days} days"));
    }
}
