//! Reading the changelog back through the real binary: `fanout history` (every change of a
//! document, in order) and `fanout restore` (the documents as of a time, to JSON Lines),
//! after batches posted by the host-emulating harness with known `_ts` and `_lsn`; and the
//! baseline a backfill (against Microsoft's in-memory Cosmos DB EMULATOR) records.

use common::TestApp;
use common::cosmos::CosmosEmulator;
use fanout::backfill::{BackfillOptions, Quiet};
use fanout::cosmos::Throttle;
use fanout::hostsim::cosmos_trigger_body;
use fanout_test_kit as common;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn at(offset: i64) -> String {
    chrono::DateTime::from_timestamp(T0 + offset, 0)
        .unwrap()
        .to_rfc3339()
}

fn doc(id: &str, pk: &str, status: &str, ts: i64, lsn: i64) -> Value {
    json!({"id": id, "customerId": pk, "status": status, "_ts": T0 + ts, "_lsn": lsn,
           "_rid": "r", "_self": "s", "_etag": format!("\"{lsn}\""), "_attachments": "a/"})
}

/// o1 placed -> paid -> shipped; o2 placed -> soft-deleted; o3 (c2) placed; o4 (c2) later.
async fn posted() -> TestApp {
    let app = common::orders_to_delta(Some(2));
    let host = app.start().await;
    let batches = [
        vec![
            doc("o1", "c1", "placed", 0, 1),
            doc("o2", "c1", "placed", 0, 2),
            doc("o3", "c2", "placed", 0, 3),
        ],
        vec![doc("o1", "c1", "paid", 1000, 4), {
            let mut d = doc("o2", "c1", "placed", 1000, 5);
            d["deleted"] = json!(true);
            d
        }],
        vec![
            doc("o1", "c1", "shipped", 2000, 6),
            doc("o4", "c2", "placed", 2000, 7),
        ],
    ];
    for docs in batches {
        let body = cosmos_trigger_body("documents", "orders", &docs, None);
        let call = host.invoke("orders", &body).await.unwrap();
        assert!(call.is_success(), "{:?}", call.logs());
    }
    app
}

/// The documents of every `.jsonl` file under `dir`, by id.
fn restored(app: &TestApp, dir: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let root = app.path().join(dir);
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(path.extension().unwrap(), "jsonl", "{}", path.display());
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let d: Value = serde_json::from_str(line).unwrap();
            out.insert(d["id"].as_str().unwrap().to_string(), d);
        }
    }
    out
}

