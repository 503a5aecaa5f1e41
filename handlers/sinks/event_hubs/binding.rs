//! `type = "event_hubs_binding"`: the host's Event Hubs output binding sends the events. The
//! handler returns `Outputs.<binding>` as a JSON array of strings, one CloudEvent (structured
//! JSON) per change; never a single string, which the host would try to base64-decode.
//!
//! Trade-offs (docs/event-streams.md): the binding cannot set partition keys (order per key is not kept across
//! partitions); the host sends only after a 2xx answer, and if that send fails the host fails
//! the invocation and its own retry policy re-delivers — on the last attempt those events are
//! lost to us, we cannot see it. For delivery we control, use the direct AMQP or Kafka sinks.

use crate::change::Change;
use crate::problem::{Problem, Problems};
use crate::sinks::cloudevent::{EventFormat, EventMode, EventSettings};
use crate::sinks::{BatchContext, Delivery, Rejected, RouteContext, Sink, SinkError};
use async_trait::async_trait;
use serde::Deserialize;

/// An Event Hubs event is at most 1 MB (Standard and above); Basic allows 256 KB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// The `name` of the `eventHub` output binding (direction `out`) in function.json.
    pub binding: String,
    /// CloudEvents layout, as for the other event-stream sinks: `{ source, type_prefix,
    /// fields }` (the binding sends structured events only).
    pub format: Option<EventSettings>,
    /// Older spelling of `format.source` (still accepted; not together with `format`).
    pub source: Option<String>,
    /// Older spelling of `format.type_prefix`.
    pub type_prefix: Option<String>,
    /// Older spelling of `format.fields`.
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
}

fn default_max_event_bytes() -> usize {
    DEFAULT_MAX_EVENT_BYTES
}

/// An output-binding sink's settings, checked and parsed.
#[derive(Debug, Clone)]
pub struct ValidatedBinding {
    pub config: BindingConfig,
    pub format: EventFormat,
}

impl BindingConfig {
    /// The `format` table, or the older top-level keys as one.
    fn settings(&self) -> EventSettings {
        self.format.clone().unwrap_or_else(|| EventSettings {
            source: self.source.clone(),
            type_prefix: self.type_prefix.clone(),
            fields: self.fields.clone(),
            ..EventSettings::default()
        })
    }

    pub fn validate(&self, ctx: &RouteContext) -> Result<ValidatedBinding, Vec<Problem>> {
        let mut problems = Problems::default();
        if self.binding.is_empty() {
            problems.push(
                "binding",
                "must name the function's eventHub output binding",
            );
        } else if !ctx
            .output_bindings
            .iter()
            .any(|(n, t)| n == &self.binding && t.eq_ignore_ascii_case("eventHub"))
        {
            problems.push(
                "",
                format!(
                    "{}/function.json has no `eventHub` output binding named `{}`; add one (direction `out`) or fix `binding`",
                    ctx.function, self.binding
                ),
            );
        }
        if self.format.is_some()
            && (self.source.is_some() || self.type_prefix.is_some() || !self.fields.is_empty())
        {
            problems.push("format", "is set together with the older top-level `source` / `type_prefix` / `fields`: keep only `format`");
        }
        let settings = self.settings();
        if settings.mode == EventMode::Binary {
            problems.push("format.mode", "the output binding sends structured events only: remove `mode`, or use an `event_hubs` (AMQP) sink for binary mode");
        }
        // Located where they are written: under `format`, or at the top for the older keys.
        let legacy = self.format.is_none();
        let format = problems.take_all(settings.validate(&ctx.event_source).map_err(|found| {
            found
                .into_iter()
                .map(|p| {
                    if legacy {
                        Problem {
                            at: p.at.trim_start_matches("format.").to_string(),
                            ..p
                        }
                    } else {
                        p
                    }
                })
                .collect()
        }));
        problems.into_result(|| ValidatedBinding {
            config: self.clone(),
            format: format.expect("parsed when nothing is wrong"),
        })
    }
}

pub struct BindingSink {
    name: String,
    binding: String,
    format: EventFormat,
    max_event_bytes: usize,
}

impl BindingSink {
    pub fn new(name: &str, v: &ValidatedBinding) -> Self {
        Self {
            name: name.to_string(),
            binding: v.config.binding.clone(),
            format: v.format.clone(),
            max_event_bytes: v.config.max_event_bytes,
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
