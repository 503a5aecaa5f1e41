//! The Kafka sink (`type = "kafka"`) through the real binary into a real Kafka-protocol broker
//! (tansu, tests/kit/src/kafka.rs), read back with a real consumer.

use fanout_test_kit as common;

use common::TestApp;
use common::kafka::{Record, Tansu};
use fanout::hostsim::{cosmos_trigger_body, samples};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};

const TOPIC: &str = "orders-changes";

fn config(brokers: &str, extra: &str) -> String {
    format!(
        r#"
[retry]
initial_backoff_ms = 50
max_backoff_ms = 200
budget_ms = 4000

[functions.orders]
partition_key = "/customerId"
soft_delete = {{ field = "/deleted" }}

[functions.orders.sinks.stream]
type = "kafka"
brokers = "{brokers}"
topic = "{TOPIC}"
message_timeout_ms = 2000
{extra}
"#
    )
}

fn value(r: &Record) -> Value {
    serde_json::from_slice(&r.value).expect("value is JSON")
}

#[tokio::test]
async fn every_change_is_one_record_keyed_by_partition_key_in_order() {
    let broker = Tansu::start();
    broker.create_topic(TOPIC, 3).await;
    let app = TestApp::new();
    app.function("orders", "documents", Some(2)).config(&config(
        &broker.brokers(),
        "format = { type_prefix = \"com.example.order\" }",
    ));
    let host = app.start().await;
    let batches = samples::order_batches(1, 4, 100, 9);
    for docs in &batches {
        let call = host
            .invoke(
                "orders",
                &cosmos_trigger_body("documents", "orders", docs, None),
            )
            .await
            .unwrap();
        assert_eq!(call.status, 200, "{:?}", call.logs());
    }

    let records = broker.consume(TOPIC, 3, 400);
    assert_eq!(records.len(), 400, "one record per change");
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut key_partition: BTreeMap<String, HashSet<i32>> = BTreeMap::new();
    let mut ids = HashSet::new();
    for r in &records {
        let ce = value(r);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["source"], "/cosmosdb/shop/orders");
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/cloudevents+json")
        );
        let key = r.key.clone().expect("keyed");
        assert_eq!(ce["data"]["customerId"], json!(key), "key = partition key");
        per_key
            .entry(key.clone())
            .or_default()
            .push(ce["cosmoslsn"].as_str().unwrap().parse().unwrap());
        key_partition.entry(key).or_default().insert(r.partition);
        ids.insert(ce["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 400);
    assert_eq!(per_key.len(), 9);
    for (key, lsns) in &per_key {
        assert!(
            lsns.windows(2).all(|w| w[0] < w[1]),
            "order of {key}: {lsns:?}"
        );
    }
    assert!(
        key_partition.values().all(|p| p.len() == 1),
        "one key, one partition"
    );
    assert!(
        key_partition
            .values()
            .flatten()
            .collect::<HashSet<_>>()
            .len()
            > 1,
        "keys spread over partitions"
    );
    let deletes: Vec<&Record> = records
        .iter()
        .filter(|r| value(r)["type"] == "com.example.order.deleted")
        .collect();
    assert_eq!(deletes.len(), 40, "deletes are records too");

    // A re-delivery is at least once: the same ids again.
    let again = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &batches[0], None),
        )
        .await
        .unwrap();
    assert_eq!(again.status, 200);
    let all = broker.consume(TOPIC, 3, 500);
    assert_eq!(all.len(), 500);
    let distinct: HashSet<String> = all
        .iter()
        .map(|r| value(r)["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(distinct.len(), 400, "duplicates carry the same id");
}

#[tokio::test]
async fn binary_mode_puts_attributes_in_ce_headers_and_compresses() {
    let broker = Tansu::start();
    broker.create_topic(TOPIC, 1).await;
    let app = TestApp::new();
    app.function("orders", "documents", Some(2)).config(&config(
        &broker.brokers(),
        "partitioning = \"none\"\ncompression = \"gzip\"\nformat = { mode = \"binary\", fields = [\"/id\", \"/total\"] }",
    ));
    let host = app.start().await;
    let docs = samples::order_batches(1, 1, 30, 3).remove(0);
    common::deliver_ok(&host, "orders", &docs).await;
    let records = broker.consume(TOPIC, 1, 30);
    assert_eq!(records.len(), 30);
    for (r, doc) in records.iter().zip(&docs) {
        assert_eq!(r.key, None, "partitioning = none");
        assert_eq!(value(r), json!({"id": doc["id"], "total": doc["total"]}));
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["ce_specversion"], "1.0");
        assert_eq!(r.headers["ce_subject"], doc["id"].as_str().unwrap());
        assert!(r.headers["ce_id"].ends_with(&format!(":{}", doc["_lsn"])));
        let expected_type = if doc["deleted"] == json!(true) {
            "deleted"
        } else {
            "updated"
        };
        assert_eq!(
            r.headers["ce_type"],
            format!("com.microsoft.cosmosdb.document.{expected_type}")
        );
    }
}

