//! End-to-end figures through the real binary, printed as a table (not timed assertions):
//! - start-up: process start to the first answer on `/` (what the host waits for), and idle RSS;
//! - Delta append: 1000-change batches into a local table, through the sink directly and
//!   through the whole HTTP path (emulated host -> handler -> Delta).
//!
//! Run: `cargo bench --bench figures` (release build).

mod support;
use fanout::hostsim::{EmulatedHost, cosmos_trigger_body, samples};
use fanout::sinks::BatchContext;
use fanout::sinks::delta::{ChangelogTable, table_url};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{percentile, write_app};

const ROUNDS: usize = 20;
const BATCHES: usize = 30;
const BATCH: usize = 1000;

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list themselves.
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_fanout"));
    println!(
        "fanout figures ({}; {} cores)",
        binary.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // Start-up and idle memory.
    let dir = tempfile::tempdir().unwrap();
    write_app(dir.path(), "");
    let (startups, idle_rss, _) = support::measure_startup(binary, dir.path(), ROUNDS).await;
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| start-up to first answer on / (p50 / max of {ROUNDS}) | {:.1} ms / {:.1} ms |",
        percentile(&startups, 0.5).as_secs_f64() * 1e3,
        startups.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "| idle RSS (median) | {:.1} MB |",
        idle_rss[idle_rss.len() / 2] as f64 / 1024.0
    );

    // Delta append through the sink directly.
    let table_dir = tempfile::tempdir().unwrap();
    let table = ChangelogTable::new(
        table_url("t", table_dir.path()).unwrap(),
        &fanout::sinks::delta::DeltaConfig::at("t"),
    );
    let batches = normalized_batches(BATCHES);
    let ctx = bench_context();
    let started = Instant::now();
    let mut per_batch = Vec::new();
    for batch in &batches {
        let t = Instant::now();
        let refs: Vec<_> = batch.iter().collect();
        table.append(&ctx, "changelog", &refs).await.unwrap();
        per_batch.push(t.elapsed());
    }
    let direct = (BATCHES * BATCH) as f64 / started.elapsed().as_secs_f64();
    per_batch.sort();
    println!(
        "| Delta append, sink only, {BATCHES} x {BATCH}-change batches | {:.0} changes/s (p50 {:.1} ms, p99 {:.1} ms per batch) |",
        direct,
        percentile(&per_batch, 0.5).as_secs_f64() * 1e3,
        percentile(&per_batch, 0.99).as_secs_f64() * 1e3
    );

    // The whole path: emulated host -> HTTP -> decode -> normalize -> Delta.
    let mut host = EmulatedHost::start(binary, dir.path(), &[("FANOUT_LOG", "warn")])
        .await
        .unwrap();
    let bodies: Vec<String> = samples::order_batches(1_000_000, BATCHES, BATCH, 500)
        .iter()
        .map(|d| cosmos_trigger_body("documents", "orders", d, None))
        .collect();
    let started = Instant::now();
    let mut latencies = Vec::new();
    for body in &bodies {
        let call = host.invoke("orders", body).await.unwrap();
        assert!(call.is_success(), "{:?}", call.logs());
        latencies.push(call.elapsed);
    }
    let end_to_end = (BATCHES * BATCH) as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    let peak = support::proc_status_kb(host.pid().unwrap(), "VmHWM:");
    host.terminate();
    println!(
        "| Delta append, end to end over HTTP, {BATCHES} x {BATCH}-change batches ({:.1} MB body each) | {:.0} changes/s (p50 {:.1} ms, p99 {:.1} ms per invocation) |",
        bodies[0].len() as f64 / 1e6,
        end_to_end,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| peak RSS during the end-to-end run | {:.1} MB |",
        peak as f64 / 1024.0
    );

    redis_invalidation().await;
    search_replay().await;
}

