//! `type = "kafka"`: one CloudEvent per change to a Kafka topic, over the Kafka protocol: Event
//! Hubs' Kafka endpoint or any Kafka cluster. Request building lives here (changes -> records),
//! the client and its settings in `producer`, the settings' shape in `config`.
//!
//! Client: `rdkafka` (librdkafka), chosen over the pure-Rust `rskafka` because the sink needs
//! an idempotent producer (rskafka has no InitProducerId), a partitioner compatible with Java
//! clients (murmur2), batching with linger, and OAUTHBEARER refresh — all built into
//! librdkafka. The cost: a C library built from source (about a minute) and OpenSSL.
//!
//! Order per key: all of a batch's records are queued at once, in batch order; librdkafka keeps
//! that order per partition (and, idempotent, across its own retries). A record that fails
//! makes every later record of the same key pending too, so the shared retry loop re-sends a
//! key's tail in order. Delivery is at least once; duplicates keep their CloudEvents `id`.

mod config;
mod error;
mod producer;

pub use config::{Compression, KafkaAuth, KafkaConfig, ValidatedKafka};
pub use producer::{client_settings, default_scope};

use error::{RecordFault, classify};

use crate::change::Change;
use crate::sinks::cloudevent::{EncodedEvent, EventFormat, EventKey, EventMode};
use crate::sinks::{BatchContext, Delivery, Rejected, Sink, SinkError};
use async_trait::async_trait;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::producer::Producer as _;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub const KIND: &str = "kafka";

pub struct KafkaSink {
    name: String,
    topic: String,
    format: EventFormat,
    mode: EventMode,
    key: EventKey,
    config: KafkaConfig,
    /// Created on the first batch; replaced after a fatal client error.
    producer: Mutex<Option<Arc<producer::Producer>>>,
}

impl KafkaSink {
    pub fn new(name: &str, v: &ValidatedKafka) -> Self {
        Self {
            name: name.to_string(),
            topic: v.config.topic.clone(),
            format: v.stream.format.clone(),
            mode: v.stream.mode,
            key: v.stream.key.clone(),
            config: v.config.clone(),
            producer: Mutex::new(None),
        }
    }

    fn producer(&self) -> Result<Arc<producer::Producer>, SinkError> {
        let mut slot = self.producer.lock().expect("producer lock");
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        // A bad setting (unknown librdkafka property, missing identity) is for good.
        let created = Arc::new(
            producer::create(&self.name, &self.config).map_err(SinkError::permanent_from)?,
        );
        *slot = Some(created.clone());
        Ok(created)
    }

    /// After a fatal error, or when the broker no longer knows the idempotent producer's id
    /// and epoch (fenced, unknown producer: a broker that lost its state), the client cannot
    /// send any more: the next attempt starts a new one, which gets a new producer id.
    fn drop_if_broken(&self, producer: &producer::Producer, state_lost: bool) {
        let fatal = producer.client().fatal_error();
        if fatal.is_some() || state_lost {
            tracing::warn!(sink = %self.name, fatal = ?fatal, "kafka producer can no longer send; a new one is created for the next attempt");
            self.producer.lock().expect("producer lock").take();
        }
    }
}

