//! Output-binding mode for Event Hubs through the real binary: the host (emulated) receives
//! `Outputs.<binding>` as an array of strings, each a CloudEvent.

use fanout_test_kit as common;

use common::TestApp;
use fanout::hostsim::{cosmos_trigger_body, samples, with_retry_context};
use serde_json::{Value, json};

fn app(max_retry: i64) -> TestApp {
    let app = TestApp::new();
    std::fs::create_dir_all(app.path().join("orders")).unwrap();
    std::fs::write(
        app.path().join("orders/function.json"),
        json!({
            "bindings": [
                {"type": "cosmosDBTrigger", "name": "documents", "direction": "in", "connection": "CosmosDBConnection",
                 "databaseName": "shop", "containerName": "orders", "leaseContainerName": "leases", "leaseContainerPrefix": "orders-"},
                {"type": "eventHub", "name": "events", "direction": "out", "eventHubName": "orders-changes", "connection": "EventHubConnection"}
            ],
            "retry": {"strategy": "fixedDelay", "maxRetryCount": max_retry, "delayInterval": "00:00:01"}
        })
        .to_string(),
    )
    .unwrap();
    app.config(
        r#"
[retry]
initial_backoff_ms = 20
max_backoff_ms = 50
budget_ms = 300

[functions.orders]
partition_key = "/customerId"
soft_delete = { field = "/deleted" }

[functions.orders.sinks.changelog]
type = "delta"
table = "tables/orders"

[functions.orders.sinks.events]
type = "event_hubs_binding"
binding = "events"
type_prefix = "com.example.order"
"#,
    );
    app
}

fn cloudevents(call: &fanout::hostsim::HostCall) -> Vec<Value> {
    let outputs = call.body["Outputs"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("Outputs.events is an array: {}", call.body));
    outputs
        .iter()
        .map(|e| {
            serde_json::from_str(
                e.as_str()
                    .expect("every element is a string, never an object"),
            )
            .expect("each string is JSON")
        })
        .collect()
}

#[tokio::test]
async fn every_change_becomes_one_cloudevent_in_the_outputs() {
    let app = app(2);
    let host = app.start().await;
    let mut docs = samples::order_batches(1, 1, 10, 3).remove(0);
    docs.extend(samples::all_versions_batch(500, 1_744_200_000));
    let body = cosmos_trigger_body("documents", "orders", &docs, None);
    let call = host.invoke("orders", &body).await.unwrap();
    assert_eq!(call.status, 200, "{:?}", call.logs());
    let events = cloudevents(&call);
    assert_eq!(events.len(), 14, "one event per change, deletes included");
    for e in &events {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["source"], "/cosmosdb/shop/orders");
        assert_eq!(e["datacontenttype"], "application/json");
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(e["subject"], e["data"]["id"]);
    }
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "com.example.order.deleted")
            .count(),
        1 + 2,
        "a soft delete, a hard delete, a TTL expiry"
    );
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "com.example.order.created")
            .count(),
        1
    );
    let hard = events
        .iter()
        .find(|e| e["cosmosdeletekind"] == "hard")
        .unwrap();
    assert_eq!(
        hard["data"],
        json!({"id": "order-avad", "partitionKey": ["customer-avad"]})
    );
    assert_eq!(hard["partitionkey"], "customer-avad");

    // A re-delivery produces the same event ids, so consumers can de-duplicate.
    let again = host
        .invoke("orders", &with_retry_context(&body, 1, 2))
        .await
        .unwrap();
    let ids = |es: &[Value]| {
        es.iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&cloudevents(&again)), ids(&events));
}

#[tokio::test]
async fn after_a_failed_answer_the_events_are_produced_again() {
    let app = app(3);
    std::fs::create_dir_all(app.table("")).unwrap();
    std::fs::write(app.table("tables"), "blocked").unwrap();
    let host = app.start().await;
    let body = cosmos_trigger_body(
        "documents",
        "orders",
        &samples::order_batches(1, 1, 5, 2).remove(0),
        None,
    );
    let first = host.invoke("orders", &body).await.unwrap();
    assert_eq!(first.status, 500, "the changelog is blocked");
    // The host discards Outputs of a failed invocation; the re-delivery must carry them again.
    std::fs::remove_file(app.table("tables")).unwrap();
    let retry = host
        .invoke("orders", &with_retry_context(&body, 1, 3))
        .await
        .unwrap();
    assert_eq!(retry.status, 200, "{:?}", retry.logs());
    assert_eq!(cloudevents(&retry).len(), 5);
    assert!(
        !retry.logged("sink events (event_hubs_binding): already delivered"),
        "{:?}",
        retry.logs()
    );
}

#[test]
fn the_binding_must_exist_in_function_json() {
    let app = app(1);
    let toml = std::fs::read_to_string(app.path().join("fanout.toml"))
        .unwrap()
        .replace("binding = \"events\"", "binding = \"changes\"");
    app.config(&toml);
    let out = app.run(&["check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out)
            .contains("orders/function.json has no `eventHub` output binding named `changes`"),
        "{}",
        common::stderr(&out)
    );
}

#[tokio::test]
async fn a_replay_never_counts_the_output_binding_as_sent() {
    let app = app(1);
    // Batches replayed from a file: no host receives `Outputs`, so the binding's events stay
    // in the dead-letter store instead of vanishing (the changelog gets them as usual).
    let docs = samples::order_batches(1, 1, 4, 3).remove(0);
    let file = app.path().join("batches.jsonl");
    std::fs::write(
        &file,
        cosmos_trigger_body("documents", "orders", &docs, None) + "\n",
    )
    .unwrap();
    let out = app.run(
        &[
            "replay",
            "--function",
            "orders",
            "--batches",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let pending = app.dead_letters();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(pending[0].starts_with("orders/events/"), "{pending:?}");
    let record = app.dead_letter(&pending[0]);
    assert_eq!(record["changes"].as_array().unwrap().len(), docs.len());
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("a replay has no host"),
        "{record}"
    );
    // Replaying that record again does not move it to replayed/: it was never sent.
    let out = app.run(&["replay"], &[]);
    assert!(!out.status.success());
    assert_eq!(app.dead_letters(), pending);
    assert_eq!(
        common::read_table(&app.table("tables/orders"))
            .await
            .rows
            .len(),
        docs.len()
    );
}
