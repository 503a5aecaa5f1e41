//! The direct AMQP sink (`type = "event_hubs"`) through the real binary and the real
//! `azure_messaging_eventhubs` producer, against the FAKE Event Hubs endpoint in
//! tests/kit/src/fake_event_hubs.rs, authenticated through a FAKE managed-identity endpoint
//! (the real `azure_identity` code path).

use fanout_test_kit as common;

use common::TestApp;
use common::fake_event_hubs::{FakeEventHubs, ReceivedEvent};
use common::fake_identity::{FakeIdentity, token_for};
use fanout::hostsim::{cosmos_trigger_body, samples};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};

const NAMESPACE: &str = "fake.servicebus.windows.net";

fn config(endpoint: &str, sink_extra: &str) -> String {
    format!(
        r#"
[retry]
initial_backoff_ms = 20
max_backoff_ms = 100
budget_ms = 5000

[functions.orders]
partition_key = "/customerId"
soft_delete = {{ field = "/deleted" }}

[functions.orders.sinks.events]
type = "event_hubs"
namespace = "{NAMESPACE}"
event_hub = "orders"
endpoint = "{endpoint}"
send_timeout_ms = 1000
{sink_extra}
"#
    )
}

/// Delivery is at least once: a batch whose acknowledgement got lost is sent again (same
/// message ids). What a de-duplicating consumer sees: the first occurrence of each id.
fn unique(events: Vec<ReceivedEvent>) -> Vec<ReceivedEvent> {
    let mut seen = HashSet::new();
    events
        .into_iter()
        .filter(|e| seen.insert(e.message_id.clone().expect("every event has an id")))
        .collect()
}

fn body_json(e: &ReceivedEvent) -> Value {
    serde_json::from_slice(&e.body).expect("event body is JSON")
}

/// A fake hub (`partitions`, `limit`: its maximum message size), the fake identity endpoint,
/// and the handler started against them with `sink_extra` in the sink's config (max retry 2).
struct Rig {
    _identity: FakeIdentity,
    hub: std::sync::Arc<FakeEventHubs>,
    app: TestApp,
    host: fanout::hostsim::EmulatedHost,
}

async fn rig(partitions: usize, limit: u64, sink_extra: &str) -> Rig {
    let identity = FakeIdentity::start().await;
    let hub = FakeEventHubs::new("orders", partitions, limit);
    let endpoint = hub.start(0).await.unwrap();
    let app = TestApp::new();
    app.function("orders", "documents", Some(2))
        .config(&config(&endpoint, sink_extra));
    let host = start(&app, &identity).await;
    Rig {
        _identity: identity,
        hub,
        app,
        host,
    }
}

async fn start(app: &TestApp, identity: &FakeIdentity) -> fanout::hostsim::EmulatedHost {
    let env = identity.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    app.start_with(&env).await
}

