//! The changelog table's state and the rows of its commits. The table is opened (or created)
//! once and kept in memory; a group's rows are chosen here ([`prepare_group`]) and committed
//! by the writer ([`super::writer`]), directly or through delta-rs.
//!
//! Exactly once: a change `(partition key, id, lsn)` is written once, however the host cuts
//! its re-deliveries. Cosmos DB delivers the changes of one logical partition in lsn order
//! (the lsn is the physical partition's sequence number, and a logical partition lives in one
//! physical partition, splits included), so the table records, per partition key, the highest
//! lsn it holds: a Delta `txn` action `fanout/cosmosdb/{database}/{container}/pk/{digest}`
//! (the monitored container: every function reading it shares the marks) whose `version` is
//! that lsn. A change above its key's mark is new. A change at the mark is new when only its
//! own group of batches reached that lsn and it is not in the group yet (one transactional
//! batch gives several documents of a key the same lsn: a key and an lsn do not name one
//! change); at a mark the table already held, it is looked up exactly like a change below
//! the mark. A change below the mark is
//! either a re-delivery (a re-cut batch with several documents of one key) or a change the
//! table never got (a replay of something dead-lettered earlier; an original that lost the
//! race against its own re-delivery): it is looked up exactly in the rows of its `change_date`
//! partition ([`ExactRows`]), never skipped on a guess. The marks live in the Delta log, so
//! they hold across restarts (checkpoints keep them) and across writers: two writers
//! appending to the same key at once conflict on its `txn`, and the loser re-checks.
//!
//! Batches with a change that has no lsn (hand-made input; the in-memory emulator's items)
//! are identified as a whole, by a `txn` per batch fingerprint, as before. For batches with
//! lsns, a `txn` per batch (by its first change) is still recorded and honoured, so tables
//! written by earlier versions keep recognising their batches.
//!
//! Memory: the in-memory `txn` index holds one entry (about 50 bytes) per partition key
//! written within the transaction retention (30 days): 1M keys is about 50 MB. Exact lookups
//! hold the identities of at most three `change_date` partitions (about 40 bytes a row), and
//! only once a change below its key's mark arrived.

use super::error;
use super::schema::{ChangelogSchema, PARTITION_COLUMN, conform, table_arrow_schema};
use super::txn_index::TxnIndex;
use crate::change::Change;
use crate::sinks::BatchContext;
use crate::sinks::SinkError;
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
pub fn table_url(location: &str, app_root: &Path) -> Result<Url, crate::storage::LocationError> {
    crate::storage::Location::parse(location, Default::default(), app_root).map(|l| l.url().clone())
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
    /// `fanout/cosmosdb/{database}/{container}`: the prefix of this batch's per-partition-key
    /// marks.
    pub scope: String,
    pub batch: RecordBatch,
}

/// The `txn` id holding the highest lsn the table has for one partition key.
pub fn key_mark_id(scope: &str, partition_key_wire: &str) -> String {
    let digest = Sha256::digest(partition_key_wire.as_bytes());
    format!("{scope}/pk/{}", hex::encode(&digest[..16]))
}

