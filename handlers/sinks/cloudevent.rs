//! CloudEvents 1.0 for changes: one event per change, deletes included, shared by every way
//! out to an event stream (the Event Hubs output binding, AMQP, Kafka).
//!
//! Structured mode (default): the body is the whole event as JSON. Binary mode: the body is
//! `data` and every other attribute travels as a `ce_`-prefixed property (Kafka headers, AMQP
//! application properties; Event Hubs maps one onto the other, so consumers see the same names
//! whichever protocol produced the event).
//! Written with serde_json rather than the `cloudevents-sdk` crate: the format is a dozen
//! fields, and the SDK would pull its own HTTP/AMQP/Kafka integrations into the build.

use crate::change::projection::FieldSelection;
use crate::change::{Change, DocPath, Operation};
use crate::problem::{Problem, Problems};
use crate::sinks::{BatchContext, RouteContext};
use serde_json::{Value, json};

/// How an event is laid out on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventMode {
    /// The body is the whole event (`application/cloudevents+json`).
    #[default]
    Structured,
    /// The body is `data`; the other attributes are `ce_` properties / headers.
    Binary,
}

/// One change as an event, ready for any transport.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvent {
    /// The CloudEvents `id` (stable across re-deliveries).
    pub id: String,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// `ce_` attributes (binary mode only), in a fixed order.
    pub properties: Vec<(String, String)>,
}

impl EncodedEvent {
    /// Bytes on the wire before transport framing: body plus properties.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// The CloudEvents content type of a structured-mode event.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The `format = { ... }` table of the event stream sinks (AMQP, Kafka).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    /// `structured` (default) or `binary`.
    #[serde(default)]
    pub mode: EventMode,
    /// CloudEvents `source`; default `/cosmosdb/{database}/{container}` from function.json.
    pub source: Option<String>,
    /// `type` is `{type_prefix}.created|updated|deleted`.
    pub type_prefix: Option<String>,
    /// Fields for `data` (`/`-paths); empty: the whole document without system properties.
    #[serde(default)]
    pub fields: Vec<String>,
}

pub const DEFAULT_TYPE_PREFIX: &str = "com.microsoft.cosmosdb.document";

impl EventSettings {
    /// Checks the `format` table and parses it, with `default_source` for a missing
    /// `source`. Problems are located under `format`.
    pub fn validate(&self, default_source: &str) -> Result<EventFormat, Vec<Problem>> {
        let mut problems = Problems::default();
        let fields: Vec<DocPath> = self
            .fields
            .iter()
            .filter_map(|f| problems.take("format.fields", DocPath::parse(f)))
            .collect();
        if self.type_prefix.as_deref() == Some("") {
            problems.push(
                "format.type_prefix",
                "must not be empty (leave it out for the default)",
            );
        }
        problems.into_result(|| EventFormat {
            source: self
                .source
                .clone()
                .unwrap_or_else(|| default_source.to_string()),
            type_prefix: self
                .type_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_TYPE_PREFIX.into()),
            fields: FieldSelection::new(&fields),
        })
    }
}

/// The settings every event-stream sink shares (Event Hubs over AMQP, Kafka), checked and
/// parsed once: which key each event is sent with, and the CloudEvents layout. The sinks'
/// tables spell them the same way: `partitioning`, `partition_key`, `format = { ... }`.
#[derive(Debug, Clone)]
pub struct EventStream {
    pub partitioning: Partitioning,
    pub key: EventKey,
    pub format: EventFormat,
    pub mode: EventMode,
}

impl EventStream {
    /// An event-stream sink's validation: its own problems (`own`, as its `check` found them)
    /// and the shared settings', all reported together; `Ok` holds the parsed stream.
    pub fn validate_sink(
        own: Vec<String>,
        partitioning: Partitioning,
        partition_key: Option<&str>,
        settings: &EventSettings,
        ctx: &RouteContext,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Problems::here(own);
        let stream = problems.take_all(Self::validate(partitioning, partition_key, settings, ctx));
        problems.into_result(|| stream.expect("parsed when nothing is wrong"))
    }

    pub fn validate(
        partitioning: Partitioning,
        partition_key: Option<&str>,
        settings: &EventSettings,
        ctx: &RouteContext,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Problems::default();
        let path = partition_key.and_then(|p| problems.take("partition_key", DocPath::parse(p)));
        if partition_key.is_some() && partitioning == Partitioning::None {
            problems.push(
                "partition_key",
                "has no effect with `partitioning = \"none\"`: remove one of them",
            );
        }
        let format = problems.take_all(settings.validate(&ctx.event_source));
        let format = problems.into_result(|| format.expect("parsed when nothing is wrong"))?;
        Ok(EventStream {
            partitioning,
            key: EventKey::new(partitioning, path),
            format,
            mode: settings.mode,
        })
    }
}

