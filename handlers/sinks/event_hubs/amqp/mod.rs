//! `type = "event_hubs"`: the direct AMQP producer. Request building lives here (changes ->
//! CloudEvents grouped by key), the I/O in `producer`, the settings in `config`; retries are
//! the shared loop's (`pipeline::retry`), which re-drives only the events not yet sent.
//!
//! Delivery is at least once: after a failure mid-batch the events not yet acknowledged are
//! sent again, so a consumer may see an event twice, always with the same CloudEvents `id`
//! (and AMQP message-id) to de-duplicate on. Order per key holds: a key's events go out one
//! batch after another, and the first failure stops that key.

mod config;
mod error;
mod producer;

pub use config::{AmqpConfig, ValidatedAmqp};

use crate::change::Change;
use crate::sinks::cloudevent::{EventFormat, EventKey, EventMode};
use crate::sinks::{BatchContext, Delivery, Rejected, Sink, SinkError};
use async_trait::async_trait;
use producer::{KeyedEvents, Producer};
use std::collections::HashMap;

pub const KIND: &str = "event_hubs";

pub struct AmqpSink {
    name: String,
    format: EventFormat,
    mode: EventMode,
    key: EventKey,
    hashed: bool,
    producer: Producer,
}

impl AmqpSink {
    pub fn new(name: &str, v: &ValidatedAmqp) -> Result<Self, SinkError> {
        let credential = crate::entra::credential_from_env().map_err(SinkError::permanent_from)?;
        Ok(Self {
            name: name.to_string(),
            format: v.stream.format.clone(),
            mode: v.stream.mode,
            key: v.stream.key.clone(),
            hashed: v.stream.partitioning == crate::sinks::cloudevent::Partitioning::Hash,
            producer: Producer::new(&v.config, credential),
        })
    }
}

/// Groups the events by key, keeping the batch's order within each key.
fn group_by_key(
    format: &EventFormat,
    mode: EventMode,
    key: &EventKey,
    ctx: &BatchContext,
    changes: &[&Change],
) -> Vec<KeyedEvents> {
    let mut groups: Vec<KeyedEvents> = Vec::new();
    let mut slot: HashMap<Option<String>, usize> = HashMap::new();
    for (index, change) in changes.iter().enumerate() {
        let k = key.of(change);
        let g = *slot.entry(k.clone()).or_insert_with(|| {
            groups.push(KeyedEvents {
                key: k,
                events: Vec::new(),
            });
            groups.len() - 1
        });
        groups[g]
            .events
            .push((index, format.encode(ctx, change, mode)));
    }
    groups
}

#[async_trait]
impl Sink for AmqpSink {
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
        let groups = group_by_key(&self.format, self.mode, &self.key, ctx, changes);
        let keys = groups.len();
        let outcomes = self.producer.send(groups, self.hashed).await;

        let mut delivery = Delivery::default();
        let (mut sent, mut batches, mut bytes) = (0, 0, 0u64);
        let mut first_error = None;
        for o in outcomes {
            sent += o.sent.len();
            batches += o.batches;
            bytes += o.batch_bytes;
            delivery.pending.extend(o.unsent);
            delivery
                .rejected
                .extend(o.too_large.into_iter().map(|(index, size)| Rejected {
                    index,
                    reason: format!(
                        "the event for `{}` is {size} bytes and does not fit in one Event Hubs message (the hub's limit: 1 MB on Standard and above, 256 KB on Basic)",
                        changes[index].id
                    ),
                }));
            if first_error.is_none() {
                first_error = o.error;
            }
        }
        delivery.pending.sort_unstable();
        if sent == 0
            && !delivery.pending.is_empty()
            && let Some(e) = first_error.clone()
        {
            return Err(error::classify(e));
        }
        if let Some(e) = first_error {
            tracing::warn!(sink = %self.name, error = %e, sent, pending = delivery.pending.len(), "some events were not sent; retrying those");
        }
        delivery.detail =
            format!("{sent} events in {batches} batches ({bytes} bytes) over {keys} keys");
        Ok(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::cloudevent::Partitioning;
    use crate::testing::ChangeBuilder;

    fn change(id: &str, customer: &str, lsn: i64) -> Change {
        ChangeBuilder::upsert(id)
            .pk(customer)
            .lsn(lsn)
            .ts(1)
            .field("customerId", customer)
            .field("region", "eu")
            .build()
    }

    #[test]
    fn events_are_grouped_by_key_in_batch_order() {
        let ctx = crate::testing::batch_context("orders");
        let changes = [
            change("a", "c1", 1),
            change("b", "c2", 2),
            change("c", "c1", 3),
        ];
        let refs: Vec<&Change> = changes.iter().collect();
        let format = crate::sinks::cloudevent::EventSettings::default()
            .validate("/s")
            .unwrap();
        let by_key = group_by_key(
            &format,
            EventMode::Structured,
            &EventKey::new(Partitioning::Key, None),
            &ctx,
            &refs,
        );
        let shape: Vec<(Option<String>, Vec<usize>)> = by_key
            .iter()
            .map(|g| (g.key.clone(), g.events.iter().map(|(i, _)| *i).collect()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Some("c1".into()), vec![0, 2]),
                (Some("c2".into()), vec![1])
            ]
        );
        let by_path = group_by_key(
            &format,
            EventMode::Structured,
            &EventKey::new(Partitioning::Key, Some("/region".parse().unwrap())),
            &ctx,
            &refs,
        );
        assert_eq!(by_path.len(), 1);
        assert_eq!(by_path[0].key.as_deref(), Some("eu"));
        let none = group_by_key(
            &format,
            EventMode::Structured,
            &EventKey::new(Partitioning::None, None),
            &ctx,
            &refs,
        );
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].key, None);
        assert_eq!(none[0].events.len(), 3);
    }
}
