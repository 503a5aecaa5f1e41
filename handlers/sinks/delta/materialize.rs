//! The latest-state table (`mode = "state"`): one row per live document, materialized from a
//! changelog table. This is what the Spark MERGE step and Fabric mirroring give, with
//! neither.
//!
//! How. The state table is partitioned by `bucket`, a stable hash of the partition key
//! (`buckets` of them). A refresh:
//! - reads only the changelog rows added since its cursor: the `add` actions of the commits
//!   after it, with compaction's rewrites (`dataChange = false`) left out;
//! - keeps the newest change per (partition key, id), by (lsn, `_ts`), a delete winning a tie;
//! - rewrites only the buckets those keys fall in. Each touched bucket's files are read, a
//!   change replaces a row only when it is newer (so replays and backfills never go back in
//!   time), deletes remove the row, and the bucket is written back as one file.
//!
//! A refresh is one commit: the removed files, the new ones, and the cursor, a Delta `txn`
//! (`fanout/materialize`, version = the changelog version applied). So a refresh happens
//! exactly once, and its cost grows with the changed keys' buckets, not with the table.
//!
//! Several instances may refresh at once. Each commit targets exactly the next table version.
//! An instance that loses the race reloads, and then either finds the cursor past what it
//! read (nothing left to do) or starts over from the new state.
//!
//! Rebuilds. A first refresh, or one whose cursor is older than the changelog's oldest
//! commit file (log retention: 7 days), rebuilds from the changelog's current files.
//! Copy-on-write by hand, not delta-rs MERGE: MERGE needs the `datafusion` feature (about 12
//! more minutes of release build, the CI budget), and a bucketed rewrite does the same work
//! for this one shape of update.

use super::reader::{ChangelogRow, read_data_file};
use super::scan::{RowFilter, rows_of};
use deltalake::arrow::array::{
    ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Int64Type, Schema};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, DataType, StructField, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStore, Path};
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use url::Url;

/// The cursor's `txn` app id in the state table.
pub const CURSOR: &str = "fanout/materialize";
pub const BUCKET_COLUMN: &str = "bucket";

/// Where a state table is and what it is made from.
#[derive(Debug, Clone)]
pub struct StateTable {
    pub url: Url,
    pub storage_options: HashMap<String, String>,
    pub changelog: Url,
    pub changelog_options: HashMap<String, String>,
    pub buckets: u32,
    /// The typed columns (the changelog's kind: projected from the document).
    pub columns: super::schema::ChangelogSchema,
}

/// What a refresh did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MaterializeReport {
    /// The changelog version the state table now reflects.
    pub changelog_version: u64,
    pub state_version: Option<u64>,
    /// Rebuilt from the changelog's current files (a first refresh, or a cursor older than
    /// the log's retention).
    pub rebuilt: bool,
    pub changelog_files_read: usize,
    pub changes: usize,
    pub buckets_rewritten: usize,
    pub rows: usize,
    pub bytes_removed: u64,
    pub bytes_added: u64,
}

/// A stable bucket of a partition key (its wire form): the same in every process and version.
pub fn bucket_of(partition_key_wire: &str, buckets: u32) -> i32 {
    let digest = Sha256::digest(partition_key_wire.as_bytes());
    let n = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    (n % u64::from(buckets.max(1))) as i32
}

/// One row of the state table.
#[derive(Debug, Clone, PartialEq)]
struct StateRow {
    partition_key: String,
    id: String,
    version: (i64, i64),
    etag: Option<String>,
    document: Option<String>,
}

/// A document's newest change: (version, delete?, row).
type NewestChange = ((i64, i64), bool, ChangelogRow);
/// The newest change per document.
type Newest = HashMap<(String, String), NewestChange>;

fn fold(newest: &mut Newest, row: ChangelogRow) {
    let version = (row.lsn.unwrap_or(-1), row.ts.unwrap_or(-1));
    let delete = row.operation == "delete";
    let key = (row.partition_key.clone(), row.id.clone());
    match newest.get(&key) {
        Some((v, _, _)) if *v > version => {}
        Some((v, true, _)) if *v == version => {}
        _ => {
            newest.insert(key, (version, delete, row));
        }
    }
}

