//! Reading the changelog back with a filter, file by file: files whose statistics (min / max
//! of `id`, `partition_key`, `ts`, written for every file: `STATS_COLUMNS`) cannot hold a
//! matching row are not read at all, so one document's history or restore reads a few files
//! of a large table. Rows reach the caller one at a time; nothing holds the table.

use super::reader::{ChangelogRow, read_data_file};
use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::Int64Type;
use deltalake::{DeltaTableBuilder, DeltaTableError};
use serde_json::Value;
use std::collections::HashMap;
use url::Url;

/// Which rows to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowFilter {
    pub id: Option<String>,
    /// The wire form (`["c1"]`).
    pub partition_key: Option<String>,
    /// Only changes with `_ts` at or before this (epoch seconds).
    pub ts_at_most: Option<i64>,
    /// Leave the `document` column out of the rows (a pass that needs only versions).
    pub without_documents: bool,
}

impl RowFilter {
    fn matches(&self, id: &str, pk: &str, ts: Option<i64>) -> bool {
        self.id.as_deref().is_none_or(|want| want == id)
            && self.partition_key.as_deref().is_none_or(|want| want == pk)
            && self.ts_at_most.is_none_or(|t| ts.is_some_and(|ts| ts <= t))
    }

    /// Whether a file with these statistics may hold a matching row (no statistics: yes).
    pub fn may_match(&self, stats: Option<&Value>) -> bool {
        let Some(stats) = stats else {
            return true;
        };
        let (min, max) = (&stats["minValues"], &stats["maxValues"]);
        let within = |column: &str, want: &Option<String>| match (
            want,
            min[column].as_str(),
            max[column].as_str(),
        ) {
            (Some(w), Some(lo), Some(hi)) => {
                // A writer may truncate string statistics: a maximum that is a prefix of the
                // value bounds nothing.
                w.as_str() >= lo && (w.as_str() <= hi || w.starts_with(hi))
            }
            _ => true,
        };
        let early_enough = match (self.ts_at_most, min["ts"].as_i64()) {
            (Some(t), Some(lo)) => lo <= t,
            _ => true,
        };
        within("id", &self.id) && within("partition_key", &self.partition_key) && early_enough
    }
}

/// What a scan read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScanStats {
    /// The table version read (0 for a table that does not exist).
    pub version: u64,
    pub files: usize,
    pub files_read: usize,
    pub rows_matched: u64,
}

/// Hands every matching row of the table's current version (or of `version`) to `on_rows`,
/// a record batch's worth at a time (it may wait: the scan waits with it). A table that does
/// not exist holds no rows.
pub async fn scan<E: From<DeltaTableError>>(
    url: Url,
    storage_options: HashMap<String, String>,
    version: Option<u64>,
    filter: &RowFilter,
    mut on_rows: impl AsyncFnMut(Vec<ChangelogRow>) -> Result<(), E>,
) -> Result<ScanStats, E> {
    let mut table = DeltaTableBuilder::from_url(url)?
        .with_storage_options(storage_options)
        .build()?;
    if !table.verify_deltatable_existence().await? {
        return Ok(ScanStats::default());
    }
    match version {
        Some(v) => table.load_version(v).await?,
        None => table.load().await?,
    }
    let store = table.object_store();
    let files: Vec<_> = table
        .snapshot()?
        .log_data()
        .into_iter()
        .map(|f| {
            let stats = f
                .stats()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok());
            (f.object_store_path(), filter.may_match(stats.as_ref()))
        })
        .collect();
    let mut out = ScanStats {
        version: table.version().unwrap_or_default(),
        files: files.len(),
        ..ScanStats::default()
    };
    for (path, may_match) in files {
        if !may_match {
            continue;
        }
        out.files_read += 1;
        for batch in read_data_file(store.as_ref(), &path).await? {
            let matched = rows_of(&batch.map_err(DeltaTableError::from)?, filter);
            out.rows_matched += matched.len() as u64;
            if !matched.is_empty() {
                on_rows(matched).await?;
            }
        }
    }
    Ok(out)
}

