//! The per-invocation summary an operator charts: one JSON line per invocation (with
//! FANOUT_LOG_FORMAT=json, as infra/ sets it) carrying function, batch size, per-sink outcome,
//! attempts and latency, dead-lettered count and lag; and every field the KQL in
//! infra/monitoring/fanout.kql reads is in those lines.

use fanout_test_kit as common;

use common::TestApp;
use fanout::hostsim::{cosmos_trigger_body, samples};
use serde_json::Value;
use std::collections::BTreeSet;

#[tokio::test]
async fn every_invocation_logs_one_json_summary_with_what_the_kql_reads() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(1)).config(
        r#"
[retry]
initial_backoff_ms = 10
max_backoff_ms = 20
budget_ms = 300

[functions.orders]
partition_key = "/customerId"

[functions.orders.sinks.changelog]
type = "delta"
table = "tables/orders"

[functions.orders.sinks.broken]
type = "delta"
table = "tables/broken"
"#,
    );
    std::fs::create_dir_all(app.table("tables")).unwrap();
    std::fs::write(
        app.table("tables/broken"),
        "a file where the table should be",
    )
    .unwrap();
    let handler = app
        .serve_logged(&[("FANOUT_LOG_FORMAT", "json"), ("FANOUT_LOG", "info")])
        .await;
    let port = handler.port;
    let docs = &samples::order_batches(1, 1, 20, 3)[0];
    let client = reqwest::Client::new();
    let post = |body: String| {
        client
            .post(format!("http://127.0.0.1:{port}/orders"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // First attempt: `broken` fails -> 500; the last attempt dead-letters it -> 200.
    let first = post(cosmos_trigger_body("documents", "orders", docs, None))
        .await
        .unwrap();
    assert_eq!(first.status(), 500);
    let retry = fanout::hostsim::with_retry_context(
        &cosmos_trigger_body("documents", "orders", docs, None),
        1,
        1,
    );
    let last = post(retry).await.unwrap();
    assert_eq!(last.status(), 200);
    let logs = handler.stop();
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let summary = |message: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["message"].as_str() == Some(message))
            .collect()
    };
    let failed = summary("batch failed; the host will re-deliver");
    let delivered = summary("batch delivered");
    assert_eq!(
        (failed.len(), delivered.len()),
        (1, 1),
        "one summary per invocation"
    );
    let (failed, delivered) = (&failed[0]["fields"], &delivered[0]["fields"]);
    assert_eq!(failed["function"], "orders");
    assert_eq!(failed["changes"], 20);
    let sinks = failed["sinks"].as_str().unwrap();
    assert!(sinks.contains("changelog=ok/1/"), "{sinks}");
    assert!(sinks.contains("broken=failed/"), "{sinks}");
    assert_eq!(delivered["dead_lettered"], 20);
    assert_eq!(delivered["retry"], 1);
    let sinks = delivered["sinks"].as_str().unwrap();
    assert!(sinks.contains("changelog=already/0/0"), "{sinks}");
    assert!(sinks.contains("broken=failed/"), "{sinks}");
    let lag = delivered["lag_s"].as_i64().unwrap();
    assert!(lag > 0, "lag = now - newest _ts: {lag}");

    // Every `e.fields.X` / `e.fields["X"]` the KQL reads is logged.
    let kql =
        std::fs::read_to_string(common::repo_root().join("infra/monitoring/fanout.kql")).unwrap();
    let mut read = BTreeSet::new();
    for part in kql.split("e.fields").skip(1) {
        let name: String = part
            .trim_start_matches(['.', '[', '"'])
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        read.insert(name);
    }
    assert!(read.contains("lag_s") && read.contains("sinks"), "{read:?}");
    for field in &read {
        assert!(
            delivered.get(field).is_some(),
            "the KQL reads `{field}`, which the summary does not log: {delivered}"
        );
    }
}