/// Applies the newest changes of one bucket to its current rows (pure): a change replaces a
/// row only when newer, a delete removes it.
fn apply(current: Vec<StateRow>, changes: Vec<NewestChange>) -> Vec<StateRow> {
    let mut rows: BTreeMap<(String, String), StateRow> = current
        .into_iter()
        .map(|r| ((r.partition_key.clone(), r.id.clone()), r))
        .collect();
    for (version, delete, change) in changes {
        let key = (change.partition_key.clone(), change.id.clone());
        if rows.get(&key).is_some_and(|r| r.version > version) {
            continue;
        }
        if delete {
            rows.remove(&key);
        } else {
            let etag = change.document.as_deref().and_then(|d| {
                serde_json::from_str::<serde_json::Value>(d)
                    .ok()?
                    .get("_etag")?
                    .as_str()
                    .map(str::to_string)
            });
            rows.insert(
                key,
                StateRow {
                    partition_key: change.partition_key,
                    id: change.id,
                    version,
                    etag,
                    document: change.document,
                },
            );
        }
    }
    rows.into_values().collect()
}

fn arrow_schema(typed: &super::schema::ChangelogSchema) -> Arc<Schema> {
    let mut fields = vec![
        Field::new("partition_key", ArrowType::Utf8, false),
        Field::new("id", ArrowType::Utf8, false),
        Field::new("lsn", ArrowType::Int64, true),
        Field::new("ts", ArrowType::Int64, true),
        Field::new("etag", ArrowType::Utf8, true),
        Field::new("document", ArrowType::Utf8, true),
    ];
    fields.extend(typed.typed_arrow_fields());
    fields.push(Field::new(BUCKET_COLUMN, ArrowType::Int32, false));
    Arc::new(Schema::new(fields))
}

fn delta_columns(typed: &super::schema::ChangelogSchema) -> Vec<StructField> {
    let mut columns = vec![
        StructField::new("partition_key", DataType::STRING, false),
        StructField::new("id", DataType::STRING, false),
        StructField::new("lsn", DataType::LONG, true),
        StructField::new("ts", DataType::LONG, true),
        StructField::new("etag", DataType::STRING, true),
        StructField::new("document", DataType::STRING, true),
    ];
    columns.extend(typed.typed_fields());
    columns.push(StructField::new(BUCKET_COLUMN, DataType::INTEGER, false));
    columns
}

fn to_batch(
    rows: &[StateRow],
    bucket: i32,
    typed: &super::schema::ChangelogSchema,
) -> Result<RecordBatch, DeltaTableError> {
    let opt = |v: i64| (v >= 0).then_some(v);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.partition_key.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.id.as_str()),
        )),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| opt(r.version.0)))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| opt(r.version.1)))),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.etag.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.document.as_deref()),
        )),
    ];
    let mut columns = columns;
    if !typed.typed_fields().is_empty() {
        // Projected from each row's document (rows carried over from the old file too).
        let docs: Vec<Option<serde_json::Map<String, serde_json::Value>>> = rows
            .iter()
            .map(|r| {
                r.document
                    .as_deref()
                    .and_then(|d| serde_json::from_str(d).ok())
            })
            .collect();
        let refs: Vec<Option<&serde_json::Map<String, serde_json::Value>>> =
            docs.iter().map(Option::as_ref).collect();
        columns.extend(typed.typed_arrays(&refs));
    }
    columns.push(Arc::new(Int32Array::from(vec![bucket; rows.len()])));
    RecordBatch::try_new(arrow_schema(typed), columns).map_err(DeltaTableError::from)
}

fn from_batch(batch: &RecordBatch, out: &mut Vec<StateRow>) {
    let text = |n: &str| {
        batch
            .column_by_name(n)
            .map(|c| c.as_string::<i32>().clone())
    };
    let long = |n: &str| {
        batch
            .column_by_name(n)
            .map(|c| c.as_primitive::<Int64Type>().clone())
    };
    let (Some(pk), Some(id)) = (text("partition_key"), text("id")) else {
        return;
    };
    let (lsn, ts, etag, doc) = (long("lsn"), long("ts"), text("etag"), text("document"));
    use deltalake::arrow::array::Array;
    let num = |a: &Option<Int64Array>, i: usize| {
        a.as_ref()
            .filter(|a| a.is_valid(i))
            .map_or(-1, |a| a.value(i))
    };
    let s = |a: &Option<StringArray>, i: usize| {
        a.as_ref()
            .filter(|a| a.is_valid(i))
            .map(|a| a.value(i).to_string())
    };
    for i in 0..batch.num_rows() {
        out.push(StateRow {
            partition_key: pk.value(i).to_string(),
            id: id.value(i).to_string(),
            version: (num(&lsn, i), num(&ts, i)),
            etag: s(&etag, i),
            document: s(&doc, i),
        });
    }
}

