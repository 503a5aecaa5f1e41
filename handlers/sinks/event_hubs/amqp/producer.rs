//! The I/O side: a few `ProducerClient`s (AMQP connections) per sink, opened on first use and
//! reused across invocations; one is reopened after a failure on it. Events of one key go out in order, packed into as
//! few batches as the hub's maximum message size allows; different keys go out concurrently.
//! With `partitioning = "hash"` the keys are first regrouped by the partition id their hash
//! picks, and each partition's events (many keys) are batched the same way.

use super::config::AmqpConfig;
use super::error::SendError;
use crate::sinks::cloudevent::EncodedEvent;
use azure_core::credentials::TokenCredential;
use azure_messaging_eventhubs::models::EventData;
use azure_messaging_eventhubs::{EventDataBatchOptions, ProducerClient, RetryOptions};
use futures::StreamExt;
use std::sync::Arc;
use tokio::sync::Mutex;

/// One key's events, in the order of the batch (`index` into the sink's `changes`).
pub struct KeyedEvents {
    pub key: Option<String>,
    pub events: Vec<(usize, EncodedEvent)>,
}

/// What one batch is addressed to: a partition key (the service hashes it), a partition id
/// (we hashed the key), or neither.
#[derive(Clone, Default)]
struct Address {
    key: Option<String>,
    partition_id: Option<String>,
}

/// A stable 64-bit FNV-1a hash: the same key picks the same partition in every process and
/// every version.
fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Regroups per-key events by the partition their key hashes to, keeping batch order.
fn by_partition(
    groups: Vec<KeyedEvents>,
    partition_ids: &[String],
) -> Vec<(Address, Vec<(usize, EncodedEvent)>)> {
    let mut parts: Vec<Vec<(usize, EncodedEvent)>> = vec![Vec::new(); partition_ids.len()];
    for g in groups {
        let p = g
            .key
            .as_deref()
            .map(|k| (fnv1a(k) % partition_ids.len() as u64) as usize)
            .unwrap_or(0);
        parts[p].extend(g.events);
    }
    parts
        .into_iter()
        .zip(partition_ids)
        .filter(|(events, _)| !events.is_empty())
        .map(|(mut events, id)| {
            events.sort_by_key(|(i, _)| *i);
            (
                Address {
                    key: None,
                    partition_id: Some(id.clone()),
                },
                events,
            )
        })
        .collect()
}

/// How one key's events fared.
#[derive(Default)]
pub struct KeyOutcome {
    pub sent: Vec<usize>,
    /// Too large for any message: never sent, never retried.
    pub too_large: Vec<(usize, usize)>,
    /// Not sent because of `error` (the first failure stops the key, to keep its order).
    pub unsent: Vec<usize>,
    pub error: Option<SendError>,
    pub batches: usize,
    pub batch_bytes: u64,
}

pub struct Producer {
    namespace: String,
    event_hub: String,
    endpoint: Option<String>,
    max_in_flight: usize,
    send_timeout: std::time::Duration,
    /// AMQP connections, each with its own sender link. One batch is on a link at a time (the
    /// SDK (0.15) locks its link sender until the disposition arrives anyway; taking turns here
    /// keeps `send_timeout` about the send itself, not the wait for a turn), so batches of
    /// different keys go out on several connections at once; a key (or partition) always uses
    /// the same one, which keeps its order.
    connections: Vec<Connection>,
    credential: Arc<dyn TokenCredential>,
    /// The hub's partition ids, read on connect (`partitioning = "hash"` needs them).
    partition_ids: Mutex<Vec<String>>,
}

struct Connection {
    client: Mutex<Option<Arc<ProducerClient>>>,
    link: Arc<tokio::sync::Semaphore>,
}

impl Producer {
    pub fn new(config: &AmqpConfig, credential: Arc<dyn TokenCredential>) -> Self {
        Self {
            namespace: config.namespace.clone(),
            event_hub: config.event_hub.clone(),
            endpoint: config.endpoint.clone(),
            max_in_flight: config.max_in_flight,
            send_timeout: std::time::Duration::from_millis(config.send_timeout_ms),
            connections: (0..config.connections.max(1))
                .map(|_| Connection {
                    client: Mutex::new(None),
                    link: Arc::new(tokio::sync::Semaphore::new(1)),
                })
                .collect(),
            credential,
            partition_ids: Mutex::new(Vec::new()),
        }
    }

