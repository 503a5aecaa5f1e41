//! The Azure AI Search sink through the real binary: every request validated against
//! Microsoft's OpenAPI spec by Prism, and a stateful fake of the documents endpoint (named so:
//! no real service runs here) for partial failures, splitting, throttling and read-back.

use fanout_test_kit as common;

use common::TestApp;
use common::search::{PrismGate, SearchFake};
use fanout::hostsim::{cosmos_trigger_body, samples, with_retry_context};
use fanout::sinks::azure_search::{KeyEncoding, decode_key, encode_key};
use serde_json::{Value, json};
use std::time::Duration;

fn app(endpoint: &str, max_retry: Option<i64>, budget_ms: u64, extra: &str) -> TestApp {
    let app = TestApp::new();
    std::fs::create_dir_all(app.path().join("infra/search")).unwrap();
    std::fs::copy(
        common::repo_root().join("infra/search/orders.json"),
        app.path().join("infra/search/orders.json"),
    )
    .unwrap();
    app.function("orders", "documents", max_retry)
        .config(&format!(
            r#"
[retry]
initial_backoff_ms = 50
max_backoff_ms = 200
budget_ms = {budget_ms}

[functions.orders]
partition_key = "/customerId"
soft_delete = {{ field = "/deleted" }}

[functions.orders.sinks.search]
type = "azure_search"
endpoint = "{endpoint}"
index = "orders"
auth = "api_key"
api_key = "${{SEARCH_API_KEY:-test-admin-key}}"
index_definition = "infra/search/orders.json"
key = "id"
{extra}

[functions.orders.sinks.search.fields]
id = "/id"
customerId = "/customerId"
status = "/status"
total = "/total"
skus = "/lines/sku"
placedAt = "/_ts"
"#
        ));
    app
}

fn key(id: &str) -> String {
    encode_key(id, KeyEncoding::Base64url).unwrap()
}

/// Every change fed, with what the index should hold afterwards (last change per id).
fn expected(batches: &[Vec<Value>]) -> std::collections::BTreeMap<String, Value> {
    let mut state = std::collections::BTreeMap::new();
    for doc in batches.iter().flatten() {
        let id = doc["id"].as_str().unwrap().to_string();
        if doc.get("deleted").is_some() {
            state.remove(&id);
        } else {
            state.insert(id, doc["total"].clone());
        }
    }
    state
}

#[tokio::test]
async fn every_request_conforms_to_microsofts_openapi_spec() {
    let gate = PrismGate::start("key").await;
    let app = app(&gate.endpoint(), Some(1), 3000, "max_actions = 40");
    let host = app.start().await;
    let mut batches = samples::order_batches(1, 3, 60, 7);
    // Ids that need encoding, and every change shape: upserts, soft deletes, hard deletes.
    batches[0].push(samples::order(
        "order/with spaces+ünicode",
        "customer-1",
        999,
        1_744_170_999,
        1.0,
        false,
    ));
    let avad = samples::all_versions_batch(5000, 1_744_200_000);
    for docs in batches.iter().chain([&avad]) {
        let call = host
            .invoke(
                "orders",
                &cosmos_trigger_body("documents", "orders", docs, None),
            )
            .await
            .unwrap();
        assert_eq!(call.status, 200, "{:?}", call.logs());
        assert!(call.logged("documents indexed"), "{:?}", call.logs());
    }
    let state = gate.state.lock().unwrap();
    assert!(
        state.violations.is_empty(),
        "requests the spec rejects:\n{}",
        state.violations.join("\n")
    );
    assert!(
        state.accepted >= 6,
        "batches above 40 actions are split: {} requests",
        state.accepted
    );
    assert!(app.dead_letters().is_empty(), "{:?}", app.dead_letters());
}

#[tokio::test]
async fn prism_does_refuse_a_request_outside_the_spec() {
    // The gate is only worth something if Prism refuses what the spec forbids.
    let gate = PrismGate::start("key").await;
    let bad = reqwest::Client::new()
        .post(format!(
            "{}/indexes('orders')/docs/search.index?api-version=2025-09-01",
            gate.endpoint()
        ))
        .header("api-key", "k")
        .json(&json!({"value": [{"@search.action": "upsert", "key": "a"}]}))
        .send()
        .await
        .unwrap();
    assert!(!bad.status().is_success());
    assert_eq!(gate.state.lock().unwrap().violations.len(), 1);
}

