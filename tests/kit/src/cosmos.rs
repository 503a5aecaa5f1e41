//! Microsoft's in-memory Cosmos DB emulator (`azure_data_cosmos_driver`'s, behind its
//! internal `__internal_in_memory_emulator` feature): an EMULATOR, not the service. Tests get
//! a client builder whose runtime is the emulator, and hand it to the same
//! `fanout::cosmos::open_container` production uses; plus helpers to fill the container,
//! split a partition and inject faults.

use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::options::Region;
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClientBuilder, CosmosRuntimeBuilder, RoutingStrategy,
};
use azure_data_cosmos_driver::in_memory_emulator::{
    ConsistencyLevel, ContainerConfig, EmulatorStore, InMemoryEmulatorHttpClient,
    VirtualAccountConfig, VirtualRegion,
};
use fanout::cosmos::{CosmosAuth, CosmosTarget};
use futures::StreamExt;
use serde_json::Value;
use std::sync::Arc;

pub const EMULATOR_URL: &str = "https://eastus.emulator.local/";
/// Any base64 key: the emulator does not check it (a key still goes through the key path).
pub const EMULATOR_KEY: &str = "ZmFub3V0LWVtdWxhdG9yLWtleQ==";

pub struct CosmosEmulator {
    pub client: Arc<InMemoryEmulatorHttpClient>,
    pub store: Arc<EmulatorStore>,
    pub database: String,
    pub container: String,
}

impl CosmosEmulator {
    /// A container `database/container` partitioned by `pk_path`, over `partitions`
    /// physical partitions (feed ranges).
    pub fn start(database: &str, container: &str, pk_path: &str, partitions: u32) -> Self {
        let config = VirtualAccountConfig::new(vec![VirtualRegion::new(
            "East US",
            azure_core::http::Url::parse(EMULATOR_URL).unwrap(),
        )])
        .unwrap()
        .with_consistency(ConsistencyLevel::Session);
        let client = Arc::new(InMemoryEmulatorHttpClient::new(config));
        let store = client.store();
        store.create_database(database);
        store.create_container_with_config(
            database,
            container,
            serde_json::from_value(
                serde_json::json!({"paths": [pk_path], "kind": "Hash", "version": 2}),
            )
            .unwrap(),
            ContainerConfig::new()
                .with_partition_count(partitions)
                .build()
                .unwrap(),
        );
        Self {
            client,
            store,
            database: database.into(),
            container: container.into(),
        }
    }

    /// What `fanout::cosmos::resolve_target` gives for a connection string to the emulator.
    pub fn target(&self) -> CosmosTarget {
        CosmosTarget {
            endpoint: EMULATOR_URL.into(),
            database: self.database.clone(),
            container: self.container.clone(),
            auth: CosmosAuth::Key(EMULATOR_KEY.into()),
            region: Some("East US".into()),
        }
    }

    /// `AccountEndpoint=...;AccountKey=...;` for the app settings.
    pub fn connection_string(&self) -> String {
        format!("AccountEndpoint={EMULATOR_URL};AccountKey={EMULATOR_KEY};")
    }

    /// Another container in the same database, partitioned like the first.
    pub fn add_container(&self, container: &str, pk_path: &str, partitions: u32) {
        self.store.create_container_with_config(
            &self.database,
            container,
            serde_json::from_value(
                serde_json::json!({"paths": [pk_path], "kind": "Hash", "version": 2}),
            )
            .unwrap(),
            ContainerConfig::new()
                .with_partition_count(partitions)
                .build()
                .unwrap(),
        );
    }

    /// A client builder whose transport is the emulator.
    pub async fn builder(&self) -> CosmosClientBuilder {
        CosmosClientBuilder::new().with_runtime(
            CosmosRuntimeBuilder::from(self.client.runtime_builder())
                .build()
                .await
                .unwrap(),
        )
    }

    /// A container client of the test's own (to write documents, read them back).
    pub async fn container_client(&self) -> ContainerClient {
        self.client_of(&self.container).await
    }

    /// A client of another container of the database.
    pub async fn client_of(&self, container: &str) -> ContainerClient {
        let account = AccountReference::with_authentication_key(
            EMULATOR_URL.parse::<AccountEndpoint>().unwrap(),
            azure_core::credentials::Secret::new(EMULATOR_KEY),
        );
        self.builder()
            .await
            .build(account, RoutingStrategy::ProximityTo(Region::EAST_US))
            .await
            .unwrap()
            .database_client(self.database.as_str())
            .container_client(container, None)
            .await
            .unwrap()
    }

