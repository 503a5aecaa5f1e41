//! The benchmark table, in one command: `bash benches/run.sh` (sets up the Python baseline's
//! virtualenv, then `cargo bench --bench suite`). Figures, not assertions; each run re-measures
//! on the machine at hand and prints a Markdown table, and writes it with a plot to
//! `target/bench/` (benchmarks.md, benchmarks.svg; docs/benchmarks.svg is a committed copy).
//!
//! 1. Per stage, in process: decoding the host's double-encoded body, normalizing, and each
//!    sink's encoding (Delta record batch, CloudEvent, AI Search request bodies).
//! 2. Start-up to the first answer on `/` and idle RSS.
//! 3. End to end through the real binary, started and driven like the Functions host (8
//!    concurrent invocations of 100-change batches of ~1 KB documents), fanning out to a real
//!    redis-server (invalidation), a local Delta table and a real Kafka-protocol broker (tansu,
//!    from tests/setup.sh): changes/s, p50/p99 invocation latency, handler overhead (latency
//!    minus the slowest sink's time, from the handler's own Logs), CPU, peak RSS. Everything
//!    is read back (rows, records) before a figure counts.
//! 4. The same load through `benches/python/handler.py`, a straightforward aiohttp custom
//!    handler doing the same fan-out to the same services, and the ratio.
//!
//! 5. Routes and shapes: Redis only, Delta only, Redis + Delta, each in 100-change batches × 4
//!    concurrent invocations and 1000-change batches × 2, Rust and Python side by side.
//!
//! 6. The Delta sink alone, in process (`ChangelogTable`), on a local disk and on Azurite:
//!    changes/s, commit latency, CPU per change with checkpoints and compaction, write
//!    amplification, storage requests per commit and per 1,000 changes.
//!
//! `BENCH_CHANGES` (default 50000) sets the end-to-end size; `BENCH_SKIP_PYTHON=1` skips 4 and
//! the Python rows of 5. `BENCH_ONLY=shapes` runs only 5 (`BENCH_SHAPE_CHANGES`, default
//! 40000, per run), `BENCH_ONLY=sink` only 6 (`BENCH_SINK_CHANGES`, default 100000;
//! `BENCH_SINK_STORAGE=local|azurite` picks one storage, `BENCH_SINK_PAUSE=1` waits 2 s before
//! each timed part, for `perf record -p`), `BENCH_ONLY=stages` only 1 and 2.
//! `BENCH_BINARY=path` measures another build of `fanout` in 2-5; `BENCH_BASELINE_BINARY=path`
//! adds an earlier build to 5, so a change is measured before and after in one run.

mod support;

use fanout_test_kit as common;

use common::RedisServer;
use common::kafka::Tansu;
use fanout::change::projection::FieldSelection;
use fanout::change::{Change, Normalizer, PartitionKeyPaths, SoftDelete};
use fanout::host::HostRequest;
use fanout::hostsim::{EmulatedHost, cosmos_trigger_body, samples};
use fanout::sinks::BatchContext;
use fanout::sinks::cloudevent::{EventFormat, EventMode};
use futures::future::join_all;
use serde_json::Value;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{percentile, proc_status_kb};

const SENDERS: usize = 8;
const BATCH: usize = 100;
/// Invocations sent one at a time after the concurrent run (handler overhead alone).
const SEQUENTIAL: usize = 300;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // After the comm field: state is fields[0]; utime and stime are stat fields 14 and 15.
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

struct Row {
    label: String,
    value: String,
}

fn rows_to_markdown(title: &str, rows: &[Row]) -> String {
    let mut out = format!("### {title}\n\n| measure | value |\n|---|---|\n");
    for r in rows {
        out.push_str(&format!("| {} | {} |\n", r.label, r.value));
    }
    out
}

fn bench_context() -> BatchContext {
    fanout::testing::batch_context("orders")
}

/// Changes/s of `f` over a 100-change batch, run for about half a second.
fn per_second(mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_millis(500) {
        f();
        n += 1;
    }
    (n * BATCH as u64) as f64 / started.elapsed().as_secs_f64()
}

