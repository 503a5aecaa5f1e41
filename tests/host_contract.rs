//! The Functions host's wire contract, pinned against the bodies captured from the real host
//! (handlers/hostsim/captured, copied verbatim from the shared reference), and the real
//! binary driven the way the host drives it.

use fanout_test_kit as common;

use common::{TestApp, captured};
use fanout::change::{Normalizer, Operation, PartitionKeyPaths};
use fanout::host::HostRequest;
use fanout::hostsim::cosmos_trigger_body;
use serde_json::json;

const ORDERS_TOML: &str = r#"
[functions.orders]
partition_key = "/customerId"
[functions.orders.sinks.changelog]
type = "delta"
table = "tables/orders"
"#;

fn normalize(body: &str, pk: &str) -> Vec<fanout::change::Change> {
    let request = HostRequest::decode(body.as_bytes(), "documents").expect("captured body decodes");
    let n = Normalizer::new(PartitionKeyPaths::parse(&[pk]).unwrap(), None);
    request
        .items
        .into_iter()
        .enumerate()
        .map(|(i, item)| n.normalize(i, item).expect("normalizes"))
        .collect()
}

#[test]
fn captured_single_document_body() {
    let body = captured("cosmos-trigger-request-1.json");
    let request = HostRequest::decode(body.as_bytes(), "documents").unwrap();
    assert_eq!(
        request.sys.method_name.as_deref(),
        Some("cosmosdbprocessor")
    );
    assert_eq!(
        request.sys.rand_guid.as_deref(),
        Some("0d00378b-6426-4af1-9fc0-0793f4ce3745")
    );
    assert_eq!(request.retry, fanout::host::RetryState::FirstOrUnknown);
    let changes = normalize(&body, "/customerId");
    assert_eq!(changes.len(), 1);
    let c = &changes[0];
    assert_eq!(c.id, "dfa26d32-f876-44a3-b107-369f1f48c689");
    assert_eq!(c.operation, Operation::Upsert);
    assert_eq!((c.lsn, c.ts), (Some(160), Some(1744173970)));
    // `_etag` carries literal quotes through two layers of encoding.
    assert_eq!(
        c.etag.as_deref(),
        Some("\"0f007efc-0000-0800-0000-67f5fb920000\"")
    );
    // No customerId: Cosmos' "none" partition, not an error.
    assert!(c.partition_key.is_none());
    assert_eq!(
        c.document.as_ref().unwrap()["description"],
        json!("Setup monitoring")
    );
}

#[test]
fn captured_multi_document_body_keeps_feed_order() {
    let changes = normalize(&captured("cosmos-trigger-request-1-multi.json"), "/id");
    let got: Vec<(&str, Option<i64>, Option<i64>)> = changes
        .iter()
        .map(|c| (c.id.as_str(), c.lsn, c.ts))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "51e0c1b0-87d3-4611-ac41-7ac3e77d9920",
                Some(161),
                Some(1744174180)
            ),
            (
                "cfbf42b9-48e8-449b-9cff-17c6fbd00f83",
                Some(162),
                Some(1744174183)
            ),
        ]
    );
    assert_eq!(
        changes[0].partition_key.as_key_string(),
        "51e0c1b0-87d3-4611-ac41-7ac3e77d9920"
    );
}

#[test]
fn captured_body_with_partition_key_field() {
    let changes = normalize(&captured("cosmos-trigger-request-2.json"), "/_partitionKey");
    assert_eq!(changes.len(), 1);
    let c = &changes[0];
    assert_eq!(c.id, "ArtHabitat_AHProj055_AHFlat681");
    assert_eq!(c.partition_key.as_key_string(), "salzburg");
    assert_eq!(c.partition_key.to_wire(), r#"["salzburg"]"#);
    assert_eq!((c.lsn, c.ts), (Some(94), Some(1713122455)));
    let doc = c.document.as_ref().unwrap();
    assert_eq!(doc["salePrice"], json!(null));
    assert_eq!(doc["roomCount"], json!(2));
}

#[test]
fn emulated_host_body_matches_the_captured_layering() {
    // Our emulator must produce what the real host produces: Data.documents is a JSON string
    // whose content is a JSON string whose content is the array.
    let captured: serde_json::Value =
        serde_json::from_str(&captured("cosmos-trigger-request-1.json")).unwrap();
    let ours: serde_json::Value = serde_json::from_str(&cosmos_trigger_body(
        "documents",
        "orders",
        &[json!({"id": "a"})],
        None,
    ))
    .unwrap();
    for v in [&captured, &ours] {
        let layer1 = v["Data"]["documents"]
            .as_str()
            .expect("layer 1 is a string");
        let layer2: serde_json::Value = serde_json::from_str(layer1).unwrap();
        let layer2 = layer2.as_str().expect("layer 2 is a string");
        let array: serde_json::Value = serde_json::from_str(layer2).unwrap();
        assert!(array.is_array());
        let sys = v["Metadata"]["sys"].as_object().unwrap();
        let mut keys: Vec<&String> = sys.keys().collect();
        keys.sort();
        assert_eq!(keys, ["MethodName", "RandGuid", "UtcNow"]);
    }
}

#[tokio::test]
async fn serves_readiness_invocations_and_clear_errors() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(2))
        .config(ORDERS_TOML);
    let host = app.start().await;
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", host.port());

    // Readiness: `/` answers at once, to any method.
    assert_eq!(client.get(&base).send().await.unwrap().status(), 200);
    assert_eq!(client.head(&base).send().await.unwrap().status(), 200);

    // Every captured real body goes through the real HTTP path.
    for name in [
        "cosmos-trigger-request-1.json",
        "cosmos-trigger-request-1-multi.json",
        "cosmos-trigger-request-2.json",
    ] {
        let call = host.invoke("orders", &captured(name)).await.unwrap();
        assert_eq!(call.status, 200, "{name}: {:?}", call.body);
        let body = call.body.as_object().unwrap();
        assert!(
            body.contains_key("Outputs") && body.contains_key("ReturnValue"),
            "{body:?}"
        );
        let logs = call.logs();
        assert!(logs[0].starts_with("fanout orders: "), "{logs:?}");
        assert!(
            logs.iter()
                .any(|l| l.starts_with("sink changelog (delta): delivered")),
            "{logs:?}"
        );
    }
    let table = common::read_table(&app.table("tables/orders")).await;
    assert_eq!(table.rows.len(), 4);

    // Unknown function: kept in the dead-letter store (the trigger would checkpoint a refused
    // batch away), with a message that names the fix.
    let call = host
        .invoke("payments", &captured("cosmos-trigger-request-1.json"))
        .await
        .unwrap();
    assert_eq!(call.status, 200);
    assert!(
        call.logs()[0].contains("no route for function `payments`; routed functions: orders"),
        "{:?}",
        call.logs()
    );
}

