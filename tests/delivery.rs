//! Delivery semantics through the real binary and the emulated host: the Delta changelog read
//! back (by us and by an independent reader), idempotent re-delivery, the retry policy's last
//! attempt, the dead-letter store and replay, and malformed input.

use fanout_test_kit as common;

use common::{TestApp, captured, read_table};
use fanout::hostsim::{cosmos_trigger_body, samples, with_retry_context};
use serde_json::json;

fn toml(retry_budget_ms: u64, tables: &[&str]) -> String {
    let mut s = format!(
        "[retry]\ninitial_backoff_ms = 20\nmax_backoff_ms = 50\nbudget_ms = {retry_budget_ms}\n\n[functions.orders]\npartition_key = \"/customerId\"\nsoft_delete = {{ field = \"/deleted\", equals = true }}\n"
    );
    for t in tables {
        s.push_str(&format!(
            "[functions.orders.sinks.{t}]\ntype = \"delta\"\ntable = \"tables/{t}\"\n"
        ));
    }
    s
}

/// The `bad` table's folder is blocked by a file: every attempt to it fails (transiently)
/// until the file is removed.
fn block_bad_table(app: &TestApp) {
    std::fs::create_dir_all(app.table("tables")).unwrap();
    std::fs::write(app.table("tables/bad"), "blocked").unwrap();
}

/// `fanout replay --function orders --batches batches.ndjson` in the app.
fn replay_batches_file(app: &TestApp, env: &[(&str, &str)]) -> std::process::Output {
    app.run(
        &[
            "replay",
            "--function",
            "orders",
            "--batches",
            "batches.ndjson",
        ],
        env,
    )
}

/// The handler with only the blocked `bad` table, the host's `max_retry_count` and a retry
/// budget (ms).
async fn with_bad_table(
    max_retry_count: Option<i64>,
    budget_ms: u64,
) -> (TestApp, fanout::hostsim::EmulatedHost) {
    let app = TestApp::new();
    app.function("orders", "documents", max_retry_count)
        .config(&toml(budget_ms, &["bad"]));
    block_bad_table(&app);
    let host = app.start().await;
    (app, host)
}

#[tokio::test]
async fn changelog_rows_and_idempotent_redelivery() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(3))
        .config(&toml(2000, &["changelog"]));
    let host = app.start().await;
    let batches = samples::order_batches(1000, 3, 50, 7);
    let mut avad = samples::all_versions_batch(5000, 1_744_200_000);
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
    let call = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &avad, None),
        )
        .await
        .unwrap();
    assert_eq!(call.status, 200);
    let table = read_table(&app.table("tables/changelog")).await;
    let summary = table.summary();
    assert_eq!(summary.rows, 154);
    assert_eq!(
        summary.by_operation.get("delete"),
        Some(&(15 + 2)),
        "soft deletes + hard delete + TTL expiry"
    );
    assert_eq!(summary.by_operation.get("create"), Some(&1));
    assert_eq!(summary.by_operation.get("replace"), Some(&1));
    let hard = table
        .rows
        .iter()
        .find(|r| r.delete_kind.as_deref() == Some("hard"))
        .unwrap();
    assert_eq!(
        (hard.id.as_str(), hard.partition_key.as_str(), hard.lsn),
        ("order-avad", r#"["customer-avad"]"#, Some(5002))
    );
    assert!(hard.document.is_none());
    assert!(
        table
            .rows
            .iter()
            .any(|r| r.delete_kind.as_deref() == Some("ttl_expired"))
    );
    let soft = table
        .rows
        .iter()
        .find(|r| r.delete_kind.as_deref() == Some("soft"))
        .unwrap();
    assert!(soft.document.as_ref().unwrap().contains("\"deleted\":true"));

    // The same batch again (as the host re-delivers it, with RetryContext): nothing doubles.
    let again = with_retry_context(
        &cosmos_trigger_body("documents", "orders", &batches[1], None),
        1,
        3,
    );
    let call = host.invoke("orders", &again).await.unwrap();
    assert_eq!(call.status, 200);
    assert!(
        call.logged("0 rows appended, 50 already present"),
        "{:?}",
        call.logs()
    );
    // Re-delivery after a crash can cut the batch differently: same start, more changes.
    let mut longer = batches[2].clone();
    longer.extend(samples::order_batches(1150, 1, 10, 7).remove(0));
    let call = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &longer, None),
        )
        .await
        .unwrap();
    assert!(
        call.logged("10 rows appended, 50 already present"),
        "{:?}",
        call.logs()
    );
    avad.truncate(2);
    host.invoke(
        "orders",
        &cosmos_trigger_body("documents", "orders", &avad, None),
    )
    .await
    .unwrap();

    let after = read_table(&app.table("tables/changelog")).await.summary();
    assert_eq!(after.rows, 164);
    assert_eq!(after.duplicate_rows, 0);
}

