//! The state table and restore at scale, printed as tables (release build, local disk):
//! - state: a changelog of `BENCH_STATE_DOCS` (default 1,000,000) documents of ~1 KB
//!   materialized into a state table (a rebuild), then `BENCH_STATE_CHANGES` (default
//!   100,000) updates of random documents refreshed into it: seconds and bytes rewritten;
//! - restore: a changelog of `BENCH_RESTORE_CHANGES` (default 1,000,000) changes, two
//!   versions of each of half as many documents, restored to JSON Lines: documents/s and the
//!   peak RSS the restore adds; one document restored alone (data skipping); and
//!   `BENCH_RESTORE_EMULATOR_DOCS` (default 50,000) documents restored into Microsoft's
//!   in-memory Cosmos DB EMULATOR (its costs, not the service's).
//!
//! Run: `cargo bench --bench state_restore` (needs a few GB of disk under target/).

mod support;

use fanout::change::{Change, Operation, PartitionKey};
use fanout::changelog::restore::{JsonLines, RestoreRequest, plan};
use fanout::sinks::BatchContext;
use fanout::sinks::delta::materialize::{StateTable, materialize};
use fanout::sinks::delta::{ChangelogTable, DeltaConfig, register_storage_handlers};
use fanout::storage::Location;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;
use support::proc_status_kb;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const T0: i64 = 1_767_225_600;

fn change(i: usize, version: i64, keys: usize, filler: &str) -> Change {
    let pk = format!("c{}", i % keys);
    let doc: Map<String, Value> = json!({
        "id": format!("o{i}"), "customerId": pk, "status": format!("v{version}"),
        "total": i, "note": filler, "_ts": T0 + version, "_lsn": version * 10_000_000 + i as i64,
    })
    .as_object()
    .unwrap()
    .clone();
    Change {
        operation: Operation::Upsert,
        delete_kind: None,
        id: format!("o{i}"),
        partition_key: PartitionKey(vec![Some(Value::String(pk))]),
        lsn: Some(version * 10_000_000 + i as i64),
        ts: Some(T0 + version),
        etag: Some(format!("\"{version}-{i}\"")),
        document: Some(doc),
    }
}

/// ~850 bytes that compress about as well as real documents do (hex of a pseudo-random
/// sequence seeded by the document: not a run of one letter, which would compress 100:1).
fn filler(i: usize, version: i64) -> String {
    let mut x = (i as u64).wrapping_mul(6364136223846793005) ^ (version as u64);
    let mut out = String::with_capacity(850);
    while out.len() < 850 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(&format!("{:x} ", x >> 40));
    }
    out
}

/// Appends the changes of documents `ids` at `version`, 20,000 per commit.
async fn append(table: &ChangelogTable, ids: &[usize], version: i64, keys: usize) {
    for (n, chunk) in ids.chunks(20_000).enumerate() {
        let changes: Vec<Change> = chunk
            .iter()
            .map(|i| change(*i, version, keys, &filler(*i, version)))
            .collect();
        let refs: Vec<&Change> = changes.iter().collect();
        let ctx = BatchContext {
            function: "orders".into(),
            invocation_id: format!("bench-{version}-{n}"),
            fingerprint: format!("bench-{version}-{n}"),
            received_at: chrono::Utc::now(),
            replay: false,
        };
        table.append(&ctx, "changelog", &refs).await.unwrap();
    }
}

fn changelog(dir: &Path, name: &str) -> ChangelogTable {
    let url = url::Url::from_directory_path(dir.join(name)).unwrap();
    let mut config = DeltaConfig::at(dir.join(name).to_string_lossy().to_string());
    config.compaction.enabled = false;
    ChangelogTable::new(url, &config).with_source("/cosmosdb/shop/orders".into())
}

unsafe extern "C" {
    /// glibc: returns freed heap to the system, so the RSS before a step is what is live.
    fn malloc_trim(pad: usize) -> i32;
}