#[tokio::test]
async fn partial_failures_splitting_throttling_and_the_resulting_index() {
    let fake = SearchFake::start("key").await;
    let batches = samples::order_batches(1, 4, 50, 5);
    {
        let mut s = fake.state.lock().unwrap();
        s.script.fail_once.insert(key("order-3"), 503);
        s.script.fail_once.insert(key("order-4"), 409);
        s.script.fail_once.insert(key("order-5"), 422);
        s.script.fail_always.insert(
            key("order-7"),
            (400, "The value of field 'total' is invalid".into()),
        );
        s.script.max_actions = Some(30);
        s.script.throttle.push_back((429, 1));
    }
    let app = app(&fake.endpoint(), Some(2), 5000, "");
    let host = app.start().await;
    let started = std::time::Instant::now();
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
    // 429 with Retry-After: 1 s was honoured before the first retry.
    {
        let s = fake.state.lock().unwrap();
        assert!(
            s.request_times[1] - s.request_times[0] >= Duration::from_millis(950),
            "Retry-After honoured"
        );
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        // 413 on more than 30 actions: the sink split and resent.
        assert!(
            s.requests
                .iter()
                .any(|&(n, status)| status == 413 && n > 30)
        );
        assert!(
            s.requests
                .iter()
                .filter(|&&(_, st)| st == 200 || st == 207)
                .all(|&(n, _)| n <= 30)
        );
        assert!(s.api_keys.iter().all(|k| k == "test-admin-key"));
    }
    assert!(started.elapsed() >= Duration::from_secs(1));

    // Re-deliveries change nothing.
    host.invoke(
        "orders",
        &with_retry_context(
            &cosmos_trigger_body("documents", "orders", &batches[1], None),
            1,
            2,
        ),
    )
    .await
    .unwrap();

    // The index holds the last state of every document, except the one the service refused.
    let mut want = expected(&batches);
    want.remove("order-7");
    let s = fake.state.lock().unwrap();
    let got: std::collections::BTreeMap<String, Value> = s
        .index
        .iter()
        .map(|(k, doc)| {
            (
                decode_key(k, KeyEncoding::Base64url).unwrap(),
                doc["total"].clone(),
            )
        })
        .collect();
    assert_eq!(got, want);
    // Projected and coerced: `_ts` became an ISO 8601 date, the lines a collection.
    let any = s.index.values().next().unwrap();
    assert!(any["placedAt"].as_str().unwrap().ends_with('Z'), "{any:?}");
    assert!(any["skus"].is_array());
    assert!(any.get("note").is_none(), "only projected fields");
    drop(s);

    // The 400 went to the dead-letter store with the service's message.
    let rejected: Vec<String> = app
        .dead_letters()
        .into_iter()
        .filter(|k| k.ends_with("rejected_changes.json"))
        .collect();
    assert!(!rejected.is_empty());
    let record = app.dead_letter(&rejected[0]);
    assert_eq!(record["changes"][0]["id"], json!("order-7"));
    assert!(
        record["reasons"][0]
            .as_str()
            .unwrap()
            .contains("The value of field 'total' is invalid"),
        "{record}"
    );
}

#[tokio::test]
async fn by_default_keys_include_the_partition_key_and_a_refused_change_keeps_its_predecessors() {
    let fake = SearchFake::start("key").await;
    let app = app(&fake.endpoint(), None, 2000, "");
    // The default key source: drop the test's `key = "id"` line.
    let toml = std::fs::read_to_string(app.path().join("fanout.toml"))
        .unwrap()
        .replace("key = \"id\"\n", "");
    app.config(&toml);
    let host = app.start().await;
    // Same id in two partitions: two documents, not one overwriting the other.
    let a = samples::order("profile", "tenant-a", 1, 1_744_170_000, 1.0, false);
    let b = samples::order("profile", "tenant-b", 2, 1_744_170_001, 2.0, false);
    // A delete followed by a create that cannot be coerced: the delete is still sent.
    let mut del = samples::order("o9", "tenant-a", 3, 1_744_170_002, 3.0, true);
    del["deleted"] = json!(true);
    let mut bad = samples::order("o9", "tenant-a", 4, 1_744_170_003, 3.0, false);
    bad["total"] = json!("n/a");
    fake.state.lock().unwrap().index.insert(
        encode_key(r#"["tenant-a","o9"]"#, KeyEncoding::Base64url).unwrap(),
        json!({"total": 9.0}).as_object().unwrap().clone(),
    );
    let call = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &[a, b, del, bad], None),
        )
        .await
        .unwrap();
    assert_eq!(call.status, 200, "{:?}", call.logs());
    let s = fake.state.lock().unwrap();
    let keys: Vec<String> = s
        .index
        .keys()
        .map(|k| decode_key(k, KeyEncoding::Base64url).unwrap())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.contains(&r#"["tenant-a","profile"]"#.to_string())
            && keys.contains(&r#"["tenant-b","profile"]"#.to_string()),
        "{keys:?}"
    );
    drop(s);
    let record = app.dead_letter(&app.dead_letters()[0]);
    assert_eq!(
        record["changes"][0]["lsn"],
        json!(4),
        "only the refused create is dead-lettered: {record}"
    );
}