/// The digest of one change's identity, for exact lookups.
pub fn row_digest(partition_key_wire: &str, id: &str, lsn: i64) -> u128 {
    let mut h = Sha256::new();
    h.update(partition_key_wire.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    h.update([0]);
    h.update(lsn.to_le_bytes());
    u128::from_le_bytes(h.finalize()[..16].try_into().expect("16 bytes"))
}

/// The change identities `(partition key, id, lsn)` the table holds, per `change_date`
/// partition, read from its data files (three columns) when a change at or below its key's
/// mark must be looked up exactly, and kept up to date with this process's own commits. At
/// most [`ExactRows::MAX_DAYS`] partitions are held (least recently used out): about 40 bytes
/// per row of those days.
#[derive(Debug, Default)]
pub struct ExactRows {
    /// `change_date` partition (days since the epoch; `None`: every partition, for rows with
    /// no `_ts`) -> identities, and when it was last used.
    days: HashMap<Option<i32>, (std::collections::HashSet<u128>, u64)>,
    clock: u64,
}

impl ExactRows {
    pub const MAX_DAYS: usize = 3;

    /// Whether the table holds the row: None when its partition is not loaded.
    pub fn lookup(&self, day: Option<i32>, digest: u128) -> Option<bool> {
        if let Some((all, _)) = self.days.get(&None) {
            return Some(all.contains(&digest));
        }
        self.days.get(&day).map(|(rows, _)| rows.contains(&digest))
    }

    /// Reads the identities of the given partitions.
    pub async fn load(
        &mut self,
        table: &DeltaTable,
        days: &std::collections::BTreeSet<Option<i32>>,
    ) -> Result<(), DeltaTableError> {
        use deltalake::parquet::arrow::ProjectionMask;
        use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        use object_store::ObjectStoreExt;
        let store = table.object_store();
        let files: Vec<(Option<i32>, deltalake::Path)> = table
            .snapshot()?
            .log_data()
            .into_iter()
            .map(|f| (file_day(&f.path()), f.object_store_path()))
            .collect();
        for day in days {
            self.clock += 1;
            let mut rows = std::collections::HashSet::new();
            for (_, path) in files.iter().filter(|(d, _)| day.is_none() || d == day) {
                let bytes = store.get(path).await?.bytes().await?;
                let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
                let roots = builder.parquet_schema().root_schema().get_fields();
                let wanted: Vec<usize> = ["partition_key", "id", "lsn"]
                    .iter()
                    .filter_map(|n| roots.iter().position(|f| f.name() == *n))
                    .collect();
                let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
                for batch in builder.with_projection(mask).build()? {
                    rows.extend(row_keys(&batch?).into_iter().flatten().map(|k| k.digest()));
                }
            }
            self.days.insert(*day, (rows, self.clock));
        }
        while self.days.len() > Self::MAX_DAYS {
            let oldest = *self
                .days
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(d, _)| d)
                .expect("not empty");
            self.days.remove(&oldest);
        }
        Ok(())
    }

    /// Records rows this process just committed, in the partitions that are loaded.
    pub fn add_batch(&mut self, batch: &RecordBatch) {
        for k in row_keys(batch).into_iter().flatten() {
            for day in [Some(k.day), None] {
                if let Some((rows, _)) = self.days.get_mut(&day) {
                    rows.insert(k.digest());
                }
            }
        }
    }
}

/// `change_date=2026-12-01/part-....parquet` -> days since the epoch.
fn file_day(path: &str) -> Option<i32> {
    let value = path
        .split('/')
        .find_map(|p| p.strip_prefix("change_date="))?;
    let date = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
    Some((date - chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() as i32)
}

/// One row's identity.
#[derive(Debug, Clone, Copy)]
struct RowKey<'a> {
    pk: &'a str,
    id: &'a str,
    lsn: i64,
    /// The row's `change_date` (days since the epoch).
    day: i32,
    /// Whether `day` comes from `_ts` (a re-delivery has the same), not from ingestion.
    dated: bool,
}

impl RowKey<'_> {
    fn digest(&self) -> u128 {
        row_digest(self.pk, self.id, self.lsn)
    }

    /// The partition an exact lookup must read.
    fn lookup_day(&self) -> Option<i32> {
        self.dated.then_some(self.day)
    }
}

/// Per row: its identity when it has an lsn.
fn row_keys(batch: &RecordBatch) -> Vec<Option<RowKey<'_>>> {
    let (Some(pk), Some(id), Some(lsn)) = (
        batch.column_by_name("partition_key"),
        batch.column_by_name("id"),
        batch.column_by_name("lsn"),
    ) else {
        return vec![None; batch.num_rows()];
    };
    let (pk, id, lsn) = (
        pk.as_string::<i32>(),
        id.as_string::<i32>(),
        lsn.as_primitive::<Int64Type>(),
    );
    let day = batch
        .column_by_name(PARTITION_COLUMN)
        .and_then(|c| c.as_primitive_opt::<deltalake::arrow::datatypes::Date32Type>());
    let ts = batch
        .column_by_name("ts")
        .and_then(|c| c.as_primitive_opt::<Int64Type>());
    (0..batch.num_rows())
        .map(|i| {
            lsn.is_valid(i).then(|| RowKey {
                pk: pk.value(i),
                id: id.value(i),
                lsn: lsn.value(i),
                day: day.filter(|d| d.is_valid(i)).map_or(0, |d| d.value(i)),
                dated: day.is_some() && ts.is_some_and(|t| t.is_valid(i)),
            })
        })
        .collect()
}

/// Per append, which rows to write; and the marks raised, `(txn id, lsn)`.
pub type Selected = (Vec<Vec<bool>>, Vec<(String, i64)>);