#[tokio::test]
async fn an_independent_delta_reader_sees_the_same_table() {
    let app = TestApp::new();
    app.function("orders", "documents", None)
        .config(&toml(2000, &["changelog"]));
    let host = app.start().await;
    for docs in samples::order_batches(1, 2, 30, 5) {
        assert_eq!(
            host.invoke(
                "orders",
                &cosmos_trigger_body("documents", "orders", &docs, None)
            )
            .await
            .unwrap()
            .status,
            200
        );
    }
    let path = app.table("tables/changelog");
    let out = common::python(
        &format!(
            r#"
import json, deltalake
dt = deltalake.DeltaTable({path:?})
t = dt.to_pyarrow_table()
rows = t.to_pylist()
print(json.dumps({{
  "version": dt.version(),
  "rows": len(rows),
  "partition_columns": dt.metadata().partition_columns,
  "columns": t.column_names,
  "ids": sorted({{r["id"] for r in rows}})[:3],
  "lsns": sorted(r["lsn"] for r in rows)[:3],
  "deletes": sum(1 for r in rows if r["operation"] == "delete"),
  "doc_ok": all(json.loads(r["document"])["id"] == r["id"] for r in rows),
}}))
"#,
            path = path.to_str().unwrap()
        ),
        &[],
    );
    let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got["rows"], json!(60));
    assert_eq!(got["partition_columns"], json!(["change_date"]));
    assert_eq!(got["lsns"], json!([1, 2, 3]));
    assert_eq!(got["deletes"], json!(6));
    assert_eq!(got["doc_ok"], json!(true));
    for col in [
        "operation",
        "delete_kind",
        "id",
        "partition_key",
        "lsn",
        "ts",
        "etag",
        "document",
        "function",
        "invocation_id",
        "ingest_time",
        "change_date",
    ] {
        assert!(
            got["columns"].as_array().unwrap().contains(&json!(col)),
            "missing column {col}: {got}"
        );
    }
}

#[tokio::test]
async fn a_failing_sink_is_retried_then_dead_lettered_then_replayed() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(2))
        .config(&toml(300, &["good", "bad"]));
    // The `bad` table's folder is blocked by a file: every attempt fails (transiently).
    block_bad_table(&app);
    let host = app.start().await;
    let docs = samples::order_batches(1, 1, 20, 4).remove(0);
    let body = cosmos_trigger_body("documents", "orders", &docs, None);

    let calls = host
        .invoke_with_retries("orders", &body, 2, 10)
        .await
        .unwrap();
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        vec![500, 500, 200],
        "non-2xx until the policy's last attempt, then 2xx"
    );
    // The retry re-drove only the failing sink.
    assert!(
        calls[1]
            .logs()
            .iter()
            .any(|l| l == "sink good (delta): already delivered by an earlier attempt"),
        "{:?}",
        calls[1].logs()
    );
    let last = calls[2].logs();
    assert!(
        last.iter()
            .any(|l| l.starts_with("dead-lettered 20 changes from `bad`")),
        "{last:?}"
    );
    assert_eq!(read_table(&app.table("tables/good")).await.rows.len(), 20);

    let pending = app.dead_letters();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(pending[0].starts_with("orders/bad/") && pending[0].ends_with("-sink_failure.json"));
    let record = app.dead_letter(&pending[0]);
    assert_eq!(record["kind"], json!("sink_failure"));
    assert_eq!(record["host_retry_count"], json!(2));
    assert_eq!(record["changes"].as_array().unwrap().len(), 20);
    assert!(
        record["error"].as_str().unwrap().contains("delta"),
        "{record}"
    );

    // While the sink is still broken, replay fails and keeps the record.
    let out = app.run(&["replay"], &[]);
    assert!(!out.status.success());
    assert_eq!(app.dead_letters().len(), 1);
    // Fix the sink; replay delivers, and moves the record to replayed/.
    std::fs::remove_file(app.table("tables/bad")).unwrap();
    let out = app.run(&["replay"], &[]);
    assert!(
        out.status.success(),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    assert!(
        common::stdout(&out).contains("replayed 1 records (20 changes)"),
        "{}",
        common::stdout(&out)
    );
    assert!(app.dead_letters().is_empty());
    let bad = read_table(&app.table("tables/bad")).await;
    assert_eq!(bad.rows.len(), 20);
    // Replaying again is harmless: nothing pending; and re-delivering the batch doubles nothing.
    assert!(common::stdout(&app.run(&["replay"], &[])).contains("nothing to replay"));
    host.invoke("orders", &body).await.unwrap();
    assert_eq!(
        read_table(&app.table("tables/bad"))
            .await
            .summary()
            .duplicate_rows,
        0
    );
    assert_eq!(read_table(&app.table("tables/bad")).await.rows.len(), 20);
}