    /// Upserts documents (partition key at `pk_field`, a string), `concurrency` at a time.
    pub async fn upsert_all(&self, docs: Vec<Value>, pk_field: &str) {
        self.upsert_into(&self.container, docs, pk_field).await
    }

    /// [`Self::upsert_all`] into another container of the database.
    pub async fn upsert_into(&self, container: &str, docs: Vec<Value>, pk_field: &str) {
        let c = self.client_of(container).await;
        futures::stream::iter(docs)
            .map(|doc| {
                let c = c.clone();
                let pk = doc[pk_field].as_str().unwrap().to_string();
                async move {
                    let id = doc["id"].as_str().unwrap().to_string();
                    c.upsert_item(pk, &id, doc, None).await.unwrap();
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    }

    /// Every document the container holds now, by id.
    pub async fn documents(&self) -> std::collections::BTreeMap<String, Value> {
        self.documents_in(&self.container).await
    }

    /// Every document another container of the database holds now, by id.
    pub async fn documents_in(&self, container: &str) -> std::collections::BTreeMap<String, Value> {
        let c = self.client_of(container).await;
        let items: Vec<Value> = c
            .query_items::<Value>(
                "SELECT * FROM c",
                azure_data_cosmos::FeedScope::full_container(),
                None,
            )
            .await
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
            .await;
        items
            .into_iter()
            .map(|d| (d["id"].as_str().unwrap().to_string(), d))
            .collect()
    }

    /// Splits physical partition `id` into two and waits until the split is done.
    pub async fn split(&self, id: u32) {
        self.store.split_partition(
            &self.database,
            &self.container,
            id,
            std::time::Duration::ZERO,
        );
        self.store.drain_pending_control_plane().await;
    }
}

/// A fault rule for the emulator's client: the first `hits` requests of `operation` are
/// answered 429 (the service throttling).
pub fn throttled(
    id: &str,
    operation: azure_data_cosmos_driver::fault_injection::FaultOperationType,
    hits: u32,
) -> Arc<azure_data_cosmos_driver::fault_injection::FaultInjectionRule> {
    use azure_data_cosmos_driver::fault_injection::{
        FaultInjectionConditionBuilder, FaultInjectionErrorType, FaultInjectionResultBuilder,
        FaultInjectionRuleBuilder,
    };
    Arc::new(
        FaultInjectionRuleBuilder::new(
            id,
            FaultInjectionResultBuilder::new()
                .with_error(FaultInjectionErrorType::TooManyRequests)
                .build(),
        )
        .with_condition(
            FaultInjectionConditionBuilder::new()
                .with_operation_type(operation)
                .build(),
        )
        .with_hit_limit(hits)
        .build(),
    )
}

/// The app settings a function reading the emulator has: the connection string and region.
pub fn settings(emulator: &CosmosEmulator) -> std::collections::HashMap<String, String> {
    std::collections::HashMap::from([
        (
            "CosmosDBConnection".to_string(),
            emulator.connection_string(),
        ),
        ("REGION_NAME".to_string(), "East US".to_string()),
    ])
}

/// The app at `app_root` (its `fanout.toml` and function folders) loaded as the commands load
/// it, with [`settings`].
pub fn load_app(
    app_root: &std::path::Path,
    emulator: &CosmosEmulator,
) -> (fanout::config::AppConfig, fanout::pipeline::Pipeline) {
    let settings = settings(emulator);
    let lookup = |k: &str| settings.get(k).cloned();
    let config =
        fanout::config::AppConfig::load(app_root, &app_root.join("fanout.toml"), &lookup).unwrap();
    let pipeline = fanout::pipeline::Pipeline::build(&config).unwrap();
    (config, pipeline)
}

/// Runs `fanout backfill` in process for the app at `app_root`, set up exactly as the command
/// sets it up - the connection string and region from the app settings, `resolve_target`,
/// `open_container` - but with `builder` (the emulator's runtime, perhaps with fault rules)
/// as the client's.
pub async fn run_backfill(
    app_root: &std::path::Path,
    emulator: &CosmosEmulator,
    builder: CosmosClientBuilder,
    throttle: Arc<fanout::cosmos::Throttle>,
    options: &fanout::backfill::BackfillOptions,
    observer: &dyn fanout::backfill::Observer,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<fanout::backfill::BackfillReport, fanout::backfill::BackfillError> {
    let settings = settings(emulator);
    let lookup = |k: &str| settings.get(k).cloned();
    let (config, pipeline) = load_app(app_root, emulator);
    let state =
        fanout::storage::Location::parse(".fanout/backfill", Default::default(), app_root).unwrap();
    let checkpoints =
        fanout::backfill::checkpoint::CheckpointStore::open(&state, "orders").unwrap();
    let backfill = fanout::backfill::Backfill::prepare(
        &config,
        &pipeline,
        "orders",
        &options.sinks,
        &lookup,
        builder,
        checkpoints,
        throttle,
    )
    .await?;
    assert_eq!(backfill.target.endpoint, EMULATOR_URL);
    backfill.run(options, observer, stop).await
}

/// Runs `fanout verify --function orders` in process, set up as the command sets it up, on
/// the emulator.
pub async fn run_verify(
    app_root: &std::path::Path,
    emulator: &CosmosEmulator,
    options: &fanout::verify::VerifyOptions,
) -> Result<fanout::verify::VerifyReport, fanout::verify::VerifyError> {
    let settings = settings(emulator);
    let lookup = |k: &str| settings.get(k).cloned();
    let (config, pipeline) = load_app(app_root, emulator);
    let verify = fanout::verify::Verify::prepare(
        &config,
        &pipeline,
        "orders",
        &options.sinks,
        &lookup,
        emulator.builder().await,
        Arc::new(fanout::cosmos::Throttle::new(None)),
    )
    .await?;
    verify.run(options, &fanout::verify::Quiet).await
}

/// Runs `fanout verify --function orders --against SPEC` in process, on the emulator.
pub async fn run_verify_against(
    app_root: &std::path::Path,
    emulator: &CosmosEmulator,
    spec: &str,
    sample: fanout::verify::sample::Sample,
) -> Result<fanout::verify::against::AgainstReport, fanout::verify::VerifyError> {
    let settings = settings(emulator);
    let lookup = |k: &str| settings.get(k).cloned();
    let (config, pipeline) = load_app(app_root, emulator);
    let pair = fanout::verify::against::Against::prepare(
        &config,
        &pipeline,
        "orders",
        spec,
        None,
        &lookup,
        emulator.builder().await,
        emulator.builder().await,
    )
    .await?;
    let throttle = fanout::cosmos::Throttle::new(None);
    Ok(pair.run(&throttle, sample, 4, 100).await?)
}

/// Runs `fanout restore --function orders --to cosmos --container CONTAINER` in process, set
/// up as the command sets it up, with `builder` (the emulator's runtime, perhaps with fault
/// rules) as the destination client's.
#[allow(clippy::too_many_arguments)]
pub async fn run_restore_to_cosmos(
    app_root: &std::path::Path,
    emulator: &CosmosEmulator,
    builder: CosmosClientBuilder,
    container: &str,
    request: &fanout::changelog::restore::RestoreRequest,
    options: &fanout::changelog::to_cosmos::CosmosRestoreOptions,
    throttle: Arc<fanout::cosmos::Throttle>,
    progress: &dyn fanout::changelog::to_cosmos::Progress,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<
    fanout::changelog::to_cosmos::CosmosRestoreReport,
    fanout::changelog::to_cosmos::CosmosRestoreError,
> {
    let settings = settings(emulator);
    let lookup = |k: &str| settings.get(k).cloned();
    let (config, _) = load_app(app_root, emulator);
    let route = &config.routes["orders"];
    let table = fanout::changelog::changelog_of(route, None).unwrap();
    let state =
        fanout::storage::Location::parse(".fanout/restore", Default::default(), app_root).unwrap();
    let checkpoints =
        fanout::changelog::to_cosmos::RestoreCheckpoints::open(&state, "orders").unwrap();
    let restore = fanout::changelog::to_cosmos::CosmosRestore::open(
        route,
        container,
        None,
        &lookup,
        builder,
        throttle,
        checkpoints,
    )
    .await?;
    restore
        .run("orders", &table, request, options, progress, stop)
        .await
}