async fn open_state(t: &StateTable) -> Result<DeltaTable, DeltaTableError> {
    if t.url.scheme() == "file"
        && let Ok(path) = t.url.to_file_path()
    {
        std::fs::create_dir_all(&path).map_err(|source| DeltaTableError::Io { source })?;
    }
    let mut table = DeltaTableBuilder::from_url(t.url.clone())?
        .with_storage_options(t.storage_options.clone())
        .build()?;
    if table.verify_deltatable_existence().await? {
        table.load().await?;
        return Ok(table);
    }
    let created = CreateBuilder::new()
        .with_location(t.url.as_str())
        .with_storage_options(t.storage_options.clone())
        .with_columns(delta_columns(&t.columns))
        .with_partition_columns([BUCKET_COLUMN])
        .with_save_mode(SaveMode::Ignore)
        .with_comment("One row per live Cosmos DB document, materialized by fanout from its changelog (see docs/state-and-restore.md)")
        .await;
    match created {
        Ok(table) => Ok(table),
        Err(_) => {
            let mut table = DeltaTableBuilder::from_url(t.url.clone())?
                .with_storage_options(t.storage_options.clone())
                .build()?;
            table.load().await?;
            Ok(table)
        }
    }
}

/// The data files the commits after `after` (to `through`) added with data changes, or
/// `None` when a commit file is gone (log retention): then a rebuild is needed.
async fn added_since(
    store: &Arc<dyn ObjectStore>,
    after: u64,
    through: u64,
) -> Result<Option<Vec<Path>>, DeltaTableError> {
    let mut files = Vec::new();
    for version in after + 1..=through {
        let path = Path::from(format!("_delta_log/{version:020}.json"));
        let bytes = match store.get(&path).await {
            Ok(got) => got.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| DeltaTableError::Generic(format!("{path}: {e}")))?;
            let add = &action["add"];
            if add["dataChange"].as_bool() == Some(true)
                && let Some(p) = add["path"].as_str()
            {
                files.push(
                    Path::from_url_path(p)
                        .map_err(|e| DeltaTableError::Generic(format!("{path}: {e}")))?,
                );
            }
        }
    }
    Ok(Some(files))
}

/// One refresh: the changelog's changes since the cursor into the state table, in one
/// commit. Returns what it did (nothing, when the cursor is current).
pub async fn materialize(t: &StateTable) -> Result<MaterializeReport, DeltaTableError> {
    const ATTEMPTS: usize = 20;
    for _ in 0..ATTEMPTS {
        // `None`: another instance committed first; start over from its state.
        if let Some(report) = attempt(t).await? {
            return Ok(report);
        }
    }
    Err(DeltaTableError::Generic(format!(
        "the state table {} moved on {ATTEMPTS} times while refreshing",
        t.url
    )))
}

