//! The paths where a batch could vanish without a trace, through the real binary: a dead-letter
//! store that fails on the last attempt (with and without a fallback), a function with no route,
//! a process killed during its last attempt (the write-ahead record), reserved sink names, and
//! the `CHANGES LOST` line every path that can end in a checkpoint logs when nothing kept it.

use fanout_test_kit as common;

use common::{TestApp, read_table};
use fanout::hostsim::{cosmos_trigger_body, with_retry_context};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const ORDERS: &str = "[functions.orders]\npartition_key = \"/customerId\"\n\n[functions.orders.sinks.changelog]\ntype = \"delta\"\ntable = \"tables/orders\"\n";

fn docs(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| json!({"id": format!("o{i}"), "customerId": format!("c{}", i % 3), "_lsn": 100 + i, "_ts": 1_700_000_000 + i}))
        .collect()
}

/// Makes every write under the local store at `root` fail: `pending/` and `in-flight/`
/// become plain files.
fn break_store(root: &Path) {
    for area in ["pending", "in-flight"] {
        let p = root.join(area);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(root).unwrap();
        std::fs::write(&p, b"not a folder").unwrap();
    }
}

fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn sink_names_fanout_uses_itself_are_refused() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(1)).config(
        "[functions.orders]\npartition_key = \"/customerId\"\n[functions.orders.sinks._input]\ntype = \"delta\"\ntable = \"t\"\n",
    );
    let out = app.run(&["check-config"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stdout(&out));
    let text = common::stderr(&out);
    assert!(
        text.contains("functions.orders.sinks._input: sink names starting with `_` are reserved"),
        "{text}"
    );
}

#[tokio::test]
async fn a_malformed_last_attempt_with_no_store_logs_changes_lost() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(2)).config(ORDERS);
    let handler = app
        .serve_logged(&[("FANOUT_LOG", "warn"), ("FANOUT_LOG_FORMAT", "json")])
        .await;
    break_store(&app.path().join(".fanout/dead-letter"));
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/orders", handler.port);
    // `Data.documents` is not an array: retrying cannot help. Last attempt (2 of 2).
    let body = json!({"Data": {"documents": "{\"not\": \"an array\"}"}, "Metadata": {"RetryContext": {"RetryCount": 2, "MaxRetryCount": 2}}}).to_string();
    let answer: serde_json::Value = client
        .post(&url)
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let logs = answer["Logs"].to_string();
    assert!(logs.contains("CHANGES LOST: fanout orders"), "{logs}");
    // A first attempt of the same: no alarm, the host re-delivers it.
    let first = json!({"Data": {"documents": "{\"not\": \"an array\"}"}, "Metadata": {"RetryContext": {"RetryCount": 0, "MaxRetryCount": 2}}}).to_string();
    let reply = client.post(&url).body(first).send().await.unwrap();
    assert_eq!(reply.status(), 500);
    let logged = handler.stop();
    assert_eq!(
        logged.matches("CHANGES LOST").count(),
        1,
        "exactly the last attempt alarms:\n{logged}"
    );
    let alarm = logged.lines().find(|l| l.contains("CHANGES LOST")).unwrap();
    let alarm: serde_json::Value = serde_json::from_str(alarm).unwrap();
    assert_eq!(alarm["level"], "ERROR");
    assert_eq!(alarm["fields"]["function"], "orders");
    assert_eq!(alarm["fields"]["count"], 1);
    assert_eq!(alarm["fields"]["certain"], true);
}

