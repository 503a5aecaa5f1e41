//! One way to open the container for every command (backfill, verify, restore): the client
//! built from a [`CosmosTarget`], with the SDK's own throttling retries off so that every
//! 429 comes back here and waits in the shared [`Throttle`]; and one retry loop for single
//! calls (point reads, upserts, metadata).

use super::account::{CosmosAuth, CosmosTarget};
use super::error::{Retry, SourceError, classify};
use super::throttle::Throttle;
use crate::change::PartitionKeyPaths;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::options::{OperationOptionsBuilder, Region, ThrottlingRetryOptionsBuilder};
use azure_data_cosmos::{AccountEndpoint, AccountReference, CosmosClientBuilder, RoutingStrategy};
use std::future::Future;

/// Retries of a throttled call (each waits what the service asks) before it gives up.
pub const MAX_ATTEMPTS: u32 = 60;
/// Retries of a transiently failing call (backoff 0.1 s doubling to 5 s: about 16 s in all).
pub const MAX_TRANSIENT_ATTEMPTS: u32 = 8;

/// Opens `target`'s container. `builder` is `CosmosClientBuilder::new()` in production; tests
/// pass one with the in-memory emulator's runtime (and fault rules) in it.
pub async fn open_container(
    target: &CosmosTarget,
    builder: CosmosClientBuilder,
) -> Result<ContainerClient, SourceError> {
    let service = |what: &str| {
        let what = what.to_string();
        let at = target.describe();
        move |source| SourceError::Service {
            what,
            target: at,
            source,
        }
    };
    let endpoint: AccountEndpoint = target.endpoint.parse().map_err(service("endpoint"))?;
    let account = match &target.auth {
        CosmosAuth::Key(key) => AccountReference::with_authentication_key(
            endpoint,
            azure_core::credentials::Secret::new(key.clone()),
        ),
        CosmosAuth::Entra => {
            AccountReference::with_credential(endpoint, crate::entra::credential_from_env()?)
        }
    };
    let routing = match &target.region {
        Some(region) => RoutingStrategy::ProximityTo(Region::from(region.clone())),
        None => RoutingStrategy::PreferredRegions(Vec::new()),
    };
    // Every 429 reaches the caller: the shared throttle waits it out and counts it.
    let operation = OperationOptionsBuilder::new()
        .with_throttling_retry_options(
            ThrottlingRetryOptionsBuilder::new()
                .with_max_retry_count(0)
                .build(),
        )
        .build();
    let client = builder
        .with_default_operation_options(operation)
        .build(account, routing)
        .await
        .map_err(service("client"))?;
    client
        .database_client(target.database.as_str())
        .container_client(target.container.as_str(), None)
        .await
        .map_err(service("container"))
}

/// The container's partition key paths, checked against the route's: a backfill into sinks
/// keyed by another path would write every document under the wrong key.
pub async fn check_partition_key(
    container: &ContainerClient,
    target: &CosmosTarget,
    function: &str,
    route: &PartitionKeyPaths,
    throttle: &Throttle,
) -> Result<(), SourceError> {
    let response = call(throttle, "reading the container", target, || {
        container.read(None)
    })
    .await?;
    let properties: azure_data_cosmos::models::ContainerProperties = response
        .into_model()
        .map_err(|source| SourceError::Service {
            what: "reading the container".into(),
            target: target.describe(),
            source,
        })?;
    let found: Vec<String> = properties
        .partition_key
        .paths()
        .iter()
        .map(|p| p.to_string())
        .collect();
    let expected: Vec<String> = route
        .segments()
        .iter()
        .map(|s| format!("/{}", s.join("/")))
        .collect();
    if found != expected {
        return Err(SourceError::PartitionKeyMismatch {
            target: target.describe(),
            function: function.to_string(),
            found: found.join(", "),
            expected: expected.join(", "),
        });
    }
    Ok(())
}

/// One call, retried while it is throttled (waiting what the service asks, in the shared
/// budget; at most [`MAX_ATTEMPTS`] times) or transiently failing (at most
/// [`MAX_TRANSIENT_ATTEMPTS`] times).
pub async fn call<T, F, Fut>(
    throttle: &Throttle,
    what: &str,
    target: &CosmosTarget,
    mut op: F,
) -> Result<T, SourceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = azure_data_cosmos::Result<T>>,
    T: Charged,
{
    let mut attempt = 0;
    loop {
        throttle.before_request().await;
        match op().await {
            Ok(v) => {
                throttle.charge(v.request_units());
                return Ok(v);
            }
            Err(e) if wait_to_retry(throttle, &e, attempt).await => attempt += 1,
            Err(e) => {
                return Err(SourceError::Service {
                    what: what.to_string(),
                    target: target.describe(),
                    source: e,
                });
            }
        }
    }
}

/// After a failed call: counts it, and waits before the next attempt when one is due
/// (throttled: what the service asks, at most [`MAX_ATTEMPTS`] times; transient: a backoff,
/// at most [`MAX_TRANSIENT_ATTEMPTS`] times). `false`: give up.
pub(super) async fn wait_to_retry(
    throttle: &Throttle,
    e: &azure_data_cosmos::CosmosError,
    attempt: u32,
) -> bool {
    throttle.charge(0.0);
    match classify(e) {
        Retry::Throttled(after) if attempt < MAX_ATTEMPTS => {
            throttle.throttled(after, attempt).await;
            true
        }
        Retry::Transient if attempt < MAX_TRANSIENT_ATTEMPTS => {
            tokio::time::sleep(super::throttle::backoff(None, attempt)).await;
            true
        }
        _ => false,
    }
}

/// A response that says what it cost.
pub trait Charged {
    fn request_units(&self) -> f64;
}

impl Charged for azure_data_cosmos::models::ItemResponse {
    fn request_units(&self) -> f64 {
        self.headers()
            .request_charge()
            .map(|c| c.value())
            .unwrap_or(0.0)
    }
}

impl<T> Charged for azure_data_cosmos::models::ResourceResponse<T> {
    fn request_units(&self) -> f64 {
        self.headers()
            .request_charge()
            .map(|c| c.value())
            .unwrap_or(0.0)
    }
}

impl Charged for Vec<azure_data_cosmos::feed::FeedRange> {
    fn request_units(&self) -> f64 {
        0.0
    }
}
