//! `fanout backfill` against Microsoft's in-memory Cosmos DB EMULATOR (the SDK's own, behind
//! its internal feature; not the service): the real client code path (`fanout::cosmos`, the
//! SDK, its change feed, feed ranges and splits), the real pipeline and real sinks (a local
//! Delta table read back, a real redis-server), and the command's argument checks through the
//! real binary.

use fanout::backfill::checkpoint::CheckpointStore;
use fanout::backfill::{Backfill, BackfillError, BackfillOptions, BackfillReport, Quiet};
use fanout::config::AppConfig;
use fanout::cosmos::{Throttle, resolve_target};
use fanout::pipeline::Pipeline;
use fanout::storage::Location;
use fanout_test_kit as common;
use common::cosmos::CosmosEmulator;
use common::{RedisServer, TestApp, read_table};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

const CONNECTION: &str = "CosmosDBConnection";

/// An app routing `orders` (container `shop/orders`, partition key `/customerId`) to a Delta
/// changelog and a Redis refresh cache.
fn app(redis: &RedisServer) -> TestApp {
    let app = TestApp::new();
    app.function("orders", "documents", Some(2)).config(&format!(
        r#"
[functions.orders]
partition_key = "/customerId"
soft_delete = {{ field = "/deleted" }}

[functions.orders.sinks.changelog]
type = "delta"
table = "tables/orders"

[functions.orders.sinks.cache]
type = "redis"
url = "{}"
mode = "refresh"
key = "order:{{pk}}:{{id}}"
fields = ["/status", "/total"]
"#,
        redis.url()
    ));
    app
}

fn settings(emulator: &CosmosEmulator) -> HashMap<String, String> {
    HashMap::from([
        (CONNECTION.to_string(), emulator.connection_string()),
        ("REGION_NAME".to_string(), "East US".to_string()),
    ])
}

/// Runs a backfill in process, set up exactly as the command sets it up, but with the
/// emulator as the client's transport.
async fn backfill(
    app: &TestApp,
    emulator: &CosmosEmulator,
    options: &BackfillOptions,
    throttle: Arc<Throttle>,
    stop: &AtomicBool,
) -> Result<BackfillReport, BackfillError> {
    let settings = settings(emulator);
    let lookup = |k: &str| settings.get(k).cloned();
    let config = AppConfig::load(app.path(), &app.path().join("fanout.toml"), &lookup).unwrap();
    let pipeline = Pipeline::build(&config).unwrap();
    let route = &pipeline.routes()["orders"];
    let target = resolve_target(&route.function, &lookup).unwrap();
    assert_eq!(target.endpoint, common::cosmos::EMULATOR_URL);
    let container = fanout::cosmos::open_container(&target, emulator.builder().await)
        .await
        .unwrap();
    let state = Location::parse(".fanout/backfill", Default::default(), app.path()).unwrap();
    let run = Backfill {
        pipeline: &pipeline,
        route,
        partition_key: &config.routes["orders"].partition_key,
        container,
        target,
        checkpoints: CheckpointStore::open(&state, "orders").unwrap(),
        throttle,
    };
    run.run(options, &Quiet, stop).await
}

/// `n` orders over `keys` customers.
fn orders(n: usize, keys: usize, version: i64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "id": format!("o{i}"),
                "customerId": format!("c{}", i % keys),
                "status": format!("v{version}"),
                "total": i as i64 * 10 + version,
                "lines": [{"sku": format!("s{}", i % 7), "qty": 1}],
            })
        })
        .collect()
}

/// Every sink equals the container: one changelog row per document at the version the
/// container holds, and a Redis value per document with its projected fields.
async fn assert_sinks_equal_container(
    app: &TestApp,
    emulator: &CosmosEmulator,
    redis: &RedisServer,
) {
    let docs = emulator.documents().await;
    let table = read_table(&app.table("tables/orders")).await;
    let mut latest: BTreeMap<String, (i64, Value)> = BTreeMap::new();
    let mut seen = HashSet::new();
    for row in &table.rows {
        assert!(
            seen.insert((row.partition_key.clone(), row.id.clone(), row.lsn)),
            "changelog holds ({}, {}, {:?}) twice",
            row.partition_key,
            row.id,
            row.lsn
        );
        let lsn = row.lsn.expect("a backfilled row has its lsn");
        let doc: Value = serde_json::from_str(row.document.as_deref().unwrap()).unwrap();
        if latest.get(&row.id).is_none_or(|(l, _)| *l < lsn) {
            latest.insert(row.id.clone(), (lsn, doc));
        }
    }
    assert_eq!(latest.len(), docs.len(), "one changelog document per container document");
    let mut conn = redis.client();
    for (id, doc) in &docs {
        let (_, row) = &latest[id];
        assert_eq!(row["status"], doc["status"], "{id}: changelog is at the container's version");
        assert_eq!(row["_etag"], doc["_etag"], "{id}");
        let key = format!("order:{}:{id}", doc["customerId"].as_str().unwrap());
        let cached: Option<String> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
        let cached: Value = serde_json::from_str(&cached.unwrap_or_else(|| panic!("{key} missing"))).unwrap();
        assert_eq!(cached["status"], doc["status"], "{key}");
        assert_eq!(cached["total"], doc["total"], "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_fills_every_sink_from_the_container_and_a_second_adds_nothing() {
    let redis = RedisServer::start();
    let app = app(&redis);
    let emulator = CosmosEmulator::start("shop", "orders", "/customerId", 4);
    emulator.upsert_all(orders(20_000, 1_000, 1), "customerId").await;
    // Some documents change before the backfill: it carries their current version.
    emulator.upsert_all(orders(500, 1_000, 2), "customerId").await;
    let options = BackfillOptions {
        page_size: 500,
        ..BackfillOptions::default()
    };
    let stop = AtomicBool::new(false);
    let report = backfill(&app, &emulator, &options, Arc::new(Throttle::new(None)), &stop)
        .await
        .unwrap();
    assert_eq!(report.items, 20_000);
    assert_eq!(report.ranges.len(), 4);
    assert!(report.ranges.iter().all(|r| r.done && r.items > 0), "{:?}", report.ranges);
    assert_eq!(report.dead_lettered, 0);
    // The emulator's feed items have no `_lsn`: each was read back by id for its version.
    assert_eq!(report.lsn_read_back, 20_000);
    assert!(report.spent.request_units > 0.0);
    assert_sinks_equal_container(&app, &emulator, &redis).await;
    let rows = read_table(&app.table("tables/orders")).await.rows.len();
    assert_eq!(rows, 20_000);

    // A second backfill of the same container (into the changelog) adds nothing to it.
    let changelog_only = BackfillOptions {
        sinks: vec!["changelog".into()],
        ..options
    };
    let again = backfill(&app, &emulator, &changelog_only, Arc::new(Throttle::new(None)), &stop)
        .await
        .unwrap();
    assert_eq!((again.items, again.sinks.clone()), (20_000, vec!["changelog".to_string()]));
    assert_eq!(read_table(&app.table("tables/orders")).await.rows.len(), rows);
    assert_sinks_equal_container(&app, &emulator, &redis).await;
}