#[tokio::test]
async fn the_fallback_store_keeps_what_the_primary_cannot() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(1)).config(&format!(
        "[dead_letter]\nurl = \".fanout/dead-letter\"\n[dead_letter.fallback]\nurl = \"fallback-dl\"\n\n[retry]\ninitial_backoff_ms = 10\nmax_backoff_ms = 20\nbudget_ms = 200\n\n{ORDERS}"
    ));
    let out = app.run(&["check-config"], &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        common::stdout(&out).contains("dead-letter fallback: fallback-dl"),
        "{}",
        common::stdout(&out)
    );
    let handler = app.serve_logged(&[("FANOUT_LOG", "warn")]).await;
    break_store(&app.path().join(".fanout/dead-letter"));
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/orders", handler.port);
    // A malformed batch and a batch whose sink fails on its last attempt (the table folder is
    // a file): both end in the fallback, answered 200, no alarm.
    std::fs::create_dir_all(app.path().join("tables")).unwrap();
    std::fs::write(app.path().join("tables/orders"), b"not a table").unwrap();
    let malformed = json!({"Data": {"documents": 7}}).to_string();
    let reply = client.post(&url).body(malformed).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    let body = cosmos_trigger_body("documents", "orders", &docs(3), Some((1, 1)));
    let reply = client.post(&url).body(body).send().await.unwrap();
    // The last attempt: what failed is dead-lettered (here: to the fallback), then 2xx.
    assert_eq!(reply.status(), 200);
    let logged = handler.stop();
    assert!(!logged.contains("CHANGES LOST"), "{logged}");
    let kept = files_under(&app.path().join("fallback-dl/pending"));
    assert!(
        kept.iter()
            .any(|k| k.starts_with("orders/_input/") && k.ends_with("-malformed_batch.json"))
            && kept
                .iter()
                .any(|k| k.starts_with("orders/changelog/") && k.ends_with("-sink_failure.json")),
        "{kept:?}"
    );
    // Replay finds the fallback's records (the primary is back, the table fixed).
    std::fs::remove_file(app.path().join("tables/orders")).unwrap();
    for area in ["pending", "in-flight"] {
        std::fs::remove_file(app.path().join(".fanout/dead-letter").join(area)).unwrap();
    }
    let out = app.run(
        &["replay", "--function", "orders", "--sink", "changelog"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    assert_eq!(read_table(&app.table("tables/orders")).await.rows.len(), 3);
    let left = files_under(&app.path().join("fallback-dl/pending"));
    assert_eq!(left.len(), 1, "only the malformed batch stays: {left:?}");
}

#[tokio::test]
async fn a_batch_for_a_function_with_no_route_is_kept_not_refused() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(1)).config(ORDERS);
    // The handler logs the missing route as an error; the answer's Logs say it too.
    let host = app.start_with(&[("FANOUT_LOG", "off")]).await;
    let body = cosmos_trigger_body("documents", "payments", &docs(2), None);
    let call = host.invoke("payments", &body).await.unwrap();
    assert_eq!(call.status, 200, "{:?}", call.logs());
    assert!(
        call.logged("no route for function `payments`; routed functions: orders"),
        "{:?}",
        call.logs()
    );
    let pending = app.dead_letters();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(pending[0].starts_with("payments/_input/"), "{pending:?}");
    let record = app.dead_letter(&pending[0]);
    assert_eq!(record["raw_body"].as_str(), Some(body.as_str()));
}

#[tokio::test]
async fn a_process_killed_during_its_last_attempt_loses_nothing() {
    // A Redis sink whose server accepts and never answers keeps the last attempt busy.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let app = TestApp::new();
    let with_cache = format!(
        "[retry]\ninitial_backoff_ms = 50\nmax_backoff_ms = 100\nbudget_ms = 20000\n\n{ORDERS}\n[functions.orders.sinks.cache]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\nkeys = [\"order:{{id}}\"]\n"
    );
    app.function("orders", "documents", Some(3))
        .config(&with_cache);
    let mut host = app.start().await;
    let body = with_retry_context(
        &cosmos_trigger_body("documents", "orders", &docs(5), None),
        3,
        3,
    );
    let port = host.port();
    let call = tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/orders"))
            .body(body)
            .send()
            .await;
    });
    // Wait for the write-ahead record, then kill the handler mid-attempt.
    let in_flight = app.path().join(".fanout/dead-letter/in-flight");
    let started = std::time::Instant::now();
    while files_under(&in_flight).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no write-ahead record"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.kill();
    let _ = call.await;
    drop(silent);
    // Nothing was delivered and no dead-letter record was written: only the write-ahead
    // record knows the batch. Replay (here: without the broken cache) finds and delivers it.
    assert!(app.dead_letters().is_empty(), "{:?}", app.dead_letters());
    app.config(ORDERS);
    let out = app.run(&["replay"], &[]);
    let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 unfinished last attempts"), "{text}");
    assert_eq!(read_table(&app.table("tables/orders")).await.rows.len(), 5);
    assert!(files_under(&in_flight).is_empty());
}

