//! Direct commits: the group commit's one write to the Delta log, without delta-rs's
//! per-commit transaction machinery.
//!
//! delta-rs's `CommitBuilder` lists `_delta_log/` to find the latest version before every
//! commit, lists it again after to rebuild the snapshot, and (with the default
//! `delta.enableExpiredLogCleanup`) lists it a third time for expired log files: three
//! directory walks per commit whose cost grows with the log (on a local disk, a `statx` per
//! log file each; on ADLS, list requests). The committer does not need any of it: it is the
//! table's writer, it knows the version it last committed, and the log's conditional put
//! (`PutMode::Create` through delta-rs's own log store: create-if-absent on a local disk,
//! `If-None-Match: *` on Azure) tells it when another writer got there first. A commit is
//! therefore the data files' PUTs plus one PUT of `_delta_log/{version}.json`; on a conflict
//! the committer reloads the table, re-checks its group against what the other writer wrote,
//! and tries the next version.
//!
//! Checkpoints and expired-log cleanup follow every `delta.checkpointInterval` versions, in
//! the background: they read the log, which the answer to the host does not wait for. So does
//! compaction's rewriting; its commit (the `remove`s and `add`s) is then made by the committer
//! too, between two group commits, so the process's own writers never conflict.
//!
//! Only for tables whose protocol this writer fully implements: reader version 1, writer
//! version 2 or lower (no table features, no column invariants), the default log store.
//! Anything else goes through delta-rs's `CommitBuilder` unchanged.

use deltalake::kernel::transaction::{CommitData, TransactionError};
use deltalake::kernel::{Action, Transaction};
use deltalake::logstore::{CommitOrBytes, LogStore};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError};
use std::collections::HashMap;

/// Why a table's commits go through delta-rs's `CommitBuilder` instead (None: direct commits
/// are safe).
pub fn why_not_direct(table: &DeltaTable) -> Option<String> {
    let snapshot = match table.snapshot() {
        Ok(s) => s,
        Err(e) => return Some(format!("no snapshot: {e}")),
    };
    if table.log_store().name() != "DefaultLogStore" {
        return Some(format!("log store {}", table.log_store().name()));
    }
    // The kernel keeps the version fields crate-private; the action's own serialization is the
    // protocol as it is in the log.
    let protocol = serde_json::to_value(snapshot.protocol()).unwrap_or_default();
    let reader = protocol["minReaderVersion"].as_i64().unwrap_or(i64::MAX);
    let writer = protocol["minWriterVersion"].as_i64().unwrap_or(i64::MAX);
    if reader > 1 || writer > 2 {
        return Some(format!(
            "protocol reader {reader} / writer {writer} (direct commits implement 1 / 2)"
        ));
    }
    if snapshot.schema().fields().any(|f| {
        f.metadata()
            .keys()
            .any(|k| k.as_str() == "delta.invariants")
    }) {
        return Some("column invariants".into());
    }
    None
}

/// What a direct commit attempt came to.
#[derive(Debug)]
pub enum Outcome {
    Committed,
    /// Another writer committed this version first.
    Conflict,
}

/// The partition columns, as the append operation records them.
pub fn append_operation(table: &DeltaTable) -> Result<DeltaOperation, DeltaTableError> {
    let partition_cols: Vec<String> = table.snapshot()?.metadata().partition_columns().into();
    Ok(DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: (!partition_cols.is_empty()).then_some(partition_cols),
        predicate: None,
    })
}

/// The commit file's bytes, exactly as delta-rs writes them (commitInfo first, then the
/// actions, then the `txn` actions).
pub fn commit_bytes(
    actions: Vec<Action>,
    txns: Vec<Transaction>,
    operation: DeltaOperation,
) -> Result<bytes::Bytes, DeltaTableError> {
    CommitData::new(actions, operation, HashMap::new(), txns)
        .get_bytes()
        .map_err(DeltaTableError::from)
}

/// Writes `_delta_log/{version}.json` if no other writer has.
pub async fn write(
    log_store: &dyn LogStore,
    version: u64,
    bytes: bytes::Bytes,
) -> Result<Outcome, DeltaTableError> {
    match log_store
        .write_commit_entry(
            version,
            CommitOrBytes::LogBytes(bytes),
            uuid::Uuid::new_v4(),
        )
        .await
    {
        Ok(()) => Ok(Outcome::Committed),
        Err(TransactionError::VersionAlreadyExists(_)) => Ok(Outcome::Conflict),
        Err(e) => Err(e.into()),
    }
}

/// Writes the checkpoint at `version` (the table is brought to it first) and removes expired
/// log files, as delta-rs's post-commit hook would. Returns the table at `version`.
pub async fn checkpoint(
    mut table: DeltaTable,
    version: u64,
) -> Result<DeltaTable, DeltaTableError> {
    if table.version().is_none_or(|v| v < version) {
        table.update_incremental(Some(version)).await?;
    }
    deltalake::checkpoints::create_checkpoint(&table, None).await?;
    let cleanup = {
        use deltalake::table::config::TablePropertiesExt as _;
        table
            .snapshot()?
            .table_config()
            .enable_expired_log_cleanup()
    };
    if cleanup {
        deltalake::checkpoints::cleanup_metadata(&table, None).await?;
    }
    Ok(table)
}