fn statuses(docs: &BTreeMap<String, Value>) -> Vec<(String, String)> {
    docs.iter()
        .map(|(id, d)| (id.clone(), d["status"].as_str().unwrap().to_string()))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_every_change_and_restore_gives_the_documents_as_of_a_time() {
    let app = posted().await;

    // history: every change of o1, oldest first, with what each touched.
    let out = app.run(
        &["history", "--function", "orders", "--id", "o1", "--json"],
        &[],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let entries: Vec<Value> = common::stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(i64, String, Value)> = entries
        .iter()
        .map(|e| {
            (
                e["lsn"].as_i64().unwrap(),
                e["document"]["status"].as_str().unwrap().to_string(),
                e["changed"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, "placed".into(), json!([])),
            (4, "paid".into(), json!(["/status"])),
            (6, "shipped".into(), json!(["/status"]))
        ]
    );
    assert_eq!(entries[0]["time"], json!(at(0).replace("Z", "+00:00")));
    let out = app.run(
        &[
            "history",
            "--function",
            "orders",
            "--id",
            "o2",
            "--partition-key",
            "c1",
        ],
        &[],
    );
    let text = common::stdout(&out);
    assert!(text.contains("2 changes"), "{text}");
    assert!(
        text.contains("delete (soft)") && text.contains("added /deleted"),
        "{text}"
    );

    // restore: refused without a baseline (none was recorded: no backfill ran).
    let out = app.run(
        &[
            "restore",
            "--function",
            "orders",
            "--as-of",
            &at(500),
            "--to",
            "r0",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("holds no complete baseline"),
        "{}",
        common::stderr(&out)
    );

    // The state between the batches, document by document.
    let restore = |as_of: i64, to: &str, extra: &[&str]| {
        let as_of = at(as_of);
        let mut args = vec![
            "restore",
            "--function",
            "orders",
            "--as-of",
            as_of.as_str(),
            "--to",
            to,
            "--without-baseline",
        ];
        args.extend_from_slice(extra);
        let out = app.run(&args, &[]);
        assert!(out.status.success(), "{args:?}: {}", common::stderr(&out));
        common::stdout(&out)
    };
    restore(500, "r1", &[]);
    let r1 = restored(&app, "r1");
    assert_eq!(
        statuses(&r1),
        pairs(&[("o1", "placed"), ("o2", "placed"), ("o3", "placed")])
    );
    // As it was: the document's fields, no system properties.
    assert_eq!(
        r1["o1"],
        json!({"id": "o1", "customerId": "c1", "status": "placed"})
    );
    restore(1500, "r2", &[]);
    assert_eq!(
        statuses(&restored(&app, "r2")),
        pairs(&[("o1", "paid"), ("o3", "placed")])
    );
    restore(2500, "r3", &[]);
    assert_eq!(
        statuses(&restored(&app, "r3")),
        pairs(&[("o1", "shipped"), ("o3", "placed"), ("o4", "placed")])
    );
    // Exactly at a change's `_ts`: that change is in.
    restore(1000, "r4", &[]);
    assert_eq!(
        statuses(&restored(&app, "r4")),
        pairs(&[("o1", "paid"), ("o3", "placed")])
    );
    // A deleted document, as of before its delete; one partition key.
    restore(500, "r5", &["--id", "o2"]);
    assert_eq!(statuses(&restored(&app, "r5")), pairs(&[("o2", "placed")]));
    restore(2500, "r6", &["--partition-key", "c2"]);
    assert_eq!(
        statuses(&restored(&app, "r6")),
        pairs(&[("o3", "placed"), ("o4", "placed")])
    );

    // A state table as of a time (Delta), read by an independent reader.
    restore(1500, "state-1500", &["--format", "delta"]);
    let out = common::python(
        r#"
import json, os
from deltalake import DeltaTable
rows = DeltaTable(os.environ["TABLE"]).to_pyarrow_table().to_pylist()
print(json.dumps(sorted([[r["id"], json.loads(r["document"])["status"], r["lsn"]] for r in rows])))
"#,
        &[("TABLE", app.path().join("state-1500").to_str().unwrap())],
    );
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap(),
        json!([["o1", "paid", 4], ["o3", "placed", 3]])
    );
    // Not into an existing table.
    let out = app.run(
        &[
            "restore",
            "--function",
            "orders",
            "--as-of",
            &at(1500),
            "--to",
            "state-1500",
            "--without-baseline",
            "--format",
            "delta",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));

    // A destination that is not empty is refused, unless told to overwrite.
    let out = app.run(
        &[
            "restore",
            "--function",
            "orders",
            "--as-of",
            &at(2500),
            "--to",
            "r1",
            "--without-baseline",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("not empty"),
        "{}",
        common::stderr(&out)
    );
    restore(2500, "r1", &["--overwrite"]);
    assert_eq!(restored(&app, "r1").len(), 3);

    // --dry-run counts and writes nothing.
    let text = restore(1500, "r7", &["--dry-run"]);
    assert!(
        text.contains("2 documents existed then, 1 were deleted by then"),
        "{text}"
    );
    assert!(!app.path().join("r7").exists() || restored(&app, "r7").is_empty());

    // Bad input: exit 2 with the reason.
    for (args, says) in [
        (
            vec![
                "restore",
                "--function",
                "orders",
                "--as-of",
                "yesterday",
                "--to",
                "x",
            ],
            "not an RFC 3339 time",
        ),
        (
            vec![
                "restore",
                "--function",
                "nope",
                "--as-of",
                "2026-01-01T00:00:00Z",
                "--to",
                "x",
            ],
            "no function `nope`",
        ),
        (
            vec![
                "history",
                "--function",
                "orders",
                "--id",
                "o1",
                "--sink",
                "nope",
            ],
            "no changelog sink `nope`",
        ),
    ] {
        let out = app.run(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            common::stderr(&out).contains(says),
            "{args:?}: {}",
            common::stderr(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_from_the_beginning_records_the_baseline_restore_checks() {
    let app = common::orders_to_delta(Some(2));
    let emulator = CosmosEmulator::start("shop", "orders", "/customerId", 2);
    let docs: Vec<Value> = (0..200)
        .map(|i| json!({"id": format!("o{i}"), "customerId": format!("c{}", i % 10), "status": "placed"}))
        .collect();
    emulator.upsert_all(docs, "customerId").await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let report = common::cosmos::run_backfill(
        app.path(),
        &emulator,
        emulator.builder().await,
        Arc::new(Throttle::new(None)),
        &BackfillOptions::default(),
        &Quiet,
        &AtomicBool::new(false),
    )
    .await
    .unwrap();
    assert_eq!(report.baseline, ["changelog"]);
    let baseline: Value = serde_json::from_str(
        &std::fs::read_to_string(app.table("tables/orders").join("_fanout/baseline.json")).unwrap(),
    )
    .unwrap();
    assert!(baseline["/cosmosdb/shop/orders"].is_string(), "{baseline}");

    // Before the baseline: refused, saying from when it can answer.
    let out = app.run(
        &[
            "restore",
            "--function",
            "orders",
            "--as-of",
            &before.to_rfc3339(),
            "--to",
            "early",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("before the changelog's baseline"),
        "{}",
        common::stderr(&out)
    );
    // After it: every document.
    let later = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let out = app.run(
        &[
            "restore",
            "--function",
            "orders",
            "--as-of",
            &later,
            "--to",
            "now",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let all = restored(&app, "now");
    assert_eq!(all.len(), 200);
    assert!(
        all.values()
            .all(|d| d.get("_rid").is_none() && d.get("_lsn").is_none())
    );
    // The changelog's own readers are unaffected by the file beside the data.
    let table = common::read_table(&app.table("tables/orders")).await;
    assert_eq!(table.rows.len(), 200);
}

/// `n` orders posted through the real binary as the host would, in batches of 100, all with
/// `_ts` T0 and their index as `_lsn`; the changelog then holds them.
async fn posted_orders(n: usize) -> TestApp {
    let app = common::orders_to_delta(Some(2));
    let host = app.start().await;
    let docs: Vec<Value> = (0..n)
        .map(|i| {
            let mut d = doc(
                &format!("o{i}"),
                &format!("c{}", i % 20),
                "placed",
                0,
                i as i64 + 1,
            );
            d["total"] = json!(i);
            d
        })
        .collect();
    for batch in docs.chunks(100) {
        let body = cosmos_trigger_body("documents", "orders", batch, None);
        let call = host.invoke("orders", &body).await.unwrap();
        assert!(call.is_success(), "{:?}", call.logs());
    }
    app
}

fn request(as_of: i64) -> fanout::changelog::restore::RestoreRequest {
    fanout::changelog::restore::RestoreRequest {
        as_of: chrono::DateTime::from_timestamp(T0 + as_of, 0).unwrap(),
        partition_key: None,
        id: None,
        check_baseline: false,
        version: None,
    }
}

/// Stops the restore (as Ctrl-C does) once `after` documents are written.
struct StopAfter {
    after: u64,
    stop: Arc<AtomicBool>,
}

impl fanout::changelog::to_cosmos::Progress for StopAfter {
    fn written(&self, done: u64, _of: usize) {
        if done >= self.after {
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// The emulator container's documents, by id, system properties left out.
async fn container_docs(emulator: &CosmosEmulator, container: &str) -> BTreeMap<String, Value> {
    let mut docs = emulator.documents_in(container).await;
    for d in docs.values_mut() {
        let map = d.as_object_mut().unwrap();
        for p in ["_rid", "_self", "_etag", "_attachments", "_ts", "_lsn"] {
            map.remove(p);
        }
    }
    docs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_a_container_gives_the_documents_and_exact_restores_in_place() {
    use fanout::changelog::to_cosmos::{CosmosRestoreError, CosmosRestoreOptions, Silent};
    let app = posted().await;
    let emulator = CosmosEmulator::start("shop", "orders", "/customerId", 2);
    emulator.add_container("restored", "/customerId", 2);
    let options = CosmosRestoreOptions {
        parallel: 8,
        ..CosmosRestoreOptions::default()
    };
    let no_stop = AtomicBool::new(false);
    let run = async |req: &fanout::changelog::restore::RestoreRequest,
                     options: &CosmosRestoreOptions| {
        common::cosmos::run_restore_to_cosmos(
            app.path(),
            &emulator,
            emulator.builder().await,
            "restored",
            req,
            options,
            Arc::new(Throttle::new(None)),
            &Silent,
            &no_stop,
        )
        .await
    };
    // A container partitioned by another path is refused before any write (exit 2).
    emulator.add_container("wrong-key", "/region", 1);
    let wrong = common::cosmos::run_restore_to_cosmos(
        app.path(),
        &emulator,
        emulator.builder().await,
        "wrong-key",
        &request(1500),
        &options,
        Arc::new(Throttle::new(None)),
        &Silent,
        &no_stop,
    )
    .await;
    assert!(
        wrong
            .as_ref()
            .is_err_and(|e| e.is_usage() && e.to_string().contains("partitioned by")),
        "{wrong:?}"
    );
    // As of between the second and third batch: o1 paid, o3 (o2 was deleted by then).
    let report = run(&request(1500), &options).await.unwrap();
    assert_eq!((report.written, report.plan.documents), (2, 2));
    let docs = container_docs(&emulator, "restored").await;
    assert_eq!(
        docs,
        BTreeMap::from([
            (
                "o1".to_string(),
                json!({"id": "o1", "customerId": "c1", "status": "paid"})
            ),
            (
                "o3".to_string(),
                json!({"id": "o3", "customerId": "c2", "status": "placed"})
            ),
        ])
    );
    // The container is not empty now: refused without --overwrite or --exact.
    let refused = run(&request(2500), &options).await;
    assert!(
        matches!(refused, Err(CosmosRestoreError::NotEmpty(_))),
        "{refused:?}"
    );
    // In place, exactly as of the first batch: o2 comes back, o1 goes back to placed; a
    // document written to the container since (not in the changelog then) is deleted.
    emulator
        .upsert_into(
            "restored",
            vec![json!({"id": "stray", "customerId": "c9", "status": "new"})],
            "customerId",
        )
        .await;
    let exact = CosmosRestoreOptions {
        exact: true,
        ..options.clone()
    };
    let report = run(&request(500), &exact).await.unwrap();
    assert_eq!(report.deleted, 1);
    assert_eq!(
        statuses(&container_docs(&emulator, "restored").await),
        pairs(&[("o1", "placed"), ("o2", "placed"), ("o3", "placed")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_restore_holds_its_ru_budget_and_resumes_after_a_stop() {
    use azure_data_cosmos_driver::fault_injection::FaultOperationType;
    use fanout::changelog::to_cosmos::{CosmosRestoreError, CosmosRestoreOptions, Silent};
    let app = posted_orders(600).await;
    let emulator = CosmosEmulator::start("shop", "orders", "/customerId", 2);
    emulator.add_container("restored", "/customerId", 2);
    let options = CosmosRestoreOptions {
        parallel: 8,
        ..CosmosRestoreOptions::default()
    };
    // Stopped after 200 documents...
    let stop = Arc::new(AtomicBool::new(false));
    let first = common::cosmos::run_restore_to_cosmos(
        app.path(),
        &emulator,
        emulator.builder().await,
        "restored",
        &request(10),
        &options,
        Arc::new(Throttle::new(None)),
        &StopAfter {
            after: 200,
            stop: stop.clone(),
        },
        &stop,
    )
    .await;
    assert!(
        matches!(first, Err(CosmosRestoreError::Interrupted)),
        "{first:?}"
    );
    assert_eq!(container_docs(&emulator, "restored").await.len(), 200);
    // ... a rerun without --resume is refused, saying how to go on ...
    let refused = common::cosmos::run_restore_to_cosmos(
        app.path(),
        &emulator,
        emulator.builder().await,
        "restored",
        &request(10),
        &options,
        Arc::new(Throttle::new(None)),
        &Silent,
        &AtomicBool::new(false),
    )
    .await;
    assert!(
        refused.is_err_and(|e| e.to_string().contains("`--resume` continues it")),
        "refused"
    );
    // ... and --resume, with the service throttling writes (8 upserts answered 429) and a
    // budget far below what the writes would take, writes the rest and nothing twice.
    let rule = common::cosmos::throttled("upsert-429", FaultOperationType::UpsertItem, 8);
    let builder = emulator
        .builder()
        .await
        .with_fault_injection_rules(vec![rule])
        .unwrap();
    let budget = 400.0;
    let report = common::cosmos::run_restore_to_cosmos(
        app.path(),
        &emulator,
        builder,
        "restored",
        &request(10),
        &CosmosRestoreOptions {
            resume: true,
            ..options
        },
        Arc::new(Throttle::new(Some(budget))),
        &Silent,
        &AtomicBool::new(false),
    )
    .await
    .unwrap();
    assert!(report.resumed);
    assert_eq!((report.skipped, report.written), (200, 400));
    let docs = container_docs(&emulator, "restored").await;
    assert_eq!(docs.len(), 600, "nothing lost");
    for i in 0..600 {
        assert_eq!(docs[&format!("o{i}")]["total"], json!(i), "o{i}");
    }
    assert!(report.spent.throttled >= 8, "{:?}", report.spent);
    let rate = report.spent.ru_per_second();
    assert!(
        report.spent.request_units > 3.0 * budget,
        "the run spans several seconds of budget: {:?}",
        report.spent
    );
    assert!(
        (rate - budget).abs() <= 0.1 * budget,
        "measured {rate:.0} RU/s against a budget of {budget} RU/s ({:?})",
        report.spent
    );
}