fn stages() -> (Vec<Row>, Vec<(String, f64)>) {
    let docs = samples::order_batches(1, 1, BATCH, 20).remove(0);
    let body = cosmos_trigger_body("documents", "orders", &docs, None);
    let normalizer = Normalizer::new(
        PartitionKeyPaths::parse(&["/customerId"]).unwrap(),
        Some(SoftDelete {
            path: vec!["deleted".into()],
            equals: Value::Bool(true),
        }),
    );
    let request = HostRequest::decode(body.as_bytes(), "documents").unwrap();
    let changes: Vec<Change> = request
        .items
        .into_iter()
        .enumerate()
        .map(|(i, item)| normalizer.normalize(i, item).unwrap())
        .collect();
    let refs: Vec<&Change> = changes.iter().collect();
    let ctx = bench_context();
    let format = EventFormat {
        source: "/cosmosdb/shop/orders".into(),
        type_prefix: "com.example.orders".into(),
        fields: FieldSelection::default(),
    };
    let search = search_sink();

    // The yardstick: one plain serde_json parse of the same documents (an array, encoded once).
    let plain = serde_json::to_string(&docs).unwrap();
    let mut figures = vec![
        (
            "plain serde_json parse of the same documents (yardstick)".to_string(),
            per_second(|| {
                black_box(serde_json::from_str::<Vec<Value>>(black_box(&plain)).unwrap());
            }),
        ),
        (
            "decode (host body, double-encoded)".to_string(),
            per_second(|| {
                black_box(HostRequest::decode(black_box(body.as_bytes()), "documents").unwrap());
            }),
        ),
        (
            "decode + normalize".to_string(),
            per_second(|| {
                let request = HostRequest::decode(black_box(body.as_bytes()), "documents").unwrap();
                for (i, item) in request.items.into_iter().enumerate() {
                    black_box(normalizer.normalize(i, item).unwrap());
                }
            }),
        ),
        (
            "Delta: Arrow record batch".to_string(),
            per_second(|| {
                black_box(fanout::sinks::delta::encode(&ctx, &refs, chrono::Utc::now()).unwrap());
            }),
        ),
        (
            "events: CloudEvent (structured JSON)".to_string(),
            per_second(|| {
                for c in &refs {
                    black_box(format.encode(&ctx, c, EventMode::Structured));
                }
            }),
        ),
    ];
    figures.push((
        "AI Search: request bodies (projection + keys)".to_string(),
        per_second(|| {
            black_box(search.request_bodies(&refs));
        }),
    ));
    let mut rows: Vec<Row> = figures
        .iter()
        .map(|(label, per_s)| Row {
            label: label.clone(),
            value: format!("{:.0} changes/s", per_s),
        })
        .collect();
    rows.push(Row {
        label: "decode + normalize, time relative to the plain parse (target <= 2x)".into(),
        value: format!("{:.2}x", figures[0].1 / figures[2].1),
    });
    (rows, figures)
}

fn search_sink() -> fanout::sinks::azure_search::SearchSink {
    let config: fanout::sinks::azure_search::SearchConfig = toml::from_str(
        "endpoint = \"http://127.0.0.1:9\"\nindex = \"orders\"\nauth = \"api_key\"\napi_key = \"k\"\nindex_definition = \"infra/search/orders.json\"\nfields = { id = \"/id\", customerId = \"/customerId\", status = \"/status\", total = \"/total\", skus = \"/lines/sku\" }",
    )
    .unwrap();
    let validated = config
        .validate(&fanout::testing::route_context(&repo(), &["/customerId"]))
        .unwrap();
    fanout::sinks::azure_search::SearchSink::new("search", &validated).unwrap()
}

async fn startup(binary: &Path) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    support::write_app(dir.path(), "");
    let (startups, idle, anon) = support::measure_startup(binary, dir.path(), 20).await;
    vec![
        Row {
            label: "start-up to the first answer on / (p50 / max of 20)".into(),
            value: format!(
                "{:.1} ms / {:.1} ms",
                percentile(&startups, 0.5).as_secs_f64() * 1e3,
                startups.last().unwrap().as_secs_f64() * 1e3
            ),
        },
        Row {
            label: "idle RSS (median of 20)".into(),
            value: format!("{:.1} MB", idle[idle.len() / 2] as f64 / 1024.0),
        },
        Row {
            label: "... of which anonymous (heap, stacks; the rest is pages of the binary and libraries)".into(),
            value: format!("{:.1} MB", anon[anon.len() / 2] as f64 / 1024.0),
        },
    ]
}

/// One end-to-end run's figures.
struct EndToEnd {
    changes_per_s: f64,
    p50: Duration,
    p99: Duration,
    /// Latency minus the slowest sink (Rust only: from the handler's Logs).
    overhead: Option<(Duration, Duration)>,
    /// The same, one invocation at a time.
    overhead_alone: Option<(Duration, Duration)>,
    /// Changes sent in all (warm-up and the one-at-a-time run included).
    sent: usize,
    cpu_s: f64,
    wall_s: f64,
    peak_rss_mb: f64,
    failed: usize,
    rows: usize,
    records: usize,
}

/// The slowest sink of one invocation, from its Logs ("sink X (kind): delivered in N ms").
fn slowest_sink(logs: &[String]) -> Option<Duration> {
    logs.iter()
        .filter_map(|l| {
            let rest = l.split_once("delivered in ")?.1;
            rest.split_once(" ms")?.0.parse::<u64>().ok()
        })
        .max()
        .map(Duration::from_millis)
}