#[tokio::test]
async fn a_finished_last_attempt_leaves_no_write_ahead_record() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(1)).config(ORDERS);
    let host = app.start().await;
    let body = cosmos_trigger_body("documents", "orders", &docs(4), Some((1, 1)));
    let call = host.invoke("orders", &body).await.unwrap();
    assert_eq!(call.status, 200, "{:?}", call.logs());
    assert!(files_under(&app.path().join(".fanout/dead-letter/in-flight")).is_empty());
    assert!(app.dead_letters().is_empty());
}

#[test]
fn check_config_warns_about_all_versions_mode_combinations_that_cannot_work() {
    let app = TestApp::new();
    std::fs::create_dir_all(app.path().join("orders")).unwrap();
    std::fs::write(
        app.path().join("orders/function.json"),
        json!({"bindings": [{"type": "cosmosDBTrigger", "name": "documents", "direction": "in", "connection": "CosmosDBConnection",
            "databaseName": "shop", "containerName": "orders", "leaseContainerName": "leases",
            "changeFeedMode": "AllVersionsAndDeletes", "startFromBeginning": true, "startFromTime": "2026-01-01T00:00:00Z"}]})
        .to_string(),
    )
    .unwrap();
    app.config(
        "[functions.orders]\npartition_key = \"/customerId\"\nsoft_delete = { field = \"/deleted\" }\n[functions.orders.sinks.changelog]\ntype = \"delta\"\ntable = \"t\"\n"
    );
    let out = app.run(&["check-config"], &[]);
    let text = common::stdout(&out);
    assert!(out.status.success(), "{}", common::stderr(&out));
    for needle in [
        "`startFromBeginning` cannot be used with changeFeedMode `AllVersionsAndDeletes`",
        "`startFromTime` cannot be used with changeFeedMode `AllVersionsAndDeletes`",
        "soft_delete: with changeFeedMode `AllVersionsAndDeletes` hard deletes",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    // The repo's own function (latest version) warns about none of it.
    let out = std::process::Command::new(common::binary())
        .args(["check-config", "--app-root"])
        .arg(common::repo_root())
        .output()
        .unwrap();
    assert!(!common::stdout(&out).contains("changeFeedMode"));
    // An unknown mode is refused with the two it may be.
    std::fs::write(
        app.path().join("orders/function.json"),
        json!({"bindings": [{"type": "cosmosDBTrigger", "name": "documents", "direction": "in", "changeFeedMode": "Incremental"}]}).to_string(),
    )
    .unwrap();
    let out = app.run(&["check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("changeFeedMode `Incremental` is not a mode"),
        "{}",
        common::stderr(&out)
    );
}

#[tokio::test]
async fn soft_delete_markers_are_deletes_in_all_versions_mode_too() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(1)).config(
        "[functions.orders]\npartition_key = \"/customerId\"\nsoft_delete = { field = \"/deleted\" }\n[functions.orders.sinks.changelog]\ntype = \"delta\"\ntable = \"tables/orders\"\n",
    );
    let host = app.start().await;
    let item = |id: &str, deleted: bool, lsn: i64| {
        json!({"current": {"id": id, "customerId": "c1", "deleted": deleted, "_ts": 1_700_000_000 + lsn},
               "metadata": {"operationType": "replace", "lsn": lsn, "crts": 1_700_000_000 + lsn}})
    };
    let body = cosmos_trigger_body(
        "documents",
        "orders",
        &[item("a", false, 1), item("b", true, 2)],
        None,
    );
    let call = host.invoke("orders", &body).await.unwrap();
    assert_eq!(call.status, 200, "{:?}", call.logs());
    let table = read_table(&app.table("tables/orders")).await;
    let ops: Vec<(String, String)> = table
        .rows
        .iter()
        .map(|r| (r.id.clone(), r.operation.clone()))
        .collect();
    assert!(ops.contains(&("a".into(), "replace".into())), "{ops:?}");
    assert!(ops.contains(&("b".into(), "delete".into())), "{ops:?}");
}