/// The matching rows of one record batch of a changelog data file.
pub(super) fn rows_of(batch: &RecordBatch, filter: &RowFilter) -> Vec<ChangelogRow> {
    let text = |name: &str| {
        batch
            .column_by_name(name)
            .map(|c| c.as_string::<i32>().clone())
    };
    let long = |name: &str| {
        batch
            .column_by_name(name)
            .map(|c| c.as_primitive::<Int64Type>().clone())
    };
    let (op, dk, id, pk, doc, func, inv) = (
        text("operation"),
        text("delete_kind"),
        text("id"),
        text("partition_key"),
        text("document"),
        text("function"),
        text("invocation_id"),
    );
    let (lsn, ts) = (long("lsn"), long("ts"));
    let get = |a: &Option<deltalake::arrow::array::StringArray>, i: usize| {
        a.as_ref()
            .filter(|a| a.is_valid(i))
            .map(|a| a.value(i).to_string())
    };
    let num = |a: &Option<deltalake::arrow::array::Int64Array>, i: usize| {
        a.as_ref().filter(|a| a.is_valid(i)).map(|a| a.value(i))
    };
    let (Some(ids), Some(pks)) = (&id, &pk) else {
        return Vec::new();
    };
    let mut matched = Vec::new();
    for i in 0..batch.num_rows() {
        if !filter.matches(ids.value(i), pks.value(i), num(&ts, i)) {
            continue;
        }
        matched.push(ChangelogRow {
            operation: get(&op, i).unwrap_or_default(),
            delete_kind: get(&dk, i),
            id: ids.value(i).to_string(),
            partition_key: pks.value(i).to_string(),
            lsn: num(&lsn, i),
            ts: num(&ts, i),
            document: if filter.without_documents {
                None
            } else {
                get(&doc, i)
            },
            function: get(&func, i).unwrap_or_default(),
            invocation_id: get(&inv, i).unwrap_or_default(),
        });
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn files_are_skipped_only_when_their_statistics_rule_a_match_out() {
        let stats = json!({
            "minValues": {"id": "o100", "partition_key": "[\"c1\"]", "ts": 1000},
            "maxValues": {"id": "o200", "partition_key": "[\"c5\"]", "ts": 2000},
        });
        let f = |id: Option<&str>, pk: Option<&str>, ts: Option<i64>| RowFilter {
            id: id.map(str::to_string),
            partition_key: pk.map(str::to_string),
            ts_at_most: ts,
            without_documents: false,
        };
        // (filter, may match)
        let cases = [
            (f(None, None, None), true),
            (f(Some("o150"), None, None), true),
            (f(Some("o099"), None, None), false),
            (f(Some("o3"), None, None), false),
            (f(None, Some("[\"c3\"]"), None), true),
            (f(None, Some("[\"c9\"]"), None), false),
            (f(None, None, Some(999)), false),
            (f(None, None, Some(1000)), true),
        ];
        for (i, (filter, want)) in cases.iter().enumerate() {
            assert_eq!(filter.may_match(Some(&stats)), *want, "case {i}");
        }
        assert!(f(Some("x"), None, None).may_match(None));
        // A truncated maximum bounds nothing past its prefix.
        let truncated = json!({"minValues": {"id": "a"}, "maxValues": {"id": "o2"}});
        assert!(f(Some("o2zzz"), None, None).may_match(Some(&truncated)));
    }

    #[test]
    fn rows_match_on_every_field_given() {
        let f = RowFilter {
            id: Some("o1".into()),
            partition_key: Some("[\"c1\"]".into()),
            ts_at_most: Some(10),
            without_documents: false,
        };
        assert!(f.matches("o1", "[\"c1\"]", Some(10)));
        assert!(!f.matches("o1", "[\"c1\"]", Some(11)));
        assert!(!f.matches("o1", "[\"c1\"]", None));
        assert!(!f.matches("o2", "[\"c1\"]", Some(1)));
        assert!(!f.matches("o1", "[\"c2\"]", Some(1)));
    }
}
