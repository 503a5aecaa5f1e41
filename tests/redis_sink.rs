//! The Redis sink against a real redis-server (installed by tests/setup.sh), through the real
//! binary and the emulated host.

use fanout_test_kit as common;

use common::{RedisServer, TestApp};
use fanout::hostsim::{cosmos_trigger_body, samples, with_retry_context};
use redis::Commands;
use serde_json::json;
use std::time::Duration;

fn app_with(redis_toml: &str, max_retry: Option<i64>, budget_ms: u64) -> TestApp {
    let app = TestApp::new();
    app.function("orders", "documents", max_retry).config(&format!(
        "[retry]\ninitial_backoff_ms = 50\nmax_backoff_ms = 200\nbudget_ms = {budget_ms}\n\n[functions.orders]\npartition_key = \"/customerId\"\nsoft_delete = {{ field = \"/deleted\" }}\n\n[functions.orders.sinks.cache]\ntype = \"redis\"\n{redis_toml}\n"
    ));
    app
}

fn seed(con: &mut redis::Connection, keys: &[&str]) {
    for k in keys {
        let _: () = con.set(*k, "cached").unwrap();
    }
}

fn exists(con: &mut redis::Connection, key: &str) -> bool {
    con.exists(key).unwrap()
}

#[tokio::test]
async fn invalidates_every_templated_key_on_upserts_and_deletes() {
    let redis = RedisServer::start();
    let app = app_with(
        &format!(
            "url = \"{}\"\nkeys = [\"order:{{id}}\", \"customer:{{customerId}}:orders\", \"region:{{shop/region}}:{{id}}\", \"pk:{{pk}}\"]\nchannel = \"invalidations\"",
            redis.url()
        ),
        Some(2),
        2000,
    );
    let host = app.start().await;
    let mut con = redis.client();
    // A subscriber, as a client-side cache would have.
    let mut sub = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe("invalidations").unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    // Upsert.
    let mut doc = samples::order("o1", "c1", 10, 100, 5.0, false);
    doc["shop"] = json!({"region": "eu"});
    seed(
        &mut con,
        &[
            "order:o1",
            "customer:c1:orders",
            "region:eu:o1",
            "pk:c1",
            "order:other",
        ],
    );
    let call = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &[doc.clone()], None),
        )
        .await
        .unwrap();
    assert_eq!(call.status, 200, "{:?}", call.logs());
    assert!(
        call.logged("4 keys invalidated for 1 changes in 1 pipeline"),
        "{:?}",
        call.logs()
    );
    for k in ["order:o1", "customer:c1:orders", "region:eu:o1", "pk:c1"] {
        assert!(!exists(&mut con, k), "{k} should be invalidated");
    }
    assert!(exists(&mut con, "order:other"), "unrelated keys stay");
    let msg: String = pubsub.get_message().unwrap().get_payload().unwrap();
    let msg: serde_json::Value = serde_json::from_str(&msg).unwrap();
    assert_eq!(msg["id"], "o1");
    assert_eq!(msg["operation"], "upsert");
    assert_eq!(msg["keys"].as_array().unwrap().len(), 4);

    // Soft delete (latest-version mode): same keys, from the body.
    seed(
        &mut con,
        &["order:o1", "customer:c1:orders", "region:eu:o1", "pk:c1"],
    );
    doc["deleted"] = json!(true);
    doc["_lsn"] = json!(11);
    host.invoke(
        "orders",
        &cosmos_trigger_body("documents", "orders", &[doc], None),
    )
    .await
    .unwrap();
    for k in ["order:o1", "customer:c1:orders", "region:eu:o1", "pk:c1"] {
        assert!(
            !exists(&mut con, k),
            "{k} should be invalidated by the soft delete"
        );
    }
    let msg: String = pubsub.get_message().unwrap().get_payload().unwrap();
    assert!(msg.contains("\"operation\":\"delete\""), "{msg}");

    // Hard delete (all-versions-and-deletes): no body; keys from id and partition key render,
    // the one needing a body field is refused and dead-lettered with the reason.
    seed(
        &mut con,
        &[
            "order:order-avad",
            "customer:customer-avad:orders",
            "pk:customer-avad",
        ],
    );
    let avad = samples::all_versions_batch(500, 1_744_200_000);
    let call = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &avad[2..3], None),
        )
        .await
        .unwrap();
    assert_eq!(call.status, 200);
    for k in [
        "order:order-avad",
        "customer:customer-avad:orders",
        "pk:customer-avad",
    ] {
        assert!(
            !exists(&mut con, k),
            "{k} should be invalidated by the hard delete"
        );
    }
    let rejected: Vec<String> = app
        .dead_letters()
        .into_iter()
        .filter(|k| k.ends_with("rejected_changes.json"))
        .collect();
    assert_eq!(rejected.len(), 1, "{:?}", app.dead_letters());
    let record = app.dead_letter(&rejected[0]);
    assert!(
        record["reasons"][0]
            .as_str()
            .unwrap()
            .contains("hard delete carries only the id and partition key, not `shop/region`"),
        "{record}"
    );
}