#[tokio::test]
async fn a_re_cut_re_delivery_adds_only_the_changes_the_changelog_lacks() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(3)).config(ORDERS);
    let host = app.start().await;
    let doc = |id: &str, pk: &str, lsn: i64| json!({"id": id, "customerId": pk, "_lsn": lsn, "_ts": 1_700_000_000 + lsn});
    let first = [doc("A", "c1", 10), doc("B", "c1", 11), doc("C", "c2", 12)];
    // The host re-delivers from the same checkpoint; A was updated meanwhile, so the
    // latest-version feed cuts the batch differently and starts with B.
    let re_cut = [doc("B", "c1", 11), doc("C", "c2", 12), doc("A", "c1", 15)];
    for (docs, retry) in [(&first[..], 0), (&re_cut[..], 1)] {
        let body = cosmos_trigger_body("documents", "orders", docs, Some((retry, 3)));
        let call = host.invoke("orders", &body).await.unwrap();
        assert_eq!(call.status, 200, "{:?}", call.logs());
    }
    let table = read_table(&app.table("tables/orders")).await;
    let mut rows: Vec<(String, Option<i64>)> =
        table.rows.iter().map(|r| (r.id.clone(), r.lsn)).collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("A".to_string(), Some(10)),
            ("A".to_string(), Some(15)),
            ("B".to_string(), Some(11)),
            ("C".to_string(), Some(12))
        ],
        "4 distinct changes, once each"
    );
    // Replaying the same batches (offline) adds nothing either.
    let file = app.path().join("again.jsonl");
    std::fs::write(
        &file,
        format!(
            "{}\n{}\n",
            cosmos_trigger_body("documents", "orders", &first, None),
            cosmos_trigger_body("documents", "orders", &re_cut, None)
        ),
    )
    .unwrap();
    drop(host);
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
    assert_eq!(
        read_table(&app.table("tables/orders"))
            .await
            .summary()
            .duplicate_rows,
        0
    );
    assert_eq!(read_table(&app.table("tables/orders")).await.rows.len(), 4);
}

#[test]
fn check_config_warns_when_a_refresh_key_leaves_the_partition_key_out() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(1));
    for (key, warned) in [
        ("order:{id}", true),
        ("order:{pk}:{id}", false),
        ("order:{customerId}:{id}", false),
    ] {
        app.config(&format!(
            "[functions.orders]\npartition_key = \"/customerId\"\n[functions.orders.sinks.cache]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nmode = \"refresh\"\nkey = \"{key}\"\n"
        ));
        let out = app.run(&["check-config"], &[]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let text = common::stdout(&out);
        assert_eq!(
            text.contains("leaves the partition key out"),
            warned,
            "{key}: {text}"
        );
    }
}