#[tokio::test]
async fn every_change_reaches_the_hub_keyed_in_order_as_a_cloudevent() {
    let Rig {
        _identity,
        hub,
        app: _app,
        host,
    } = rig(
        4,
        1024 * 1024,
        r#"format = { type_prefix = "com.example.order" }"#,
    )
    .await;

    let batches = samples::order_batches(1, 5, 100, 7);
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

    // Authenticated like the service wants it: an Entra token for Event Hubs, per path.
    let tokens = hub.put_tokens();
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert_eq!(t.token, token_for("https://eventhubs.azure.net"));
        assert_eq!(t.token_type, "jwt");
    }
    assert!(
        tokens
            .iter()
            .any(|t| t.name == format!("amqps://{NAMESPACE}/orders")),
        "{tokens:?}"
    );
    // The producer checks the hub on connect with a $management READ.
    assert!(
        hub.management_reads()
            .contains(&"com.microsoft:eventhub".to_string())
    );

    let events = unique(hub.events());
    assert_eq!(events.len(), 500, "one event per change");
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut ids = HashSet::new();
    for e in &events {
        let ce = body_json(e);
        assert_eq!(
            e.content_type.as_deref(),
            Some("application/cloudevents+json")
        );
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["source"], "/cosmosdb/shop/orders");
        assert_eq!(
            e.message_id.as_deref(),
            ce["id"].as_str(),
            "message-id = CloudEvents id"
        );
        let customer = ce["partitionkey"].as_str().unwrap().to_string();
        assert_eq!(
            e.partition_key.as_deref(),
            Some(customer.as_str()),
            "x-opt-partition-key is the document's partition key"
        );
        assert_eq!(ce["data"]["customerId"], json!(customer));
        assert!(
            ce["data"].get("_rid").is_none(),
            "system properties are not in data"
        );
        per_key
            .entry(customer)
            .or_default()
            .push(ce["cosmoslsn"].as_str().unwrap().parse().unwrap());
        ids.insert(ce["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 500, "ids are unique per change");
    assert_eq!(per_key.len(), 7);
    for (key, lsns) in &per_key {
        assert!(
            lsns.windows(2).all(|w| w[0] < w[1]),
            "order within key {key}: {lsns:?}"
        );
    }
    let deleted = events
        .iter()
        .filter(|e| body_json(e)["type"] == "com.example.order.deleted")
        .count();
    assert_eq!(deleted, 50, "soft deletes are events too");
    let updated = events
        .iter()
        .filter(|e| body_json(e)["type"] == "com.example.order.updated")
        .count();
    assert_eq!(updated, 450);

    // One batch per key per invocation (each fits the 1 MB limit; more only when one was
    // re-sent), each within the limit.
    let transfers = hub.transfers();
    assert!(transfers.len() >= 5 * 7, "{transfers:?}");
    assert_eq!(
        transfers.iter().map(|t| t.events).sum::<usize>(),
        hub.events().len()
    );
    assert!(
        transfers
            .iter()
            .all(|t| t.bytes as u64 <= hub.max_message_size)
    );

    // A re-delivery sends the same events again, with the same ids (consumers de-duplicate).
    let again = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &batches[0], None),
        )
        .await
        .unwrap();
    assert_eq!(again.status, 200);
    let before: usize = transfers.iter().map(|t| t.events).sum();
    let events = hub.events();
    let first: HashSet<String> = events[..before]
        .iter()
        .filter_map(|e| e.message_id.clone())
        .collect();
    let repeated: HashSet<String> = events[before..]
        .iter()
        .filter_map(|e| e.message_id.clone())
        .collect();
    assert_eq!(repeated.len(), 100);
    assert!(repeated.iter().all(|id| first.contains(id)));
}

#[tokio::test]
async fn binary_mode_fills_batches_to_the_limit_and_dead_letters_an_oversized_event() {
    // A small hub limit, so one invocation needs several batches.
    let limit = 16 * 1024;
    let Rig {
        _identity,
        hub,
        app,
        host,
    } = rig(2, limit, "partitioning = \"none\"\nformat = { mode = \"binary\", fields = [\"/id\", \"/customerId\", \"/note\"] }").await;

    let mut docs = samples::order_batches(1, 1, 60, 3).remove(0);
    docs[30]["note"] = json!("y".repeat(40 * 1024));
    common::deliver_ok(&host, "orders", &docs).await;

    let events = unique(hub.events());
    assert_eq!(events.len(), 59);
    for (e, doc) in events.iter().zip(
        docs.iter()
            .filter(|d| d["note"].as_str().unwrap().len() < 1000),
    ) {
        assert_eq!(e.partition_key, None, "partitioning = none: no key");
        assert_eq!(e.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            body_json(e),
            json!({"id": doc["id"], "customerId": doc["customerId"], "note": doc["note"]})
        );
        assert_eq!(e.properties["ce_specversion"], "1.0");
        assert_eq!(e.properties["ce_subject"], doc["id"].as_str().unwrap());
        assert_eq!(e.properties["ce_source"], "/cosmosdb/shop/orders");
        assert_eq!(Some(&e.properties["ce_id"]), e.message_id.as_ref());
        assert!(e.properties["ce_type"].starts_with("com.microsoft.cosmosdb.document."));
    }
    let transfers = hub.transfers();
    assert!(transfers.len() >= 4, "{transfers:?}");
    assert!(
        transfers.iter().all(|t| t.bytes as u64 <= limit),
        "{transfers:?}"
    );
    // Every batch but the last is full: the next event would not have fitted.
    let fill: Vec<f64> = transfers
        .iter()
        .map(|t| t.bytes as f64 / limit as f64)
        .collect();
    assert!(fill[..fill.len() - 1].iter().all(|f| *f > 0.9), "{fill:?}");

    let pending = app.dead_letters();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let record = app.dead_letter(&pending[0]);
    assert_eq!(record["changes"].as_array().unwrap().len(), 1);
    assert_eq!(record["changes"][0]["id"], docs[30]["id"]);
    assert!(
        record["reasons"][0]
            .as_str()
            .unwrap()
            .contains("does not fit in one Event Hubs message"),
        "{record}"
    );
}