#[tokio::test]
async fn values_that_cannot_be_coerced_are_dead_lettered_naming_the_field() {
    let fake = SearchFake::start("key").await;
    let app = app(&fake.endpoint(), None, 2000, "");
    let host = app.start().await;
    let mut bad = samples::order("o-bad", "c1", 1, 1_744_170_000, 1.0, false);
    bad["total"] = json!("a lot");
    let good = samples::order("o-good", "c1", 2, 1_744_170_001, 2.0, false);
    let call = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &[bad, good], None),
        )
        .await
        .unwrap();
    assert_eq!(call.status, 200);
    let keys = app.dead_letters();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let record = app.dead_letter(&keys[0]);
    assert_eq!(
        record["reasons"][0],
        json!("document `o-bad`: field `total` (from `/total`): \"a lot\" cannot be an Edm.Double")
    );
    assert_eq!(fake.state.lock().unwrap().index.len(), 1);
}

#[tokio::test]
async fn an_unreachable_service_is_retried_then_dead_lettered_then_replayed() {
    let port = fanout::hostsim::free_port().unwrap();
    let app = app(&format!("http://127.0.0.1:{port}"), Some(1), 500, "");
    let host = app.start().await;
    let docs = samples::order_batches(1, 1, 10, 3).remove(0);
    let calls = host
        .invoke_with_retries(
            "orders",
            &cosmos_trigger_body("documents", "orders", &docs, None),
            1,
            3,
        )
        .await
        .unwrap();
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![500, 200]
    );
    assert_eq!(app.dead_letters().len(), 1);
    // The service comes up (on that port): replay fills the index.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let state = std::sync::Arc::new(std::sync::Mutex::new(common::search::FakeState::default()));
    let router = axum::Router::new().fallback({
        let state = state.clone();
        move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let batch: Value = serde_json::from_slice(&body).unwrap();
                let mut results = Vec::new();
                for a in batch["value"].as_array().unwrap() {
                    let k = a["key"].as_str().unwrap().to_string();
                    state
                        .lock()
                        .unwrap()
                        .index
                        .insert(k.clone(), a.as_object().unwrap().clone());
                    results.push(json!({"key": k, "status": true, "statusCode": 201}));
                }
                axum::Json(json!({"value": results}))
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let out = tokio::task::spawn_blocking(move || {
        let o = app.run(&["replay"], &[]);
        (o, app)
    })
    .await
    .unwrap();
    assert!(
        out.0.status.success(),
        "{}{}",
        common::stdout(&out.0),
        common::stderr(&out.0)
    );
    assert_eq!(state.lock().unwrap().index.len(), 10);
}

#[tokio::test]
async fn replay_goes_in_feed_order_so_an_older_change_never_overwrites_a_newer_one() {
    // The service is down: two changes of one document are dead-lettered, one batch each.
    let port = fanout::hostsim::free_port().unwrap();
    let down = app(&format!("http://127.0.0.1:{port}"), None, 300, "");
    let host = down.start().await;
    let older = samples::order("o-1", "c1", 10, 1_744_170_000, 1.0, false);
    let newer = samples::order("o-1", "c1", 12, 1_744_170_009, 2.0, false);
    for doc in [&older, &newer] {
        let body = cosmos_trigger_body("documents", "orders", std::slice::from_ref(doc), None);
        assert_eq!(host.invoke("orders", &body).await.unwrap().status, 200);
    }
    drop(host);
    // Name the records so that key order puts the newer change first.
    let pending = down
        .path()
        .join(".fanout/dead-letter/pending/orders/search");
    let mut names: Vec<_> = std::fs::read_dir(&pending)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names.len(), 2);
    names.sort_by_key(|p| {
        let r: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        std::cmp::Reverse(r["changes"][0]["lsn"].as_i64().unwrap())
    });
    for (p, name) in names
        .iter()
        .zip(["0000-sink_failure.json", "ffff-sink_failure.json"])
    {
        std::fs::rename(p, pending.join(name)).unwrap();
    }
    // The service is back: replay.
    let fake = SearchFake::start("key").await;
    let config = std::fs::read_to_string(down.path().join("fanout.toml"))
        .unwrap()
        .replace(&format!("http://127.0.0.1:{port}"), &fake.endpoint());
    down.config(&config);
    let out = down.run_async(&["replay"]).await;
    assert!(out.status.success(), "{}", common::stderr(&out));
    let state = fake.state.lock().unwrap();
    assert_eq!(
        state.index[&key("o-1")]["total"],
        json!(2.0),
        "the newer change wins"
    );
}