/// Which key an event is sent with: the key decides the partition, and order holds per key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// The change's partition key value (or the `partition_key` path): same key, same
    /// partition, in order.
    #[default]
    Key,
    /// Event Hubs over AMQP: the key's hash picks the partition on our side and events go to
    /// that partition id, many keys per batch (full batches, far fewer sends). Same order per
    /// key as `key` while the hub's partition count stays the same. Kafka: the same as `key`
    /// (the client always hashes keys itself).
    Hash,
    /// No key: the service spreads events over partitions (round robin); no order across events.
    None,
}

/// Picks the key of each change's event.
#[derive(Debug, Clone, Default)]
pub struct EventKey {
    partitioning: Partitioning,
    path: Option<Vec<String>>,
}

impl EventKey {
    /// `path`: a `/`-path in the document to key by instead of the Cosmos partition key. A
    /// change without a document (a hard delete) or without that field is keyed by its Cosmos
    /// partition key.
    pub fn new(partitioning: Partitioning, path: Option<DocPath>) -> Self {
        Self {
            partitioning,
            path: path.map(|p| p.segments().to_vec()),
        }
    }

    pub fn of(&self, change: &Change) -> Option<String> {
        if self.partitioning == Partitioning::None {
            return None;
        }
        let from_path = self.path.as_ref().and_then(|p| {
            let v = crate::change::projection::lookup(change.document.as_ref()?, p)?;
            Some(match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        });
        Some(from_path.unwrap_or_else(|| change.partition_key.as_key_string()))
    }
}

/// Settings shared by every way out to an event stream.
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

    /// The event in `mode`, serialized.
    pub fn encode(&self, ctx: &BatchContext, change: &Change, mode: EventMode) -> EncodedEvent {
        let mut event = self.event(ctx, change);
        let id = event["id"].as_str().unwrap_or_default().to_string();
        match mode {
            EventMode::Structured => EncodedEvent {
                id,
                content_type: STRUCTURED_CONTENT_TYPE,
                body: serde_json::to_vec(&event).expect("JSON values serialize"),
                properties: Vec::new(),
            },
            EventMode::Binary => {
                let obj = event.as_object_mut().expect("object");
                let data = obj.remove("data").unwrap_or(Value::Null);
                obj.remove("datacontenttype");
                let properties = obj
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (format!("ce_{k}"), v)
                    })
                    .collect();
                EncodedEvent {
                    id,
                    content_type: "application/json",
                    body: serde_json::to_vec(&data).expect("JSON values serialize"),
                    properties,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{DeleteKind, PartitionKey};

    fn ctx() -> BatchContext {
        crate::testing::batch_context("orders")
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
            ..upsert.clone()
        };
        let d = format.event(&ctx(), &delete);
        assert_eq!(d["type"], "com.example.order.deleted");
        assert_eq!(d["cosmosdeletekind"], "hard");
        assert_eq!(d["data"], json!({"id": "o1", "partitionKey": ["c1"]}));
        assert_ne!(d["id"], e["id"]);

        // Binary mode: the body is `data`, the attributes are `ce_` properties.
        let b = format.encode(&ctx(), &upsert, EventMode::Binary);
        assert_eq!(b.content_type, "application/json");
        assert_eq!(
            serde_json::from_slice::<Value>(&b.body).unwrap(),
            json!({"id": "o1", "total": 5})
        );
        let props: std::collections::HashMap<_, _> = b.properties.iter().cloned().collect();
        assert_eq!(props["ce_id"], r#"orders:["c1"]:o1:7"#);
        assert_eq!(props["ce_specversion"], "1.0");
        assert_eq!(props["ce_type"], "com.example.order.updated");
        assert_eq!(props["ce_time"], "2025-04-09T04:46:10Z");
        assert!(!props.contains_key("ce_data") && !props.contains_key("ce_datacontenttype"));
        // Structured mode: the body is the whole event.
        let s = format.encode(&ctx(), &upsert, EventMode::Structured);
        assert_eq!(s.content_type, STRUCTURED_CONTENT_TYPE);
        assert_eq!(serde_json::from_slice::<Value>(&s.body).unwrap(), e);
        assert!(s.properties.is_empty());
    }
}
