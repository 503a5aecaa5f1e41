//! `type = "event_hubs_binding"`: the host's Event Hubs output binding sends the events. The
//! handler returns `Outputs.<binding>` as a JSON array of strings, one CloudEvent (structured
//! JSON) per change; never a single string, which the host would try to base64-decode.
//!
//! Trade-offs (README): the binding cannot set partition keys (order per key is not kept across
//! partitions); the host sends only after a 2xx answer, and if that send fails the host fails
//! the invocation and its own retry policy re-delivers — on the last attempt those events are
//! lost to us, we cannot see it. For delivery we control, use the direct AMQP or Kafka sinks.

use crate::change::Change;
use crate::change::projection::FieldSelection;
use crate::sinks::cloudevent::EventFormat;
use crate::sinks::{BatchContext, Delivery, Rejected, Sink, SinkError};
use async_trait::async_trait;
use serde::Deserialize;

/// An Event Hubs event is at most 1 MB (Standard and above); Basic allows 256 KB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// The `name` of the `eventHub` output binding (direction `out`) in function.json.
    pub binding: String,
    /// CloudEvents `source`; default `/cosmosdb/{database}/{container}` from function.json.
    pub source: Option<String>,
    #[serde(default = "default_type_prefix")]
    pub type_prefix: String,
    /// Fields for `data` (`/`-paths); empty: the whole document without system properties.
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
}

fn default_type_prefix() -> String {
    "com.microsoft.cosmosdb.document".into()
}
fn default_max_event_bytes() -> usize {
    DEFAULT_MAX_EVENT_BYTES
}

impl BindingConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.binding.is_empty() {
            problems.push("`binding` must name the function's eventHub output binding".into());
        }
        if self.fields.iter().any(|f| !f.starts_with('/')) {
            problems.push("`fields` must be `/`-paths such as `/total`".into());
        }
        problems
    }
}

pub struct BindingSink {
    name: String,
    binding: String,
    format: EventFormat,
    max_event_bytes: usize,
}

impl BindingSink {
    pub fn new(name: &str, config: &BindingConfig, default_source: String) -> Self {
        Self {
            name: name.to_string(),
            binding: config.binding.clone(),
            format: EventFormat {
                source: config.source.clone().unwrap_or(default_source),
                type_prefix: config.type_prefix.clone(),
                fields: FieldSelection::new(&config.fields),
            },
            max_event_bytes: config.max_event_bytes,
        }
    }
}

#[async_trait]
impl Sink for BindingSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        super::BINDING_KIND
    }

    fn host_delivers(&self) -> bool {
        true
    }

    async fn deliver(
        &self,
        ctx: &BatchContext,
        changes: &[&Change],
    ) -> Result<Delivery, SinkError> {
        let mut events = Vec::with_capacity(changes.len());
        let mut rejected = Vec::new();
        for (index, change) in changes.iter().enumerate() {
            let event = self.format.event(ctx, change).to_string();
            if event.len() > self.max_event_bytes {
                rejected.push(Rejected {
                    index,
                    reason: format!(
                        "the event for `{}` is {} bytes, above the {}-byte event limit",
                        change.id,
                        event.len(),
                        self.max_event_bytes
                    ),
                });
            } else {
                events.push(event);
            }
        }
        let detail = format!(
            "{} events handed to the `{}` output binding (the host sends them after this answer)",
            events.len(),
            self.binding
        );
        let mut delivery = Delivery {
            detail,
            rejected,
            ..Delivery::default()
        };
        delivery.outputs.insert(self.binding.clone(), events);
        Ok(delivery)
    }
}