#[tokio::test]
async fn refresh_never_lets_an_older_change_overwrite_a_newer_one() {
    let redis = RedisServer::start();
    let app = app_with(
        &format!(
            "url = \"{}\"\nmode = \"refresh\"\nkey = \"order:{{id}}\"\nfields = [\"id\", \"status\", \"total\", \"lines\"]\nttl_seconds = 600",
            redis.url()
        ),
        Some(2),
        2000,
    );
    let host = app.start().await;
    let mut con = redis.client();
    let send =
        |docs: Vec<serde_json::Value>| cosmos_trigger_body("documents", "orders", &docs, None);
    let newer = samples::order("o1", "c1", 20, 200, 99.0, false);
    let older = samples::order("o1", "c1", 10, 100, 1.0, false);

    host.invoke("orders", &send(vec![newer.clone()]))
        .await
        .unwrap();
    let value: String = con.get("order:o1").unwrap();
    let value: serde_json::Value = serde_json::from_str(&value).unwrap();
    assert_eq!(value["total"], json!(99.0));
    assert!(
        value.get("_rid").is_none() && value.get("note").is_none(),
        "projection only: {value}"
    );
    let ttl: i64 = con.ttl("order:o1").unwrap();
    assert!(ttl > 0 && ttl <= 600, "{ttl}");

    // An older change re-delivered (or replayed) after the newer one: the newer value stays.
    let call = host
        .invoke(
            "orders",
            &with_retry_context(&send(vec![older.clone()]), 1, 2),
        )
        .await
        .unwrap();
    assert!(
        call.logged("0 keys written, 1 older changes skipped"),
        "{:?}",
        call.logs()
    );
    let value: String = con.get("order:o1").unwrap();
    assert!(value.contains("99.0"), "{value}");
    // Within one batch, feed order: older then newer leaves the newer.
    host.invoke(
        "orders",
        &send(vec![
            samples::order("o2", "c1", 5, 50, 5.0, false),
            samples::order("o2", "c1", 6, 60, 6.0, false),
        ]),
    )
    .await
    .unwrap();
    assert!(con.get::<_, String>("order:o2").unwrap().contains("6.0"));

    // A delete removes it; a late older upsert does not resurrect it (the tombstone version).
    let mut deleted = samples::order("o1", "c1", 30, 300, 99.0, true);
    deleted["deleted"] = json!(true);
    host.invoke("orders", &send(vec![deleted])).await.unwrap();
    assert!(!exists(&mut con, "order:o1"));
    host.invoke("orders", &send(vec![newer])).await.unwrap();
    assert!(
        !exists(&mut con, "order:o1"),
        "an older upsert must not resurrect a deleted key"
    );
    // A newer change after the delete is written.
    host.invoke(
        "orders",
        &send(vec![samples::order("o1", "c1", 40, 400, 7.0, false)]),
    )
    .await
    .unwrap();
    assert!(con.get::<_, String>("order:o1").unwrap().contains("7.0"));
}

