//! `fanout backfill` against Microsoft's in-memory Cosmos DB EMULATOR (the SDK's own, behind
//! its internal feature; not the service): the real client code path (`fanout::cosmos`, the
//! SDK, its change feed, feed ranges and splits), the real pipeline and real sinks (a local
//! Delta table read back, a real redis-server), and the command's argument checks through the
//! real binary.

use common::cosmos::CosmosEmulator;
use common::kafka::Tansu;
use common::search::SearchFake;
use common::{RedisServer, TestApp, read_table};
use fanout::backfill::{BackfillError, BackfillOptions, BackfillReport, Quiet};
use fanout::cosmos::Throttle;
use fanout::sinks::azure_search::{KeyEncoding, decode_key};
use fanout_test_kit as common;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

const CONNECTION: &str = "CosmosDBConnection";

/// An app routing `orders` (container `shop/orders`, partition key `/customerId`) to a Delta
/// changelog and a Redis refresh cache.
fn app(redis: &RedisServer) -> TestApp {
    let app = TestApp::new();
    app.function("orders", "documents", Some(2))
        .config(&format!(
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

/// [`app`] plus an AI Search index (the FAKE endpoint, version-guarded) and a Kafka topic.
fn app_with_streams(redis: &RedisServer, search: &SearchFake, brokers: &str) -> TestApp {
    let app = app(redis);
    let config = std::fs::read_to_string(app.path().join("fanout.toml")).unwrap();
    app.config(&format!(
        r#"{config}{}
[functions.orders.sinks.stream]
type = "kafka"
brokers = "{brokers}"
topic = "orders"
message_timeout_ms = 5000
"#,
        common::search::orders_sink_toml("search", &search.endpoint())
    ));
    common::search::install_index_definition(app.path());
    app
}

/// A backfill in process with the emulator as the client's transport (see the kit).
async fn backfill(
    app: &TestApp,
    emulator: &CosmosEmulator,
    options: &BackfillOptions,
    throttle: Arc<Throttle>,
    stop: &AtomicBool,
) -> Result<BackfillReport, BackfillError> {
    let builder = emulator.builder().await;
    common::cosmos::run_backfill(
        app.path(),
        emulator,
        builder,
        throttle,
        options,
        &Quiet,
        stop,
    )
    .await
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
    assert_eq!(
        latest.len(),
        docs.len(),
        "one changelog document per container document"
    );
    let mut conn = redis.client();
    for (id, doc) in &docs {
        let (_, row) = &latest[id];
        assert_eq!(
            row["status"], doc["status"],
            "{id}: changelog is at the container's version"
        );
        assert_eq!(row["_etag"], doc["_etag"], "{id}");
        let key = format!("order:{}:{id}", doc["customerId"].as_str().unwrap());
        let cached: Option<String> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
        let cached: Value =
            serde_json::from_str(&cached.unwrap_or_else(|| panic!("{key} missing"))).unwrap();
        assert_eq!(cached["status"], doc["status"], "{key}");
        assert_eq!(cached["total"], doc["total"], "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_fills_every_sink_from_the_container_and_a_second_adds_nothing() {
    let redis = RedisServer::start();
    let search = SearchFake::start("key").await;
    let broker = Tansu::start();
    broker.create_topic("orders", 4).await;
    let app = app_with_streams(&redis, &search, &broker.brokers());
    let emulator = CosmosEmulator::start("shop", "orders", "/customerId", 4);
    emulator
        .upsert_all(orders(20_000, 1_000, 1), "customerId")
        .await;
    // Some documents change before the backfill: it carries their current version.
    emulator
        .upsert_all(orders(500, 1_000, 2), "customerId")
        .await;
    let options = BackfillOptions {
        page_size: 500,
        ..BackfillOptions::default()
    };
    let stop = AtomicBool::new(false);
    let report = backfill(
        &app,
        &emulator,
        &options,
        Arc::new(Throttle::new(None)),
        &stop,
    )
    .await
    .unwrap();
    assert_eq!(report.items, 20_000);
    assert_eq!(report.ranges.len(), 4);
    assert!(
        report.ranges.iter().all(|r| r.done && r.items > 0),
        "{:?}",
        report.ranges
    );
    assert_eq!(report.dead_lettered, 0);
    // The emulator's feed items have no `_lsn`: each was read back by id for its version.
    assert_eq!(report.lsn_read_back, 20_000);
    assert!(report.spent.request_units > 0.0);
    assert_sinks_equal_container(&app, &emulator, &redis).await;
    let docs = emulator.documents().await;
    {
        let index = search.state.lock().unwrap();
        assert_eq!(
            index.index.len(),
            docs.len(),
            "one search document per container document"
        );
        for (key, indexed) in &index.index {
            let id = decode_key(key, KeyEncoding::Base64url).unwrap();
            let doc = &docs[&id];
            assert_eq!(indexed["status"], doc["status"], "{id}");
            assert_eq!(indexed["customerId"], doc["customerId"], "{id}");
        }
    }
    let records = broker.consume_all("orders", 4);
    let events: HashSet<(String, String)> = records
        .iter()
        .map(|r| {
            let ce: Value = serde_json::from_slice(&r.value).unwrap();
            let data = &ce["data"];
            (
                ce["subject"].as_str().unwrap().to_string(),
                data["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (id, doc) in &docs {
        assert!(
            events.contains(&(id.clone(), doc["status"].as_str().unwrap().to_string())),
            "no event for {id} at its current version"
        );
    }
    // The account key never reaches the report or the checkpoint.
    let checkpoint =
        std::fs::read_to_string(app.path().join(".fanout/backfill/orders.json")).unwrap();
    for text in [checkpoint, serde_json::to_string(&report).unwrap()] {
        assert!(!text.contains(common::cosmos::EMULATOR_KEY), "{text}");
    }
    let rows = read_table(&app.table("tables/orders")).await.rows.len();
    assert_eq!(rows, 20_000);

    // A second backfill of the same container (into the changelog) adds nothing to it.
    let changelog_only = BackfillOptions {
        sinks: vec!["changelog".into()],
        ..options
    };
    let again = backfill(
        &app,
        &emulator,
        &changelog_only,
        Arc::new(Throttle::new(None)),
        &stop,
    )
    .await
    .unwrap();
    assert_eq!(
        (again.items, again.sinks.clone()),
        (20_000, vec!["changelog".to_string()])
    );
    assert_eq!(
        read_table(&app.table("tables/orders")).await.rows.len(),
        rows
    );
    assert_sinks_equal_container(&app, &emulator, &redis).await;
}

/// Stops the backfill (as Ctrl-C does) after `stop_after` pages, and asks for a partition
/// split after `split_after`.
struct Interrupt {
    pages: std::sync::atomic::AtomicUsize,
    split_after: usize,
    stop_after: usize,
    split: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
    /// Set by the splitter once the split is done; read when the run is stopped.
    split_done: Arc<AtomicBool>,
    split_before_stop: AtomicBool,
}

impl fanout::backfill::Observer for Interrupt {
    fn page(
        &self,
        _range: usize,
        _items: usize,
        _state: &fanout::backfill::checkpoint::RangeState,
        _progress: Option<f64>,
    ) {
        let n = self.pages.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n == self.split_after {
            self.split.notify_one();
        }
        if n == self.stop_after {
            let done = self.split_done.load(std::sync::atomic::Ordering::SeqCst);
            self.split_before_stop
                .store(done, std::sync::atomic::Ordering::SeqCst);
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_during_a_backfill_and_an_interruption_lose_nothing() {
    let redis = RedisServer::start();
    let app = app(&redis);
    let emulator = Arc::new(CosmosEmulator::start("shop", "orders", "/customerId", 2));
    emulator
        .upsert_all(orders(3_000, 300, 1), "customerId")
        .await;
    let options = BackfillOptions {
        page_size: 100,
        parallel: 2,
        ..BackfillOptions::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let split = Arc::new(tokio::sync::Notify::new());
    let split_done = Arc::new(AtomicBool::new(false));
    let splitter = {
        let (emulator, split, done) = (emulator.clone(), split.clone(), split_done.clone());
        tokio::spawn(async move {
            split.notified().await;
            emulator.split(0).await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let interrupt = Interrupt {
        pages: Default::default(),
        split_after: 3,
        stop_after: 12,
        split,
        stop: stop.clone(),
        split_done,
        split_before_stop: AtomicBool::new(false),
    };
    let first = common::cosmos::run_backfill(
        app.path(),
        &emulator,
        emulator.builder().await,
        Arc::new(Throttle::new(None)),
        &options,
        &interrupt,
        &stop,
    )
    .await;
    splitter.await.unwrap();
    assert!(
        matches!(first, Err(BackfillError::Interrupted(_))),
        "{first:?}"
    );
    assert!(
        interrupt
            .split_before_stop
            .load(std::sync::atomic::Ordering::SeqCst),
        "the split happened while the first run was reading"
    );
    let partial = read_table(&app.table("tables/orders")).await.rows.len();
    assert!(
        partial > 0 && partial < 3_000,
        "{partial} rows before the resume"
    );
    // The container now has 3 physical partitions; the checkpoint still has the 2 ranges it
    // started with, and the SDK resumes each across the split.
    let container = emulator.container_client().await;
    assert_eq!(
        container.read_feed_ranges(None).await.unwrap().len(),
        3,
        "the split happened"
    );

    // Not resumed without asking.
    let refused = backfill(
        &app,
        &emulator,
        &options,
        Arc::new(Throttle::new(None)),
        &AtomicBool::new(false),
    )
    .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.is_usage() && e.to_string().contains("--resume")),
        "{refused:?}"
    );
    let resumed = backfill(
        &app,
        &emulator,
        &BackfillOptions {
            resume: true,
            ..options.clone()
        },
        Arc::new(Throttle::new(None)),
        &AtomicBool::new(false),
    )
    .await
    .unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.ranges.len(), 2);
    // Nothing missed, and nothing repeated beyond the pages in flight when it stopped (the
    // changelog holds each change once in any case).
    assert_eq!(resumed.items, 3_000 + (resumed.items - 3_000));
    assert!(
        resumed.items <= 3_000 + 2 * 100,
        "{} items read in all",
        resumed.items
    );
    assert_sinks_equal_container(&app, &emulator, &redis).await;
    assert_eq!(
        read_table(&app.table("tables/orders")).await.rows.len(),
        3_000
    );
    // Done: a further --resume has nothing to do.
    let again = backfill(
        &app,
        &emulator,
        &BackfillOptions {
            resume: true,
            ..options
        },
        Arc::new(Throttle::new(None)),
        &AtomicBool::new(false),
    )
    .await;
    assert!(again.is_err_and(|e| e.to_string().contains("completed at")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_reads_wait_and_the_ru_budget_holds() {
    use azure_data_cosmos_driver::fault_injection::FaultOperationType;
    let redis = RedisServer::start();
    let app = app(&redis);
    let emulator = CosmosEmulator::start("shop", "orders", "/customerId", 2);
    emulator
        .upsert_all(orders(1_500, 100, 1), "customerId")
        .await;
    // The service throttles: 6 change feed reads and 6 point reads answered 429.
    let builder = emulator
        .builder()
        .await
        .with_fault_injection_rules(vec![
            common::cosmos::throttled("feed-429", FaultOperationType::ChangeFeedItem, 6),
            common::cosmos::throttled("read-429", FaultOperationType::ReadItem, 6),
        ])
        .unwrap();
    // A budget far below what the reads would take unthrottled.
    let budget = 200.0;
    let report = common::cosmos::run_backfill(
        app.path(),
        &emulator,
        builder,
        Arc::new(Throttle::new(Some(budget))),
        &BackfillOptions {
            page_size: 100,
            ..BackfillOptions::default()
        },
        &Quiet,
        &AtomicBool::new(false),
    )
    .await
    .unwrap();
    assert_eq!(report.items, 1_500, "nothing skipped");
    assert!(report.spent.throttled >= 12, "{:?}", report.spent);
    let rate = report.spent.ru_per_second();
    assert!(
        report.spent.request_units > 3.0 * budget,
        "the run spans several seconds of budget: {:?}",
        report.spent
    );
    assert!(
        (rate - budget).abs() <= 0.1 * budget,
        "measured {rate:.0} RU/s against a budget of {budget} RU/s ({:?})",
        report.spent
    );
    assert_sinks_equal_container(&app, &emulator, &redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_changes_racing_a_backfill_of_older_versions_win_in_every_state_sink() {
    let redis = RedisServer::start();
    let app = app(&redis);
    let emulator = CosmosEmulator::start("shop", "orders", "/customerId", 2);
    emulator
        .upsert_all(orders(2_000, 200, 1), "customerId")
        .await;
    // The live trigger delivers newer versions of the first 1,000 documents (the host-
    // emulating harness, through the real binary) while the backfill reads the older ones.
    let host = app.start().await;
    let now = chrono::Utc::now().timestamp();
    let live: Vec<Vec<Value>> = orders(1_000, 200, 2)
        .chunks(100)
        .enumerate()
        .map(|(b, chunk)| {
            chunk
                .iter()
                .enumerate()
                .map(|(i, doc)| {
                    let mut doc = doc.clone();
                    doc["_lsn"] = json!(10_000_000 + b * 100 + i);
                    doc["_ts"] = json!(now + 60);
                    doc["_etag"] = json!(format!("\"live-{b}-{i}\""));
                    doc
                })
                .collect()
        })
        .collect();
    let posting = async {
        for batch in &live {
            let body = fanout::hostsim::cosmos_trigger_body("documents", "orders", batch, None);
            let call = host.invoke("orders", &body).await.unwrap();
            assert!(call.is_success(), "{:?}", call.logs());
        }
    };
    let options = BackfillOptions {
        page_size: 100,
        parallel: 2,
        ..BackfillOptions::default()
    };
    let stop = AtomicBool::new(false);
    let (report, ()) = tokio::join!(
        backfill(
            &app,
            &emulator,
            &options,
            Arc::new(Throttle::new(None)),
            &stop
        ),
        posting
    );
    assert_eq!(report.unwrap().items, 2_000);
    let docs = emulator.documents().await;
    let table = read_table(&app.table("tables/orders")).await;
    let mut newest: HashMap<String, (i64, Value)> = HashMap::new();
    for row in &table.rows {
        let lsn = row.lsn.unwrap();
        if newest.get(&row.id).is_none_or(|(l, _)| *l < lsn) {
            let doc: Value = serde_json::from_str(row.document.as_deref().unwrap()).unwrap();
            newest.insert(row.id.clone(), (lsn, doc));
        }
    }
    let mut conn = redis.client();
    for (id, doc) in &docs {
        let n: usize = id[1..].parse().unwrap();
        let want = if n < 1_000 { "v2" } else { "v1" };
        assert_eq!(newest[id].1["status"], want, "changelog's newest {id}");
        let key = format!("order:{}:{id}", doc["customerId"].as_str().unwrap());
        let cached: String = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
        let cached: Value = serde_json::from_str(&cached).unwrap();
        assert_eq!(cached["status"], want, "{key}");
    }
    assert_eq!(
        table.rows.len(),
        3_000,
        "each change once: 2,000 backfilled, 1,000 live"
    );
}

#[tokio::test]
async fn bad_input_stops_before_any_work_with_exit_2() {
    let redis = RedisServer::start();
    let app = app(&redis);
    let connection = [(
        CONNECTION,
        "AccountEndpoint=https://127.0.0.1:9/;AccountKey=a2V5;",
    )];
    // (arguments, environment, what the message says)
    type Case<'a> = (Vec<&'a str>, &'a [(&'a str, &'a str)], &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--function", "nope"],
            &connection,
            "no function `nope`",
        ),
        (
            vec!["--function", "orders", "--sink", "nope"],
            &connection,
            "has no sink `nope`",
        ),
        (
            vec!["--function", "orders", "--since", "yesterday"],
            &connection,
            "not an RFC 3339 time",
        ),
        (
            vec![
                "--function",
                "orders",
                "--since",
                "2026-01-01T00:00:00Z",
                "--from-beginning",
            ],
            &connection,
            "exclude each other",
        ),
        (
            vec!["--function", "orders", "--max-ru-per-second", "0"],
            &connection,
            "positive",
        ),
        (
            vec!["--function", "orders"],
            &[],
            "set `CosmosDBConnection__accountEndpoint`",
        ),
        (
            vec!["--function", "orders"],
            &[(CONNECTION, "AccountEndpoint=https://127.0.0.1:9/;")],
            "no `AccountKey=`",
        ),
        (
            vec!["--function", "orders", "--resume", "--restart"],
            &connection,
            "exclude each other",
        ),
    ];
    for (args, env, says) in cases {
        let mut argv = vec!["backfill"];
        argv.extend(&args);
        let out = app.run(&argv, env);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("a2V5"), "the key is never printed: {err}");
    }
    // The container's partition key must be the route's (checked against the emulator).
    let emulator = CosmosEmulator::start("shop", "orders", "/tenant", 1);
    let refused = backfill(
        &app,
        &emulator,
        &BackfillOptions::default(),
        Arc::new(Throttle::new(None)),
        &AtomicBool::new(false),
    )
    .await
    .unwrap_err();
    assert!(refused.is_usage(), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("partitioned by /tenant, but route `orders` says /customerId"),
        "{refused}"
    );
    assert!(
        !app.path().join(".fanout/backfill/orders.json").exists(),
        "no work done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_a_time_only_later_changes_are_delivered() {
    let redis = RedisServer::start();
    let app = app(&redis);
    let emulator = CosmosEmulator::start("shop", "orders", "/customerId", 2);
    emulator.upsert_all(orders(300, 50, 1), "customerId").await;
    // The next second on the wall clock: `_ts` has one-second resolution.
    let since = chrono::Utc::now().timestamp() + 1;
    while chrono::Utc::now().timestamp() < since {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let later: Vec<Value> = orders(300, 50, 2)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
        .map(|(_, d)| d)
        .collect();
    emulator.upsert_all(later.clone(), "customerId").await;
    let report = backfill(
        &app,
        &emulator,
        &BackfillOptions {
            start: Some(fanout::cosmos::Start::Since(since)),
            page_size: 50,
            ..BackfillOptions::default()
        },
        Arc::new(Throttle::new(None)),
        &AtomicBool::new(false),
    )
    .await
    .unwrap();
    assert_eq!(report.items, later.len() as u64);
    let table = read_table(&app.table("tables/orders")).await;
    let ids: HashSet<String> = table.rows.iter().map(|r| r.id.clone()).collect();
    let want: HashSet<String> = later
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, want, "only the documents changed since the time");
    assert!(table.rows.iter().all(|r| r.ts.unwrap() >= since));
}
