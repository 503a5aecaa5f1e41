//! Errors of the commands' Cosmos DB side, and the one place that sorts the SDK's errors into
//! wait-and-retry (429, with the service's `retry-after`), retry (408, 449, 503, timeouts,
//! connection failures) and stop.

use super::account::TargetError;
use crate::entra::EntraError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Entra(#[from] EntraError),
    #[error("Cosmos DB {target}: {what}: {source}")]
    Service {
        what: String,
        target: String,
        #[source]
        source: azure_data_cosmos::CosmosError,
    },
    #[error(
        "document `{id}`: its partition key {partition_key} cannot be written with the SDK (a structure or a non-finite number)"
    )]
    Unaddressable { id: String, partition_key: String },
    #[error(
        "container {target} is partitioned by {found}, but route `{function}` says {expected}: set the route's `partition_key` to the container's"
    )]
    PartitionKeyMismatch {
        target: String,
        function: String,
        found: String,
        expected: String,
    },
}

impl SourceError {
    /// Bad settings, not a failing service: the command stops before any work, exit 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            SourceError::Target(_) | SourceError::PartitionKeyMismatch { .. }
        )
    }
}

/// What to do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// 429: wait this long (the service's `retry-after`), or back off when it did not say.
    Throttled(Option<Duration>),
    /// May pass: retry with a backoff.
    Transient,
    /// Will not pass by retrying.
    Stop,
}

pub fn classify(e: &azure_data_cosmos::CosmosError) -> Retry {
    let status = e.status();
    if status.is_throttled() {
        let after = e
            .response()
            .and_then(|r| r.headers().retry_after_ms)
            .map(Duration::from_millis);
        return Retry::Throttled(after);
    }
    let code = u16::from(status.status_code());
    // Sub-statuses from 20000 up are the SDK's own (a body it could not decode, say): the
    // same request would fail the same way.
    let client_side = status.sub_status().is_some_and(|s| s.value() >= 20_000);
    if client_side {
        Retry::Stop
    } else if status.is_transient() || status.is_gone() || matches!(code, 0 | 500 | 502 | 504) {
        Retry::Transient
    } else {
        Retry::Stop
    }
}