#[tokio::test]
async fn redis_outages_are_retried_or_dead_lettered_and_replayed() {
    let mut redis = RedisServer::start();
    let app = app_with(
        &format!(
            "url = \"{}\"\nmode = \"refresh\"\nkey = \"order:{{id}}\"\nconnect_timeout_ms = 300\nresponse_timeout_ms = 300",
            redis.url()
        ),
        Some(1),
        4000,
    );
    let host = app.start().await;
    let batches = samples::order_batches(100, 3, 20, 4);
    let body = |i: usize| cosmos_trigger_body("documents", "orders", &batches[i], None);
    assert_eq!(host.invoke("orders", &body(0)).await.unwrap().status, 200);

    // Outage shorter than the retry budget: the in-flight batch is retried and lands.
    redis.kill();
    let port = host.port();
    let b1 = body(1);
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/orders"))
            .body(b1)
            .send()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.restart();
    let response = in_flight.await.unwrap();
    assert_eq!(response.status(), 200);
    let logs: serde_json::Value = response.json().await.unwrap();
    assert!(logs["Logs"].to_string().contains("attempts"), "{logs}");

    // Outage longer than the budget, on the policy's last attempt: dead-lettered, then replayed.
    redis.kill();
    let calls = host
        .invoke_with_retries("orders", &body(2), 1, 3)
        .await
        .unwrap();
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![500, 200]
    );
    assert_eq!(app.dead_letters().len(), 1, "{:?}", app.dead_letters());
    redis.restart();
    let out = app.run(&["replay"], &[]);
    assert!(
        out.status.success(),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    // Every key holds the newest version of its order after the replay.
    let mut con = redis.client();
    let mut newest = std::collections::HashMap::new();
    for doc in batches.iter().flatten() {
        newest.insert(doc["id"].as_str().unwrap().to_string(), doc.clone());
    }
    for (id, doc) in newest {
        let key = format!("order:{id}");
        if doc.get("deleted").is_some() {
            assert!(!exists(&mut con, &key), "{key} was deleted last");
        } else {
            let v: String = con
                .get(&key)
                .unwrap_or_else(|_| panic!("{key} missing after replay"));
            let v: serde_json::Value = serde_json::from_str(&v).unwrap();
            assert_eq!(v["total"], doc["total"], "{key}");
        }
    }
}

#[tokio::test]
async fn tls_connection_with_a_private_ca() {
    let redis = RedisServer::start_tls();
    let app = app_with(
        &format!(
            "url = \"{}\"\nkeys = [\"order:{{id}}\"]\nca_file = \"{}\"",
            redis.url(),
            redis.ca_file().display()
        ),
        None,
        2000,
    );
    let host = app.start().await;
    let call = host
        .invoke(
            "orders",
            &common::captured("cosmos-trigger-request-1-multi.json"),
        )
        .await
        .unwrap();
    assert_eq!(call.status, 200, "{:?}", call.logs());
    assert!(call.logged("2 keys invalidated"), "{:?}", call.logs());
    assert!(app.dead_letters().is_empty());
    // Without the CA the server's certificate is refused: the batch is not reported as done.
    let app2 = app_with(
        &format!("url = \"{}\"\nkeys = [\"order:{{id}}\"]", redis.url()),
        None,
        300,
    );
    let host2 = app2.start().await;
    let call = host2
        .invoke("orders", &common::captured("cosmos-trigger-request-1.json"))
        .await
        .unwrap();
    assert!(
        call.logged("dead-lettered 1 change from `cache`"),
        "{:?}",
        call.logs()
    );
}

#[tokio::test]
async fn cluster_mode_reaches_keys_in_every_slot() {
    let cluster = common::RedisCluster::start();
    let app = app_with(
        &format!(
            "url = \"{}\"\ncluster = true\nkeys = [\"order:{{id}}\", \"customer:{{customerId}}:orders\", \"{{{{tenant:{{customerId}}}}}}:recent\"]",
            cluster.url()
        ),
        Some(1),
        3000,
    );
    let host = app.start().await;
    let mut con = cluster.client();
    let docs = samples::order_batches(1, 1, 40, 6).remove(0);
    let mut keys = Vec::new();
    for d in &docs {
        let (id, customer) = (d["id"].as_str().unwrap(), d["customerId"].as_str().unwrap());
        keys.push(format!("order:{id}"));
        keys.push(format!("customer:{customer}:orders"));
        keys.push(format!("{{tenant:{customer}}}:recent"));
    }
    let slots: std::collections::HashSet<u16> = keys
        .iter()
        .map(|k| fanout::sinks::redis::cluster_slot(k))
        .collect();
    assert!(slots.len() > 20, "the keys spread over many slots");
    for k in &keys {
        let _: () = con.set(k, "cached").unwrap();
    }
    let call = common::deliver_ok(&host, "orders", &docs).await;
    assert!(
        call.logged("keys invalidated for 40 changes pipelined per node"),
        "{:?}",
        call.logs()
    );
    for k in &keys {
        assert!(!con.exists::<_, bool>(k).unwrap(), "{k} still cached");
    }
    // Refresh mode in the cluster too: the script is loaded on every primary.
    let app2 = app_with(
        &format!(
            "url = \"{}\"\ncluster = true\nmode = \"refresh\"\nkey = \"order:{{id}}\"",
            cluster.url()
        ),
        None,
        3000,
    );
    let host2 = app2.start().await;
    let call = host2
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &docs, None),
        )
        .await
        .unwrap();
    assert!(call.logged("40 keys written"), "{:?}", call.logs());
    let v: String = con.get("order:order-1").unwrap();
    assert!(v.contains("customer-1"), "{v}");
}