fn reset_peak() {
    // SAFETY: malloc_trim only releases free memory; it takes no pointers of ours.
    unsafe {
        malloc_trim(0);
    }
    // Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_added_mb(before_kb: u64) -> f64 {
    proc_status_kb(std::process::id(), "VmHWM:").saturating_sub(before_kb) as f64 / 1024.0
}

fn rss_kb() -> u64 {
    proc_status_kb(std::process::id(), "VmRSS:")
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

fn main() {
    fanout::install_crypto_provider();
    register_storage_handlers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path();
        // --- state table ---
        let docs = env("BENCH_STATE_DOCS", 1_000_000);
        let changes = env("BENCH_STATE_CHANGES", 100_000);
        let source = changelog(dir, "state-changelog");
        let all: Vec<usize> = (0..docs).collect();
        let started = Instant::now();
        append(&source, &all, 1, 10_000).await;
        let write_s = started.elapsed().as_secs_f64();
        let state = StateTable {
            url: url::Url::from_directory_path(dir.join("state")).unwrap(),
            storage_options: HashMap::new(),
            changelog: source.url().clone(),
            changelog_options: HashMap::new(),
            buckets: 64,
            columns: fanout::sinks::delta::ChangelogSchema::new(&[]),
        };
        let started = Instant::now();
        let rebuild = materialize(&state).await.unwrap();
        let rebuild_s = started.elapsed().as_secs_f64();
        // Random documents updated (a multiplicative hash spreads them over the keys).
        let updated: Vec<usize> = (0..changes)
            .map(|i| i.wrapping_mul(2_654_435_761) % docs.max(1))
            .collect();
        append(&source, &updated, 2, 10_000).await;
        let started = Instant::now();
        let refresh = materialize(&state).await.unwrap();
        let refresh_s = started.elapsed().as_secs_f64();
        println!(
            "\n### State table ({docs} documents of ~1 KB over 10,000 partition keys, 64 buckets; local disk)\n"
        );
        println!("| step | seconds | changes | buckets rewritten | bytes read back and rewritten | bytes written |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| changelog written ({docs} rows, for reference) | {write_s:.1} | {docs} | - | - | {} |",
            dir_bytes(&dir.join("state-changelog"))
        );
        println!(
            "| first refresh (a rebuild: {} rows) | {rebuild_s:.1} | {} | {} | {} | {} |",
            rebuild.rows,
            rebuild.changes,
            rebuild.buckets_rewritten,
            rebuild.bytes_removed,
            rebuild.bytes_added
        );
        println!(
            "| {changes} updates of random documents | {refresh_s:.1} | {} | {} | {} | {} |",
            refresh.changes, refresh.buckets_rewritten, refresh.bytes_removed, refresh.bytes_added
        );
        drop(std::fs::remove_dir_all(dir.join("state")));
        drop(std::fs::remove_dir_all(dir.join("state-changelog")));

        // --- restore ---
        let total = env("BENCH_RESTORE_CHANGES", 1_000_000);
        let half = total / 2;
        let table = changelog(dir, "restore-changelog");
        let ids: Vec<usize> = (0..half).collect();
        append(&table, &ids, 1, 10_000).await;
        append(&table, &ids, 2, 10_000).await;
        let cl = fanout::changelog::Changelog {
            sink: "changelog".into(),
            url: table.url().clone(),
            storage_options: HashMap::new(),
            scope: "/cosmosdb/shop/orders".into(),
        };
        let request = |id: Option<String>, pk: Option<String>| RestoreRequest {
            as_of: chrono::DateTime::from_timestamp(T0 + 10, 0).unwrap(),
            partition_key: pk,
            id,
            check_baseline: false,
            version: None,
        };
        reset_peak();
        let before = rss_kb();
        let started = Instant::now();
        let to = Location::parse("jsonl", Default::default(), dir).unwrap();
        let (chosen, planned) = plan(&cl, "orders", &request(None, None)).await.unwrap();
        let req = RestoreRequest {
            version: Some(planned.scan.version),
            ..request(None, None)
        };
        let report = JsonLines::open(&to, false)
            .await
            .unwrap()
            .write(&cl, &req, chosen, planned)
            .await
            .unwrap();
        let jsonl_s = started.elapsed().as_secs_f64();
        let jsonl_peak = peak_added_mb(before);
        assert_eq!(report.written, half);
        // One document: data skipping on id / partition key statistics.
        let one = Some(format!("o{}", half / 2));
        let pk = Some(format!("[\"c{}\"]", (half / 2) % 10_000));
        let mut single = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let (chosen, planned) = plan(&cl, "orders", &request(one.clone(), pk.clone()))
                .await
                .unwrap();
            let mut got = 0;
            fanout::changelog::restore::documents(
                &cl,
                &request(one.clone(), pk.clone()),
                chosen,
                async |docs| -> Result<(), fanout::changelog::restore::RestoreError> {
                    got += docs.len();
                    Ok(())
                },
            )
            .await
            .unwrap();
            assert_eq!(got, 1);
            single.push((started.elapsed().as_secs_f64() * 1000.0, planned.scan));
        }
        single.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (single_ms, scan) = &single[single.len() / 2];
        println!(
            "\n### Restore ({total} changes: {half} documents of ~1 KB, two versions each; local disk)\n"
        );
        println!("| restore | documents | seconds | documents/s | peak RSS added |");
        println!("|---|---|---|---|---|");
        println!(
            "| everything, to JSON Lines | {half} | {jsonl_s:.1} | {:.0} | {jsonl_peak:.0} MB |",
            half as f64 / jsonl_s
        );
        println!(
            "| one document (`--id` + `--partition-key`), median of 5 | 1 | {:.3} | - | - |",
            single_ms / 1000.0
        );
        println!(
            "\nOne document read {} of {} data files (statistics on id and partition key skip the rest).",
            scan.files_read, scan.files
        );
        drop(std::fs::remove_dir_all(dir.join("jsonl")));
        drop(std::fs::remove_dir_all(dir.join("restore-changelog")));

        // --- restore into the in-memory emulator ---
        let n = env("BENCH_RESTORE_EMULATOR_DOCS", 50_000);
        let app = fanout_test_kit::TestApp::new();
        app.function("orders", "documents", None).config(
            r#"
[functions.orders]
partition_key = "/customerId"

[functions.orders.sinks.changelog]
type = "delta"
table = "tables/orders"
"#,
        );
        let small = changelog(app.path(), "tables/orders");
        let ids: Vec<usize> = (0..n).collect();
        append(&small, &ids, 1, 1_000).await;
        append(&small, &ids, 2, 1_000).await;
        let emulator = fanout_test_kit::cosmos::CosmosEmulator::start("shop", "orders", "/customerId", 4);
        emulator.add_container("restored", "/customerId", 4);
        reset_peak();
        let before = rss_kb();
        let started = Instant::now();
        let report = fanout_test_kit::cosmos::run_restore_to_cosmos(
            app.path(),
            &emulator,
            emulator.builder().await,
            "restored",
            &request(None, None),
            &fanout::changelog::to_cosmos::CosmosRestoreOptions {
                parallel: 32,
                ..Default::default()
            },
            std::sync::Arc::new(fanout::cosmos::Throttle::new(None)),
            &fanout::changelog::to_cosmos::Silent,
            &std::sync::atomic::AtomicBool::new(false),
        )
        .await
        .unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(report.written as usize, n);
        println!(
            "| into the in-memory emulator (upserts, 32 at a time) | {n} | {secs:.1} | {:.0} | {:.0} MB (the emulator's copy included) |",
            n as f64 / secs,
            peak_added_mb(before)
        );
        println!(
            "\nInto the emulator: {:.2} RU per document, {:.0} RU/s (the emulator's charges).",
            report.spent.request_units / n as f64,
            report.spent.ru_per_second()
        );
    });
}