/// A replay is not bound by the host's timeout: `--budget-ms` gives each record longer than
/// the route's budget (CI once saw a first commit to a new table on Azurite take longer than
/// the 500 ms of a test's config, and the record stayed pending).
#[tokio::test]
async fn replay_takes_the_budget_it_is_given() {
    let (app, host) = with_bad_table(Some(0), 300).await;
    let docs = samples::order_batches(1, 1, 20, 4).remove(0);
    common::deliver_ok(&host, "orders", &docs).await;
    assert_eq!(app.dead_letters().len(), 1);
    std::fs::remove_file(app.table("tables/bad")).unwrap();

    // A dry run lists the record and why it is there, also when stdout is not a terminal.
    let dry = common::stdout(&app.run(&["replay", "--dry-run"], &[]));
    assert!(
        dry.contains("-sink_failure.json: 20 x SinkFailure") && dry.contains("1 records pending"),
        "{dry}"
    );
    // The route's budget is now too short for the table's first commit: the record stays,
    // and the output says why.
    app.config(&toml(1, &["bad"]));
    let out = app.run(&["replay"], &[]);
    assert!(!out.status.success(), "{}", common::stdout(&out));
    assert!(
        common::stdout(&out).contains("no answer within the retry budget (1 ms)"),
        "{}",
        common::stdout(&out)
    );
    assert_eq!(app.dead_letters().len(), 1);
    // Zero is refused with the reason; nothing is touched.
    let out = app.run(&["replay", "--budget-ms", "0"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("--budget-ms must be at least 1"));
    // Given the time, it is delivered, exactly once.
    let out = app.run(&["replay", "--budget-ms", "30000"], &[]);
    assert!(
        out.status.success(),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    assert!(common::stdout(&out).contains("replayed 1 records (20 changes)"));
    assert!(app.dead_letters().is_empty());
    let table = read_table(&app.table("tables/bad")).await;
    assert_eq!(table.rows.len(), 20);
    assert_eq!(table.summary().duplicate_rows, 0);
}

#[tokio::test]
async fn without_a_retry_policy_the_first_failure_dead_letters() {
    let (app, host) = with_bad_table(None, 200).await;
    let call = host
        .invoke("orders", &captured("cosmos-trigger-request-1.json"))
        .await
        .unwrap();
    assert_eq!(call.status, 200, "{:?}", call.logs());
    assert_eq!(app.dead_letters().len(), 1);
}

#[tokio::test]
async fn retry_forever_blocks_instead_of_dead_lettering() {
    let app = TestApp::new();
    // A budget that covers creating the table on the recovering attempt even on a loaded
    // machine (100 ms did not, now and then).
    app.function("orders", "documents", Some(-1))
        .config(&toml(1000, &["bad"]));
    block_bad_table(&app);
    let host = app.start().await;
    let body = captured("cosmos-trigger-request-1.json");
    let calls = host
        .invoke_with_retries("orders", &body, -1, 4)
        .await
        .unwrap();
    assert_eq!(calls.len(), 5);
    assert!(calls.iter().all(|c| c.status == 500));
    assert!(
        calls[4].logs()[0].contains("attempt 5 of unlimited"),
        "{:?}",
        calls[4].logs()
    );
    assert!(
        app.dead_letters().is_empty(),
        "maxRetryCount -1 never dead-letters transient failures"
    );
    // Once the sink recovers, the next re-delivery goes through.
    std::fs::remove_file(app.table("tables/bad")).unwrap();
    let call = host
        .invoke("orders", &with_retry_context(&body, 5, -1))
        .await
        .unwrap();
    assert_eq!(call.status, 200, "{:?}", call.logs());
}

#[tokio::test]
async fn malformed_input_is_dead_lettered_with_the_reason_never_dropped() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(5))
        .config(&toml(500, &["changelog"]));
    let host = app.start().await;
    let deep = (0..100_000).map(|_| "[").collect::<String>();
    let bad_bodies: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not json", b"{this is not json".to_vec(), "not JSON"),
        (
            "invalid utf-8",
            b"{\"Data\": {\"documents\": \"\xff\xfe\"}}".to_vec(),
            "not JSON",
        ),
        ("no Data", br#"{"Metadata": {}}"#.to_vec(), "no `Data`"),
        (
            "wrong binding",
            br#"{"Data": {"docs": "[]"}}"#.to_vec(),
            "no `documents` binding",
        ),
        (
            "documents is an object",
            br#"{"Data": {"documents": {"id": "x"}}}"#.to_vec(),
            "not a JSON array",
        ),
        (
            "documents is a number string",
            br#"{"Data": {"documents": "42"}}"#.to_vec(),
            "not a JSON array",
        ),
        (
            "deep nesting",
            format!(r#"{{"Data": {{"documents": "{deep}"}}}}"#).into_bytes(),
            "not a JSON array",
        ),
    ];
    for (label, body, expect) in &bad_bodies {
        let call = host.invoke_raw("orders", body.clone()).await.unwrap();
        assert_eq!(
            call.status, 200,
            "{label}: dead-lettered, not retried forever"
        );
        let logs = call.logs();
        assert!(
            logs[0].contains("malformed batch dead-lettered") && logs[0].contains(expect),
            "{label}: {logs:?}"
        );
    }
    assert_eq!(
        app.dead_letters()
            .iter()
            .filter(|k| k.ends_with("malformed_batch.json"))
            .count(),
        bad_bodies.len()
    );

    // Bad items inside a good batch: the good ones land, the bad ones are dead-lettered raw.
    let mut docs = samples::order_batches(1, 1, 3, 2).remove(0);
    docs.push(json!({"customerId": "c", "note": "no id"}));
    docs.push(json!({"id": 17}));
    docs.push(json!("a string"));
    docs.push(json!({"id": "bad-lsn", "_lsn": "seven"}));
    docs.push(json!({"metadata": {"operationType": "delete", "lsn": 9}}));
    let call = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &docs, None),
        )
        .await
        .unwrap();
    assert_eq!(call.status, 200);
    assert!(
        call.logs()[0].contains("3 changes (0 deletes, 5 unreadable)"),
        "{:?}",
        call.logs()
    );
    assert_eq!(
        read_table(&app.table("tables/changelog")).await.rows.len(),
        3
    );
    let key = app
        .dead_letters()
        .into_iter()
        .find(|k| k.ends_with("malformed_items.json"))
        .unwrap();
    let record = app.dead_letter(&key);
    assert_eq!(record["items"].as_array().unwrap().len(), 5);
    let reasons: Vec<&str> = record["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(reasons[0], "item 3: the document has no `id`");
    assert_eq!(
        reasons[3],
        "item 6 (id `bad-lsn`): `_lsn` must be an integer, found a string"
    );
    assert_eq!(record["items"][1], json!({"id": 17}), "kept raw");

    // The process survived all of it.
    let ok = host
        .invoke("orders", &captured("cosmos-trigger-request-2.json"))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn replay_delivers_a_file_of_host_format_batches() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(1))
        .config(&toml(500, &["changelog"]));
    let lines: Vec<String> = samples::order_batches(1, 3, 10, 3)
        .iter()
        .map(|docs| cosmos_trigger_body("documents", "orders", docs, None))
        .chain([captured("cosmos-trigger-request-1.json")])
        .collect();
    std::fs::write(app.path().join("batches.ndjson"), lines.join("\n")).unwrap();
    let out = replay_batches_file(&app, &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        common::stdout(&out).contains("4 batches: 4 delivered, 0 failed"),
        "{}",
        common::stdout(&out)
    );
    assert_eq!(
        read_table(&app.table("tables/changelog")).await.rows.len(),
        31
    );
    // Same file again: idempotent.
    assert!(
        app.run(
            &[
                "replay",
                "--function",
                "orders",
                "--batches",
                "batches.ndjson"
            ],
            &[]
        )
        .status
        .success()
    );
    assert_eq!(
        read_table(&app.table("tables/changelog")).await.rows.len(),
        31
    );
}