async fn drive(
    host: Arc<EmulatedHost>,
    bodies: Arc<Vec<String>>,
    senders: usize,
) -> (Vec<Duration>, Vec<Duration>, usize) {
    let tasks = (0..senders).map(|s| {
        let (host, bodies) = (host.clone(), bodies.clone());
        tokio::spawn(async move {
            let (mut latencies, mut overheads, mut failed) = (Vec::new(), Vec::new(), 0);
            for body in bodies.iter().skip(s).step_by(senders) {
                let call = host.invoke("orders", body).await.unwrap();
                if !call.is_success() {
                    failed += 1;
                    eprintln!("invocation failed: {:?}", call.logs());
                }
                if let Some(slowest) = slowest_sink(&call.logs()) {
                    overheads.push(call.elapsed.saturating_sub(slowest));
                }
                latencies.push(call.elapsed);
            }
            (latencies, overheads, failed)
        })
    });
    let (mut latencies, mut overheads, mut failed) = (Vec::new(), Vec::new(), 0);
    for r in join_all(tasks).await {
        let (l, o, f) = r.unwrap();
        latencies.extend(l);
        overheads.extend(o);
        failed += f;
    }
    (latencies, overheads, failed)
}

struct Services {
    redis: RedisServer,
    broker: Tansu,
}

/// One load: `changes` changes in `batch`-change invocations from `senders` concurrent senders.
#[derive(Clone, Copy)]
struct Shape {
    batch: usize,
    senders: usize,
}

/// Where a run's output is read back from before a figure counts.
#[derive(Clone, Copy)]
struct ReadBack<'a> {
    topic: Option<&'a str>,
    table: Option<&'a Path>,
}

/// Counts a storage endpoint's requests: (all, listings).
type RequestCounter<'a> = &'a dyn Fn() -> (u64, u64);

async fn end_to_end(
    services: &Services,
    handler: &Path,
    app: &Path,
    env: &[(&str, &str)],
    read_back: ReadBack<'_>,
    changes: usize,
    shape: Shape,
) -> EndToEnd {
    let ReadBack { topic, table } = read_back;
    let Shape { batch, senders } = shape;
    if let Some(topic) = topic {
        services.broker.create_topic(topic, 8).await;
    }
    let host = Arc::new(
        EmulatedHost::start(handler, app, env)
            .await
            .expect("the handler starts"),
    );
    let pid = host.pid().unwrap();
    // Warm up (connections, table creation) outside the timing, on other documents.
    let warm: Vec<String> = samples::order_batches(1, 2, BATCH, 50)
        .iter()
        .map(|d| cosmos_trigger_body("documents", "orders", d, None))
        .collect();
    drive(host.clone(), Arc::new(warm), senders).await;
    let bodies: Vec<String> = samples::order_batches(1_000_000, changes / batch, batch, 1000)
        .iter()
        .map(|d| cosmos_trigger_body("documents", "orders", d, None))
        .collect();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let (mut latencies, mut overheads, failed) =
        drive(host.clone(), Arc::new(bodies), senders).await;
    let wall = started.elapsed();
    let cpu_s = cpu_seconds(pid) - cpu_before;
    let peak_rss_mb = proc_status_kb(pid, "VmHWM:") as f64 / 1024.0;
    // One invocation at a time: the overhead without queueing behind the other seven. Only for
    // a handler that reports its sinks' times (the Python baseline does not).
    let sequential = if overheads.is_empty() || shape.senders != SENDERS {
        0
    } else {
        SEQUENTIAL
    };
    let alone: Vec<String> = samples::order_batches(5_000_000, sequential, BATCH, 1000)
        .iter()
        .map(|d| cosmos_trigger_body("documents", "orders", d, None))
        .collect();
    let (_, mut alone_overheads, _) = drive(host.clone(), Arc::new(alone), 1).await;
    alone_overheads.sort();
    drop(host); // kills the handler
    latencies.sort();
    overheads.sort();
    let rows = match table {
        Some(table) => common::read_table(table).await.rows.len(),
        None => 0,
    };
    let records = match topic {
        Some(topic) => services
            .broker
            .consume(topic, 8, changes + (2 + sequential) * BATCH)
            .len(),
        None => 0,
    };
    EndToEnd {
        changes_per_s: changes as f64 / wall.as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        overhead: (!overheads.is_empty())
            .then(|| (percentile(&overheads, 0.5), percentile(&overheads, 0.99))),
        sent: changes + (2 + sequential) * BATCH,
        overhead_alone: (!alone_overheads.is_empty()).then(|| {
            (
                percentile(&alone_overheads, 0.5),
                percentile(&alone_overheads, 0.99),
            )
        }),
        cpu_s,
        wall_s: wall.as_secs_f64(),
        peak_rss_mb,
        failed,
        rows,
        records,
    }
}