#[tokio::test]
async fn an_oversized_body_is_dead_lettered_whole_and_replayable() {
    let app = TestApp::new();
    app.function("orders", "documents", None)
        .config(&format!("[server]\nmax_body_bytes = 4096\n{ORDERS_TOML}"));
    let host = app.start().await;
    let big: Vec<serde_json::Value> = (0..20)
        .map(|i| json!({"id": format!("o{i}"), "pad": "x".repeat(500)}))
        .collect();
    let body = cosmos_trigger_body("documents", "orders", &big, None);
    let call = host.invoke("orders", &body).await.unwrap();
    // Not refused (the trigger would checkpoint it away): kept, byte for byte.
    assert_eq!(call.status, 200, "{:?}", call.logs());
    assert!(
        call.logged("exceeds server.max_body_bytes (4096)"),
        "{:?}",
        call.logs()
    );
    let pending = app.dead_letters();
    let stored = pending
        .iter()
        .find(|k| k.ends_with("-oversized.body"))
        .expect("the body is stored");
    let stored =
        std::fs::read_to_string(app.path().join(".fanout/dead-letter/pending").join(stored))
            .unwrap();
    assert_eq!(stored, body);
    assert!(
        pending.iter().any(|k| k.ends_with("malformed_batch.json")),
        "{pending:?}"
    );
    // The server is still healthy afterwards.
    let small = host
        .invoke("orders", &captured("cosmos-trigger-request-1.json"))
        .await
        .unwrap();
    assert_eq!(small.status, 200);
    // Replay (offline, no request limit) delivers it and moves record and body to replayed/.
    let out = app.run(&["replay"], &[]);
    assert!(
        out.status.success(),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    assert!(app.dead_letters().is_empty(), "{:?}", app.dead_letters());
    assert_eq!(
        common::read_table(&app.table("tables/orders"))
            .await
            .rows
            .len(),
        21
    );
}

#[tokio::test]
async fn sigterm_finishes_the_in_flight_batch() {
    let app = TestApp::new();
    app.function("orders", "documents", None).config(&format!(
        "[retry]\ninitial_backoff_ms = 100\nmax_backoff_ms = 200\nbudget_ms = 20000\n{ORDERS_TOML}"
    ));
    // Block the table folder with a file: the sink fails and keeps retrying.
    std::fs::write(app.table("tables"), "not a folder").unwrap();
    let mut host = app.start().await;
    let port = host.port();
    let body = captured("cosmos-trigger-request-1-multi.json");
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/orders"))
            .body(body)
            .send()
            .await
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !in_flight.is_finished(),
        "the batch should still be retrying"
    );
    // SIGTERM while the batch is in flight, then let the sink recover.
    let pid = host.pid().unwrap() as i32;
    unsafe { libc_kill(pid) };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    std::fs::remove_file(app.table("tables")).unwrap();
    let response = in_flight.await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "the in-flight batch finished after SIGTERM"
    );
    let status = host.terminate();
    assert!(
        status.map(|s| s.success()).unwrap_or(true),
        "clean exit: {status:?}"
    );
    assert_eq!(
        common::read_table(&app.table("tables/orders"))
            .await
            .rows
            .len(),
        2
    );
}

unsafe fn libc_kill(pid: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    unsafe {
        kill(pid, 15);
    }
}
