//! CloudEvents 1.0 for changes, JSON structured mode: one event per change, deletes included.
//! Written with serde_json rather than the `cloudevents-sdk` crate: structured JSON is a
//! dozen fields, and the SDK would pull its own HTTP/AMQP integrations into the build.

use crate::change::projection::FieldSelection;
use crate::change::{Change, Operation};
use crate::sinks::BatchContext;
use serde_json::{Value, json};

/// Settings shared by every way out to Event Hubs.
#[derive(Debug, Clone)]
pub struct EventFormat {
    /// CloudEvents `source`, e.g. `/cosmosdb/<account>/shop/orders`.
    pub source: String,
    /// `type` is `{type_prefix}.created|updated|deleted`.
    pub type_prefix: String,
    /// Document fields to put in `data`; empty: the document minus Cosmos system properties.
    pub fields: FieldSelection,
}

impl EventFormat {
    /// The event id: unique per change and the same on every re-delivery (function, partition
    /// key, id, lsn), so consumers can de-duplicate.
    pub fn event_id(ctx: &BatchContext, change: &Change) -> String {
        format!(
            "{}:{}:{}:{}",
            ctx.function,
            change.partition_key.to_wire(),
            change.id,
            change
                .lsn
                .map(|l| l.to_string())
                .unwrap_or_else(|| format!("ts{}", change.ts.unwrap_or(-1)))
        )
    }

    pub fn event_type(&self, op: Operation) -> String {
        let verb = match op {
            Operation::Create => "created",
            Operation::Replace | Operation::Upsert => "updated",
            Operation::Delete => "deleted",
        };
        format!("{}.{verb}", self.type_prefix)
    }

    /// The event as a JSON object (structured mode).
    pub fn event(&self, ctx: &BatchContext, change: &Change) -> Value {
        let mut event = json!({
            "specversion": "1.0",
            "id": Self::event_id(ctx, change),
            "source": self.source,
            "type": self.event_type(change.operation),
            "subject": change.id,
            "datacontenttype": "application/json",
            "partitionkey": change.partition_key.as_key_string(),
            "cosmosoperation": change.operation.as_str(),
        });
        let obj = event.as_object_mut().expect("object");
        if let Some(t) = change
            .ts
            .and_then(|ts| chrono::DateTime::from_timestamp(ts, 0))
        {
            obj.insert(
                "time".into(),
                Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            );
        }
        if let Some(lsn) = change.lsn {
            obj.insert("cosmoslsn".into(), Value::String(lsn.to_string()));
        }
        if let Some(kind) = change.delete_kind {
            obj.insert(
                "cosmosdeletekind".into(),
                Value::String(kind.as_str().into()),
            );
        }
        let data = match &change.document {
            Some(doc) => Value::Object(self.fields.project(doc)),
            // A hard delete has no body: the event says which document went.
            None => json!({"id": change.id, "partitionKey": change.partition_key.0}),
        };
        obj.insert("data".into(), data);
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{DeleteKind, PartitionKey};

    fn ctx() -> BatchContext {
        BatchContext {
            function: "orders".into(),
            invocation_id: "i".into(),
            fingerprint: "f".into(),
            received_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn events_for_upserts_and_hard_deletes() {
        let format = EventFormat {
            source: "/cosmosdb/acct/shop/orders".into(),
            type_prefix: "com.example.order".into(),
            fields: FieldSelection::default(),
        };
        let upsert = Change {
            operation: Operation::Upsert,
            delete_kind: None,
            id: "o1".into(),
            partition_key: PartitionKey(vec![Some(json!("c1"))]),
            lsn: Some(7),
            ts: Some(1_744_173_970),
            etag: None,
            document: Some(
                json!({"id": "o1", "total": 5, "_rid": "x"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        };
        let e = format.event(&ctx(), &upsert);
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["id"], r#"orders:["c1"]:o1:7"#);
        assert_eq!(e["type"], "com.example.order.updated");
        assert_eq!(e["subject"], "o1");
        assert_eq!(e["time"], "2025-04-09T04:46:10Z");
        assert_eq!(e["partitionkey"], "c1");
        assert_eq!(e["data"], json!({"id": "o1", "total": 5}));
        let delete = Change {
            operation: Operation::Delete,
            delete_kind: Some(DeleteKind::Hard),
            document: None,
            lsn: Some(8),
            ..upsert
        };
        let d = format.event(&ctx(), &delete);
        assert_eq!(d["type"], "com.example.order.deleted");
        assert_eq!(d["cosmosdeletekind"], "hard");
        assert_eq!(d["data"], json!({"id": "o1", "partitionKey": ["c1"]}));
        assert_ne!(d["id"], e["id"]);
    }
}
