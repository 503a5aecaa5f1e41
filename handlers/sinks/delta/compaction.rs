//! Compaction without DataFusion: what Spark's OPTIMIZE does, with the Parquet and Delta log
//! APIs directly. Small files of a partition are read back (in the order they were written),
//! rewritten into files of about `target_file_mb`, and swapped in by one commit whose `add`
//! and `remove` actions carry `dataChange = false`: readers and streaming consumers see no new
//! data, and concurrent appends do not conflict with it. If another writer compacted the same
//! files first, the commit fails and the rewritten files are left for `vacuum`.
//!
//! Vacuum deletes files that left the table longer ago than the retention, never shorter
//! than the table's `delta.deletedFileRetentionDuration` unless explicitly forced.

use super::config::CompactionConfig;
use super::error;
use super::reader::read_data_file;
use super::schema::{PARTITION_COLUMN, conform, table_arrow_schema};
use crate::sinks::SinkError;
use chrono::NaiveDate;
use deltalake::DeltaTable;
use deltalake::arrow::array::{ArrayRef, Date32Array, RecordBatch};
use deltalake::arrow::datatypes::Schema;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, LogicalFileView};
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

const MB: u64 = 1024 * 1024;

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub partitions: usize,
    pub files_removed: usize,
    pub files_added: usize,
    pub bytes_removed: u64,
    pub bytes_added: u64,
    pub rows: usize,
    pub version: Option<u64>,
}

impl fmt::Display for CompactionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.files_removed == 0 {
            return write!(f, "nothing to compact");
        }
        write!(
            f,
            "{} small files ({:.1} MB) rewritten as {} ({:.1} MB) in {} partition(s), {} rows, table version {}",
            self.files_removed,
            self.bytes_removed as f64 / MB as f64,
            self.files_added,
            self.bytes_added as f64 / MB as f64,
            self.partitions,
            self.rows,
            self.version.map(|v| v.to_string()).unwrap_or_default()
        )
    }
}

/// One partition's rewrite: groups of small files, each group becoming about one file.
pub struct PartitionPlan {
    pub change_date: String,
    pub bins: Vec<Vec<LogicalFileView>>,
}

/// How small files are grouped for a rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// Every small file of a partition together (`fanout compact`: the fewest files now).
    All,
    /// Size tiers (the background): only files of one tier are rewritten together, and a tier
    /// is rewritten once it holds `min_files` files, so a rewritten file lands a tier up and is
    /// not read again until that tier fills. Each row is rewritten about
    /// log_min_files(small_file_mb / its first file's size) times (2 for 100 KB commits and the
    /// defaults), not once per background compaction of its partition.
    Tiered,
}

/// The size tier of a small file: 0 for the top tier (at least `small / factor`), 1 below
/// that (at least `small / factor²`), and so on.
pub fn tier(size: i64, small: i64, factor: usize) -> u32 {
    let factor = factor.max(2) as i64;
    let mut bound = small / factor;
    let mut tier = 0;
    while size < bound && bound > 0 {
        bound /= factor;
        tier += 1;
    }
    tier
}

/// Partitions with at least `min_files` small files (in one tier, when tiered), and how to
/// pack them. Reads the in-memory file list only.
pub fn plan(
    table: &DeltaTable,
    config: &CompactionConfig,
    min_files: usize,
    packing: Packing,
) -> Vec<PartitionPlan> {
    let Ok(snapshot) = table.snapshot() else {
        return Vec::new();
    };
    let small = (config.small_file_mb * MB) as i64;
    let target = (config.target_file_mb * MB) as i64;
    let mut by_partition: BTreeMap<(String, u32), Vec<LogicalFileView>> = BTreeMap::new();
    for file in snapshot.log_data().iter() {
        if file.size() >= small || file.deletion_vector_descriptor().is_some() {
            continue;
        }
        let Some(Some(date)) = file.partition_values_map().remove(PARTITION_COLUMN) else {
            continue;
        };
        let tier = match packing {
            Packing::All => 0,
            Packing::Tiered => tier(file.size(), small, min_files),
        };
        by_partition.entry((date, tier)).or_default().push(file);
    }
    by_partition
        .into_iter()
        .filter(|(_, files)| files.len() >= min_files)
        .map(|((change_date, _), mut files)| {
            // Oldest first, so the rewritten file keeps the order rows were written in.
            files.sort_by_key(|f| (f.modification_time(), f.path().into_owned()));
            let mut bins: Vec<Vec<LogicalFileView>> = vec![Vec::new()];
            let mut size = 0;
            for file in files {
                if size + file.size() > target && !bins.last().expect("one bin").is_empty() {
                    bins.push(Vec::new());
                    size = 0;
                }
                size += file.size();
                bins.last_mut().expect("one bin").push(file);
            }
            bins.retain(|b| b.len() >= 2);
            PartitionPlan { change_date, bins }
        })
        .filter(|p| !p.bins.is_empty())
        .collect()
}