#[tokio::test]
async fn every_path_that_can_end_in_a_checkpoint_alarms_when_no_store_keeps_the_batch() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(1)).config(&format!(
        "[server]\nmax_body_bytes = 4096\n[retry]\ninitial_backoff_ms = 10\nmax_backoff_ms = 20\nbudget_ms = 200\n\n{ORDERS}"
    ));
    let handler = app
        .serve_logged(&[("FANOUT_LOG", "warn"), ("FANOUT_LOG_FORMAT", "json")])
        .await;
    break_store(&app.path().join(".fanout/dead-letter"));
    // The sink fails too (its table is a file).
    std::fs::create_dir_all(app.path().join("tables")).unwrap();
    std::fs::write(app.path().join("tables/orders"), b"not a table").unwrap();
    let client = reqwest::Client::new();
    let post = |function: &str, body: String| {
        client
            .post(format!("http://127.0.0.1:{}/{function}", handler.port))
            .body(body)
            .send()
    };
    // (what, function, body)
    let paths = [
        (
            "a sink failure on the last attempt",
            "orders",
            cosmos_trigger_body("documents", "orders", &docs(2), Some((1, 1))),
        ),
        (
            "a body that does not decode, on the last attempt",
            "orders",
            json!({"Data": {}, "Metadata": {"RetryContext": {"RetryCount": 1, "MaxRetryCount": 1}}}).to_string(),
        ),
        (
            "a function with no route (attempt unknown to it)",
            "payments",
            cosmos_trigger_body("documents", "payments", &docs(1), None),
        ),
        (
            "a body over the size limit",
            "orders",
            cosmos_trigger_body("documents", "orders", &docs(60), None),
        ),
    ];
    for (what, function, body) in &paths {
        let reply = post(function, body.clone()).await.unwrap();
        assert_eq!(reply.status(), 500, "{what}: nothing kept is never a 2xx");
    }
    let logged = handler.stop();
    let alarms: Vec<serde_json::Value> = logged
        .lines()
        .filter(|l| l.contains("CHANGES LOST"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(alarms.len(), paths.len(), "one alarm per path:\n{logged}");
    for alarm in &alarms {
        assert_eq!(alarm["level"], "ERROR");
        assert!(alarm["fields"]["count"].as_u64().unwrap() >= 1, "{alarm}");
    }
    // The sink failure names its changes.
    assert!(
        alarms
            .iter()
            .any(|a| a["fields"]["first_id"] == "o0" && a["fields"]["last_id"] == "o1"),
        "{alarms:?}"
    );
}

#[tokio::test]
async fn an_oversized_batch_delivered_twice_is_replayed_once() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(1))
        .config(&format!("[server]\nmax_body_bytes = 4096\n{ORDERS}"));
    let host = app.start().await;
    let body = cosmos_trigger_body("documents", "orders", &docs(120), None);
    // The host delivers it twice (a retry after a lost answer): two stored bodies.
    for retry in [0, 1] {
        let call = host
            .invoke("orders", &with_retry_context(&body, retry, 1))
            .await
            .unwrap();
        assert_eq!(call.status, 200, "{:?}", call.logs());
    }
    drop(host);
    assert_eq!(
        app.dead_letters()
            .iter()
            .filter(|k| k.ends_with(".body"))
            .count(),
        2
    );
    let out = app.run(&["replay"], &[("FANOUT_LOG", "info")]);
    let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches("as a batch already replayed in this run: not delivered again")
            .count(),
        1,
        "{text}"
    );
    assert!(app.dead_letters().is_empty(), "{:?}", app.dead_letters());
    assert_eq!(
        read_table(&app.table("tables/orders")).await.rows.len(),
        120
    );
}

#[tokio::test]
async fn a_panic_in_the_invocation_task_keeps_the_batch_for_replay() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(1)).config(ORDERS);
    // A bug in fanout itself, after the body was read (a fault hook of debug builds).
    let host = app
        .start_with(&[
            ("FANOUT_FAILPOINT_PANIC", "_invocation:1"),
            ("FANOUT_LOG", "off"),
        ])
        .await;
    let body = cosmos_trigger_body("documents", "orders", &docs(3), None);
    let call = host.invoke("orders", &body).await.unwrap();
    assert_eq!(
        call.status,
        200,
        "kept, so the host may checkpoint: {:?}",
        call.logs()
    );
    drop(host);
    let pending = app.dead_letters();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let record = app.dead_letter(&pending[0]);
    assert_eq!(record["kind"], "malformed_batch");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("fanout panicked while handling this batch"),
        "{record}"
    );
    // With the bug gone, replay delivers it.
    let out = app.run_async(&["replay"]).await;
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(app.dead_letters().is_empty());
    assert_eq!(read_table(&app.table("tables/orders")).await.rows.len(), 3);
}
