//! Sinks: where changes go. Every sink has the same parts, in its own folder: `config` (what
//! the routing file says), request building (changes -> the sink's wire format), the I/O
//! service, and error classification for the shared retry loop in `pipeline::retry`.
//!
//! A sink is idempotent: the same change delivered twice leaves the sink as if delivered once.

pub mod azure_search;
pub mod cloudevent;
pub mod delta;
pub mod event_hubs;
pub mod kafka;
pub mod redis;
pub mod state;

use crate::change::Change;
use crate::change::PartitionKeyPaths;
use crate::problem::Problem;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::path::PathBuf;
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

/// What a sink may know about its route: built once, by the config, and given to every
/// sink's validation, warnings and build.
#[derive(Debug, Clone)]
pub struct RouteContext {
    /// The function (folder) name.
    pub function: String,
    pub app_root: PathBuf,
    /// The monitored container's partition key paths.
    pub partition_key: PartitionKeyPaths,
    /// The default CloudEvents `source` and the changelog's exactly-once scope:
    /// `/cosmosdb/{database}/{container}` from function.json.
    pub event_source: String,
    /// The function's output bindings, `(name, type)`, from function.json.
    pub output_bindings: Vec<(String, String)>,
}

impl SinkConfig {
    /// Checks the settings and parses them, once: what is wrong (every problem, each saying
    /// how to fix it, located relative to the sink's table), or the parsed state the build
    /// consumes. Reads nothing but files under the app root.
    pub fn validate(&self, ctx: &RouteContext) -> Result<ValidatedSink, Vec<Problem>> {
        Ok(match self {
            SinkConfig::Delta(c) => ValidatedSink::Delta(c.validate(ctx)?),
            SinkConfig::Redis(c) => ValidatedSink::Redis(c.validate(ctx)?),
            SinkConfig::AzureSearch(c) => ValidatedSink::AzureSearch(c.validate(ctx)?),
            SinkConfig::EventHubs(c) => ValidatedSink::EventHubs(c.validate(ctx)?),
            SinkConfig::EventHubsBinding(c) => ValidatedSink::EventHubsBinding(c.validate(ctx)?),
            SinkConfig::Kafka(c) => ValidatedSink::Kafka(c.validate(ctx)?),
        })
    }
}

/// A sink's settings, checked and parsed ([`SinkConfig::validate`]): what building it needs.
#[derive(Debug, Clone)]
pub enum ValidatedSink {
    Delta(delta::ValidatedDelta),
    Redis(redis::ValidatedRedis),
    AzureSearch(azure_search::ValidatedSearch),
    EventHubs(event_hubs::ValidatedAmqp),
    EventHubsBinding(event_hubs::ValidatedBinding),
    Kafka(kafka::ValidatedKafka),
}

impl ValidatedSink {
    /// Things worth a look that do not stop start-up (e.g. a projected field the index
    /// lacks), located relative to the sink's table.
    pub fn warnings(&self) -> Vec<Problem> {
        match self {
            ValidatedSink::Redis(v) => v.warnings(),
            ValidatedSink::AzureSearch(v) => v.warnings(),
            _ => Vec::new(),
        }
    }

    /// The changelog settings, for the commands that work on the table itself.
    pub fn as_delta(&self) -> Option<&delta::DeltaConfig> {
        match self {
            ValidatedSink::Delta(v) => Some(&v.config),
            _ => None,
        }
    }

    /// The changelog's validated settings, for the commands that read it back.
    pub fn as_changelog(&self) -> Option<&delta::ValidatedDelta> {
        match self {
            ValidatedSink::Delta(v) => Some(v),
            _ => None,
        }
    }

    /// The search settings, for the command that creates the index.
    pub fn as_search(&self) -> Option<&azure_search::ValidatedSearch> {
        match self {
            ValidatedSink::AzureSearch(v) => Some(v),
            _ => None,
        }
    }

