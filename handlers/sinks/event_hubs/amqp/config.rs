use crate::problem::Problem;
use crate::sinks::RouteContext;
use crate::sinks::cloudevent::{EventSettings, EventStream, Partitioning};
use serde::Deserialize;

/// `type = "event_hubs"`: one CloudEvent per change, sent over AMQP with the Event Hubs SDK,
/// authenticated with Microsoft Entra (the app's managed identity in Azure).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// The fully qualified namespace, `<namespace>.servicebus.windows.net`.
    pub namespace: String,
    /// The event hub's name.
    pub event_hub: String,
    /// `key` (default): each event carries a partition key (the change's partition key value,
    /// or the `partition_key` path) so events of one key land in one partition, in order.
    /// `hash`: the key's hash picks a partition id here, so one batch carries many keys
    /// (much faster with many distinct keys per invocation; the partition count must not
    /// change). `none`: no key, the service spreads the events (round robin).
    #[serde(default)]
    pub partitioning: Partitioning,
    /// A `/`-path in the document to key by instead of the Cosmos partition key.
    pub partition_key: Option<String>,
    /// CloudEvents layout: `{ mode = "structured" | "binary", source, type_prefix, fields }`.
    #[serde(default)]
    pub format: EventSettings,
    /// An AMQP endpoint to connect to instead of the namespace (`amqp://host:port` or
    /// `amqps://host:port`): an AMQP proxy, or a local fake. The namespace still names the hub.
    pub endpoint: Option<String>,
    /// Batches of different keys sent at once (one key's batches always go one after another).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// AMQP connections to the hub: each carries one batch at a time, so this many batches
    /// (of different keys or partitions) are on the wire at once. A key always uses the same
    /// connection. Default 4: the SDK keeps one batch in flight per connection, so with many
    /// keys per invocation a pool moves 2.4x more events (benches/event_streams.rs). (It was 1
    /// while fe2o3-amqp lost early acknowledgements: vendor/README.md.)
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// How long one batch may wait for the hub's acknowledgement before the connection is
    /// dropped and the batch retried on a new one (a hung link must not eat the whole budget).
    #[serde(default = "default_send_timeout_ms")]
    pub send_timeout_ms: u64,
}

/// An AMQP sink's settings, checked and parsed.
#[derive(Debug, Clone)]
pub struct ValidatedAmqp {
    pub config: AmqpConfig,
    pub stream: EventStream,
}

fn default_send_timeout_ms() -> u64 {
    5_000
}

fn default_connections() -> usize {
    4
}

fn default_max_in_flight() -> usize {
    16
}

impl AmqpConfig {
    /// Checks the settings and parses the event-stream part.
    pub fn validate(&self, ctx: &RouteContext) -> Result<ValidatedAmqp, Vec<Problem>> {
        let stream = EventStream::validate_sink(
            self.check(),
            self.partitioning,
            self.partition_key.as_deref(),
            &self.format,
            ctx,
        )?;
        Ok(ValidatedAmqp {
            config: self.clone(),
            stream,
        })
    }

    /// What is wrong with the sink's own settings (the event-stream ones are checked by
    /// [`EventStream::validate`]).
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.namespace.is_empty() || self.namespace.contains("://") {
            problems.push(format!(
                "`namespace` must be the fully qualified namespace host, e.g. `myns.servicebus.windows.net` (got `{}`); put a custom address in `endpoint`",
                self.namespace
            ));
        }
        if self.event_hub.is_empty() {
            problems.push("`event_hub` must name the event hub".into());
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("amqp://") || e.starts_with("amqps://"))
        {
            problems.push(format!(
                "`endpoint` must be an amqp:// or amqps:// URL (got `{e}`)"
            ));
        }
        if self.send_timeout_ms == 0 {
            problems.push("`send_timeout_ms` must be above 0".into());
        }
        if self.connections == 0 || self.connections > 64 {
            problems.push("`connections` must be between 1 and 64".into());
        }
        if self.max_in_flight == 0 {
            problems.push("`max_in_flight` must be at least 1".into());
        }
        problems
    }
}
