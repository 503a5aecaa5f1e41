//! `fanout verify` against Microsoft's in-memory Cosmos DB EMULATOR (the SDK's own, behind
//! its internal feature; not the service): the real client code path, the real pipeline and
//! sinks - a local Delta table, a real redis-server, the AI Search FAKE (requests checked
//! against Microsoft's spec) - drift injected into each, named, repaired; two containers
//! compared; and the command's argument checks through the real binary.

use common::cosmos::CosmosEmulator;
use common::search::SearchFake;
use common::{RedisServer, TestApp};
use fanout::backfill::{BackfillOptions, Quiet};
use fanout::cosmos::Throttle;
use fanout::sinks::azure_search::{KeyEncoding, encode_key};
use fanout::verify::compare::Drift;
use fanout::verify::sample::Sample;
use fanout::verify::{SinkReport, VerifyOptions, VerifyReport};
use fanout_test_kit as common;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// `orders` (container `shop/orders`, partition key `/customerId`) into a Delta changelog, a
/// Redis refresh cache and an AI Search index (the FAKE).
fn app(redis: &RedisServer, search: &SearchFake) -> TestApp {
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
{}"#,
            redis.url(),
            common::search::orders_sink_toml("search", &search.endpoint())
        ));
    common::search::install_index_definition(app.path());
    app
}

fn orders(n: usize, keys: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "id": format!("o{i}"),
                "customerId": format!("c{}", i % keys),
                "status": "placed",
                "total": i as i64,
            })
        })
        .collect()
}

fn full() -> VerifyOptions {
    VerifyOptions {
        sample: Sample::Full,
        ..VerifyOptions::default()
    }
}

async fn backfill(app: &TestApp, emulator: &CosmosEmulator, sinks: &[&str]) {
    let options = BackfillOptions {
        sinks: sinks.iter().map(|s| s.to_string()).collect(),
        restart: true,
        page_size: 500,
        ..BackfillOptions::default()
    };
    let report = common::cosmos::run_backfill(
        app.path(),
        emulator,
        emulator.builder().await,
        Arc::new(Throttle::new(None)),
        &options,
        &Quiet,
        &AtomicBool::new(false),
    )
    .await
    .unwrap();
    assert_eq!(report.dead_lettered, 0);
}

fn sink<'a>(report: &'a [SinkReport], name: &str) -> &'a SinkReport {
    report.iter().find(|s| s.sink == name).unwrap()
}