    /// Builds the sink. Connections are opened lazily, on the first batch, so start-up stays fast.
    pub fn build(&self, name: &str) -> Result<Arc<dyn Sink>, SinkError> {
        Ok(match self {
            ValidatedSink::Delta(v) => Arc::new(delta::DeltaSink::new(name, v)?),
            ValidatedSink::Redis(v) => Arc::new(redis::RedisSink::new(name, v)?),
            ValidatedSink::AzureSearch(v) => Arc::new(azure_search::SearchSink::new(name, v)?),
            ValidatedSink::EventHubs(v) => Arc::new(event_hubs::AmqpSink::new(name, v)?),
            ValidatedSink::EventHubsBinding(v) => Arc::new(event_hubs::BindingSink::new(name, v)),
            ValidatedSink::Kafka(v) => Arc::new(kafka::KafkaSink::new(name, v)),
        })
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

/// The client error behind a [`SinkError`], kept for `source()` chains and debugging.
pub type ErrorSource = Arc<dyn std::error::Error + Send + Sync>;

/// Why a delivery attempt failed as a whole. Each sink turns its client's errors into one in
/// a single function in the same-named file (`classify`); the message says what failed and
/// the source keeps the client's error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// May succeed later (network, throttling, conflicts, a service restarting).
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
        #[source]
        source: Option<ErrorSource>,
    },
    /// Will not succeed by retrying (bad settings, data the sink cannot take).
    #[error("{message}")]
    Permanent {
        message: String,
        #[source]
        source: Option<ErrorSource>,
    },
}

impl SinkError {
    pub fn transient(message: impl Into<String>) -> Self {
        SinkError::Transient {
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError::Permanent {
            message: message.into(),
            source: None,
        }
    }

    /// A transient error saying what `error` says, with it as the source.
    pub fn transient_from(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::transient(error.to_string()).with_source(error)
    }

    /// A permanent error saying what `error` says, with it as the source.
    pub fn permanent_from(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::permanent(error.to_string()).with_source(error)
    }

    /// The same error, with the client error that caused it.
    pub fn with_source(mut self, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        let arc: ErrorSource = Arc::new(error);
        match &mut self {
            SinkError::Transient { source, .. } | SinkError::Permanent { source, .. } => {
                *source = Some(arc)
            }
        }
        self
    }

    /// A transient error that asks to wait this long before the next attempt.
    pub fn retry_after(mut self, after: Option<Duration>) -> Self {
        if let SinkError::Transient { retry_after, .. } = &mut self {
            *retry_after = after;
        }
        self
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, SinkError::Permanent { .. })
    }

    /// The message, and the client error behind it when the message does not already say it:
    /// what the host log and the dead-letter record show.
    pub fn detail(&self) -> String {
        let (SinkError::Transient {
            message, source, ..
        }
        | SinkError::Permanent { message, source }) = self;
        match source {
            Some(e) if !message.contains(&e.to_string()) => format!("{message}: {e}"),
            _ => message.clone(),
        }
    }
}

/// Equal when the kind, the message and the requested wait are (sources are not compared).
impl PartialEq for SinkError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                SinkError::Transient {
                    message: a,
                    retry_after: ra,
                    ..
                },
                SinkError::Transient {
                    message: b,
                    retry_after: rb,
                    ..
                },
            ) => a == b && ra == rb,
            (SinkError::Permanent { message: a, .. }, SinkError::Permanent { message: b, .. }) => {
                a == b
            }
            _ => false,
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
    /// What the sink holds, for `verify`: `None` for sinks that keep no state (event
    /// streams, cache invalidation).
    fn state(&self) -> Option<&dyn state::SinkState> {
        None
    }
    /// A backfill from the beginning delivered every document of the container to this sink
    /// as of `at`: a sink that keeps history (the changelog) records it, so a restore can
    /// tell which times it can answer.
    async fn baseline_complete(
        &self,
        _function: &str,
        _at: DateTime<Utc>,
    ) -> Result<(), SinkError> {
        Ok(())
    }
    /// Delivers changes, in order. Must be idempotent across re-deliveries of the same changes.
    async fn deliver(&self, ctx: &BatchContext, changes: &[&Change])
    -> Result<Delivery, SinkError>;
}