    /// The connection `n`, opened on first use.
    async fn client(&self, n: usize) -> Result<Arc<ProducerClient>, SendError> {
        let mut slot = self.connections[n].client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // Few, short retries inside the SDK: the shared retry loop (with its budget below the
        // function timeout) decides how long to keep trying.
        let mut builder = ProducerClient::builder()
            .with_application_id("cosmos-fanout".to_string())
            .with_retry_options(RetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(100),
                max_delay: azure_core::time::Duration::seconds(2),
                max_retries: 2,
                max_total_elapsed: azure_core::time::Duration::seconds(10),
            });
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_custom_endpoint(endpoint.clone());
        }
        let client = builder
            .open(&self.namespace, &self.event_hub, self.credential.clone())
            .await
            .map_err(|e| SendError::Connect {
                event_hub: self.event_hub.clone(),
                namespace: self.namespace.clone(),
                source: Arc::new(e),
            })?;
        // A $management READ (on the first connection) proves the hub exists and the identity
        // may use it, and tells the operator how many partitions the keys spread over. Not
        // fatal: a role that may send but not read still sends.
        if n == 0 {
            match client.get_eventhub_properties().await {
                Ok(p) => {
                    tracing::info!(namespace = %self.namespace, event_hub = %self.event_hub, partitions = p.partition_ids.len(), connections = self.connections.len(), "event hubs producer connected");
                    *self.partition_ids.lock().await = p.partition_ids;
                }
                Err(e) => {
                    tracing::warn!(namespace = %self.namespace, event_hub = %self.event_hub, error = %e, "event hubs producer connected; reading the hub's properties failed")
                }
            }
        }
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Forget a connection after a failure: the next attempt opens a new one.
    async fn reset(&self, n: usize) {
        self.connections[n].client.lock().await.take();
    }

    /// The connection a key (or partition) always uses.
    fn connection_of(&self, address: &Address) -> usize {
        let name = address
            .partition_id
            .as_deref()
            .or(address.key.as_deref())
            .unwrap_or("");
        (fnv1a(name) % self.connections.len() as u64) as usize
    }

    /// Sends every key's events; keys (or, hashed, partitions) concurrently, at most
    /// `max_in_flight` at once, each in order.
    pub async fn send(&self, groups: Vec<KeyedEvents>, hashed: bool) -> Vec<KeyOutcome> {
        let fail_all = |groups: Vec<KeyedEvents>, e: SendError| -> Vec<KeyOutcome> {
            groups
                .into_iter()
                .map(|g| KeyOutcome {
                    unsent: g.events.iter().map(|(i, _)| *i).collect(),
                    error: Some(e.clone()),
                    ..KeyOutcome::default()
                })
                .collect()
        };
        if self.partition_ids.lock().await.is_empty() {
            // The first connection reads the partition ids.
            if let Err(e) = self.client(0).await {
                return fail_all(groups, e);
            }
        }
        let addressed: Vec<(Address, Vec<(usize, EncodedEvent)>)> = if hashed {
            let ids = self.partition_ids.lock().await.clone();
            if ids.is_empty() {
                self.reset(0).await;
                return fail_all(groups, SendError::NoPartitionIds);
            }
            by_partition(groups, &ids)
        } else {
            groups
                .into_iter()
                .map(|g| {
                    (
                        Address {
                            key: g.key,
                            partition_id: None,
                        },
                        g.events,
                    )
                })
                .collect()
        };
        let outcomes: Vec<(usize, KeyOutcome)> = futures::stream::iter(addressed)
            .map(|(address, events)| async move {
                let n = self.connection_of(&address);
                let outcome = match self.client(n).await {
                    Ok(client) => {
                        send_key(
                            &client,
                            &self.connections[n].link,
                            self.send_timeout,
                            address,
                            events,
                        )
                        .await
                    }
                    Err(e) => KeyOutcome {
                        unsent: events.iter().map(|(i, _)| *i).collect(),
                        error: Some(e),
                        ..KeyOutcome::default()
                    },
                };
                (n, outcome)
            })
            .buffer_unordered(self.max_in_flight)
            .collect()
            .await;
        let mut failed: Vec<usize> = outcomes
            .iter()
            .filter(|(_, o)| o.error.is_some())
            .map(|(n, _)| *n)
            .collect();
        failed.sort_unstable();
        failed.dedup();
        for n in failed {
            self.reset(n).await;
        }
        outcomes.into_iter().map(|(_, o)| o).collect()
    }
}

fn event_data(event: &EncodedEvent) -> EventData {
    let mut builder = EventData::builder()
        .with_body(event.body.clone())
        .with_content_type(event.content_type.to_string())
        .with_message_id(event.id.clone());
    for (name, value) in &event.properties {
        builder = builder.add_property(name.clone(), value.clone());
    }
    builder.build()
}

/// Whether `event` fits in an empty batch (the link's maximum message size decides).
async fn fits_alone(
    client: &ProducerClient,
    address: &Address,
    event: &EncodedEvent,
) -> Result<bool, SendError> {
    let probe = client
        .create_batch(Some(batch_options(address)))
        .await
        .map_err(|e| SendError::OpenBatch(Arc::new(e)))?;
    probe
        .try_add_event_data(event_data(event), None)
        .map_err(|e| SendError::AddEvent(Arc::new(e)))
}