fn e2e_rows(name: &str, r: &EndToEnd, changes: usize) -> Vec<Row> {
    let mut rows = vec![
        Row {
            label: format!("{name}: throughput"),
            value: format!("{:.0} changes/s", r.changes_per_s),
        },
        Row {
            label: format!("{name}: invocation latency p50 / p99"),
            value: format!(
                "{:.1} ms / {:.1} ms",
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3
            ),
        },
        Row {
            label: format!("{name}: CPU"),
            value: format!(
                "{:.2} s for {changes} changes ({:.1} µs/change, {:.2} cores busy)",
                r.cpu_s,
                r.cpu_s * 1e6 / changes as f64,
                r.cpu_s / r.wall_s
            ),
        },
        Row {
            label: format!("{name}: peak RSS"),
            value: format!("{:.1} MB", r.peak_rss_mb),
        },
        Row {
            label: format!("{name}: read back"),
            value: format!(
                "{} Delta rows, {} Kafka records (of {} sent incl. warm-up and the one-at-a-time run){}",
                r.rows,
                r.records,
                r.sent,
                if r.failed > 0 {
                    format!("; {} invocations FAILED", r.failed)
                } else {
                    String::new()
                }
            ),
        },
    ];
    if let Some((p50, p99)) = r.overhead_alone {
        rows.insert(
            2,
            Row {
                label: format!(
                    "{name}: handler overhead p50 / p99, one invocation at a time ({SEQUENTIAL})"
                ),
                value: format!(
                    "{:.1} ms / {:.1} ms",
                    p50.as_secs_f64() * 1e3,
                    p99.as_secs_f64() * 1e3
                ),
            },
        );
    }
    if let Some((p50, p99)) = r.overhead {
        rows.insert(
            2,
            Row {
                label: format!(
                    "{name}: handler overhead p50 / p99 (latency minus the slowest sink)"
                ),
                value: format!(
                    "{:.1} ms / {:.1} ms",
                    p50.as_secs_f64() * 1e3,
                    p99.as_secs_f64() * 1e3
                ),
            },
        );
    }
    rows
}

/// The routes and shapes of the Delta latency work, each through the Rust binary and the Python
/// baseline side by side.
const ROUTES: [(&str, &[&str]); 3] = [
    ("Redis only", &["redis"]),
    ("Delta only", &["delta"]),
    ("Redis + Delta", &["redis", "delta"]),
];
const SHAPES: [Shape; 2] = [
    Shape {
        batch: 100,
        senders: 4,
    },
    Shape {
        batch: 1000,
        senders: 2,
    },
];

/// A throwaway app routing `orders` to `sinks` (any of "redis", "delta").
fn route_app(services: &Services, sinks: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    support::write_app(dir.path(), "");
    let mut toml = String::from(
        "[functions.orders]\npartition_key = \"/customerId\"\nsoft_delete = { field = \"/deleted\" }\n",
    );
    if sinks.contains(&"delta") {
        toml.push_str(
            "[functions.orders.sinks.changelog]\ntype = \"delta\"\ntable = \"tables/orders\"\n",
        );
    }
    if sinks.contains(&"redis") {
        toml.push_str(&format!(
            "[functions.orders.sinks.cache]\ntype = \"redis\"\nurl = \"{}\"\nkeys = [\"order:{{id}}\"]\n",
            services.redis.url()
        ));
    }
    std::fs::write(dir.path().join("fanout.toml"), toml).unwrap();
    dir
}

