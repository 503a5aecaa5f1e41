//! Error classification for the Kafka sink, in one place: what a record's failure means for
//! it (refused for good, retry, retry with a new producer), and why no producer was made.

use crate::entra::EntraError;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode as C;

/// Why the producer could not be created (a bad setting or no identity: for good).
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Entra(#[from] EntraError),
    #[error("cannot create the Kafka producer: {0}")]
    Create(#[source] KafkaError),
}

/// What one record's failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFault {
    /// Sending it again can never work (a Cosmos document goes up to 2 MB; Kafka's and Event
    /// Hubs' default limit is 1 MB): dead-lettered at once, the key's later records go on.
    Refused,
    /// The idempotent producer's id / epoch is useless (fenced, unknown producer: a broker
    /// that lost its state): retry with a new producer.
    ProducerStateLost,
    /// Anything else: retry (with the key's later records, to keep their order).
    Retry,
}

pub fn classify(e: &KafkaError) -> RecordFault {
    match e.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidRecord) => {
            RecordFault::Refused
        }
        Some(
            C::ProducerFenced
            | C::InvalidProducerEpoch
            | C::UnknownProducerId
            | C::OutOfOrderSequenceNumber
            | C::InvalidProducerIdMapping,
        ) => RecordFault::ProducerStateLost,
        _ => RecordFault::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_failures_are_classified() {
        let cases = [
            (C::MessageSizeTooLarge, RecordFault::Refused),
            (C::InvalidRecord, RecordFault::Refused),
            (C::ProducerFenced, RecordFault::ProducerStateLost),
            (C::UnknownProducerId, RecordFault::ProducerStateLost),
            (C::RequestTimedOut, RecordFault::Retry),
            (C::NotLeaderForPartition, RecordFault::Retry),
        ];
        for (code, want) in cases {
            assert_eq!(
                classify(&KafkaError::MessageProduction(code)),
                want,
                "{code:?}"
            );
        }
        assert_eq!(
            classify(&KafkaError::Canceled),
            RecordFault::Retry,
            "no code: retried"
        );
    }
}