/// A 10k-change replay through the AI Search sink against a local endpoint that counts
/// requests and answers 200 for every key: requests used vs the minimum the limits allow.
async fn search_replay() {
    use fanout::testing::route_context;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static REQUESTS: AtomicUsize = AtomicUsize::new(0);
    static BYTES: AtomicUsize = AtomicUsize::new(0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|body: axum::body::Bytes| async move {
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(body.len(), Ordering::Relaxed);
        let batch: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let results: Vec<serde_json::Value> = batch["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| serde_json::json!({"key": a["key"], "status": true, "statusCode": 200}))
            .collect();
        axum::Json(serde_json::json!({ "value": results }))
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = format!(
        "type = \"azure_search\"\nendpoint = \"http://127.0.0.1:{port}\"\nindex = \"orders\"\nauth = \"api_key\"\napi_key = \"k\"\nindex_definition = \"infra/search/orders.json\"\nfields = {{ id = \"/id\", customerId = \"/customerId\", status = \"/status\", total = \"/total\", skus = \"/lines/sku\", note = \"/note\" }}"
    );
    let pk = fanout::change::PartitionKeyPaths::parse(&["/customerId"]).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sink =
        fanout::testing::sink_from_toml("search", &config, &route_context(root, &["/customerId"]));
    // 10k changes to 10k distinct documents, as one dead-letter record replayed.
    let n = fanout::change::Normalizer::new(pk.clone(), None);
    let changes: Vec<fanout::change::Change> = samples::order_batches(1, 1, 10_000, 500)
        .remove(0)
        .into_iter()
        .enumerate()
        .map(|(i, mut d)| {
            d["id"] = serde_json::json!(format!("order-{i}"));
            n.normalize(i, d).unwrap()
        })
        .collect();
    let refs: Vec<_> = changes.iter().collect();
    let started = Instant::now();
    let delivery = sink.deliver(&bench_context(), &refs).await.unwrap();
    let elapsed = started.elapsed();
    let requests = REQUESTS.load(Ordering::Relaxed);
    let bytes = BYTES.load(Ordering::Relaxed);
    let minimum = changes
        .len()
        .div_ceil(1000)
        .max(bytes.div_ceil(16 * 1024 * 1024));
    println!(
        "| AI Search replay of 10k changes (~1 KB docs) | {requests} requests (minimum the 1000-action / 16 MB limits allow: {minimum}), {:.1} MB sent, {:.0} changes/s end to end; {} |",
        bytes as f64 / 1e6,
        changes.len() as f64 / elapsed.as_secs_f64(),
        delivery.detail
    );
}

/// Redis invalidation of 1000-change batches through the sink (the real client path) against a
/// local redis-server, next to `redis-benchmark` pipelining the same command.
async fn redis_invalidation() {
    use fanout::testing::route_context;
    let Some(server_bin) = which("redis-server") else {
        println!(
            "| Redis invalidation | skipped: redis-server not installed (tests/setup.sh installs it) |"
        );
        return;
    };
    let port = fanout::hostsim::free_port().unwrap();
    let mut server = std::process::Command::new(server_bin)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let config =
        format!("type = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\nkeys = [\"order:{{id}}\"]");
    let sink = fanout::testing::sink_from_toml(
        "cache",
        &config,
        &route_context(Path::new("."), &["/customerId"]),
    );
    let batches = normalized_batches(100);
    let ctx = bench_context();
    let reads = || -> u64 {
        let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap();
        let info: String = redis::cmd("INFO").arg("stats").query(&mut con).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_reads_processed:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // Warm up the connection, then measure.
    sink.deliver(&ctx, &batches[0].iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let reads_before = reads();
    let started = Instant::now();
    for batch in &batches {
        sink.deliver(&ctx, &batch.iter().collect::<Vec<_>>())
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    // One read event belongs to the second INFO call itself.
    let reads_per_batch = (reads() - reads_before).saturating_sub(1) as f64 / batches.len() as f64;
    println!(
        "| Redis invalidation, sink, {} x {BATCH}-change batches (1 UNLINK each) | {:.0} changes/s, 1 pipeline per batch ({:.1} server read events per batch) |",
        batches.len(),
        (batches.len() * BATCH) as f64 / elapsed.as_secs_f64(),
        reads_per_batch
    );
    if let Some(bench) = which("redis-benchmark") {
        let out = std::process::Command::new(bench)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-n",
                "100000",
                "-P",
                "1000",
                "-c",
                "1",
                "-q",
                "UNLINK",
                "order:__rand_int__",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .split('\r')
            .rfind(|l| l.contains("requests per second"))
            .unwrap_or("?")
            .trim()
            .to_string();
        println!("| redis-benchmark -P 1000 -c 1 UNLINK (reference, same server) | {line} |");
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// `count` batches of BATCH order changes, normalized as the pipeline would.
fn normalized_batches(count: usize) -> Vec<Vec<fanout::change::Change>> {
    let n = fanout::change::Normalizer::new(
        fanout::change::PartitionKeyPaths::parse(&["/customerId"]).unwrap(),
        None,
    );
    samples::order_batches(1, count, BATCH, 500)
        .into_iter()
        .map(|docs| {
            docs.into_iter()
                .enumerate()
                .map(|(i, d)| n.normalize(i, d).unwrap())
                .collect()
        })
        .collect()
}

fn bench_context() -> BatchContext {
    fanout::testing::batch_context("orders")
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}