/// An executable in `dir` that starts the Python baseline, if its virtualenv is there.
fn python_launcher(dir: &Path) -> Option<PathBuf> {
    let python = repo().join("tests/.tools/bench-venv/bin/python");
    if std::env::var("BENCH_SKIP_PYTHON").is_ok() || !python.exists() {
        return None;
    }
    let launcher = dir.join("python-handler");
    std::fs::write(
        &launcher,
        format!(
            "#!/bin/sh\nexec {} {}\n",
            python.display(),
            repo().join("benches/python/handler.py").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &launcher,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    Some(launcher)
}

fn shape_row(route: &str, shape: Shape, who: &str, r: &EndToEnd, changes: usize) -> String {
    let read_back = if r.failed > 0 {
        format!("{} invocations FAILED", r.failed)
    } else if r.rows > 0 {
        format!("{} Delta rows", r.rows)
    } else {
        "-".into()
    };
    format!(
        "| {route} | {}×{} | {who} | {:.0} | {:.1} / {:.1} | {:.1} | {:.1} | {read_back} |\n",
        shape.batch,
        shape.senders,
        r.changes_per_s,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        r.cpu_s * 1e6 / changes as f64,
        r.peak_rss_mb,
    )
}

/// Every route × shape, Rust and Python, with the ratios. Returns the Markdown table and the
/// chart bars (Rust changes/s per route and shape).
async fn shapes(services: &Services, binary: &Path) -> (String, Vec<(String, f64)>) {
    let changes = std::env::var("BENCH_SHAPE_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000usize);
    let mut out = format!(
        "### Routes and shapes: {changes} changes each, batch size × concurrent invocations\n\n\
         CPU is the handler process's (Redis and the load generator excluded), per change.\n\n\
         | route | shape | handler | changes/s | p50 / p99 ms | CPU µs/change | peak RSS MB | read back |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    let mut bars = vec![];
    let mut ratios = String::new();
    for (route, sinks) in ROUTES {
        for shape in SHAPES {
            let has_delta = sinks.contains(&"delta");
            // One run of a build of the handler on a fresh app.
            let run = |binary: PathBuf| async move {
                let app = route_app(services, sinks);
                let table = app.path().join("tables/orders");
                end_to_end(
                    services,
                    &binary,
                    app.path(),
                    &[("FANOUT_LOG", "warn")],
                    ReadBack {
                        topic: None,
                        table: has_delta.then_some(table.as_path()),
                    },
                    changes,
                    shape,
                )
                .await
            };
            let rust = run(binary.to_path_buf()).await;
            out.push_str(&shape_row(route, shape, "fanout", &rust, changes));
            // An earlier build, side by side in the same run (before/after a change).
            if let Some(before) = std::env::var_os("BENCH_BASELINE_BINARY") {
                let r = run(PathBuf::from(before)).await;
                out.push_str(&shape_row(
                    route,
                    shape,
                    "fanout (baseline build)",
                    &r,
                    changes,
                ));
            }
            bars.push((
                format!("{route}, {}×{}", shape.batch, shape.senders),
                rust.changes_per_s,
            ));
            let py_dir = tempfile::tempdir().unwrap();
            let Some(launcher) = python_launcher(py_dir.path()) else {
                continue;
            };
            let py_table = py_dir.path().join("tables/orders");
            let (redis_url, table_s) = (services.redis.url(), py_table.display().to_string());
            let sinks_s = sinks.join(",");
            let env = [
                ("FANOUT_PY_SINKS", sinks_s.as_str()),
                ("FANOUT_PY_REDIS_URL", redis_url.as_str()),
                ("FANOUT_PY_DELTA_TABLE", table_s.as_str()),
            ];
            let py = end_to_end(
                services,
                &launcher,
                py_dir.path(),
                &env,
                ReadBack {
                    topic: None,
                    table: has_delta.then_some(py_table.as_path()),
                },
                changes,
                shape,
            )
            .await;
            out.push_str(&shape_row(route, shape, "Python", &py, changes));
            ratios.push_str(&format!(
                "| {route} | {}×{} | {:.1}x | {:.1}x | {:.1}x | {:.1}x |\n",
                shape.batch,
                shape.senders,
                rust.changes_per_s / py.changes_per_s,
                py.p99.as_secs_f64() / rust.p99.as_secs_f64(),
                py.cpu_s / rust.cpu_s,
                py.peak_rss_mb / rust.peak_rss_mb,
            ));
        }
    }
    if !ratios.is_empty() {
        out.push_str(
            "\nRatios, fanout over Python (higher is better for fanout):\n\n\
             | route | shape | throughput | lower p99 | less CPU/change | less peak RSS |\n\
             |---|---|---|---|---|---|\n",
        );
        out.push_str(&ratios);
    }
    (out, bars)
}

/// The Delta sink alone, in process: what one run of [`delta_sink`] measured.
struct SinkRun {
    changes_per_s: f64,
    cpu_us_per_change: f64,
    /// Append latency (encode + group commit + the commit that holds it).
    p50: Duration,
    p99: Duration,
    commits: u64,
    /// Bytes of every file the table folder holds (nothing is deleted: vacuum is off) per byte
    /// of the documents' JSON, and the part of it that compaction rewrote.
    write_amplification: f64,
    compaction_share: f64,
    /// Storage requests (Azurite only): all of them, and the listings among them.
    requests: Option<(u64, u64)>,
}

/// `changes` changes from `senders` concurrent tasks in `batch`-change appends through
/// `ChangelogTable` (group commit, checkpoints and background compaction included: the CPU
/// is the whole process's, until background work has settled), to `url`.
async fn delta_sink(
    url: url::Url,
    storage: &[(&str, String)],
    changes: usize,
    shape: Shape,
    requests: Option<RequestCounter<'_>>,
) -> SinkRun {
    use fanout::sinks::delta::{ChangelogTable, DeltaConfig};
    let Shape { batch, senders } = shape;
    let batches = common::order_changes(3_000_000, changes / batch, batch, 1000);
    let input_bytes: usize = batches
        .iter()
        .flatten()
        .map(|c| {
            c.document
                .as_ref()
                .map_or(0, |d| serde_json::to_vec(d).unwrap().len())
        })
        .sum();
    let mut config = DeltaConfig::at("t");
    // Experiments: what compaction and checkpoints cost.
    if std::env::var("BENCH_SINK_NO_COMPACTION").is_ok() {
        config.compaction.enabled = false;
    }
    if let Some(n) = std::env::var("BENCH_SINK_CHECKPOINT_INTERVAL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.checkpoint_interval = n;
    }
    config.storage_options = storage
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let table = Arc::new(ChangelogTable::new(url.clone(), &config));
    let ctx = Arc::new(bench_context());
    // Created (and its first commit made) before the clock starts.
    let first: Vec<&Change> = batches[0].iter().collect();
    let v0 = table
        .append(&ctx, "changelog", &first)
        .await
        .unwrap()
        .table_version
        .unwrap_or(0);
    let batches = Arc::new(batches);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    if std::env::var("BENCH_SINK_PAUSE").is_ok() {
        // Time to attach a profiler to the timed part only (`perf record -p`).
        eprintln!("timed part starts in 2 s: pid {}", std::process::id());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let requests_before = requests.map(|f| f());
    let cpu_before = cpu_seconds(std::process::id());
    let started = Instant::now();
    let tasks = (0..senders).map(|_| {
        let (table, ctx, batches, next) =
            (table.clone(), ctx.clone(), batches.clone(), next.clone());
        tokio::spawn(async move {
            let mut latencies = vec![];
            let mut last = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(changes) = batches.get(i) else { break };
                let refs: Vec<&Change> = changes.iter().collect();
                let t = Instant::now();
                let outcome = table.append(&ctx, "changelog", &refs).await.unwrap();
                latencies.push(t.elapsed());
                last = outcome.table_version.unwrap_or(0).max(last);
            }
            (latencies, last)
        })
    });
    let mut latencies = vec![];
    let mut commits = 0;
    for r in join_all(tasks).await {
        let (l, v) = r.unwrap();
        latencies.extend(l);
        commits = commits.max(v);
    }
    let wall = started.elapsed();
    // Background checkpoints and compactions finish on the same runtime: wait until the
    // process is idle (no CPU for 300 ms) before the CPU is read.
    let mut cpu = cpu_seconds(std::process::id());
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = cpu_seconds(std::process::id());
        if now - cpu < 0.02 {
            break;
        }
        cpu = now;
    }
    let cpu_s = cpu - cpu_before;
    let requests = requests
        .zip(requests_before)
        .map(|(f, (total, lists))| (f().0 - total, f().1 - lists));
    latencies.sort();
    // Bytes on disk (local tables): every data file, commit and checkpoint ever written.
    let (mut total, mut compacted) = (0u64, 0u64);
    if let Ok(root) = url.to_file_path() {
        let log = root.join("_delta_log");
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    stack.push(e.path());
                } else {
                    total += meta.len();
                }
            }
        }
        // Compaction's share: the bytes its commits added.
        for e in std::fs::read_dir(&log).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if !text.contains("\"OPTIMIZE\"") {
                continue;
            }
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap_or_default();
                compacted += v["add"]["size"].as_u64().unwrap_or(0);
            }
        }
    }
    SinkRun {
        changes_per_s: (changes - batch) as f64 / wall.as_secs_f64(),
        cpu_us_per_change: cpu_s * 1e6 / (changes - batch) as f64,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        commits: commits - v0,
        write_amplification: total as f64 / input_bytes as f64,
        compaction_share: compacted as f64 / total.max(1) as f64,
        requests,
    }
}

