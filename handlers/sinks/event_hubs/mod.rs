//! Event Hubs: one CloudEvent per change. This folder holds the event format and the
//! output-binding mode (`type = "event_hubs_binding"`); the direct AMQP producer and the Kafka
//! protocol sink are to come (issue 5).

mod binding;
mod cloudevent;

pub use binding::{BindingConfig, BindingSink, DEFAULT_MAX_EVENT_BYTES};
pub use cloudevent::EventFormat;

pub const BINDING_KIND: &str = "event_hubs_binding";