/// Each drift of a sink as `kind id` (the sink's key where the container has no document).
fn named(report: &SinkReport) -> BTreeSet<String> {
    report
        .drift
        .iter()
        .map(|d| {
            let kind = match &d.drift {
                Drift::Missing => "missing",
                Drift::Extra => "extra",
                Drift::Stale { .. } => "stale",
                Drift::Different { .. } => "different",
            };
            format!("{kind} {}", d.id.clone().unwrap_or_else(|| d.key.clone()))
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn assert_clean(report: &VerifyReport, docs: usize) {
    for s in &report.sinks {
        assert_eq!(
            (s.drifted(), s.expected, s.held),
            (0, docs, docs),
            "{}: {:?}",
            s.sink,
            s.drift
        );
    }
    assert!(report.clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_exactly_the_injected_drift_and_repair_fixes_it() {
    let redis = RedisServer::start();
    let search = SearchFake::start("key").await;
    let app = app(&redis, &search);
    let emulator = CosmosEmulator::start("shop", "orders", "/customerId", 4);
    emulator.upsert_all(orders(2_000, 100), "customerId").await;
    // o7 is soft-deleted before anything reads the container: no sink should hold it.
    emulator
        .upsert_all(
            vec![json!({"id": "o7", "customerId": "c7", "status": "gone", "total": 7, "deleted": true})],
            "customerId",
        )
        .await;
    backfill(&app, &emulator, &[]).await;

    let report = common::cosmos::run_verify(app.path(), &emulator, &full())
        .await
        .unwrap();
    assert_clean(&report, 1_999);
    assert_eq!((report.documents, report.deleted_markers), (2_000, 1));
    assert!(report.sinks.iter().all(|s| s.compared == 1_999));

    // A document the changelog never got (its baseline is missing): written to the
    // container after the backfill, and backfilled into the cache and the index only.
    emulator
        .upsert_all(
            vec![json!({"id": "late", "customerId": "c1", "status": "placed", "total": 1})],
            "customerId",
        )
        .await;
    backfill(&app, &emulator, &["cache", "search"]).await;
    // o2 deleted in Cosmos, the delete never delivered: every sink still holds it.
    let container = emulator.container_client().await;
    container
        .delete_item("c2".to_string(), "o2", None)
        .await
        .unwrap();
    // The index lost o1, and o5 holds other fields at the same version.
    let key = |id: &str| encode_key(id, KeyEncoding::Base64url).unwrap();
    {
        let mut fake = search.state.lock().unwrap();
        fake.index.remove(&key("o1")).unwrap();
        fake.index.get_mut(&key("o5")).unwrap()["status"] = json!("tampered");
    }
    // The cache holds an older version of o3.
    let mut conn = redis.client();
    let vkey = "fanout:v:{order:c3:o3}";
    let held: String = redis::cmd("GET").arg(vkey).query(&mut conn).unwrap();
    let (lsn, ts) = held.split_once(':').unwrap();
    let older = format!("{}:{ts}", lsn.parse::<i64>().unwrap() - 1);
    let _: () = redis::cmd("SET")
        .arg(vkey)
        .arg(older)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("order:c3:o3")
        .arg(r#"{"status":"old","total":3}"#)
        .query(&mut conn)
        .unwrap();

    let report = common::cosmos::run_verify(app.path(), &emulator, &full())
        .await
        .unwrap();
    assert!(!report.clean);
    let changelog_o2 = fanout::sinks::state::document_key("[\"c2\"]", "o2");
    assert_eq!(
        named(sink(&report.sinks, "changelog")),
        set(&["missing late", &format!("extra {changelog_o2}")])
    );
    assert_eq!(
        named(sink(&report.sinks, "cache")),
        set(&["stale o3", "extra order:c2:o2"])
    );
    assert_eq!(
        named(sink(&report.sinks, "search")),
        set(&[
            "missing o1",
            "different o5",
            &format!("extra {}", key("o2"))
        ])
    );
    let different = &sink(&report.sinks, "search").drift;
    assert!(different.iter().any(
        |d| matches!(&d.drift, Drift::Different { fields } if fields == &["status".to_string()])
    ));
    // The account key never reaches the report.
    let json = serde_json::to_string(&report).unwrap();
    assert!(!json.contains(common::cosmos::EMULATOR_KEY));

    // --repair: re-driven through each sink alone, extras deleted, verified again.
    let repair = VerifyOptions {
        repair: true,
        ..full()
    };
    let repaired = common::cosmos::run_verify(app.path(), &emulator, &repair)
        .await
        .unwrap();
    assert!(repaired.clean, "{:#?}", repaired.after_repair);
    let counts: Vec<(String, usize, usize)> = repaired
        .repaired
        .iter()
        .map(|r| (r.sink.clone(), r.redriven, r.removed))
        .collect();
    assert_eq!(
        counts,
        // (the route's sinks in name order)
        [
            ("cache".to_string(), 1, 1),
            ("changelog".to_string(), 1, 1),
            ("search".to_string(), 2, 1)
        ]
    );
    assert_clean(
        &VerifyReport {
            sinks: repaired.after_repair.clone().unwrap(),
            ..repaired.clone()
        },
        // o2 deleted, `late` added.
        1_999,
    );
    // What the sinks hold now, read directly.
    {
        let fake = search.state.lock().unwrap();
        assert!(!fake.index.contains_key(&key("o2")));
        assert_eq!(fake.index[&key("o1")]["status"], "placed");
        assert_eq!(fake.index[&key("o5")]["status"], "placed");
        assert!(fake.violations.is_empty(), "{:?}", fake.violations);
    }
    let cached: String = redis::cmd("GET")
        .arg("order:c3:o3")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&cached).unwrap()["status"],
        "placed"
    );
    let gone: Option<String> = redis::cmd("GET")
        .arg("order:c2:o2")
        .query(&mut conn)
        .unwrap();
    assert_eq!(gone, None);
    let table = common::read_table(&app.table("tables/orders")).await;
    assert!(table.rows.iter().any(|r| r.id == "late"));
    assert!(
        table
            .rows
            .iter()
            .any(|r| r.id == "o2" && r.operation == "delete")
    );

    // A third verify (a sample this time) finds nothing.
    let again = common::cosmos::run_verify(app.path(), &emulator, &VerifyOptions::default())
        .await
        .unwrap();
    assert_clean(&again, 1_999);
    assert!(again.sinks.iter().all(|s| s.compared == 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_compared_find_a_missing_a_modified_and_an_extra_document() {
    let redis = RedisServer::start();
    let search = SearchFake::start("key").await;
    let app = app(&redis, &search);
    let emulator = CosmosEmulator::start("shop", "orders", "/customerId", 2);
    emulator.add_container("orders2", "/customerId", 3);
    emulator.upsert_all(orders(600, 50), "customerId").await;
    emulator
        .upsert_into("orders2", orders(600, 50), "customerId")
        .await;

    let same = common::cosmos::run_verify_against(app.path(), &emulator, "orders2", Sample::Full)
        .await
        .unwrap();
    assert!(same.clean, "{same:?}");
    assert_eq!(
        (same.source_documents, same.target_documents, same.compared),
        (600, 600, 600)
    );
    assert_eq!(same.partition_keys, 50);

    let target = emulator.client_of("orders2").await;
    target
        .delete_item("c9".to_string(), "o9", None)
        .await
        .unwrap();
    emulator
        .upsert_into(
            "orders2",
            vec![
                json!({"id": "o10", "customerId": "c10", "status": "migrated wrong", "total": 10}),
                json!({"id": "new", "customerId": "c11", "status": "placed", "total": 0}),
            ],
            "customerId",
        )
        .await;
    let diff =
        common::cosmos::run_verify_against(app.path(), &emulator, "shop/orders2", Sample::Full)
            .await
            .unwrap();
    assert!(!diff.clean);
    let ids = |d: &[fanout::verify::against::DocRef]| -> Vec<String> {
        d.iter().map(|d| d.id.clone()).collect()
    };
    assert_eq!(ids(&diff.missing), ["o9"]);
    assert_eq!(ids(&diff.extra), ["new"]);
    assert_eq!(diff.different.len(), 1);
    assert_eq!(
        (
            diff.different[0].id.as_str(),
            diff.different[0].fields.clone()
        ),
        ("o10", vec!["status".to_string()])
    );
    let counts: Vec<(String, u64, u64)> = diff
        .partition_keys_differing
        .iter()
        .map(|p| (p.partition_key.clone(), p.source, p.target))
        .collect();
    assert_eq!(
        counts,
        [
            ("[\"c11\"]".to_string(), 12, 13),
            ("[\"c9\"]".to_string(), 12, 11)
        ]
    );
}

#[test]
fn bad_input_stops_before_any_work_with_exit_2() {
    let redis = RedisServer::start();
    let app = TestApp::new();
    app.function("orders", "documents", Some(2))
        .config(&format!(
            r#"
[functions.orders]
partition_key = "/customerId"

[functions.orders.sinks.changelog]
type = "delta"
table = "tables/orders"

[functions.orders.sinks.invalidate]
type = "redis"
url = "{}"
mode = "invalidate"
keys = ["order:{{id}}"]
"#,
            redis.url()
        ));
    // (arguments, what the message must say)
    let cases: [(&[&str], &str); 6] = [
        (&["verify", "--function", "nope"], "no function `nope`"),
        (
            &["verify", "--function", "orders", "--sink", "nope"],
            "no sink `nope`",
        ),
        (
            &["verify", "--function", "orders", "--sink", "invalidate"],
            "holds no state",
        ),
        (
            &[
                "verify",
                "--function",
                "orders",
                "--against",
                "x",
                "--repair",
            ],
            "--against compares two containers",
        ),
        (
            &["verify", "--function", "orders", "--parallel", "0"],
            "at least 1",
        ),
        (
            &["verify", "--function", "orders"],
            "no Cosmos DB account for connection",
        ),
    ];
    for (args, says) in cases {
        let out = app.run(args, &[]);
        let stderr = common::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