/// The Delta sink alone on a local disk and on Azurite, in 100×4 and 1000×2 shapes.
async fn delta_sink_table() -> String {
    let changes = std::env::var("BENCH_SINK_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000usize);
    let mut out = format!(
        "### The Delta sink alone, in process: {changes} changes of ~1 KB documents\n\n\
         Appends through `ChangelogTable` from concurrent tasks (group commit, checkpoints every \
         100 versions, background compaction); CPU is the whole process's until background work \
         settles, per change. Write amplification: bytes the table folder holds (data files, \
         commits, checkpoints; nothing vacuumed) per byte of document JSON, and compaction's \
         share of them.\n\n\
         | storage | shape | changes/s | commit p50 / p99 ms | CPU µs/change | commits | write amplification | storage requests per commit / per 1,000 changes |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    let azurite = common::Azurite::start_counting();
    azurite.create_container("bench").await;
    // object_store reads the emulator's address from the environment only.
    // SAFETY: set before any table is opened; nothing else in the bench reads the environment
    // concurrently.
    unsafe { std::env::set_var("AZURITE_BLOB_STORAGE_URL", azurite.blob_url()) };
    let storages: &[bool] = match std::env::var("BENCH_SINK_STORAGE").as_deref() {
        Ok("local") => &[false],
        Ok("azurite") => &[true],
        _ => &[false, true],
    };
    for shape in SHAPES {
        for &on_azure in storages {
            let dir = tempfile::tempdir().unwrap();
            let (url, storage, count): (url::Url, Vec<(&str, String)>, Option<RequestCounter<'_>>) =
                if on_azure {
                    (
                        url::Url::parse(&format!("az://bench/t-{}-{}", shape.batch, shape.senders))
                            .unwrap(),
                        vec![
                            ("azure_storage_use_emulator", "true".into()),
                            ("azure_storage_account_name", common::AZURITE_ACCOUNT.into()),
                            ("azure_storage_account_key", common::AZURITE_KEY.into()),
                        ],
                        Some(&|| (azurite.requests(), azurite.list_requests())),
                    )
                } else {
                    (
                        url::Url::from_directory_path(dir.path().join("t")).unwrap(),
                        vec![],
                        None,
                    )
                };
            if !on_azure {
                std::fs::create_dir_all(dir.path().join("t")).unwrap();
            }
            let r = delta_sink(url, &storage, changes, shape, count).await;
            let requests = match r.requests {
                Some((n, lists)) => format!(
                    "{:.1} / {:.1} ({:.2} listings per commit)",
                    n as f64 / r.commits.max(1) as f64,
                    n as f64 * 1000.0 / changes as f64,
                    lists as f64 / r.commits.max(1) as f64
                ),
                None => "-".into(),
            };
            let amplification = if on_azure {
                "-".to_string()
            } else {
                format!(
                    "{:.2}x ({:.0}% compaction)",
                    r.write_amplification,
                    r.compaction_share * 100.0
                )
            };
            out.push_str(&format!(
                "| {} | {}×{} | {:.0} | {:.1} / {:.1} | {:.1} | {} | {amplification} | {requests} |\n",
                if on_azure { "Azurite (az://)" } else { "local disk" },
                shape.batch,
                shape.senders,
                r.changes_per_s,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.cpu_us_per_change,
                r.commits,
            ));
        }
    }
    out
}

/// One chart panel: title, unit, bars (label, value).
type Panel<'a> = (&'a str, &'a str, Vec<(String, f64)>);

/// A horizontal bar chart, hand-written SVG (no plotting dependency).
fn svg(groups: &[Panel]) -> String {
    let (w, bar_h, gap, left) = (760.0, 22.0, 8.0, 260.0);
    let mut y = 20.0;
    let mut body = String::new();
    for (title, unit, bars) in groups {
        body.push_str(&format!(
            "<text x=\"10\" y=\"{}\" font-weight=\"bold\">{title}</text>\n",
            y + 14.0
        ));
        y += 26.0;
        let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9);
        for (i, (label, v)) in bars.iter().enumerate() {
            let len = (w - left - 120.0) * v / max;
            let color = if i == 0 { "#2b6cb0" } else { "#dd6b20" };
            body.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text><rect x=\"{left}\" y=\"{}\" width=\"{len:.1}\" height=\"{bar_h}\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{} {unit}</text>\n",
                left - 8.0,
                y + 16.0,
                y,
                left + len + 6.0,
                y + 16.0,
                if *v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") },
            ));
            y += bar_h + gap;
        }
        y += 14.0;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{y}\" font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `BENCH_BINARY` measures another build of the handler (the in-process parts are this one).
    let binary_override = std::env::var_os("BENCH_BINARY").map(PathBuf::from);
    let binary = binary_override
        .as_deref()
        .unwrap_or(Path::new(env!("CARGO_BIN_EXE_fanout")));
    let changes = std::env::var("BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000usize);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut report = format!(
        "## fanout benchmarks ({cores} cores, {}; load generator, services and handler share the machine)\n\n",
        chrono::Utc::now().format("%Y-%m-%d")
    );

    if std::env::var("BENCH_ONLY").as_deref() == Ok("stages") {
        let (rows, _) = stages();
        report.push_str(&rows_to_markdown("Per stage, in process", &rows));
        report.push('\n');
        report.push_str(&rows_to_markdown(
            "Start-up and idle memory",
            &startup(binary).await,
        ));
        println!("{report}");
        return;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("sink") {
        report.push_str(&delta_sink_table().await);
        println!("{report}");
        return;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("shapes") {
        let services = Services {
            redis: RedisServer::start(),
            broker: Tansu::start(),
        };
        let (table, _) = shapes(&services, binary).await;
        report.push_str(&table);
        println!("{report}");
        return;
    }
    let (stage_rows, stage_figures) = stages();
    report.push_str(&rows_to_markdown(
        "Per stage, in process, 100-change batches of ~1 KB documents",
        &stage_rows,
    ));
    report.push('\n');
    report.push_str(&rows_to_markdown(
        "Start-up and idle memory",
        &startup(binary).await,
    ));
    report.push('\n');

    let services = Services {
        redis: RedisServer::start(),
        broker: Tansu::start(),
    };
    let rust_app = tempfile::tempdir().unwrap();
    support::write_app(rust_app.path(), "");
    std::fs::write(
        rust_app.path().join("fanout.toml"),
        format!(
            r#"[functions.orders]
partition_key = "/customerId"
soft_delete = {{ field = "/deleted" }}

[functions.orders.sinks.changelog]
type = "delta"
table = "tables/orders"

[functions.orders.sinks.cache]
type = "redis"
url = "{}"
keys = ["order:{{id}}"]

[functions.orders.sinks.stream]
type = "kafka"
brokers = "{}"
topic = "orders-rust"
"#,
            services.redis.url(),
            services.broker.brokers()
        ),
    )
    .unwrap();
    let rust = end_to_end(
        &services,
        binary,
        rust_app.path(),
        &[("FANOUT_LOG", "warn")],
        ReadBack {
            topic: Some("orders-rust"),
            table: Some(&rust_app.path().join("tables/orders")),
        },
        changes,
        Shape {
            batch: BATCH,
            senders: SENDERS,
        },
    )
    .await;
    let title = format!(
        "End to end: {changes} changes, {SENDERS} concurrent 100-change invocations, Redis + Delta + Kafka"
    );
    let mut e2e = e2e_rows("fanout (Rust)", &rust, changes);

    let py_app = tempfile::tempdir().unwrap();
    let python_run = if let Some(launcher) = python_launcher(py_app.path()) {
        let table = py_app.path().join("tables/orders");
        let redis_url = services.redis.url();
        let brokers = services.broker.brokers();
        let table_s = table.display().to_string();
        let env = [
            ("FANOUT_PY_REDIS_URL", redis_url.as_str()),
            ("FANOUT_PY_KAFKA_BROKERS", brokers.as_str()),
            ("FANOUT_PY_KAFKA_TOPIC", "orders-python"),
            ("FANOUT_PY_DELTA_TABLE", table_s.as_str()),
            // aiokafka's InitProducerId (v0) is refused by tansu: no idempotence on this side.
            ("FANOUT_PY_KAFKA_IDEMPOTENCE", "false"),
        ];
        let r = end_to_end(
            &services,
            &launcher,
            py_app.path(),
            &env,
            ReadBack {
                topic: Some("orders-python"),
                table: Some(&table),
            },
            changes,
            Shape {
                batch: BATCH,
                senders: SENDERS,
            },
        )
        .await;
        e2e.extend(e2e_rows("Python aiohttp baseline", &r, changes));
        e2e.push(Row {
            label: "ratio fanout / Python".into(),
            value: format!(
                "{:.1}x throughput, {:.1}x lower p99 latency, {:.1}x less CPU per change, {:.1}x less peak RSS",
                rust.changes_per_s / r.changes_per_s,
                r.p99.as_secs_f64() / rust.p99.as_secs_f64(),
                r.cpu_s / rust.cpu_s,
                r.peak_rss_mb / rust.peak_rss_mb
            ),
        });
        Some(r)
    } else {
        eprintln!(
            "Python baseline skipped (run benches/python/setup.sh, or unset BENCH_SKIP_PYTHON)"
        );
        None
    };
    report.push_str(&rows_to_markdown(&title, &e2e));
    report.push('\n');
    let (shape_table, shape_bars) = shapes(&services, binary).await;
    report.push_str(&shape_table);
    report.push('\n');
    report.push_str(&delta_sink_table().await);
    println!("{report}");

    let mut groups: Vec<Panel> = vec![];
    let mut throughput = vec![("fanout (Rust)".to_string(), rust.changes_per_s)];
    let mut p99 = vec![("fanout (Rust)".to_string(), rust.p99.as_secs_f64() * 1e3)];
    let mut rss = vec![("fanout (Rust)".to_string(), rust.peak_rss_mb)];
    if let Some(py) = &python_run {
        throughput.push(("Python aiohttp baseline".into(), py.changes_per_s));
        p99.push(("Python aiohttp baseline".into(), py.p99.as_secs_f64() * 1e3));
        rss.push(("Python aiohttp baseline".into(), py.peak_rss_mb));
    }
    groups.push((
        "End to end, Redis + Delta + Kafka (higher is better)",
        "changes/s",
        throughput,
    ));
    groups.push(("p99 invocation latency (lower is better)", "ms", p99));
    groups.push(("Peak RSS under load (lower is better)", "MB", rss));
    groups.push((
        "Routes and shapes, fanout (changes/s, thousands)",
        "k/s",
        shape_bars
            .into_iter()
            .map(|(l, v)| (l, v / 1000.0))
            .collect(),
    ));
    groups.push((
        "Per stage, in process (changes/s, thousands)",
        "k/s",
        stage_figures
            .into_iter()
            .map(|(l, v)| (l, v / 1000.0))
            .collect(),
    ));
    let out = repo().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("benchmarks.md"), &report).unwrap();
    std::fs::write(out.join("benchmarks.svg"), svg(&groups)).unwrap();
    println!("written: target/bench/benchmarks.md, target/bench/benchmarks.svg");
}