/// A rewrite whose files are written, waiting for its commit: `remove` and `add` actions
/// (`dataChange = false`) and the paths it removes, planned on the table at `planned_at`.
pub struct Rewrite {
    pub actions: Vec<Action>,
    pub removed: Vec<String>,
    pub operation: DeltaOperation,
    pub report: CompactionReport,
    pub planned_at: Option<u64>,
}

/// Compacts every partition with at least `min_files` small files, in one commit.
pub async fn compact(
    table: &DeltaTable,
    config: &CompactionConfig,
    min_files: usize,
    packing: Packing,
) -> Result<CompactionReport, SinkError> {
    let Some(rewrite) = rewrite(table, config, min_files, packing).await? else {
        return Ok(CompactionReport::default());
    };
    let mut report = rewrite.report;
    let committed = commit_exclusively(
        table.clone(),
        rewrite.actions,
        &rewrite.removed,
        rewrite.operation,
    )
    .await?;
    report.version = Some(committed);
    Ok(report)
}

/// Reads the small files of every partition with at least `min_files` of them and writes
/// them again as larger files; nothing is committed (None: nothing to compact).
pub async fn rewrite(
    table: &DeltaTable,
    config: &CompactionConfig,
    min_files: usize,
    packing: Packing,
) -> Result<Option<Rewrite>, SinkError> {
    let plans = plan(table, config, min_files, packing);
    let mut report = CompactionReport::default();
    if plans.is_empty() {
        return Ok(None);
    }
    let table_schema = table_arrow_schema(table)?;
    let store = table.object_store();
    let mut actions = Vec::new();
    for partition in &plans {
        let day = NaiveDate::parse_from_str(&partition.change_date, "%Y-%m-%d").map_err(|e| {
            error::permanent(format!(
                "partition change_date={}: {e}",
                partition.change_date
            ))
        })?;
        let days = (day - NaiveDate::default()).num_days() as i32;
        report.partitions += 1;
        for bin in &partition.bins {
            let mut writer = RecordBatchWriter::for_table(table)?
                .with_writer_properties(super::table::writer_properties())
                .with_target_file_size(config.target_file_mb * MB);
            for file in bin {
                for batch in read_data_file(store.as_ref(), &file.object_store_path()).await? {
                    let batch = batch.map_err(deltalake::DeltaTableError::from)?;
                    report.rows += batch.num_rows();
                    let batch = with_partition_column(&batch, days)?;
                    writer.write(conform(&batch, &table_schema)?).await?;
                }
                report.files_removed += 1;
                report.bytes_removed += file.size() as u64;
                actions.push(Action::Remove(file.remove_action(false)));
            }
            for mut add in writer.flush().await? {
                add.data_change = false;
                report.files_added += 1;
                report.bytes_added += add.size as u64;
                actions.push(Action::Add(add));
            }
        }
    }
    let predicate = plans
        .iter()
        .map(|p| format!("{PARTITION_COLUMN} = '{}'", p.change_date))
        .collect::<Vec<_>>()
        .join(" OR ");
    let removed: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Remove(r) => Some(r.path.clone()),
            _ => None,
        })
        .collect();
    let operation = DeltaOperation::Optimize {
        predicate: Some(predicate),
        target_size: (config.target_file_mb * MB) as i64,
    };
    Ok(Some(Rewrite {
        actions,
        removed,
        operation,
        report,
        planned_at: table.version(),
    }))
}