async fn attempt(t: &StateTable) -> Result<Option<MaterializeReport>, DeltaTableError> {
    let mut changelog = DeltaTableBuilder::from_url(t.changelog.clone())?
        .with_storage_options(t.changelog_options.clone())
        .build()?;
    if !changelog.verify_deltatable_existence().await? {
        return Ok(Some(MaterializeReport::default()));
    }
    changelog.load().await?;
    let through = changelog.version().unwrap_or_default();
    let state = open_state(t).await?;
    let snapshot = state.snapshot()?;
    let cursor = snapshot
        .transaction_version(state.log_store().as_ref(), CURSOR)
        .await?
        .map(|v| v as u64);
    let mut report = MaterializeReport {
        changelog_version: through,
        state_version: state.version(),
        ..MaterializeReport::default()
    };
    if cursor.is_some_and(|c| c >= through) {
        return Ok(Some(report));
    }
    let log_store = changelog.object_store();
    let added = match cursor {
        Some(c) => added_since(&log_store, c, through).await?,
        None => None,
    };
    report.rebuilt = added.is_none();
    let files: Vec<Path> = match added {
        Some(files) => files,
        None => changelog
            .snapshot()?
            .log_data()
            .into_iter()
            .map(|f| f.object_store_path())
            .collect(),
    };
    report.changelog_files_read = files.len();
    let mut newest = Newest::new();
    let everything = RowFilter::default();
    for path in &files {
        for batch in read_data_file(log_store.as_ref(), path).await? {
            for row in rows_of(&batch?, &everything) {
                fold(&mut newest, row);
            }
        }
    }
    report.changes = newest.len();
    // The changes by bucket; a rebuild rewrites every bucket the table holds too.
    let mut by_bucket: BTreeMap<i32, Vec<NewestChange>> = BTreeMap::new();
    for ((pk, _), change) in newest {
        by_bucket
            .entry(bucket_of(&pk, t.buckets))
            .or_default()
            .push(change);
    }
    let existing: Vec<_> = snapshot.log_data().into_iter().collect();
    let bucket_of_file = |f: &deltalake::kernel::LogicalFileView| -> Option<i32> {
        f.partition_values_map()
            .get(BUCKET_COLUMN)
            .cloned()
            .flatten()
            .and_then(|v| v.parse().ok())
    };
    let touched: BTreeSet<i32> = if report.rebuilt {
        by_bucket
            .keys()
            .copied()
            .chain(existing.iter().filter_map(bucket_of_file))
            .collect()
    } else {
        by_bucket.keys().copied().collect()
    };
    let store = state.object_store();
    let mut actions = Vec::new();
    let mut writer = RecordBatchWriter::for_table(&state)?;
    for bucket in &touched {
        let mut current = Vec::new();
        for file in existing
            .iter()
            .filter(|f| bucket_of_file(f) == Some(*bucket))
        {
            if !report.rebuilt {
                for batch in read_data_file(store.as_ref(), &file.object_store_path()).await? {
                    from_batch(&batch?, &mut current);
                }
            }
            report.bytes_removed += file.size() as u64;
            actions.push(Action::Remove(file.remove_action(true)));
        }
        let rows = apply(current, by_bucket.remove(bucket).unwrap_or_default());
        report.rows += rows.len();
        report.buckets_rewritten += 1;
        if !rows.is_empty() {
            writer.write(to_batch(&rows, *bucket, &t.columns)?).await?;
        }
    }
    for add in writer.flush().await? {
        report.bytes_added += add.size as u64;
        actions.push(Action::Add(add));
    }
    let properties = CommitProperties::default().with_application_transaction(
        Transaction::new_with_last_update(
            CURSOR,
            through as i64,
            Some(chrono::Utc::now().timestamp_millis()),
        ),
    );
    let committed = CommitBuilder::from(properties)
        .with_max_retries(0)
        .with_actions(actions)
        .build(
            Some(state.snapshot()?),
            state.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(vec![BUCKET_COLUMN.to_string()]),
                predicate: None,
            },
        )
        .await;
    match committed {
        Ok(c) => {
            report.state_version = Some(c.version());
            Ok(Some(report))
        }
        // Someone else committed this version: try again from theirs.
        Err(_) if state_moved(t, state.version()).await? => Ok(None),
        Err(e) => Err(e),
    }
}

/// A state table of the changelog's rows that `filter` picks (`restore --format delta`: the
/// state as of a time, of one partition key or one document), written to `t.url`, which must
/// not hold a table yet. Memory holds the newest change of each document.
pub async fn build_as_of(
    t: &StateTable,
    filter: &RowFilter,
) -> Result<MaterializeReport, DeltaTableError> {
    let probe = DeltaTableBuilder::from_url(t.url.clone())?
        .with_storage_options(t.storage_options.clone())
        .build()?;
    if probe.verify_deltatable_existence().await? {
        return Err(DeltaTableError::Generic(format!(
            "{} holds a table already: restore into a new location",
            t.url
        )));
    }
    let mut newest = Newest::new();
    let stats = super::scan::scan(
        t.changelog.clone(),
        t.changelog_options.clone(),
        None,
        filter,
        async |rows| -> Result<(), DeltaTableError> {
            for row in rows {
                fold(&mut newest, row);
            }
            Ok(())
        },
    )
    .await?;
    let state = open_state(t).await?;
    let mut report = MaterializeReport {
        changelog_version: stats.version,
        rebuilt: true,
        changelog_files_read: stats.files_read,
        changes: newest.len(),
        ..MaterializeReport::default()
    };
    let mut by_bucket: BTreeMap<i32, Vec<NewestChange>> = BTreeMap::new();
    for ((pk, _), change) in newest {
        by_bucket
            .entry(bucket_of(&pk, t.buckets))
            .or_default()
            .push(change);
    }
    let mut writer = RecordBatchWriter::for_table(&state)?;
    for (bucket, changes) in by_bucket {
        let rows = apply(Vec::new(), changes);
        report.rows += rows.len();
        report.buckets_rewritten += 1;
        if !rows.is_empty() {
            writer.write(to_batch(&rows, bucket, &t.columns)?).await?;
        }
    }
    let mut actions = Vec::new();
    for add in writer.flush().await? {
        report.bytes_added += add.size as u64;
        actions.push(Action::Add(add));
    }
    let committed = CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .build(
            Some(state.snapshot()?),
            state.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(vec![BUCKET_COLUMN.to_string()]),
                predicate: None,
            },
        )
        .await?;
    report.state_version = Some(committed.version());
    Ok(report)
}

