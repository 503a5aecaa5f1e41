//! The Delta changelog at scale (issue "Delta changelog at scale"), printed as a table:
//! - 100-change batches from 8 concurrent senders through the real binary (emulated host ->
//!   HTTP -> handler -> Delta): changes/s, invocation latency, commits used;
//! - Parquet files per 100k changes without compaction, and after `compact`;
//! - the time to open the table (and to make the first commit from a cold writer) after
//!   10k commits.
//!
//! Run: `cargo bench --bench changelog_scale` (release build). Figures, not assertions.

mod support;
use fanout::hostsim::{EmulatedHost, cosmos_trigger_body, samples};
use fanout::sinks::delta::{ChangelogTable, DeltaConfig, open, read_changelog, table_url};
use futures::future::join_all;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{percentile, write_app};

const SENDERS: usize = 8;
const BATCH: usize = 100;
const CHANGES: usize = 100_000;
fn commits() -> usize {
    std::env::var("BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

struct Run {
    changes_per_s: f64,
    p50: Duration,
    p99: Duration,
    version: u64,
    files: usize,
}

/// 8 senders, each posting its share of 100-change batches one after another.
async fn senders_run(binary: &Path, delta_extra: &str) -> (tempfile::TempDir, Run) {
    let dir = tempfile::tempdir().unwrap();
    write_app(dir.path(), delta_extra);
    let host = Arc::new(
        EmulatedHost::start(
            binary,
            dir.path(),
            &[(
                "FANOUT_LOG",
                std::env::var("BENCH_LOG").as_deref().unwrap_or("warn"),
            )],
        )
        .await
        .unwrap(),
    );
    let bodies: Vec<String> = samples::order_batches(1_000_000, CHANGES / BATCH, BATCH, 5_000)
        .iter()
        .map(|d| cosmos_trigger_body("documents", "orders", d, None))
        .collect();
    let bodies = Arc::new(bodies);
    let started = Instant::now();
    let tasks = (0..SENDERS).map(|s| {
        let (host, bodies) = (host.clone(), bodies.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            for body in bodies.iter().skip(s).step_by(SENDERS) {
                let call = host.invoke("orders", body).await.unwrap();
                assert!(call.is_success(), "{:?}", call.logs());
                latencies.push(call.elapsed);
            }
            latencies
        })
    });
    let mut latencies: Vec<Duration> = join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    let elapsed = started.elapsed();
    latencies.sort();
    let url = table_url("tables/orders", dir.path()).unwrap();
    let snapshot = read_changelog(url, Default::default()).await.unwrap();
    assert_eq!(snapshot.rows.len(), CHANGES, "every change is in the table");
    drop(host);
    (
        dir,
        Run {
            changes_per_s: CHANGES as f64 / elapsed.as_secs_f64(),
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            version: snapshot.version,
            files: snapshot.files,
        },
    )
}

fn row(label: &str, r: &Run) {
    println!(
        "| {label} | {:.0} changes/s | p50 {:.1} ms, p99 {:.1} ms | {} commits | {} files |",
        r.changes_per_s,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        r.version,
        r.files
    );
}

fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

#[tokio::main]
async fn main() {
    fanout::limit_malloc_arenas();
    fanout::install_crypto_provider();
    let binary = Path::new(env!("CARGO_BIN_EXE_fanout"));
    if std::env::var("BENCH_ONLY_EXACTLY_ONCE").is_ok() {
        exactly_once_memory(binary).await;
        return;
    }
    if std::env::var("BENCH_ONLY_COMMITS").is_err() {
        senders_and_compaction(binary).await;
    }
    commits_and_open().await;
    exactly_once_memory(binary).await;
}

/// The memory exactly-once costs: 1M changes over 100k partition keys through the real
/// binary (4 senders, 100-change batches; `BENCH_EXACTLY_ONCE_CHANGES` changes it), the
/// handler's RSS as the table grows (the per-key `txn` marks), then 200 re-cut re-deliveries
/// of old batches (every change below its key's mark: exact lookups load the identities of
/// their `change_date` partitions), and the rows after them (must not grow).
async fn exactly_once_memory(binary: &Path) {
    let changes: usize = std::env::var("BENCH_EXACTLY_ONCE_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let keys: usize = std::env::var("BENCH_EXACTLY_ONCE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    const SENDERS: usize = 4;
    let batches = changes / BATCH;
    let dir = tempfile::tempdir().unwrap();
    write_app(dir.path(), "");
    let host = Arc::new(
        EmulatedHost::start(binary, dir.path(), &[("FANOUT_LOG", "warn")])
            .await
            .unwrap(),
    );
    let pid = host.pid().unwrap();
    // Generated per batch, not held. A key's changes go through one sender, in order.
    let docs = move |b: usize| -> Vec<serde_json::Value> {
        (b * BATCH..(b + 1) * BATCH)
            .map(|n| {
                samples::order(
                    &format!("order-{}", n % (keys * 5)),
                    &format!("customer-{}", n % keys),
                    1 + n as i64,
                    1_744_170_000 + (n / 20) as i64,
                    10.0 + (n % 50) as f64,
                    n % 10 == 9,
                )
            })
            .collect()
    };
    let batch = move |b: usize| cosmos_trigger_body("documents", "orders", &docs(b), None);
    let batch = Arc::new(batch);
    println!(
        "\nExactly once at scale: {changes} changes over {keys} partition keys, {SENDERS} senders x {BATCH}-change batches, through the real binary\n"
    );
    println!("| after | handler RSS | peak RSS |");
    println!("|---|---|---|");
    let started = Instant::now();
    let quarter = (batches / 4).max(1);
    for q in 0..4 {
        let range = q * quarter..((q + 1) * quarter).min(batches);
        let tasks = (0..SENDERS).map(|s| {
            let (host, batch, range) = (host.clone(), batch.clone(), range.clone());
            tokio::spawn(async move {
                for b in range.filter(|b| b % SENDERS == s) {
                    let call = host.invoke("orders", &batch(b)).await.unwrap();
                    assert!(call.is_success(), "{:?}", call.logs());
                }
            })
        });
        for t in join_all(tasks).await {
            t.unwrap();
        }
        println!(
            "| {} changes | {} MB | {} MB |",
            ((q + 1) * quarter).min(batches) * BATCH,
            support::proc_status_kb(pid, "VmRSS:") / 1024,
            support::proc_status_kb(pid, "VmHWM:") / 1024
        );
    }
    let load = started.elapsed();
    // Re-cut re-deliveries of old batches: the first change dropped, the next batch's first
    // change added - every change already in the table, below its key's mark.
    let started = Instant::now();
    for b in 1000..1200.min(batches.saturating_sub(1)) {
        let mut cut = docs(b).split_off(1);
        cut.push(docs(b + 1).remove(0));
        let call = host
            .invoke(
                "orders",
                &cosmos_trigger_body("documents", "orders", &cut, None),
            )
            .await
            .unwrap();
        assert!(call.is_success(), "{:?}", call.logs());
    }
    let recut = started.elapsed();
    println!(
        "| 200 re-cut re-deliveries of old batches ({:.1} s) | {} MB | {} MB |",
        recut.as_secs_f64(),
        support::proc_status_kb(pid, "VmRSS:") / 1024,
        support::proc_status_kb(pid, "VmHWM:") / 1024
    );
    let url = table_url("tables/orders", dir.path()).unwrap();
    let rows = read_changelog(url, Default::default())
        .await
        .unwrap()
        .rows
        .len();
    println!(
        "\n{changes} changes loaded in {:.1} s ({:.0} changes/s); rows in the table after the re-deliveries: {rows} (exactly once: {})",
        load.as_secs_f64(),
        changes as f64 / load.as_secs_f64(),
        if rows == changes { "yes" } else { "NO" }
    );
}

async fn senders_and_compaction(binary: &Path) {
    println!(
        "\n{SENDERS} concurrent senders x 100-change batches, {CHANGES} changes, through the real binary\n"
    );
    println!(
        "| setting | throughput | invocation latency | table commits | data files at the end |"
    );
    println!("|---|---|---|---|---|");
    let (_d, r) = senders_run(
        binary,
        "group_commit = { window_ms = 0 }\ncompaction = { enabled = false }",
    )
    .await;
    row("group commit window 0 ms, no compaction", &r);
    let (dir, r) = senders_run(binary, "compaction = { enabled = false }").await;
    row("group commit window 10 ms (default), no compaction", &r);
    let (_d2, r2) = senders_run(binary, "").await;
    row(
        "group commit window 10 ms, background compaction (default)",
        &r2,
    );

    // Files per 100k changes before and after an on-demand compaction.
    let url = table_url("tables/orders", dir.path()).unwrap();
    let config = DeltaConfig::at("tables/orders");
    let before = read_changelog(url.clone(), Default::default())
        .await
        .unwrap();
    let started = Instant::now();
    let report = ChangelogTable::new(url.clone(), &config)
        .compact()
        .await
        .unwrap();
    let took = started.elapsed();
    let after = read_changelog(url, Default::default()).await.unwrap();
    println!();
    println!("| compaction | value |");
    println!("|---|---|");
    println!(
        "| Parquet files per 100k changes | {} before, {} after `compact` ({:.2} s: {report}) |",
        before.files,
        after.files,
        took.as_secs_f64()
    );
}

async fn commits_and_open() {
    // 10k commits, then the time to open the table.
    let dir = tempfile::tempdir().unwrap();
    let url = table_url("t", dir.path()).unwrap();
    let mut config = DeltaConfig::at("t");
    config.group_commit.window_ms = 0;
    if std::env::var("BENCH_NO_COMPACTION").is_ok() {
        config.compaction.enabled = false;
    }
    let table = ChangelogTable::new(url.clone(), &config);
    let commits = commits();
    // Generated per commit, not held: 10k batches of documents would dominate the RSS.
    let docs = (0..commits).map(|c| samples::order_batches(1 + c as i64 * 10, 1, 10, 50).remove(0));
    let ctx = fanout::testing::batch_context("orders");
    let normalizer = fanout::change::Normalizer::new(
        fanout::change::PartitionKeyPaths::parse(&["/customerId"]).unwrap(),
        None,
    );
    let normalize = |docs: &[serde_json::Value]| -> Vec<fanout::change::Change> {
        docs.iter()
            .enumerate()
            .map(|(i, d)| normalizer.normalize(i, d.clone()).unwrap())
            .collect()
    };
    let started = Instant::now();
    let mut commit_times = Vec::new();
    for batch in docs {
        let changes = normalize(&batch);
        let refs: Vec<_> = changes.iter().collect();
        let t = Instant::now();
        table.append(&ctx, "changelog", &refs).await.unwrap();
        commit_times.push(t.elapsed());
        if commit_times.len() % 1000 == 0 {
            eprintln!(
                "{} commits: RSS {} MB, last commit {:.1} ms",
                commit_times.len(),
                rss_mb(),
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    let writing = started.elapsed();
    drop(table);
    let first_100: Duration = commit_times[..100].iter().sum::<Duration>() / 100;
    let last_100: Duration = commit_times[commits - 100..].iter().sum::<Duration>() / 100;
    let started = Instant::now();
    let opened = open(url.clone(), Default::default()).await.unwrap();
    let open_time = started.elapsed();
    let files = opened.snapshot().unwrap().log_data().num_files();
    let cold = ChangelogTable::new(url.clone(), &config);
    let extra = samples::order_batches(10_000_000, 1, 10, 5);
    let changes = normalize(&extra[0]);
    let refs: Vec<_> = changes.iter().collect();
    let started = Instant::now();
    cold.append(&ctx, "changelog", &refs).await.unwrap();
    let cold_commit = started.elapsed();
    let log_files = std::fs::read_dir(dir.path().join("t/_delta_log"))
        .unwrap()
        .count();
    println!(
        "| {commits} commits of 10 changes, one at a time | {:.1} s ({:.1} ms per commit over the first 100, {:.1} ms over the last 100) |",
        writing.as_secs_f64(),
        first_100.as_secs_f64() * 1e3,
        last_100.as_secs_f64() * 1e3
    );
    println!(
        "| open the table after {commits} commits | {:.0} ms (version {}, {files} data files, {log_files} entries in _delta_log) |",
        open_time.as_secs_f64() * 1e3,
        opened.version().unwrap_or_default()
    );
    println!(
        "| first append of a cold writer on that table (open + commit) | {:.0} ms |",
        cold_commit.as_secs_f64() * 1e3
    );
}
