//! Sinks: where changes go. Every sink has the same parts, in its own folder: `config` (what
//! the routing file says), request building (changes -> the sink's wire format), the I/O
//! service, and error classification for the shared retry loop in `pipeline::retry`.
//!
//! A sink is idempotent: the same change delivered twice leaves the sink as if delivered once.

pub mod azure_search;
pub mod cloudevent;
pub mod delta;
pub mod entra;
pub mod event_hubs;
pub mod kafka;
pub mod redis;

use crate::change::Change;
use crate::change::PartitionKeyPaths;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Per-sink settings as written in the routing file; `type` picks the sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    Delta(delta::DeltaConfig),
    Redis(redis::RedisConfig),
    AzureSearch(azure_search::SearchConfig),
    EventHubs(event_hubs::AmqpConfig),
    EventHubsBinding(event_hubs::BindingConfig),
    Kafka(kafka::KafkaConfig),
}

/// What a sink may know about its route when it is built.
pub struct BuildContext<'a> {
    pub app_root: &'a Path,
    pub partition_key: &'a PartitionKeyPaths,
    pub function: &'a crate::config::FunctionDefinition,
}

impl SinkConfig {
    /// Problems with the settings that can be found without I/O, each saying how to fix it.
    pub fn validate(&self) -> Vec<String> {
        match self {
            SinkConfig::Delta(c) => c.validate(),
            SinkConfig::Redis(c) => c.validate(),
            SinkConfig::AzureSearch(c) => c.validate(),
            SinkConfig::EventHubs(c) => c.validate(),
            SinkConfig::EventHubsBinding(c) => c.validate(),
            SinkConfig::Kafka(c) => c.validate(),
        }
    }

    /// Things worth a look that do not stop start-up (e.g. a projected field the index lacks).
    pub fn warnings(&self, app_root: &Path, partition_key: &PartitionKeyPaths) -> Vec<String> {
        match self {
            SinkConfig::Redis(c) => c.warnings(partition_key.segments()),
            SinkConfig::AzureSearch(c) => match azure_search::missing_fields(c, app_root) {
                Ok(missing) => missing
                    .into_iter()
                    .map(|f| format!("the projection writes `{f}`, which the index definition does not have: the service will refuse those documents"))
                    .collect(),
                Err(e) => vec![e],
            },
            _ => Vec::new(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Delta(_) => delta::KIND,
            SinkConfig::Redis(_) => redis::KIND,
            SinkConfig::AzureSearch(_) => azure_search::KIND,
            SinkConfig::EventHubs(_) => event_hubs::amqp::KIND,
            SinkConfig::EventHubsBinding(_) => event_hubs::BINDING_KIND,
            SinkConfig::Kafka(_) => kafka::KIND,
        }
    }

    /// Builds the sink. Connections are opened lazily, on the first batch, so start-up stays fast.
    pub fn build(&self, name: &str, ctx: &BuildContext<'_>) -> Result<Arc<dyn Sink>, SinkError> {
        match self {
            SinkConfig::Delta(c) => Ok(Arc::new(delta::DeltaSink::new(
                name,
                c,
                ctx.app_root,
                ctx.event_source(),
            )?)),
            SinkConfig::Redis(c) => Ok(Arc::new(redis::RedisSink::new(
                name,
                c,
                ctx.partition_key.segments().to_vec(),
            )?)),
            SinkConfig::AzureSearch(c) => Ok(Arc::new(azure_search::SearchSink::new(
                name,
                c,
                ctx.app_root,
            )?)),
            SinkConfig::EventHubs(c) => Ok(Arc::new(event_hubs::AmqpSink::new(
                name,
                c,
                ctx.event_source(),
            )?)),
            SinkConfig::EventHubsBinding(c) => Ok(Arc::new(event_hubs::BindingSink::new(
                name,
                c,
                ctx.event_source(),
            ))),
            SinkConfig::Kafka(c) => {
                Ok(Arc::new(kafka::KafkaSink::new(name, c, ctx.event_source())))
            }
        }
    }
}

impl BuildContext<'_> {
    /// The default CloudEvents `source`: `/cosmosdb/{database}/{container}` from function.json.
    pub fn event_source(&self) -> String {
        let f = self.function;
        format!(
            "/cosmosdb/{}/{}",
            f.database.as_deref().unwrap_or("database"),
            f.container.as_deref().unwrap_or(&f.name)
        )
    }
}

/// What every sink knows about the batch it is handed.
#[derive(Debug, Clone)]
pub struct BatchContext {
    pub function: String,
    pub invocation_id: String,
    /// Stable digest of the batch's changes: the same batch re-delivered has the same one.
    pub fingerprint: String,
    pub received_at: DateTime<Utc>,
    /// Re-driven by `fanout replay` (changes may be older than what a sink holds).
    pub replay: bool,
}

/// A change the sink refused for good (bad data for this sink); it goes to the dead-letter store.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Index into the `changes` slice given to [`Sink::deliver`].
    pub index: usize,
    pub reason: String,
}

/// The result of one delivery attempt that reached the sink.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// Human-readable detail for the host log, e.g. "100 rows, table version 12".
    pub detail: String,
    /// Changes refused for good: dead-lettered at once, never retried.
    pub rejected: Vec<Rejected>,
    /// Changes that failed transiently (partial failure): only these are retried.
    pub pending: Vec<usize>,
    /// The service asked us to wait this long before retrying `pending`.
    pub retry_after: Option<Duration>,
    /// Output bindings the host is to send after a 2xx answer: binding name -> serialized items.
    pub outputs: std::collections::BTreeMap<String, Vec<String>>,
}

impl Delivery {
    pub fn done(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            ..Self::default()
        }
    }
}

/// Why a delivery attempt failed as a whole.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SinkError {
    /// May succeed later (network, throttling, conflicts, a service restarting).
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Will not succeed by retrying (bad settings, data the sink cannot take).
    #[error("{message}")]
    Permanent { message: String },
}

impl SinkError {
    pub fn transient(message: impl Into<String>) -> Self {
        SinkError::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError::Permanent {
            message: message.into(),
        }
    }
}

#[async_trait]
pub trait Sink: Send + Sync {
    /// The sink's name in the route (unique per function).
    fn name(&self) -> &str;
    /// The sink type, as in config (`delta`, ...).
    fn kind(&self) -> &'static str;
    /// True when the host delivers what this sink produces (output bindings): it happens only
    /// after a 2xx answer, so such a sink is never recorded as done for a batch answered 500.
    fn host_delivers(&self) -> bool {
        false
    }
    /// True when the sink overwrites state without conditions and guards replays by reading
    /// the version the target holds (AI Search with `version_field`): the deletes it receives
    /// are kept as tombstones while older changes of the same documents wait for replay, so a
    /// replayed older upsert cannot bring a deleted document back (`deadletter::tombstone`).
    fn keeps_tombstones(&self) -> bool {
        false
    }
    /// Delivers changes, in order. Must be idempotent across re-deliveries of the same changes.
    async fn deliver(&self, ctx: &BatchContext, changes: &[&Change])
    -> Result<Delivery, SinkError>;
}