// Multi-threaded: `fanout replay` runs as a blocking child process while the fake serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_hub_is_retried_then_dead_lettered_then_replayed() {
    let identity = FakeIdentity::start().await;
    let hub = FakeEventHubs::new("orders", 2, 1024 * 1024);
    let endpoint = hub.start(0).await.unwrap();
    let port = hub.port();
    let app = TestApp::new();
    app.function("orders", "documents", Some(1))
        .config(&config(&endpoint, ""));
    let host = start(&app, &identity).await;
    let batches = samples::order_batches(1, 2, 50, 5);

    let ok = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &batches[0], None),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(unique(hub.events()).len(), 50);

    // The hub goes away mid-run: retried within the budget, the host re-delivers, and the
    // last attempt dead-letters the batch.
    hub.stop();
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
        50
    );
    assert_eq!(unique(hub.events()).len(), 50);

    // Back on the same address: replay delivers the dead-lettered changes.
    let hub2 = FakeEventHubs::new("orders", 2, 1024 * 1024);
    hub2.start(port).await.unwrap();
    let env = identity.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = app.run(&["replay"], &env);
    assert!(
        out.status.success(),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    assert!(app.dead_letters().is_empty());
    let replayed = unique(hub2.events());
    assert_eq!(replayed.len(), 50);
    let expected: Vec<Value> = batches[1].iter().map(|d| d["id"].clone()).collect();
    let got: Vec<Value> = replayed
        .iter()
        .map(|e| body_json(e)["subject"].clone())
        .collect();
    assert_eq!(
        got.iter().collect::<HashSet<_>>(),
        expected.iter().collect::<HashSet<_>>()
    );

    // And the running handler reconnects by itself for the next batch.
    let after = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &batches[0], None),
        )
        .await
        .unwrap();
    assert_eq!(after.status, 200, "{:?}", after.logs());
    assert_eq!(unique(hub2.events()).len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invocations_share_one_producer() {
    let Rig {
        _identity,
        hub,
        app: _app,
        host,
    } = rig(4, 1024 * 1024, "connections = 4").await;
    let host = std::sync::Arc::new(host);
    let batches = samples::order_batches(1, 16, 100, 10);
    let calls = futures::future::join_all(batches.iter().map(|docs| {
        let host = host.clone();
        let body = cosmos_trigger_body("documents", "orders", docs, None);
        async move { host.invoke("orders", &body).await.unwrap() }
    }))
    .await;
    for c in &calls {
        assert_eq!(c.status, 200, "{:?}", c.logs());
    }
    assert_eq!(unique(hub.events()).len(), 1600);
    // A fixed pool (1 connection by default, `connections = 4` here): one put-token for the
    // hub path per connection,
    // however many invocations ran (a connection is only replaced after a send was not
    // acknowledged).
    let hub_tokens = hub
        .put_tokens()
        .iter()
        .filter(|t| t.name == format!("amqps://{NAMESPACE}/orders"))
        .count();
    assert!((1..=4).contains(&hub_tokens), "{hub_tokens}");
}

#[tokio::test]
async fn a_large_invocation_goes_out_in_full_multi_frame_batches() {
    let Rig {
        _identity,
        hub,
        app: _app,
        host,
    } = rig(2, 1024 * 1024, "partitioning = \"none\"").await;
    // ~1.1 MB of events: one full 1 MB batch (16 AMQP frames of 64 KB) and the rest.
    let docs = samples::order_batches(1, 1, 1000, 50).remove(0);
    for _ in 0..2 {
        common::deliver_ok(&host, "orders", &docs).await;
    }
    let transfers = hub.transfers();
    assert_eq!(
        unique(hub.events()).len(),
        1000,
        "the same 1000 changes twice"
    );
    assert!(hub.events().len() >= 2000);
    assert!(transfers.len() >= 4, "{transfers:?}");
    assert!(
        transfers[0].bytes as f64 > 0.95 * hub.max_message_size as f64,
        "{transfers:?}"
    );
}

#[tokio::test]
async fn hash_partitioning_sends_many_keys_per_batch_to_stable_partitions() {
    let Rig {
        _identity,
        hub,
        app: _app,
        host,
    } = rig(4, 1024 * 1024, "partitioning = \"hash\"").await;
    for docs in samples::order_batches(1, 3, 100, 40) {
        common::deliver_ok(&host, "orders", &docs).await;
    }
    let events = unique(hub.events());
    assert_eq!(events.len(), 300);
    let mut partition_of: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in &events {
        let ce = body_json(e);
        let key = ce["partitionkey"].as_str().unwrap().to_string();
        assert!(
            e.target
                .starts_with(&format!("amqps://{NAMESPACE}/orders/Partitions/")),
            "sent to a partition: {}",
            e.target
        );
        assert_eq!(
            e.partition_key, None,
            "the partition id carries the routing"
        );
        partition_of
            .entry(key.clone())
            .or_default()
            .insert(e.target.clone());
        per_key
            .entry(key)
            .or_default()
            .push(ce["cosmoslsn"].as_str().unwrap().parse().unwrap());
    }
    assert!(
        partition_of.values().all(|p| p.len() == 1),
        "one key, one partition"
    );
    let used: HashSet<&String> = partition_of.values().flatten().collect();
    assert!(used.len() > 1, "keys spread over partitions");
    for (key, lsns) in &per_key {
        assert!(
            lsns.windows(2).all(|w| w[0] < w[1]),
            "order of {key}: {lsns:?}"
        );
    }
    // One batch per partition per invocation (more only when one was re-sent): many keys
    // per batch.
    let transfers = hub.transfers();
    assert!(transfers.iter().all(|t| t.events > 1), "{transfers:?}");
    assert!(events.len() / transfers.len() >= 10, "{transfers:?}");
}

/// The bench's load, smaller: 8 concurrent invocations of 100 changes with ~100 keys each, on
/// one connection (the default) and on a pool of 4. Every invocation is answered 2xx (none
/// stalls until the budget runs out) and every change arrives exactly once. With 4, this failed
/// before fe2o3-amqp's unsettled-map race was fixed (vendor/fe2o3-amqp): an acknowledgement
/// that came back before the delivery was filed was lost, the send timed out, the batch was
/// re-sent.
#[tokio::test]
async fn concurrent_invocations_of_many_keys_all_go_through() {
    for connections in [1, 4] {
        let Rig {
            _identity,
            hub,
            app: _app,
            host,
        } = rig(8, 1024 * 1024, &format!("connections = {connections}")).await;
        let host = std::sync::Arc::new(host);
        let batches = samples::order_batches(1, 32, 100, 1000);
        let sends = (0..8).map(|s| {
            let host = host.clone();
            let mine: Vec<_> = batches.iter().skip(s).step_by(8).cloned().collect();
            async move {
                for docs in &mine {
                    common::deliver_ok(&host, "orders", docs).await;
                }
            }
        });
        futures::future::join_all(sends).await;
        assert_eq!(
            unique(hub.events()).len(),
            3200,
            "{connections} connections"
        );
        // Nothing sent twice: no acknowledgement was late.
        assert_eq!(
            hub.events().len(),
            3200,
            "re-sent batches, {connections} connections"
        );
    }
}
