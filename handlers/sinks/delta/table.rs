//! The changelog table I/O: open or create the table once, keep it in memory, and append
//! batches exactly once using Delta application transactions (`txn` actions).
//!
//! Idempotency: each batch is identified by its first change (id, partition key, lsn): a
//! re-delivery from the same change feed checkpoint starts with the same change, even if the
//! host cut the batch differently. The table records, per batch identity, the highest lsn it
//! holds (`txn.version`); a re-delivery appends only changes with a higher lsn, usually none.
//! Two writers racing on the same batch conflict on the txn and the loser re-checks.

use super::schema::{PARTITION_COLUMN, delta_columns, encode};
use crate::change::Change;
use crate::sinks::BatchContext;
use chrono::Utc;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::SaveMode;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use tokio::sync::Mutex;
use url::Url;

/// How long the table remembers batch identities (the dedup window for re-deliveries and
/// replays). Older identities expire so the table state does not grow without bound.
pub const TXN_RETENTION: &str = "interval 30 days";

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub rows_written: usize,
    pub rows_already_present: usize,
    pub table_version: Option<u64>,
}

pub struct ChangelogTable {
    url: Url,
    storage_options: HashMap<String, String>,
    table: Mutex<Option<DeltaTable>>,
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
pub fn batch_app_id(ctx: &BatchContext, sink: &str, first: &Change) -> String {
    let mut h = Sha256::new();
    h.update(first.id.as_bytes());
    h.update([0]);
    h.update(first.partition_key.to_wire().as_bytes());
    h.update([0]);
    h.update(first.lsn.unwrap_or(-1).to_le_bytes());
    let digest = hex::encode(&h.finalize()[..16]);
    format!("fanout/{}/{sink}/{digest}", ctx.function)
}

impl ChangelogTable {
    pub fn new(url: Url, storage_options: HashMap<String, String>) -> Self {
        Self {
            url,
            storage_options,
            table: Mutex::new(None),
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    fn builder(&self) -> Result<DeltaTableBuilder, DeltaTableError> {
        Ok(DeltaTableBuilder::from_url(self.url.clone())?
            .with_storage_options(self.storage_options.clone()))
    }

    async fn open_or_create(&self) -> Result<DeltaTable, DeltaTableError> {
        if self.url.scheme() == "file"
            && let Ok(path) = self.url.to_file_path()
        {
            std::fs::create_dir_all(&path).map_err(|source| DeltaTableError::Io { source })?;
        }
        let mut table = self.builder()?.build()?;
        if table.verify_deltatable_existence().await? {
            table.load().await?;
            return Ok(table);
        }
        let created = CreateBuilder::new()
            .with_location(self.url.as_str())
            .with_storage_options(self.storage_options.clone())
            .with_columns(delta_columns())
            .with_partition_columns([PARTITION_COLUMN])
            .with_save_mode(SaveMode::Ignore)
            .with_comment(
                "Cosmos DB change feed changelog written by fanout (see docs/changelog.md)",
            )
            .with_configuration_property(
                TableProperty::SetTransactionRetentionDuration,
                Some(TXN_RETENTION),
            )
            .await;
        match created {
            Ok(table) => Ok(table),
            // Another writer created it first: use theirs.
            Err(_) => self.builder()?.load().await,
        }
    }

    /// Appends the changes not yet in the table, in one commit.
    pub async fn append(
        &self,
        ctx: &BatchContext,
        sink: &str,
        changes: &[&Change],
    ) -> Result<AppendOutcome, DeltaTableError> {
        let Some(first) = changes.first() else {
            return Ok(AppendOutcome {
                rows_written: 0,
                rows_already_present: 0,
                table_version: None,
            });
        };
        let mut guard = self.table.lock().await;
        if guard.is_none() {
            *guard = Some(self.open_or_create().await?);
        }
        let table = guard.as_mut().expect("just set");
        let result = Self::append_to(table, ctx, sink, first, changes).await;
        if result.is_err() {
            // The in-memory state may be behind or half-updated: reload on the next batch.
            *guard = None;
        }
        result
    }

    async fn append_to(
        table: &mut DeltaTable,
        ctx: &BatchContext,
        sink: &str,
        first: &Change,
        changes: &[&Change],
    ) -> Result<AppendOutcome, DeltaTableError> {
        // Catch up with other writers (incremental: only new log entries are read).
        table.update_state().await?;
        // Changes from the feed always carry an lsn. A batch with a change that has none (hand-
        // made input) is identified by its whole fingerprint instead: only the exact same batch
        // is recognised again, and nothing is skipped on a guess.
        let lsn_less = changes.iter().any(|c| c.lsn.is_none());
        let app_id = if lsn_less {
            format!("fanout/{}/{sink}/batch-{}", ctx.function, ctx.fingerprint)
        } else {
            batch_app_id(ctx, sink, first)
        };
        let recorded = table
            .snapshot()?
            .transaction_version(table.log_store().as_ref(), &app_id)
            .await?;
        let fresh: Vec<&Change> = match recorded {
            None => changes.to_vec(),
            Some(_) if lsn_less => Vec::new(),
            Some(upto) => changes
                .iter()
                .copied()
                .filter(|c| c.lsn.is_some_and(|l| l > upto))
                .collect(),
        };
        let already = changes.len() - fresh.len();
        if fresh.is_empty() {
            return Ok(AppendOutcome {
                rows_written: 0,
                rows_already_present: already,
                table_version: table.version(),
            });
        }
        let version = fresh
            .iter()
            .filter_map(|c| c.lsn)
            .max()
            .unwrap_or(0)
            .max(recorded.unwrap_or(0));
        let batch = encode(ctx, &fresh, Utc::now()).map_err(DeltaTableError::Generic)?;
        let txn = Transaction::new_with_last_update(
            &app_id,
            version,
            Some(Utc::now().timestamp_millis()),
        );
        let mut writer = RecordBatchWriter::for_table(table)?
            .with_commit_properties(CommitProperties::default().with_application_transaction(txn));
        writer.write(batch).await?;
        let committed = writer.flush_and_commit(table).await?;
        Ok(AppendOutcome {
            rows_written: fresh.len(),
            rows_already_present: already,
            table_version: Some(committed),
        })
    }
}
