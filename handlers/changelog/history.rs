//! Every change of one document, oldest first, with the fields each change touched: the
//! support engineer's first question. Pure: rows in, entries out.

use super::version;
use crate::change::projection::SYSTEM_PROPERTIES;
use crate::sinks::delta::ChangelogRow;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    pub partition_key: String,
    /// `_ts` as RFC 3339.
    pub time: Option<String>,
    pub ts: Option<i64>,
    pub lsn: Option<i64>,
    pub operation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_kind: Option<String>,
    /// Fields (as `/`-paths) this change added, removed and changed, against the previous
    /// version; for the first version, every field.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub invocation_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<Value>,
}

/// The history of the documents in `rows` (one id; several partition keys are kept apart),
/// ordered by partition key, then (lsn, `_ts`). A change recorded twice (the same version:
/// say, by two functions sharing the table) is listed once.
pub fn history(mut rows: Vec<ChangelogRow>) -> Vec<HistoryEntry> {
    rows.sort_by(|a, b| {
        (&a.partition_key, version(a), &a.operation).cmp(&(
            &b.partition_key,
            version(b),
            &b.operation,
        ))
    });
    rows.dedup_by(|b, a| {
        a.partition_key == b.partition_key
            && version(a) == version(b)
            && a.operation == b.operation
            && a.lsn.is_some()
    });
    let mut out = Vec::with_capacity(rows.len());
    let mut previous: Option<(String, Map<String, Value>)> = None;
    for row in rows {
        let doc: Option<Map<String, Value>> = row
            .document
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok());
        let empty = Map::new();
        let before = match &previous {
            Some((pk, d)) if *pk == row.partition_key => d,
            _ => &empty,
        };
        let (added, removed, changed) = match &doc {
            Some(d) => diff(before, d),
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        out.push(HistoryEntry {
            partition_key: row.partition_key.clone(),
            time: row
                .ts
                .and_then(|ts| chrono::DateTime::from_timestamp(ts, 0).map(|t| t.to_rfc3339())),
            ts: row.ts,
            lsn: row.lsn,
            operation: row.operation.clone(),
            delete_kind: row.delete_kind.clone(),
            added,
            removed,
            changed,
            invocation_id: row.invocation_id.clone(),
            document: doc.clone().map(Value::Object),
        });
        previous = Some((
            row.partition_key,
            if row.operation == "delete" {
                Map::new()
            } else {
                doc.unwrap_or_default()
            },
        ));
    }
    out
}

/// (added, removed, changed) `/`-paths from `before` to `after`, into nested objects, system
/// properties left out.
fn diff(
    before: &Map<String, Value>,
    after: &Map<String, Value>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    walk("", before, after, &mut out, true);
    out
}

fn walk(
    at: &str,
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    out: &mut (Vec<String>, Vec<String>, Vec<String>),
    top: bool,
) {
    let skip = |k: &str| top && SYSTEM_PROPERTIES.contains(&k);
    let mut names: Vec<&String> = before.keys().chain(after.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        if skip(name) {
            continue;
        }
        let path = format!("{at}/{name}");
        match (before.get(name), after.get(name)) {
            (None, Some(_)) => out.0.push(path),
            (Some(_), None) => out.1.push(path),
            (Some(Value::Object(b)), Some(Value::Object(a))) => walk(&path, b, a, out, false),
            (Some(b), Some(a)) if b != a => out.2.push(path),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(pk: &str, lsn: i64, op: &str, doc: Option<Value>) -> ChangelogRow {
        ChangelogRow {
            operation: op.into(),
            delete_kind: (op == "delete").then(|| "soft".to_string()),
            id: "o1".into(),
            partition_key: pk.into(),
            lsn: Some(lsn),
            ts: Some(1_700_000_000 + lsn),
            document: doc.map(|d| d.to_string()),
            function: "orders".into(),
            invocation_id: format!("inv-{lsn}"),
        }
    }

    #[test]
    fn each_change_names_the_fields_it_touched_oldest_first() {
        let rows = vec![
            row(
                "[\"c1\"]",
                30,
                "delete",
                Some(json!({"status": "x", "deleted": true})),
            ),
            row(
                "[\"c1\"]",
                10,
                "upsert",
                Some(json!({"status": "placed", "a": {"b": 1}, "_etag": "1"})),
            ),
            row(
                "[\"c1\"]",
                20,
                "upsert",
                Some(json!({"status": "paid", "a": {"b": 2}, "note": "n", "_etag": "2"})),
            ),
            // Recorded twice: listed once.
            row(
                "[\"c1\"]",
                20,
                "upsert",
                Some(json!({"status": "paid", "a": {"b": 2}, "note": "n", "_etag": "2"})),
            ),
            row("[\"c2\"]", 5, "upsert", Some(json!({"status": "other"}))),
        ];
        let h = history(rows);
        let got: Vec<String> = h
            .iter()
            .map(|e| {
                format!(
                    "{} {} {} +{} -{} ~{}",
                    e.partition_key,
                    e.lsn.unwrap(),
                    e.operation,
                    e.added.join(","),
                    e.removed.join(","),
                    e.changed.join(",")
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                "[\"c1\"] 10 upsert +/a,/status - ~",
                "[\"c1\"] 20 upsert +/note - ~/a/b,/status",
                "[\"c1\"] 30 delete +/deleted -/a,/note ~/status",
                "[\"c2\"] 5 upsert +/status - ~",
            ]
        );
        assert_eq!(h[0].time.as_deref(), Some("2023-11-14T22:13:30+00:00"));
    }
}