// Multi-threaded: `fanout replay` runs as a blocking child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_is_retried_then_dead_lettered_then_replayed() {
    let mut broker = Tansu::start();
    broker.create_topic(TOPIC, 2).await;
    let app = TestApp::new();
    app.function("orders", "documents", Some(1))
        .config(&config(&broker.brokers(), ""));
    let host = app.start().await;
    let batches = samples::order_batches(1, 2, 40, 4);
    let ok = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &batches[0], None),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200);

    broker.kill();
    let calls = host
        .invoke_with_retries(
            "orders",
            &cosmos_trigger_body("documents", "orders", &batches[1], None),
            1,
            5,
        )
        .await
        .unwrap();
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        vec![500, 200],
        "{:?}",
        calls.last().unwrap().logs()
    );
    let pending = app.dead_letters();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        app.dead_letter(&pending[0])["changes"]
            .as_array()
            .unwrap()
            .len(),
        40
    );

    // The broker is back (empty: its storage is in memory), the topic too; replay delivers.
    broker.restart();
    broker.create_topic(TOPIC, 2).await;
    let out = app.run(&["replay"], &[]);
    assert!(
        out.status.success(),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    assert!(app.dead_letters().is_empty());
    let records = broker.consume(TOPIC, 2, 40);
    let got: HashSet<String> = records
        .iter()
        .map(|r| value(r)["subject"].as_str().unwrap().to_string())
        .collect();
    let expected: HashSet<String> = batches[1]
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(records.len(), 40);
    assert_eq!(got, expected);

    // The running handler's producer reconnects by itself.
    let after = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &batches[0], None),
        )
        .await
        .unwrap();
    assert_eq!(after.status, 200, "{:?}", after.logs());
    assert_eq!(broker.consume(TOPIC, 2, 80).len(), 80);
}

#[tokio::test]
async fn a_record_too_large_for_kafka_is_dead_lettered_at_once_and_its_key_goes_on() {
    let broker = Tansu::start();
    broker.create_topic(TOPIC, 1).await;
    let app = TestApp::new();
    // `maxRetryCount: -1` would block the lease forever if the record were retried.
    app.function("orders", "documents", Some(-1))
        .config(&config(&broker.brokers(), ""));
    let host = app.start().await;
    // A 1.5 MB document (Cosmos allows 2 MB; Kafka's default limit is 1 MB) between two small
    // changes of the same key.
    let docs = vec![
        json!({"id": "a1", "customerId": "c1", "_lsn": 1, "_ts": 1_700_000_001}),
        json!({"id": "big", "customerId": "c1", "pad": "x".repeat(1_500_000), "_lsn": 2, "_ts": 1_700_000_002}),
        json!({"id": "a2", "customerId": "c1", "_lsn": 3, "_ts": 1_700_000_003}),
    ];
    let call = common::deliver_ok(&host, "orders", &docs).await;
    let pending = app.dead_letters();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let record = app.dead_letter(&pending[0]);
    assert_eq!(record["kind"], "rejected_changes");
    assert_eq!(record["changes"][0]["id"], "big");
    assert!(
        record["reasons"][0]
            .as_str()
            .unwrap()
            .contains("refused the record for `big`"),
        "{record}"
    );
    // Only one attempt, and the key's other records are on the topic once each.
    let records = broker.consume(TOPIC, 1, 2);
    let ids: Vec<String> = records
        .iter()
        .map(|r| value(r)["data"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["a1", "a2"]);
    assert!(call.logged("1 attempt"), "{:?}", call.logs());
}