/// Which rows of each append are new, given each partition key's mark (the highest lsn the
/// table holds for it, or None) and exact lookups. Pure: the rule of the module doc, in feed
/// order across the group (a later append sees the marks the earlier ones raised and the rows
/// they wrote). Returns the keep mask per append and the marks raised, `(txn id, lsn)`, to
/// record with the commit; or the partitions an exact lookup needs that are not loaded.
pub fn select_new_rows(
    appends: &[(&PendingAppend, &RecordBatch)],
    mark: &dyn Fn(&str) -> Option<i64>,
    exact: &dyn Fn(Option<i32>, u128) -> Option<bool>,
) -> Result<Selected, std::collections::BTreeSet<Option<i32>>> {
    let mut raised: HashMap<String, (Option<i64>, i64)> = HashMap::new();
    let mut in_group: std::collections::HashSet<u128> = Default::default();
    let mut unloaded = std::collections::BTreeSet::new();
    let mut masks = Vec::with_capacity(appends.len());
    for (append, batch) in appends {
        let mut keep = Vec::with_capacity(batch.num_rows());
        for key in row_keys(batch) {
            let Some(key) = key else {
                keep.push(true);
                continue;
            };
            let txn = key_mark_id(&append.scope, key.pk);
            let (recorded, high) = match raised.get(&txn) {
                Some(&(recorded, high)) => (recorded, Some(high)),
                None => (mark(&txn), None),
            };
            let current = high.or(recorded);
            let digest = key.digest();
            let new = match current {
                None => true,
                Some(m) if key.lsn > m => true,
                // At the mark. Several documents of one partition key share an lsn when one
                // transactional batch wrote them, so (key, lsn) does not name one change:
                // (key, id, lsn) does. Already in this group: a duplicate. Reached only by
                // this group (the table's own mark is lower): new. Otherwise looked up.
                Some(m) if key.lsn == m && in_group.contains(&digest) => false,
                Some(m) if key.lsn == m && recorded.is_none_or(|r| r < m) => true,
                // Below the mark: a re-delivery, or a change the table never got (a replay,
                // an original that lost the race to its re-delivery). Looked up exactly.
                Some(_) if in_group.contains(&digest) => false,
                Some(_) => match exact(key.lookup_day(), digest) {
                    Some(held) => !held,
                    None => {
                        unloaded.insert(key.lookup_day());
                        false
                    }
                },
            };
            if new {
                let high = current.map_or(key.lsn, |m| m.max(key.lsn));
                raised.insert(txn, (recorded, high));
                in_group.insert(digest);
            }
            keep.push(new);
        }
        masks.push(keep);
    }
    if !unloaded.is_empty() {
        return Err(unloaded);
    }
    let mut marks: Vec<(String, i64)> = raised
        .into_iter()
        .filter(|(_, (recorded, high))| recorded.is_none_or(|r| *high > r))
        .map(|(txn, (_, high))| (txn, high))
        .collect();
    marks.sort();
    Ok((masks, marks))
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

/// One group, ready to commit: the rows each append adds, the `txn` actions to record with
/// them, and one outcome per append (its version filled in once the commit lands).
pub struct PreparedGroup {
    pub outcomes: Vec<AppendOutcome>,
    pub txns: Vec<Transaction>,
    /// The new rows, conformed to the table's schema, one batch per append that has any.
    pub batches: Vec<RecordBatch>,
}

impl PreparedGroup {
    /// Once the commit landed: the outcomes, with the version that holds them; `exact` learns
    /// the rows (never before: a commit that failed must not make them look present).
    pub fn landed(mut self, version: Option<u64>, exact: &mut ExactRows) -> Vec<AppendOutcome> {
        for b in &self.batches {
            exact.add_batch(b);
        }
        let batches = self.batches.len();
        for o in &mut self.outcomes {
            o.table_version = version;
            o.batches_in_commit = batches;
        }
        self.outcomes
    }
}

/// Chooses every pending batch's new rows (the rule of the module doc) and the `txn` actions
/// recording them: one per partition-key mark raised, one per batch. `current` is the newest version this process knows the log holds: an exact lookup reads
/// data files, so the table's file list is brought up to it first.
pub async fn prepare_group(
    table: &mut DeltaTable,
    current: Option<u64>,
    index: &TxnIndex,
    appends: &[PendingAppend],
    exact: &mut ExactRows,
) -> Result<PreparedGroup, SinkError> {
    let recorded: Vec<Option<i64>> = {
        let snapshot = table.snapshot()?;
        let log_store = table.log_store();
        // The in-memory index answers; delta-rs (a log replay each) only when it is incomplete.
        try_join_all(appends.iter().map(|a| {
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
        .await?
    };
    // The batch identities first (exact batches, tables of earlier versions), then the
    // per-partition-key marks on what is left.
    let by_batch: Vec<(RecordBatch, i64)> = appends
        .iter()
        .zip(&recorded)
        .map(|(append, recorded)| fresh_rows(append, *recorded))
        .collect::<Result<_, _>>()?;
    let marks = key_marks(table, index, appends).await?;
    let mark = |txn: &str| marks.get(txn).copied().flatten();
    let pairs: Vec<(&PendingAppend, &RecordBatch)> = appends
        .iter()
        .zip(by_batch.iter().map(|(b, _)| b))
        .collect();
    let (masks, raised) = loop {
        let lookup = |day: Option<i32>, digest: u128| exact.lookup(day, digest);
        match select_new_rows(&pairs, &mark, &lookup) {
            Ok(selected) => break selected,
            Err(days) => {
                tracing::info!(table = %table.table_url(), partitions = days.len(), "changes below their key's newest lsn (a re-cut re-delivery, a replay): reading the change identities of their partitions");
                // The snapshot may be behind this process's own direct commits: the files
                // they added must be read too.
                if table.version() < current {
                    table.update_state().await?;
                }
                exact.load(table, &days).await?;
            }
        }
    };
    let table_schema = table_arrow_schema(table)?;
    let now = Utc::now().timestamp_millis();
    let mut txns: Vec<Transaction> = raised
        .iter()
        .map(|(txn, lsn)| Transaction::new_with_last_update(txn, *lsn, Some(now)))
        .collect();
    let mut outcomes = Vec::new();
    let mut batches = Vec::new();
    for ((append, (fresh, version)), keep) in appends.iter().zip(by_batch).zip(masks) {
        let fresh = filter_record_batch(&fresh, &BooleanArray::from(keep))
            .map_err(|e| error::permanent(e.to_string()))?;
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
                Some(now),
            ));
            batches.push(conform(&fresh, &table_schema)?);
        }
    }
    Ok(PreparedGroup {
        outcomes,
        txns,
        batches,
    })
}

/// Commits a prepared group through delta-rs's `CommitBuilder` (tables direct commits do not
/// implement). Returns the version.
pub async fn commit_with_delta_rs(
    table: &mut DeltaTable,
    group: &PreparedGroup,
) -> Result<Option<u64>, SinkError> {
    if group.batches.is_empty() {
        return Ok(table.version());
    }
    let mut writer = RecordBatchWriter::for_table(table)?
        .with_writer_properties(writer_properties())
        .with_commit_properties(
            CommitProperties::default().with_application_transactions(group.txns.clone()),
        );
    for batch in &group.batches {
        writer.write(batch.clone()).await?;
    }
    Ok(Some(writer.flush_and_commit(table).await?))
}

/// The Parquet settings of changelog files: Snappy, and for the `document` column (about 1 KB
/// of JSON per row, all distinct) no dictionary (it never pays: the encoder builds one, then
/// falls back to plain) and no statistics (never a filter; see [`STATS_COLUMNS`]).
pub fn writer_properties() -> deltalake::parquet::file::properties::WriterProperties {
    use deltalake::parquet::basic::Compression;
    use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
    use deltalake::parquet::schema::types::ColumnPath;
    let document = ColumnPath::from("document");
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_column_dictionary_enabled(document.clone(), false)
        .set_column_statistics_enabled(document, EnabledStatistics::None)
        .build()
}

/// Each partition key's mark, for every key the appends touch: from the in-memory index, or
/// (when the index could not read the whole log) from delta-rs.
async fn key_marks(
    table: &DeltaTable,
    index: &TxnIndex,
    appends: &[PendingAppend],
) -> Result<HashMap<String, Option<i64>>, SinkError> {
    let mut marks: HashMap<String, Option<i64>> = HashMap::new();
    for a in appends {
        for key in row_keys(&a.batch).into_iter().flatten() {
            let txn = key_mark_id(&a.scope, key.pk);
            marks.entry(txn).or_insert_with_key(|t| index.get(t));
        }
    }
    if !index.is_complete() {
        let snapshot = table.snapshot()?;
        let log_store = table.log_store();
        let missing: Vec<String> = marks
            .iter()
            .filter(|(_, m)| m.is_none())
            .map(|(t, _)| t.clone())
            .collect();
        let found = try_join_all(
            missing
                .iter()
                .map(|t| snapshot.transaction_version(log_store.as_ref(), t)),
        )
        .await?;
        for (t, v) in missing.into_iter().zip(found) {
            marks.insert(t, v);
        }
    }
    Ok(marks)
}

/// The rows of a pending append the table does not have yet, and the txn version to record.
fn fresh_rows(
    append: &PendingAppend,
    recorded: Option<i64>,
) -> Result<(RecordBatch, i64), SinkError> {
    let lsns = append
        .batch
        .column_by_name("lsn")
        .ok_or_else(|| error::permanent("encoded batch has no lsn column"))?
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
                .map_err(|e| error::permanent(e.to_string()))?;
            Ok((fresh, max_lsn.max(upto)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Int64Array, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    /// `(partition key, id, lsn)` rows as the encoder lays them out.
    fn append(rows: &[(&str, &str, i64)]) -> PendingAppend {
        let schema = Arc::new(Schema::new(vec![
            Field::new("partition_key", DataType::Utf8, false),
            Field::new("id", DataType::Utf8, false),
            Field::new("lsn", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap();
        PendingAppend {
            app_id: "batch".into(),
            scope: "fanout/orders/changelog".into(),
            batch,
        }
    }

    /// Commits appends one group after another against marks kept here; returns what was
    /// written, in order.
    struct Table {
        marks: HashMap<String, i64>,
        rows: Vec<(String, String, i64)>,
        held: std::collections::HashSet<u128>,
        /// Exact lookups made (each would read a partition).
        lookups: usize,
    }

    impl Table {
        fn new() -> Self {
            Self {
                marks: HashMap::new(),
                rows: Vec::new(),
                held: Default::default(),
                lookups: 0,
            }
        }

        fn commit(&mut self, group: &[PendingAppend]) -> Vec<usize> {
            let pairs: Vec<(&PendingAppend, &RecordBatch)> =
                group.iter().map(|a| (a, &a.batch)).collect();
            let marks = self.marks.clone();
            let lookups = std::cell::Cell::new(0);
            let held = &self.held;
            let (masks, raised) = select_new_rows(&pairs, &|t| marks.get(t).copied(), &|_, d| {
                lookups.set(lookups.get() + 1);
                Some(held.contains(&d))
            })
            .unwrap();
            self.lookups += lookups.get();
            let mut written = Vec::new();
            for (a, keep) in group.iter().zip(masks) {
                let keys = row_keys(&a.batch);
                let mut n = 0;
                for (k, keep) in keys.into_iter().zip(keep) {
                    let k = k.unwrap();
                    if keep {
                        self.rows.push((k.pk.into(), k.id.into(), k.lsn));
                        self.held.insert(k.digest());
                        n += 1;
                    }
                }
                written.push(n);
            }
            for (t, l) in raised {
                let m = self.marks.entry(t).or_insert(l);
                *m = (*m).max(l);
            }
            written
        }
    }

    #[test]
    fn a_re_cut_re_delivery_writes_only_the_new_change() {
        // (group of batches, rows written per batch)
        let cases: Vec<(Vec<PendingAppend>, Vec<usize>)> = vec![
            // [A@10, B@11, C@12] then the re-cut [B@11, C@12, A@15]: 4 distinct changes.
            (
                vec![append(&[("p1", "A", 10), ("p2", "B", 11), ("p3", "C", 12)])],
                vec![3],
            ),
            (
                vec![append(&[("p2", "B", 11), ("p3", "C", 12), ("p1", "A", 15)])],
                vec![1],
            ),
            // Same key, two documents: B@11 is below the key's mark (C@12) and already there.
            (vec![append(&[("p9", "B", 11), ("p9", "C", 12)])], vec![2]),
            (
                vec![append(&[("p9", "B", 11), ("p9", "C", 12), ("p9", "A", 15)])],
                vec![1],
            ),
            // An original and its re-cut re-delivery in one group: each change once.
            (
                vec![
                    append(&[("q", "A", 1), ("q", "B", 2)]),
                    append(&[("q", "B", 2), ("q", "A", 3)]),
                ],
                vec![2, 1],
            ),
            // A replay of a change the table never got (below its key's mark, A@15): written;
            // a replay of one it has (A@10): not.
            (vec![append(&[("p1", "A", 12), ("p1", "A", 10)])], vec![1]),
            // A transactional batch: three documents of one key at one lsn, all written; then
            // a fourth at the same lsn in a later delivery (looked up: not there, written).
            (
                vec![append(&[("t", "A", 5), ("t", "B", 5), ("t", "C", 5)])],
                vec![3],
            ),
            (vec![append(&[("t", "D", 5), ("t", "B", 5)])], vec![1]),
        ];
        let mut table = Table::new();
        for (i, (group, expected)) in cases.iter().enumerate() {
            assert_eq!(&table.commit(group), expected, "case {i}");
        }
        // Looked up: the changes at or below a mark the table already held - B@11 and C@12 of
        // the first re-cut, B@11 and C@12 of the re-cut with two documents of one key, the two
        // replayed changes, and D@5 and B@5 of the later transactional-batch delivery. The
        // group's own B@2 and B@5, C@5 (marks only this group reached) need none.
        assert_eq!(table.lookups, 8, "lookups");
        let mut seen = std::collections::HashSet::new();
        assert!(
            table.rows.iter().all(|r| seen.insert(r.clone())),
            "{:?}",
            table.rows
        );
    }

    #[test]
    fn random_re_cuts_write_every_change_exactly_once() {
        // A latest-version feed of 40 documents over 7 keys; the host delivers from its
        // checkpoint in batches of random size, fails some (re-delivering from the same
        // checkpoint, re-cut, with documents updated meanwhile), and commits the rest.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _round in 0..200 {
            let mut lsn = 0i64;
            // The container: id -> (key, lsn of its latest version).
            let mut latest: HashMap<String, (String, i64)> = HashMap::new();
            let mut table = Table::new();
            let mut checkpoint = 0i64;
            let mut delivered: std::collections::HashSet<(String, String, i64)> =
                Default::default();
            let mut history: Vec<Vec<(String, String, i64)>> = Vec::new();
            for _step in 0..60 {
                // Some writes to the container.
                for _ in 0..next(4) {
                    lsn += 1;
                    let id = format!("d{}", next(40));
                    let key = format!("k{}", id[1..].parse::<u64>().unwrap() % 7);
                    latest.insert(id, (key, lsn));
                }
                // The feed after the checkpoint: each document's latest version, in lsn order.
                let mut feed: Vec<(String, String, i64)> = latest
                    .iter()
                    .filter(|(_, (_, l))| *l > checkpoint)
                    .map(|(id, (k, l))| (k.clone(), id.clone(), *l))
                    .collect();
                feed.sort_by_key(|r| r.2);
                if feed.is_empty() {
                    continue;
                }
                let cut = 1 + next(feed.len() as u64) as usize;
                let batch: Vec<(&str, &str, i64)> = feed[..cut]
                    .iter()
                    .map(|(k, i, l)| (k.as_str(), i.as_str(), *l))
                    .collect();
                // A commit happens; the answer may still fail (re-delivery from the same
                // checkpoint follows).
                table.commit(&[append(&batch)]);
                delivered.extend(feed[..cut].iter().cloned());
                history.push(feed[..cut].to_vec());
                // Now and then a replay of an old batch, or an old batch racing in late.
                if next(5) == 0 {
                    let old = &history[next(history.len() as u64) as usize];
                    let rows: Vec<(&str, &str, i64)> = old
                        .iter()
                        .map(|(k, i, l)| (k.as_str(), i.as_str(), *l))
                        .collect();
                    table.commit(&[append(&rows)]);
                }
                if next(3) != 0 {
                    checkpoint = feed[cut - 1].2;
                }
            }
            let mut seen = std::collections::HashSet::new();
            for r in &table.rows {
                assert!(seen.insert(r.clone()), "duplicate row {r:?}");
            }
            assert_eq!(seen, delivered, "every delivered change is in the table");
        }
    }

    #[test]
    fn the_two_forms_of_the_txn_retention_agree() {
        let days = TXN_RETENTION_MS / (24 * 3600 * 1000);
        assert_eq!(TXN_RETENTION, format!("interval {days} days"));
    }
}