async fn state_moved(t: &StateTable, before: Option<u64>) -> Result<bool, DeltaTableError> {
    let mut table = DeltaTableBuilder::from_url(t.url.clone())?
        .with_storage_options(t.storage_options.clone())
        .build()?;
    table.load().await?;
    Ok(table.version() != before)
}

/// Refreshes one state table in the background: every `interval`, and soon after a delivery
/// asks ([`Refresher::poke`]). Started on the first ask, so start-up stays fast. One refresh
/// at a time per process; other processes are handled by the commit protocol.
pub struct Refresher {
    table: StateTable,
    interval: std::time::Duration,
    wake: tokio::sync::Notify,
    started: std::sync::Once,
}

impl Refresher {
    pub fn new(table: StateTable, interval: std::time::Duration) -> Self {
        Self {
            table,
            interval,
            wake: tokio::sync::Notify::new(),
            started: std::sync::Once::new(),
        }
    }

    pub fn interval(&self) -> std::time::Duration {
        self.interval
    }

    /// Asks for a refresh soon (starting the background loop on the first ask).
    pub fn poke(self: &Arc<Self>) {
        self.started.call_once(|| {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.run().await });
        });
        self.wake.notify_one();
    }

    async fn run(&self) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.interval) => {}
            }
            // Let a burst of deliveries land first: one refresh takes them all.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            match materialize(&self.table).await {
                Ok(r) if r.changes > 0 => tracing::info!(
                    table = %self.table.url,
                    changelog_version = r.changelog_version,
                    changes = r.changes,
                    buckets = r.buckets_rewritten,
                    rows = r.rows,
                    "state table refreshed"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    table = %self.table.url,
                    error = %e,
                    "state table refresh failed; the next one retries (the changelog holds every change)"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: &str, lsn: i64, op: &str, status: &str) -> ((i64, i64), bool, ChangelogRow) {
        (
            (lsn, 100),
            op == "delete",
            ChangelogRow {
                operation: op.into(),
                delete_kind: None,
                id: id.into(),
                partition_key: "[\"c1\"]".into(),
                lsn: Some(lsn),
                ts: Some(100),
                document: Some(format!(
                    "{{\"id\":\"{id}\",\"status\":\"{status}\",\"_etag\":\"e{lsn}\"}}"
                )),
                function: "orders".into(),
                invocation_id: "i".into(),
            },
        )
    }

    fn row(id: &str, lsn: i64) -> StateRow {
        StateRow {
            partition_key: "[\"c1\"]".into(),
            id: id.into(),
            version: (lsn, 100),
            etag: None,
            document: Some(format!("{{\"id\":\"{id}\"}}")),
        }
    }

    #[test]
    fn a_change_replaces_a_row_only_when_newer_and_deletes_remove_it() {
        let current = vec![row("a", 10), row("b", 10), row("c", 10), row("d", 10)];
        let changes = vec![
            change("a", 12, "upsert", "newer"),
            // An older change (a replay, a backfill) never goes back in time.
            change("b", 5, "upsert", "older"),
            change("c", 11, "delete", ""),
            // A delete older than the row: the row stays.
            change("d", 9, "delete", ""),
            change("e", 1, "upsert", "new"),
        ];
        let out = apply(current, changes);
        let got: Vec<(String, i64, Option<String>)> = out
            .iter()
            .map(|r| (r.id.clone(), r.version.0, r.etag.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_string(), 12, Some("e12".to_string())),
                ("b".to_string(), 10, None),
                ("d".to_string(), 10, None),
                ("e".to_string(), 1, Some("e1".to_string())),
            ]
        );
    }

    #[test]
    fn the_newest_change_per_document_wins_and_a_delete_wins_a_tie() {
        let mut newest = Newest::new();
        for (_, _, r) in [
            change("a", 3, "upsert", "x"),
            change("a", 7, "upsert", "y"),
            change("a", 5, "upsert", "z"),
            change("b", 4, "upsert", "x"),
            change("b", 4, "delete", ""),
            change("b", 4, "upsert", "x"),
        ] {
            fold(&mut newest, r);
        }
        assert_eq!(
            newest[&("[\"c1\"]".to_string(), "a".to_string())].0,
            (7, 100)
        );
        assert!(newest[&("[\"c1\"]".to_string(), "b".to_string())].1);
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket_of("[\"c1\"]", 64), bucket_of("[\"c1\"]", 64));
        let used: BTreeSet<i32> = (0..1000)
            .map(|i| bucket_of(&format!("[\"c{i}\"]"), 64))
            .collect();
        assert_eq!(used.len(), 64);
        assert!(used.iter().all(|b| (0..64).contains(b)));
    }
}