#[tokio::test]
async fn an_unreadable_retry_context_is_treated_as_the_last_attempt() {
    let (app, host) = with_bad_table(Some(5), 200).await;
    let body = captured("cosmos-trigger-request-1.json").replace(
        r#""Metadata":{"#,
        r#""Metadata":{"RetryContext":{"RetryCount":"unknown"},"#,
    );
    assert!(
        body.contains("RetryCount"),
        "the fixture's Metadata was found"
    );
    let call = host.invoke("orders", &body).await.unwrap();
    // We cannot tell whether the trigger checkpoints after this: dead-letter, answer 200.
    assert_eq!(call.status, 200, "{:?}", call.logs());
    assert_eq!(app.dead_letters().len(), 1);
    // A string-encoded RetryContext (some host versions) is read normally.
    let body = captured("cosmos-trigger-request-2.json").replace(
        r#""Metadata":{"#,
        r#""Metadata":{"RetryContext":"{\"RetryCount\":1,\"MaxRetryCount\":5}","#,
    );
    let call = host.invoke("orders", &body).await.unwrap();
    assert_eq!(
        call.status,
        500,
        "attempt 2 of 6 fails and asks for a retry: {:?}",
        call.logs()
    );
    assert!(
        call.logs()[0].contains("attempt 2 of 6"),
        "{:?}",
        call.logs()
    );
}

