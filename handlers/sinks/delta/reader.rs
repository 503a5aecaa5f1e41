//! Reads a changelog table back: used by `fanout changelog`, the quickstart summary and the
//! tests. Reads the Parquet files of the current version directly (no DataFusion).

use bytes::Bytes;
use deltalake::arrow::array::RecordBatch;
use deltalake::parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use deltalake::{DeltaTableError, ObjectStore, Path};
use object_store::ObjectStoreExt;
use std::collections::HashMap;
use url::Url;

/// One changelog row (the columns a reader usually needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRow {
    pub operation: String,
    pub delete_kind: Option<String>,
    pub id: String,
    pub partition_key: String,
    pub lsn: Option<i64>,
    pub ts: Option<i64>,
    pub document: Option<String>,
    pub function: String,
    pub invocation_id: String,
}

pub struct ChangelogSnapshot {
    pub version: u64,
    pub files: usize,
    pub rows: Vec<ChangelogRow>,
}

/// One of the table's Parquet files, read whole and decoded batch by batch.
pub async fn read_data_file(
    store: &dyn ObjectStore,
    path: &Path,
) -> Result<ParquetRecordBatchReader, DeltaTableError> {
    let bytes: Bytes = store.get(path).await?.bytes().await?;
    Ok(ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .with_batch_size(8192)
        .build()?)
}

pub async fn read_changelog(
    url: Url,
    storage_options: HashMap<String, String>,
) -> Result<ChangelogSnapshot, DeltaTableError> {
    let table = super::table::open(url, storage_options).await?;
    let store = table.object_store();
    let paths: Vec<_> = table
        .snapshot()?
        .log_data()
        .into_iter()
        .map(|f| f.object_store_path())
        .collect();
    let mut rows = Vec::new();
    for path in &paths {
        for batch in read_data_file(store.as_ref(), path).await? {
            collect_rows(&batch?, &mut rows);
        }
    }
    Ok(ChangelogSnapshot {
        version: table.version().unwrap_or_default(),
        files: paths.len(),
        rows,
    })
}

fn collect_rows(batch: &RecordBatch, out: &mut Vec<ChangelogRow>) {
    out.extend(super::scan::rows_of(
        batch,
        &super::scan::RowFilter::default(),
    ));
}

/// What a changelog holds, at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangelogSummary {
    pub rows: usize,
    pub by_operation: std::collections::BTreeMap<String, usize>,
    pub distinct_ids: usize,
    /// Documents whose newest change (highest lsn, then `_ts`) is not a delete.
    pub live_documents: usize,
    /// Rows sharing an (id, partition key, lsn) with another row: must be 0.
    pub duplicate_rows: usize,
}

impl ChangelogSnapshot {
    pub fn summary(&self) -> ChangelogSummary {
        use std::collections::{BTreeMap, HashMap, HashSet};
        let mut by_operation = BTreeMap::new();
        let mut newest: HashMap<(&str, &str), (i64, i64, &str)> = HashMap::new();
        let mut seen = HashSet::new();
        let mut duplicate_rows = 0;
        for r in &self.rows {
            *by_operation.entry(r.operation.clone()).or_insert(0) += 1;
            if r.lsn.is_some() && !seen.insert((r.id.as_str(), r.partition_key.as_str(), r.lsn)) {
                duplicate_rows += 1;
            }
            let key = (r.id.as_str(), r.partition_key.as_str());
            let version = (
                r.lsn.unwrap_or(-1),
                r.ts.unwrap_or(-1),
                r.operation.as_str(),
            );
            newest
                .entry(key)
                .and_modify(|v| {
                    if (version.0, version.1) > (v.0, v.1) {
                        *v = version
                    }
                })
                .or_insert(version);
        }
        ChangelogSummary {
            rows: self.rows.len(),
            by_operation,
            distinct_ids: newest.len(),
            live_documents: newest.values().filter(|v| v.2 != "delete").count(),
            duplicate_rows,
        }
    }
}
