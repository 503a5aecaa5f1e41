//! Event Hubs: one CloudEvent per change (format in `sinks::cloudevent`), two ways out:
//! `type = "event_hubs"` sends over AMQP with the Event Hubs SDK (`amqp/`), and
//! `type = "event_hubs_binding"` hands the events to the host's output binding (`binding.rs`).
//! The Kafka protocol (Event Hubs' Kafka endpoint or any Kafka cluster) is `sinks::kafka`.

pub mod amqp;
mod binding;

pub use amqp::{AmqpConfig, AmqpSink, ValidatedAmqp};
pub use binding::{BindingConfig, BindingSink, DEFAULT_MAX_EVENT_BYTES, ValidatedBinding};

pub const BINDING_KIND: &str = "event_hubs_binding";