/// A transactional batch writes several documents of one partition key in one commit, and the
/// change feed gives them all the same `_lsn`. Exactly once is per (partition key, id, lsn):
/// every one of them is a change of its own, in one delivery or across deliveries, and a
/// re-delivery of any of them is still recognised.
#[tokio::test]
async fn documents_sharing_an_lsn_in_one_partition_key_are_all_kept() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(3))
        .config(&toml(2000, &["changelog"]));
    let host = app.start().await;
    let doc = |id: &str, lsn: i64| json!({"id": id, "customerId": "c1", "status": "placed", "_lsn": lsn, "_ts": 1_767_225_600, "_etag": format!("\"{id}\"")});
    // One transactional batch (lsn 7) in one delivery, then another (lsn 9) split over two.
    let deliveries = [
        vec![doc("a", 7), doc("b", 7), doc("c", 7)],
        vec![doc("d", 9)],
        vec![doc("e", 9), doc("f", 9)],
        // A re-delivery of one of them, cut differently: nothing new.
        vec![doc("e", 9)],
    ];
    for docs in &deliveries {
        let call = host
            .invoke(
                "orders",
                &cosmos_trigger_body("documents", "orders", docs, None),
            )
            .await
            .unwrap();
        assert_eq!(call.status, 200, "{:?}", call.logs());
    }
    let table = read_table(&app.table("tables/changelog")).await;
    let mut ids: Vec<(String, Option<i64>)> =
        table.rows.iter().map(|r| (r.id.clone(), r.lsn)).collect();
    ids.sort();
    let want: Vec<(String, Option<i64>)> =
        [("a", 7), ("b", 7), ("c", 7), ("d", 9), ("e", 9), ("f", 9)]
            .iter()
            .map(|(id, lsn)| (id.to_string(), Some(*lsn)))
            .collect();
    assert_eq!(ids, want);
}

/// A process that ends while background checkpoints and compactions run lets them finish:
/// delta-rs's log scans run on blocking threads and panicked ("TokioMultiThreadExecutor has
/// crashed") when the runtime was dropped under them, seen in CI at the end of test runs.
#[tokio::test]
async fn a_command_ending_during_background_delta_work_exits_cleanly() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(1)).config(
        "[functions.orders]\npartition_key = \"/customerId\"\n\
         [functions.orders.sinks.changelog]\ntype = \"delta\"\ntable = \"tables/changelog\"\n\
         checkpoint_interval = 2\ncompaction = { min_small_files = 2 }\n",
    );
    let lines: Vec<String> = samples::order_batches(1, 40, 20, 5)
        .iter()
        .map(|docs| cosmos_trigger_body("documents", "orders", docs, None))
        .collect();
    std::fs::write(app.path().join("batches.ndjson"), lines.join("\n")).unwrap();
    for _ in 0..3 {
        let out = replay_batches_file(&app, &[("RUST_BACKTRACE", "0")]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let stderr = common::stderr(&out);
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let table = read_table(&app.table("tables/changelog")).await;
    assert_eq!(table.rows.len(), 800);
    assert_eq!(table.summary().duplicate_rows, 0);
}