/// The record's headers: `content-type`, plus the `ce_` attributes in binary mode.
fn headers(event: &EncodedEvent) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(event.properties.len() + 1);
    h = h.insert(Header {
        key: "content-type",
        value: Some(event.content_type),
    });
    for (k, v) in &event.properties {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_str()),
        });
    }
    h
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    async fn deliver(
        &self,
        ctx: &BatchContext,
        changes: &[&Change],
    ) -> Result<Delivery, SinkError> {
        let producer = self.producer()?;
        let records: Vec<(Option<String>, EncodedEvent)> = changes
            .iter()
            .map(|c| (self.key.of(c), self.format.encode(ctx, c, self.mode)))
            .collect();
        // Queue everything first (librdkafka batches per partition), then wait for the acks.
        let mut waiting = Vec::with_capacity(records.len());
        let mut failed: Vec<(usize, String)> = Vec::new();
        let mut rejected: Vec<Rejected> = Vec::new();
        let refuse = |index: usize, e: &rdkafka::error::KafkaError| Rejected {
            index,
            reason: format!(
                "kafka topic {} refused the record for `{}` ({} bytes): {e}",
                self.topic,
                changes[index].id,
                records[index].1.body.len()
            ),
        };
        for (index, (key, event)) in records.iter().enumerate() {
            let mut record = FutureRecord::to(&self.topic)
                .payload(&event.body)
                .headers(headers(event));
            if let Some(k) = key {
                record = record.key(k.as_str());
            }
            match producer.send_result(record) {
                Ok(ack) => waiting.push((index, ack)),
                Err((e, _)) if classify(&e) == RecordFault::Refused => {
                    rejected.push(refuse(index, &e))
                }
                Err((e, _)) => failed.push((index, e.to_string())),
            }
        }
        let acks = futures::future::join_all(
            waiting
                .into_iter()
                .map(|(i, ack)| async move { (i, ack.await) }),
        )
        .await;
        let mut partitions = HashSet::new();
        let mut stale_producer = false;
        for (index, ack) in acks {
            match ack {
                Ok(Ok(d)) => {
                    partitions.insert(d.partition);
                }
                Ok(Err((e, _))) if classify(&e) == RecordFault::Refused => {
                    rejected.push(refuse(index, &e))
                }
                Ok(Err((e, _))) => {
                    stale_producer |= classify(&e) == RecordFault::ProducerStateLost;
                    failed.push((index, e.to_string()))
                }
                Err(_) => failed.push((index, "the producer dropped the message".into())),
            }
        }
        if !failed.is_empty() {
            self.drop_if_broken(&producer, stale_producer);
        }
        rejected.sort_by_key(|r| r.index);
        if failed.is_empty() {
            return Ok(Delivery {
                rejected,
                ..Delivery::done(format!(
                    "{} records to topic {} ({} partitions)",
                    records.len(),
                    self.topic,
                    partitions.len()
                ))
            });
        }
        // Keep each key's order on the retry: from a key's first failure on, all of that key
        // is re-sent. Records without a key carry no order.
        failed.sort_by_key(|(i, _)| *i);
        let first_error = failed[0].1.clone();
        let mut pending: HashSet<usize> = failed.iter().map(|(i, _)| *i).collect();
        let mut broken_keys: HashSet<&str> = HashSet::new();
        for (index, (key, _)) in records.iter().enumerate() {
            if let Some(k) = key.as_deref() {
                if pending.contains(&index) {
                    broken_keys.insert(k);
                } else if broken_keys.contains(k) {
                    pending.insert(index);
                }
            }
        }
        if pending.len() == records.len() && rejected.is_empty() {
            return Err(SinkError::transient(format!(
                "kafka topic {}: {first_error}",
                self.topic
            )));
        }
        let mut pending: Vec<usize> = pending.into_iter().collect();
        pending.sort_unstable();
        tracing::warn!(sink = %self.name, error = %first_error, pending = pending.len(), "some records were not acknowledged; retrying those");
        Ok(Delivery {
            detail: format!(
                "{} of {} records to topic {}",
                records.len() - pending.len(),
                records.len(),
                self.topic
            ),
            pending,
            rejected,
            ..Delivery::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(toml_text: &str) -> KafkaConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn event_hubs_connection_string_is_sasl_plain_over_tls() {
        let c = config(
            r#"
brokers = "myns.servicebus.windows.net:9093"
topic = "orders"
auth = "connection_string"
connection_string = "Endpoint=sb://myns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=abc="
compression = "gzip"
"#,
        );
        assert!(c.check().is_empty(), "{:?}", c.check());
        let s: HashMap<String, String> = client_settings(&c).into_iter().collect();
        assert_eq!(s["security.protocol"], "sasl_ssl");
        assert_eq!(s["sasl.mechanism"], "PLAIN");
        assert_eq!(s["sasl.username"], "$ConnectionString");
        assert!(s["sasl.password"].starts_with("Endpoint=sb://myns"));
        assert_eq!(s["enable.idempotence"], "true");
        assert_eq!(s["compression.codec"], "gzip");
        assert_eq!(s["partitioner"], "murmur2_random");
    }

    #[test]
    fn entra_is_oauthbearer_with_the_namespace_scope() {
        let c = config(
            r#"
brokers = "myns.servicebus.windows.net:9093"
topic = "orders"
auth = "entra"
"#,
        );
        let s: HashMap<String, String> = client_settings(&c).into_iter().collect();
        assert_eq!(s["security.protocol"], "sasl_ssl");
        assert_eq!(s["sasl.mechanism"], "OAUTHBEARER");
        assert!(!s.contains_key("sasl.password"));
        assert_eq!(
            default_scope(&c.brokers),
            "https://myns.servicebus.windows.net/.default"
        );
    }

    #[test]
    fn local_cluster_is_plaintext_and_mistakes_are_explained() {
        let c = config("brokers = \"127.0.0.1:9092\"\ntopic = \"t\"\n");
        let s: HashMap<String, String> = client_settings(&c).into_iter().collect();
        assert_eq!(s["security.protocol"], "plaintext");
        let bad = config(
            r#"
brokers = "kafka://x:9092"
topic = ""
auth = "connection_string"
client = { "enable.idempotence" = "false" }
"#,
        );
        let problems = bad.check().join("\n");
        assert!(
            problems.contains("`brokers` must be `host:port"),
            "{problems}"
        );
        assert!(problems.contains("`topic` must name"), "{problems}");
        assert!(problems.contains("needs `connection_string"), "{problems}");
        assert!(problems.contains("set by the sink itself"), "{problems}");
        let lz4_on_event_hubs = config(
            "brokers = \"ns.servicebus.windows.net:9093\"\ntopic = \"t\"\nauth = \"entra\"\ncompression = \"lz4\"\n",
        );
        assert!(
            lz4_on_event_hubs.check()[0].contains("does not accept `lz4`"),
            "{:?}",
            lz4_on_event_hubs.check()
        );
    }
}
