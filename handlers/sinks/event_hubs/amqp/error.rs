//! Error classification for the Event Hubs (AMQP) sink, in one place. Every failure of a send
//! is worth retrying (the link, the connection, the hub throttling or restarting); an event
//! too large for any message never reaches here (it is rejected per event).

use crate::sinks::SinkError;
use azure_messaging_eventhubs::EventHubsError;
use std::sync::Arc;

/// Why a key's events were not (all) sent. Cloneable: the first one answers the delivery.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to event hub `{event_hub}` in {namespace}: {source}")]
    Connect {
        event_hub: String,
        namespace: String,
        #[source]
        source: Arc<EventHubsError>,
    },
    #[error(
        "`partitioning = \"hash\"` needs the hub's partition ids, which could not be read (the identity needs read access to the hub's properties; or use `partitioning = \"key\"`)"
    )]
    NoPartitionIds,
    #[error("cannot open a batch: no link within {0} ms")]
    NoLink(u128),
    #[error("cannot open a batch: {0}")]
    OpenBatch(#[source] Arc<EventHubsError>),
    #[error("cannot add an event to a batch: {0}")]
    AddEvent(#[source] Arc<EventHubsError>),
    #[error("send failed: not acknowledged within {0} ms")]
    NotAcknowledged(u128),
    #[error("send failed: {0}")]
    Send(#[source] Arc<EventHubsError>),
}

/// A delivery that sent nothing fails with its first error: transient, with it as the source.
pub fn classify(e: SendError) -> SinkError {
    SinkError::transient_from(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_errors_are_transient_and_say_what_failed() {
        for (e, says) in [
            (
                SendError::NoLink(5000),
                "cannot open a batch: no link within 5000 ms",
            ),
            (
                SendError::NotAcknowledged(5000),
                "send failed: not acknowledged within 5000 ms",
            ),
            (SendError::NoPartitionIds, "needs the hub's partition ids"),
        ] {
            let s = classify(e);
            assert!(!s.is_permanent());
            assert!(s.to_string().contains(says), "{s}");
        }
    }
}