/// `older` is dead-lettered while the app points at a dead port; then the service is back and
/// `newer` arrives live. Returns the app (pointing at the fake) with `older` pending.
async fn dead_lettered_then_live(
    fake: &SearchFake,
    older: &serde_json::Value,
    newer: &serde_json::Value,
) -> TestApp {
    let port = fanout::hostsim::free_port().unwrap();
    let app = app(
        &format!("http://127.0.0.1:{port}"),
        None,
        300,
        "version_field = \"cosmosVersion\"",
    );
    let host = app.start().await;
    let body = cosmos_trigger_body("documents", "orders", std::slice::from_ref(older), None);
    assert_eq!(host.invoke("orders", &body).await.unwrap().status, 200);
    drop(host);
    assert_eq!(app.dead_letters().len(), 1);
    let config = std::fs::read_to_string(app.path().join("fanout.toml"))
        .unwrap()
        .replace(&format!("http://127.0.0.1:{port}"), &fake.endpoint());
    app.config(&config);
    let host = app.start().await;
    let body = cosmos_trigger_body("documents", "orders", std::slice::from_ref(newer), None);
    let call = host.invoke("orders", &body).await.unwrap();
    assert_eq!(call.status, 200, "{:?}", call.logs());
    app
}

#[tokio::test]
async fn a_replayed_change_older_than_the_indexed_document_is_skipped() {
    let fake = SearchFake::start("key").await;
    let older = samples::order("o-1", "c1", 10, 1_744_170_000, 1.0, false);
    let newer = samples::order("o-1", "c1", 12, 1_744_170_009, 2.0, false);
    // The older change is dead-lettered; the newer one arrives live, with its version.
    let app = dead_lettered_then_live(&fake, &older, &newer).await;
    assert_eq!(
        fake.state.lock().unwrap().index[&key("o-1")]["cosmosVersion"],
        json!(12)
    );
    // Replaying the older change leaves the newer document in place.
    let out = app.run_async(&["replay"]).await;
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(app.dead_letters().is_empty());
    let state = fake.state.lock().unwrap();
    assert_eq!(
        state.index[&key("o-1")]["total"],
        json!(2.0),
        "the newer document stays"
    );
    assert!(state.violations.is_empty(), "{:?}", state.violations);
}

#[tokio::test]
async fn a_replayed_upsert_does_not_bring_back_a_document_deleted_since() {
    let fake = SearchFake::start("key").await;
    let older = samples::order("o-1", "c1", 10, 1_744_170_000, 1.0, false);
    let deleted = samples::order("o-1", "c1", 12, 1_744_170_009, 1.0, true);
    // The upsert is dead-lettered; the document is deleted live (a soft delete), and the
    // index holds nothing for it.
    let app = dead_lettered_then_live(&fake, &older, &deleted).await;
    assert!(!fake.state.lock().unwrap().index.contains_key(&key("o-1")));
    let tombstones = app
        .path()
        .join(".fanout/dead-letter/tombstones/orders/search");
    assert_eq!(
        std::fs::read_dir(&tombstones)
            .map(|d| d.count())
            .unwrap_or(0),
        1,
        "the delete is kept while the older upsert waits"
    );
    // Replaying the older upsert does not bring the document back; nothing waits any more,
    // so the tombstone goes.
    let out = app.run_async(&["replay"]).await;
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(app.dead_letters().is_empty());
    let state = fake.state.lock().unwrap();
    assert!(
        !state.index.contains_key(&key("o-1")),
        "a replayed upsert older than the delete resurrected the document: {:?}",
        state.index.get(&key("o-1"))
    );
    assert!(state.violations.is_empty(), "{:?}", state.violations);
    assert_eq!(
        std::fs::read_dir(&tombstones)
            .map(|d| d.count())
            .unwrap_or(0),
        1,
        "written within the last minute: kept until a later replay (clock-skew margin)"
    );
}

#[tokio::test]
async fn deletes_leave_no_tombstone_when_nothing_waits_for_replay() {
    let fake = SearchFake::start("key").await;
    let app = app(
        &fake.endpoint(),
        None,
        300,
        "version_field = \"cosmosVersion\"",
    );
    let host = app.start().await;
    let docs = [
        samples::order("o-1", "c1", 10, 1_744_170_000, 1.0, false),
        samples::order("o-1", "c1", 12, 1_744_170_009, 1.0, true),
    ];
    let body = cosmos_trigger_body("documents", "orders", &docs, None);
    assert_eq!(host.invoke("orders", &body).await.unwrap().status, 200);
    drop(host);
    assert!(!fake.state.lock().unwrap().index.contains_key(&key("o-1")));
    assert!(
        !app.path().join(".fanout/dead-letter/tombstones").exists(),
        "no write on the common path"
    );
}