/// Commits a rewrite only if every file it removes is still in the table. delta-rs does not
/// treat two commits removing the same file with `dataChange = false` as a conflict, so two
/// compactions of the same files (two instances, or a stale snapshot) would both land and
/// duplicate rows. Each attempt targets exactly the next version (no automatic retries): if
/// another writer got there first, the state is refreshed, the files are checked again, and
/// the commit is retried on top; if one of them is gone, the rewrite is abandoned (its files
/// are left for vacuum).
async fn commit_exclusively(
    mut table: DeltaTable,
    actions: Vec<Action>,
    removed: &[String],
    operation: DeltaOperation,
) -> Result<u64, SinkError> {
    const ATTEMPTS: usize = 100;
    for _ in 0..ATTEMPTS {
        let live: std::collections::HashSet<String> = table
            .snapshot()?
            .log_data()
            .iter()
            .map(|f| f.path().into_owned())
            .collect();
        if let Some(gone) = removed.iter().find(|p| !live.contains(*p)) {
            return Err(error::transient(format!(
                "compaction abandoned: {gone} was already rewritten or removed by another writer"
            )));
        }
        let before = table.version();
        let attempt = CommitBuilder::from(CommitProperties::default())
            .with_max_retries(0)
            .with_actions(actions.clone())
            .build(
                Some(table.snapshot()?),
                table.log_store(),
                operation.clone(),
            )
            .await;
        match attempt {
            Ok(committed) => return Ok(committed.version()),
            Err(e) => {
                table.update_state().await?;
                if table.version() == before {
                    return Err(e.into());
                }
            }
        }
    }
    Err(error::transient(format!(
        "compaction abandoned: the table moved on {ATTEMPTS} times while committing"
    )))
}

/// Files hold no partition column (its value is in the path): put it back for the writer.
fn with_partition_column(batch: &RecordBatch, days: i32) -> Result<RecordBatch, SinkError> {
    let mut fields: Vec<_> = batch.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    if batch.column_by_name(PARTITION_COLUMN).is_none() {
        fields.push(Arc::new(deltalake::arrow::datatypes::Field::new(
            PARTITION_COLUMN,
            deltalake::arrow::datatypes::DataType::Date32,
            false,
        )));
        columns.push(Arc::new(Date32Array::from(vec![days; batch.num_rows()])));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| error::permanent(e.to_string()))
}

/// What a vacuum did (or would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VacuumReport {
    pub dry_run: bool,
    pub files: Vec<String>,
}

/// Deletes files no longer in the table that left it more than `retention_hours` ago
/// (default: the table's `delta.deletedFileRetentionDuration`, 7 days unless set). A shorter
/// retention than the table's is refused unless `force`: readers of older versions and
/// writers with files not yet committed could lose them.
pub async fn vacuum(
    table: DeltaTable,
    retention_hours: Option<u64>,
    dry_run: bool,
    force: bool,
) -> Result<VacuumReport, SinkError> {
    let mut builder = table
        .vacuum()
        .with_dry_run(dry_run)
        .with_enforce_retention_duration(!force);
    if let Some(hours) = retention_hours {
        builder = builder.with_retention_period(chrono::Duration::hours(hours as i64));
    }
    let (_, metrics) = builder.await.map_err(|e| {
        let message = e.to_string();
        if message.to_ascii_lowercase().contains("retention") {
            error::permanent(format!(
                "{message}; pass --force to go below the table's retention (unsafe while readers or writers are active)"
            ))
        } else {
            e.into()
        }
    })?;
    Ok(VacuumReport {
        dry_run: metrics.dry_run,
        files: metrics.files_deleted,
    })
}

/// The optional vacuum after a background compaction, with the table's own retention.
pub async fn vacuum_logged(table: &DeltaTable) {
    let mut table = table.clone();
    let result = match table.update_state().await {
        Ok(()) => vacuum(table.clone(), None, false, false).await,
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(report) => {
            tracing::info!(table = %table.table_url(), files_deleted = report.files.len(), "vacuum")
        }
        Err(e) => tracing::warn!(table = %table.table_url(), error = %e, "vacuum failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_tiers() {
        let small = 16 * MB as i64;
        // (file size, factor, tier)
        let cases = [
            (15 * MB as i64, 16, 0),
            (MB as i64, 16, 0),
            (MB as i64 - 1, 16, 1),
            (100 * 1024, 16, 1),
            (64 * 1024, 16, 1),
            (64 * 1024 - 1, 16, 2),
            (1, 16, 5),
            (0, 16, 6),
            // A factor below 2 behaves as 2.
            (small / 2, 1, 0),
            (small / 2 - 1, 1, 1),
        ];
        for (size, factor, expected) in cases {
            assert_eq!(
                tier(size, small, factor),
                expected,
                "{size} bytes, factor {factor}"
            );
        }
    }

    #[test]
    fn sixteen_files_of_a_tier_make_one_of_the_tier_above() {
        // The background's promise: a rewrite's output leaves its tier, so it is not read
        // again until the tier above fills.
        let small = 16 * MB as i64;
        for size in [10 * 1024, 100 * 1024, 700 * 1024] {
            let t = tier(size, small, 16);
            let merged = size * 16;
            assert!(
                merged >= small || tier(merged, small, 16) < t,
                "{size}: tier {t}, merged {merged} tier {}",
                tier(merged, small, 16)
            );
        }
    }
}
