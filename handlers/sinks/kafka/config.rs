use crate::problem::Problem;
use crate::sinks::RouteContext;
use crate::sinks::cloudevent::{EventSettings, EventStream, Partitioning};
use serde::Deserialize;
use std::collections::BTreeMap;

/// `type = "kafka"`: one CloudEvent per change to a Kafka topic: Event Hubs' Kafka endpoint
/// (`<namespace>.servicebus.windows.net:9093`) or any Kafka cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// The topic (for Event Hubs: the event hub's name).
    pub topic: String,
    /// `none` (plaintext, local clusters), `connection_string` (Event Hubs: SASL PLAIN with
    /// user `$ConnectionString`), `entra` (SASL OAUTHBEARER with a Microsoft Entra token of the
    /// app's identity), `sasl_plain` / `scram_sha256` / `scram_sha512` (`username` + `password`).
    #[serde(default)]
    pub auth: KafkaAuth,
    /// `auth = "connection_string"`: from an app setting, `"${EventHubConnection}"`.
    pub connection_string: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS to the brokers; default: on whenever `auth` is not `none`.
    pub tls: Option<bool>,
    /// `auth = "entra"`: the token scope; default `https://<first broker host>/.default`.
    pub entra_scope: Option<String>,
    /// `key` (default): message key = the change's partition key value (or the
    /// `partition_key` path): one key, one partition, in order. `none`: no key.
    #[serde(default)]
    pub partitioning: Partitioning,
    /// A `/`-path in the document to key by instead of the Cosmos partition key.
    pub partition_key: Option<String>,
    /// CloudEvents layout: `{ mode = "structured" | "binary", source, type_prefix, fields }`.
    /// Binary mode puts the attributes in `ce_` headers and `data` in the value.
    #[serde(default)]
    pub format: EventSettings,
    /// `none` (default), `gzip` (the one codec Event Hubs' Kafka endpoint documents),
    /// `snappy`, `lz4`.
    #[serde(default)]
    pub compression: Compression,
    /// Idempotent producer (default on): broker-side de-duplication of the producer's own
    /// retries, and no reordering within a partition.
    #[serde(default = "yes")]
    pub idempotence: bool,
    /// How long the client may gather messages into a batch (librdkafka `linger.ms`).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// How long the client keeps trying one message before reporting it failed; below the
    /// retry budget so that a failure reaches the shared retry loop in time.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// More librdkafka settings, as is (e.g. `{ "batch.size" = "1000000" }`).
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
fn default_linger_ms() -> u64 {
    5
}
fn default_message_timeout_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaAuth {
    #[default]
    None,
    ConnectionString,
    Entra,
    SaslPlain,
    ScramSha256,
    ScramSha512,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

/// A Kafka sink's settings, checked and parsed.
#[derive(Debug, Clone)]
pub struct ValidatedKafka {
    pub config: KafkaConfig,
    pub stream: EventStream,
}

/// Settings the sink manages itself; `client` may not override them.
pub const MANAGED_SETTINGS: [&str; 9] = [
    "bootstrap.servers",
    "security.protocol",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
    "enable.idempotence",
    "compression.codec",
    "compression.type",
    "message.timeout.ms",
];

impl KafkaConfig {
    /// Checks the settings and parses the event-stream part.
    pub fn validate(&self, ctx: &RouteContext) -> Result<ValidatedKafka, Vec<Problem>> {
        let stream = EventStream::validate_sink(
            self.check(),
            self.partitioning,
            self.partition_key.as_deref(),
            &self.format,
            ctx,
        )?;
        Ok(ValidatedKafka {
            config: self.clone(),
            stream,
        })
    }

    /// What is wrong with the sink's own settings (the event-stream ones are checked by
    /// [`EventStream::validate`]).
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.brokers.trim().is_empty() || self.brokers.contains("://") {
            problems.push(format!(
                "`brokers` must be `host:port[,host:port]` (e.g. `myns.servicebus.windows.net:9093`), got `{}`",
                self.brokers
            ));
        }
        if self.topic.is_empty() {
            problems.push("`topic` must name the topic (for Event Hubs: the event hub)".into());
        }
        match self.auth {
            KafkaAuth::ConnectionString => {
                match self.connection_string.as_deref() {
                    None | Some("") => problems.push("`auth = \"connection_string\"` needs `connection_string = \"${EventHubConnection}\"` (the namespace's or hub's connection string, from an app setting)".into()),
                    Some(c) if !c.contains("Endpoint=sb://") => problems.push("`connection_string` does not look like an Event Hubs connection string (`Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...`)".into()),
                    _ => {}
                }
            }
            KafkaAuth::SaslPlain | KafkaAuth::ScramSha256 | KafkaAuth::ScramSha512 => {
                if self.username.as_deref().unwrap_or("").is_empty()
                    || self.password.as_deref().unwrap_or("").is_empty()
                {
                    problems.push("SASL PLAIN / SCRAM needs `username` and `password` (the password from an app setting: `\"${KAFKA_PASSWORD}\"`)".into());
                }
            }
            KafkaAuth::None | KafkaAuth::Entra => {}
        }
        if self.auth != KafkaAuth::ConnectionString && self.connection_string.is_some() {
            problems
                .push("`connection_string` is set but `auth` is not `connection_string`".into());
        }
        for k in self.client.keys() {
            if MANAGED_SETTINGS.contains(&k.as_str()) {
                problems.push(format!(
                    "`client.\"{k}\"` is set by the sink itself; use the sink's own option instead"
                ));
            }
        }
        if self.brokers.contains(".servicebus.windows.net")
            && matches!(self.compression, Compression::Snappy | Compression::Lz4)
        {
            problems.push(format!(
                "Event Hubs' Kafka endpoint does not accept `{}` compression: use `none`, or `gzip` on Premium / Dedicated",
                self.compression.as_str()
            ));
        }
        if self.message_timeout_ms == 0 {
            problems.push("`message_timeout_ms` must be above 0".into());
        }
        problems
    }

    /// Whether the connection is encrypted.
    pub fn uses_tls(&self) -> bool {
        self.tls.unwrap_or(self.auth != KafkaAuth::None)
    }
}
