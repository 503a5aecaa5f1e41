//! The changelog's latest state per document, for `verify`: the newest row of each (partition
//! key, id) by (lsn, `_ts`), the document gone when that row is a delete. Read file by file,
//! keeping a version per document and the body only of the documents whose fields are
//! compared, so memory grows with the documents, not the rows.

use super::DeltaSink;
use super::reader::read_data_file;
use crate::change::projection::without_system_properties;
use crate::change::{Change, DeleteKind, Operation, PartitionKey};
use crate::sinks::SinkError;
use crate::sinks::state::{
    Expected, FieldsOf, Held, Listing, Origin, SinkState, document_key, parse_document_key,
    repair_context,
};
use async_trait::async_trait;
use deltalake::DeltaTableBuilder;
use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::Int64Type;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

/// Newest row seen for a document: version, whether it is a delete, its body if kept.
struct Newest {
    version: (i64, i64),
    delete: bool,
    document: Option<String>,
}

fn fold(batch: &RecordBatch, fields_of: FieldsOf<'_>, newest: &mut HashMap<String, Newest>) {
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
    let (Some(id), Some(pk), Some(op)) = (text("id"), text("partition_key"), text("operation"))
    else {
        return;
    };
    let (doc, lsn, ts) = (text("document"), long("lsn"), long("ts"));
    let num = |a: &Option<deltalake::arrow::array::Int64Array>, i: usize| {
        a.as_ref()
            .filter(|a| a.is_valid(i))
            .map_or(-1, |a| a.value(i))
    };
    for i in 0..batch.num_rows() {
        let key = document_key(pk.value(i), id.value(i));
        let version = (num(&lsn, i), num(&ts, i));
        // A later row of the same version wins (it was written after).
        if newest.get(&key).is_some_and(|n| n.version > version) {
            continue;
        }
        let document = if fields_of(&key) {
            doc.as_ref()
                .filter(|d| d.is_valid(i))
                .map(|d| d.value(i).to_string())
        } else {
            None
        };
        newest.insert(
            key,
            Newest {
                version,
                delete: op.value(i) == "delete",
                document,
            },
        );
    }
}

#[async_trait]
impl SinkState for DeltaSink {
    fn expect(&self, change: &Change) -> Result<Expected, String> {
        Ok(Expected {
            key: document_key(&change.partition_key.to_wire(), &change.id),
            version: change.version_key(),
            fields: change
                .document
                .as_ref()
                .map(without_system_properties)
                .unwrap_or_default(),
        })
    }

    async fn list(
        &self,
        _expected: &[&str],
        fields_of: FieldsOf<'_>,
    ) -> Result<Listing, SinkError> {
        let table = self.table();
        let unreadable = |e: deltalake::DeltaTableError| {
            SinkError::transient(format!("reading the changelog {}", table.url())).with_source(e)
        };
        let mut delta = DeltaTableBuilder::from_url(table.url().clone())
            .map_err(unreadable)?
            .with_storage_options(table.storage_options().clone())
            .build()
            .map_err(unreadable)?;
        if !delta
            .verify_deltatable_existence()
            .await
            .map_err(unreadable)?
        {
            // Nothing was ever written: the table holds no document.
            return Ok(Listing::default());
        }
        delta.load().await.map_err(unreadable)?;
        let store = delta.object_store();
        let paths: Vec<_> = delta
            .snapshot()
            .map_err(unreadable)?
            .log_data()
            .into_iter()
            .map(|f| f.object_store_path())
            .collect();
        let mut newest = HashMap::new();
        for path in &paths {
            for batch in read_data_file(store.as_ref(), path)
                .await
                .map_err(unreadable)?
            {
                let batch = batch.map_err(|e| unreadable(e.into()))?;
                fold(&batch, fields_of, &mut newest);
            }
        }
        let held: BTreeMap<String, Held> = newest
            .into_iter()
            .filter(|(_, n)| !n.delete)
            .map(|(key, n)| {
                let fields = n.document.map(|d| {
                    serde_json::from_str::<Map<String, Value>>(&d)
                        .map(|m| without_system_properties(&m))
                        .unwrap_or_default()
                });
                (
                    key,
                    Held {
                        version: n.version,
                        fields,
                    },
                )
            })
            .collect();
        Ok(Listing {
            held,
            extras_unchecked: None,
        })
    }

    fn traces_keys(&self) -> bool {
        true
    }

    fn document_of(&self, key: &str) -> Option<Origin> {
        parse_document_key(key).map(|(pk, id)| Origin::Document(pk, id))
    }

    async fn remove(&self, function: &str, key: &str, held: (i64, i64)) -> Result<bool, SinkError> {
        let (pk, id) = parse_document_key(key)
            .ok_or_else(|| SinkError::permanent(format!("`{key}` is not a changelog key")))?;
        let partition_key = PartitionKey::from_wire(&pk)
            .ok_or_else(|| SinkError::permanent(format!("`{pk}` is not a partition key")))?;
        let change = Change {
            operation: Operation::Delete,
            delete_kind: Some(DeleteKind::Hard),
            id,
            partition_key,
            // One lsn after what the table holds (see `SinkState::remove`); the time of the
            // repair, not of the last update: the changelog cannot know when the document
            // was deleted, only that it was by now.
            lsn: Some(held.0 + 1),
            ts: Some(chrono::Utc::now().timestamp().max(held.1)),
            etag: None,
            document: None,
        };
        let ctx = repair_context(function, key);
        // An append-only table needs no guard: a newer change already there (or arriving
        // later) is newer than this delete by (lsn, `_ts`) and stays the latest state.
        self.table().append(&ctx, &self.name, &[&change]).await?;
        Ok(true)
    }

    fn rewrites_same_version(&self) -> bool {
        false
    }
}