fn batch_options(address: &Address) -> EventDataBatchOptions {
    EventDataBatchOptions {
        partition_key: address.key.clone(),
        partition_id: address.partition_id.clone(),
        ..Default::default()
    }
}

/// One key (or partition): fill a batch, send it when the next event does not fit, stop at
/// the first failure.
async fn send_key(
    client: &ProducerClient,
    link: &tokio::sync::Semaphore,
    send_timeout: std::time::Duration,
    address: Address,
    events: Vec<(usize, EncodedEvent)>,
) -> KeyOutcome {
    let mut out = KeyOutcome::default();
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        let opened = tokio::time::timeout(
            send_timeout,
            client.create_batch(Some(batch_options(&address))),
        )
        .await
        .map_err(|_| SendError::NoLink(send_timeout.as_millis()))
        .and_then(|r| r.map_err(|e| SendError::OpenBatch(Arc::new(e))));
        let batch = match opened {
            Ok(b) => b,
            Err(e) => {
                out.error = Some(e);
                out.unsent.extend(events.map(|(i, _)| i));
                return out;
            }
        };
        let mut in_batch = Vec::new();
        while let Some((index, event)) = events.peek() {
            match batch.try_add_event_data(event_data(event), None) {
                Ok(true) => {
                    in_batch.push(*index);
                    events.next();
                }
                Ok(false) if in_batch.is_empty() => {
                    // Alone in an empty batch and still too big: no message can carry it.
                    out.too_large.push((*index, event.size()));
                    events.next();
                }
                Ok(false) => {
                    // Full, or this one event can never fit: only the latter may be skipped
                    // (to the dead-letter store) while the batch goes on filling.
                    match fits_alone(client, &address, event).await {
                        Ok(false) => {
                            out.too_large.push((*index, event.size()));
                            events.next();
                        }
                        Ok(true) => break,
                        Err(e) => {
                            out.error = Some(e);
                            out.unsent.extend(in_batch);
                            out.unsent.extend(events.map(|(i, _)| i));
                            return out;
                        }
                    }
                }
                Err(e) => {
                    out.error = Some(SendError::AddEvent(Arc::new(e)));
                    out.unsent.extend(in_batch);
                    out.unsent.extend(events.map(|(i, _)| i));
                    return out;
                }
            }
        }
        if in_batch.is_empty() {
            continue;
        }
        let bytes = batch.size();
        // A send the hub never acknowledges fails after `send_timeout`; the connection is then
        // replaced and the batch retried (it may have arrived: at least once, same ids).
        let _turn = link.acquire().await.expect("the semaphore is never closed");
        let sent = tokio::time::timeout(send_timeout, client.send_batch(batch, None))
            .await
            .map_err(|_| SendError::NotAcknowledged(send_timeout.as_millis()))
            .and_then(|r| r.map_err(|e| SendError::Send(Arc::new(e))));
        if let Err(e) = sent {
            out.error = Some(e);
            out.unsent.extend(in_batch);
            out.unsent.extend(events.map(|(i, _)| i));
            return out;
        }
        out.batches += 1;
        out.batch_bytes += bytes;
        out.sent.extend(in_batch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize) -> (usize, EncodedEvent) {
        (
            i,
            EncodedEvent {
                id: i.to_string(),
                content_type: "application/json",
                body: Vec::new(),
                properties: Vec::new(),
            },
        )
    }

    #[test]
    fn a_key_always_hashes_to_the_same_partition_and_batch_order_is_kept() {
        // FNV-1a is fixed: the mapping must not change between versions or processes.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        let ids: Vec<String> = (0..4).map(|p| p.to_string()).collect();
        let groups = vec![
            KeyedEvents {
                key: Some("c1".into()),
                events: vec![event(0), event(3)],
            },
            KeyedEvents {
                key: Some("c2".into()),
                events: vec![event(1)],
            },
            KeyedEvents {
                key: Some("c3".into()),
                events: vec![event(2), event(4)],
            },
        ];
        let parts = by_partition(groups, &ids);
        let total: usize = parts.iter().map(|(_, e)| e.len()).sum();
        assert_eq!(total, 5);
        for (address, events) in &parts {
            assert!(address.key.is_none() && address.partition_id.is_some());
            let order: Vec<usize> = events.iter().map(|(i, _)| *i).collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        }
        let partition_of = |k: &str| (fnv1a(k) % 4).to_string();
        let c1 = parts
            .iter()
            .find(|(a, _)| a.partition_id.as_deref() == Some(partition_of("c1").as_str()))
            .unwrap();
        assert!(c1.1.iter().any(|(i, _)| *i == 0) && c1.1.iter().any(|(i, _)| *i == 3));
    }
}
