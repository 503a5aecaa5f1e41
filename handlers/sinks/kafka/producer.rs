//! The I/O side: one librdkafka producer per sink (created on the first batch, reused), its
//! settings, and the OAUTHBEARER token callback for Microsoft Entra.

use super::config::{KafkaAuth, KafkaConfig};
use super::error::ProducerError;
use crate::entra::EntraToken;
use rdkafka::ClientConfig;
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::producer::FutureProducer;
use std::sync::Arc;

/// The settings handed to librdkafka, with secrets only in the values that need them.
pub fn client_settings(config: &KafkaConfig) -> Vec<(String, String)> {
    let mut s: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| s.push((k.to_string(), v.to_string()));
    set("bootstrap.servers", &config.brokers);
    set("client.id", "cosmos-fanout");
    let tls = config.uses_tls();
    let protocol = match (config.auth, tls) {
        (KafkaAuth::None, false) => "plaintext",
        (KafkaAuth::None, true) => "ssl",
        (_, true) => "sasl_ssl",
        (_, false) => "sasl_plaintext",
    };
    set("security.protocol", protocol);
    match config.auth {
        KafkaAuth::None => {}
        KafkaAuth::ConnectionString => {
            // Event Hubs' Kafka endpoint: the literal user `$ConnectionString`.
            set("sasl.mechanism", "PLAIN");
            set("sasl.username", "$ConnectionString");
            set(
                "sasl.password",
                config.connection_string.as_deref().unwrap_or_default(),
            );
        }
        KafkaAuth::Entra => set("sasl.mechanism", "OAUTHBEARER"),
        KafkaAuth::SaslPlain | KafkaAuth::ScramSha256 | KafkaAuth::ScramSha512 => {
            let mechanism = match config.auth {
                KafkaAuth::SaslPlain => "PLAIN",
                KafkaAuth::ScramSha256 => "SCRAM-SHA-256",
                _ => "SCRAM-SHA-512",
            };
            set("sasl.mechanism", mechanism);
            set(
                "sasl.username",
                config.username.as_deref().unwrap_or_default(),
            );
            set(
                "sasl.password",
                config.password.as_deref().unwrap_or_default(),
            );
        }
    }
    set(
        "enable.idempotence",
        if config.idempotence { "true" } else { "false" },
    );
    set("compression.codec", config.compression.as_str());
    set("linger.ms", &config.linger_ms.to_string());
    set("message.timeout.ms", &config.message_timeout_ms.to_string());
    // Java's default partitioner: a key lands where Java / Kafka Connect producers put it.
    set("partitioner", "murmur2_random");
    // Event Hubs closes idle connections after 240 s and advises these (also fine elsewhere).
    set("socket.keepalive.enable", "true");
    set("metadata.max.age.ms", "180000");
    // librdkafka backs off reconnects up to 10 s; after an outage the next batch should not
    // wait that long for a broker that is back (Java clients use 1 s).
    set("reconnect.backoff.max.ms", "1000");
    for (k, v) in &config.client {
        set(k, v);
    }
    s
}

/// librdkafka's callbacks: logs into tracing, and Entra tokens for OAUTHBEARER.
pub struct Context {
    sink: String,
    token: Option<Arc<EntraToken>>,
    runtime: tokio::runtime::Handle,
}

impl ClientContext for Context {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    /// librdkafka's own log lines, one level down: the failures among them also arrive
    /// through `error` below, which is the line an operator acts on.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::info!(sink = %self.sink, facility, "kafka: {message}")
            }
            _ => tracing::debug!(sink = %self.sink, facility, "kafka: {message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(sink = %self.sink, %error, "kafka client: {reason}");
    }

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let token = self
            .token
            .clone()
            .ok_or("OAUTHBEARER needs `auth = \"entra\"`")?;
        // Called on librdkafka's thread; the token source is async, so it runs on the
        // handler's runtime from a plain thread (never blocking a runtime worker).
        let runtime = self.runtime.clone();
        let t = std::thread::spawn(move || runtime.block_on(token.token()))
            .join()
            .map_err(|_| "the token thread panicked")??;
        let lifetime_ms = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            + t.expires_in)
            .as_millis() as i64;
        Ok(OAuthToken {
            token: t.secret,
            principal_name: "cosmos-fanout".into(),
            lifetime_ms,
        })
    }
}

pub type Producer = FutureProducer<Context>;

/// Creates the producer (no network I/O yet: librdkafka connects in the background).
pub fn create(sink: &str, config: &KafkaConfig) -> Result<Producer, ProducerError> {
    let token = match config.auth {
        KafkaAuth::Entra => {
            let scope = config
                .entra_scope
                .clone()
                .unwrap_or_else(|| default_scope(&config.brokers));
            Some(Arc::new(EntraToken::from_env(&scope)?))
        }
        _ => None,
    };
    let mut client = ClientConfig::new();
    for (k, v) in client_settings(config) {
        client.set(k, v);
    }
    let context = Context {
        sink: sink.to_string(),
        token,
        runtime: tokio::runtime::Handle::current(),
    };
    client
        .create_with_context(context)
        .map_err(ProducerError::Create)
}

/// `https://<first broker host>/.default`: the audience Event Hubs expects.
pub fn default_scope(brokers: &str) -> String {
    let first = brokers.split(',').next().unwrap_or_default().trim();
    let host = first.rsplit_once(':').map(|(h, _)| h).unwrap_or(first);
    format!("https://{host}/.default")
}
