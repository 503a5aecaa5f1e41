//! Hostile input through the real binary, beyond tests/delivery.rs's malformed batches: every
//! case gets a clear error and a dead-letter record (or is delivered when it is in fact valid),
//! never a panic, a retry loop or an unbounded allocation; the process keeps serving.
//! (The fuzz targets in fuzz/ drive the same decoder and normalizer with random input.)

use fanout_test_kit as common;

use common::TestApp;
use fanout::hostsim::cosmos_trigger_body;
use serde_json::{Value, json};

fn app() -> TestApp {
    common::orders_to_delta(Some(3))
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// A body the host could never send but an attacker or a bug could: each is dead-lettered
/// whole with the reason, answered 200 (not retried forever).
#[tokio::test]
async fn hostile_bodies_are_dead_lettered_with_the_reason() {
    let app = app();
    let host = app.start().await;
    let nested_doc = format!(
        "[{{\"id\":\"a\",\"customerId\":\"c\",\"x\":{}1{}}}]",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "deep nesting inside a document",
            json!({"Data": {"documents": Value::String(nested_doc).to_string()}})
                .to_string()
                .into_bytes(),
            "recursion limit",
        ),
        (
            "a lone UTF-16 surrogate escape",
            json!({"Data": {"documents": Value::String(r#"[{"id": "\ud800"}]"#.into()).to_string()}})
                .to_string()
                .into_bytes(),
            // serde_json: the high surrogate must be followed by a low one.
            "unexpected end of hex escape",
        ),
        (
            "a byte-order mark and trailing garbage",
            b"\xef\xbb\xbf{\"Data\": {}} trailing".to_vec(),
            "not JSON",
        ),
        (
            "an empty body",
            Vec::new(),
            "not JSON",
        ),
        (
            "Data is a string",
            br#"{"Data": "documents"}"#.to_vec(),
            "invalid type: string \"documents\", expected a map",
        ),
        (
            "NUL bytes",
            vec![0u8; 4096],
            "not JSON",
        ),
    ];
    for (label, body, expect) in &cases {
        let call = host.invoke_raw("orders", body.clone()).await.unwrap();
        assert_eq!(call.status, 200, "{label}: {:?}", call.logs());
        let first = call.logs().first().cloned().unwrap_or_default();
        assert!(
            first.contains("malformed batch dead-lettered") && first.contains(expect),
            "{label}: {first}"
        );
    }
    let records: Vec<String> = app
        .dead_letters()
        .into_iter()
        .filter(|k| k.ends_with("malformed_batch.json"))
        .collect();
    assert_eq!(
        records.len(),
        cases.len(),
        "one record per body: {records:?}"
    );
    for key in &records {
        let r = app.dead_letter(key);
        assert!(!r["error"].as_str().unwrap().is_empty());
        assert!(
            r["raw_body"].is_string() || r["raw_body_object"].is_string(),
            "the body is kept for replay: {key}"
        );
    }
}

/// Items of the wrong shape inside a well-formed batch: the valid ones land, every other one
/// is dead-lettered raw with a reason naming the item; nothing is silently dropped.
#[tokio::test]
async fn wrong_types_and_missing_fields_are_accounted_for_item_by_item() {
    let app = app();
    let host = app.start().await;
    let good = |id: &str, lsn: i64| json!({"id": id, "customerId": "c1", "_lsn": lsn, "_ts": 1_760_000_000});
    let docs = vec![
        good("ok-1", 1),
        json!({"id": "", "customerId": "c1"}),
        json!({"id": ["a"], "customerId": "c1"}),
        json!({"id": null}),
        json!({"id": "ts-string", "_ts": "yesterday"}),
        json!({"id": "lsn-float", "_lsn": 1.5}),
        json!({"id": "lsn-huge", "_lsn": 1e300}),
        json!({"id": "lsn-negative-overflow", "_lsn": -1e30}),
        json!(null),
        json!(42),
        json!([1, 2, 3]),
        json!({"metadata": {"operationType": "explode", "lsn": 3}}),
        json!({"metadata": {"operationType": "delete"}}),
        json!({"current": {"id": "x"}, "metadata": {"operationType": "create", "lsn": "4"}}),
        good(&"x".repeat(4096), 2),
        good("ok-2", 3),
    ];
    let call = common::deliver_ok(&host, "orders", &docs).await;
    let first = &call.logs()[0];
    let parse = |marker: &str| -> usize {
        let before = first.split(marker).next().unwrap();
        before
            .rsplit(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    let delivered = parse(" changes (");
    let unreadable = parse(" unreadable)");
    assert_eq!(delivered + unreadable, docs.len(), "{first}");
    assert!(delivered >= 2, "the valid items land: {first}");
    let rows = common::read_table(&app.table("tables/orders")).await.rows;
    assert_eq!(rows.len(), delivered);
    let key = app
        .dead_letters()
        .into_iter()
        .find(|k| k.ends_with("malformed_items.json"))
        .expect("the unreadable items are dead-lettered");
    let record = app.dead_letter(&key);
    let reasons = record["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), unreadable);
    assert_eq!(record["items"].as_array().unwrap().len(), unreadable);
    for r in reasons {
        let r = r.as_str().unwrap();
        assert!(r.starts_with("item "), "each reason names its item: {r}");
    }
    let reasons: Vec<&str> = reasons.iter().map(|r| r.as_str().unwrap()).collect();
    for expected in [
        "`id` is empty",
        "`id` must be a string, found an array",
        "`_ts` must be an integer, found a string",
        "`_lsn` must be an integer, found 1.5",
        "expected a JSON object, found null",
        "expected a JSON object, found an array",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected} in {reasons:?}"
        );
    }
}

/// A very large but legal batch (one 40 MB document, under the 100 MB body limit) is decoded
/// and written with memory bounded by a small multiple of its size; 200k empty items are each
/// dead-lettered, not retried.
#[tokio::test]
async fn huge_documents_and_item_counts_stay_bounded() {
    let app = app();
    let host = app.start().await;
    let big = json!({"id": "big", "customerId": "c1", "_lsn": 1, "blob": "y".repeat(40 << 20)});
    let call = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &[big], None),
        )
        .await
        .unwrap();
    assert_eq!(call.status, 200, "{:?}", call.logs());
    let peak = peak_rss_mb(host.pid().unwrap());
    // Body, the two decoding layers, the change and the Parquet column: about 8x at worst.
    assert!(
        peak < 40.0 * 10.0,
        "peak RSS {peak:.0} MB for a 40 MB document"
    );

    let empties = vec![json!({}); 200_000];
    let call = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &empties, None),
        )
        .await
        .unwrap();
    assert_eq!(call.status, 200);
    assert!(
        call.logs()[0].contains("0 changes (0 deletes, 200000 unreadable)"),
        "{:?}",
        &call.logs()[0]
    );
    let rows = common::read_table(&app.table("tables/orders")).await.rows;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].document.as_ref().unwrap().len() > 40 << 20);
}
