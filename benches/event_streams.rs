//! Event streams (issue "Event Hubs sink"), printed as a table: events/s from the real binary
//! (emulated host -> HTTP -> handler -> sink) into a real Kafka-protocol broker (tansu, from
//! tests/setup.sh) and into the FAKE Event Hubs AMQP endpoint (tests/kit), 8 concurrent
//! senders of 100-change batches of ~1 KB documents; and how full the AMQP batches get.
//!
//! Run: `cargo bench --bench event_streams` (release build; needs tests/setup.sh for tansu).
//! Figures, not assertions (beyond "every event arrived").

mod support;

use fanout::hostsim::{EmulatedHost, cosmos_trigger_body, samples};
use fanout_test_kit::fake_event_hubs::FakeEventHubs;
use fanout_test_kit::fake_identity::FakeIdentity;
use fanout_test_kit::kafka;
use futures::future::join_all;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::percentile;

const SENDERS: usize = 8;
const BATCH: usize = 100;
const CHANGES: usize = 100_000;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn write_app(dir: &Path, sink: &str) {
    support::write_app(dir, "");
    std::fs::write(
        dir.join("fanout.toml"),
        format!("[retry]\nbudget_ms = 5000\n[functions.orders]\npartition_key = \"/customerId\"\nsoft_delete = {{ field = \"/deleted\" }}\n[functions.orders.sinks.stream]\n{sink}\n"),
    )
    .unwrap();
}

struct Run {
    /// Invocations answered non-2xx (a stall shows as budget-long failures).
    failed: usize,
    events_per_s: f64,
    p50: Duration,
    p99: Duration,
}

/// `senders` tasks post their share of `bodies`, each one after another.
async fn drive(
    host: Arc<EmulatedHost>,
    bodies: Vec<String>,
    senders: usize,
    changes: usize,
) -> Run {
    let bodies = Arc::new(bodies);
    let started = Instant::now();
    let tasks = (0..senders).map(|s| {
        let (host, bodies) = (host.clone(), bodies.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0;
            for body in bodies.iter().skip(s).step_by(senders) {
                let call = host.invoke("orders", body).await.unwrap();
                if !call.is_success() {
                    eprintln!("invocation failed: {:?}", call.logs());
                    failed += 1;
                }
                latencies.push(call.elapsed);
            }
            (latencies, failed)
        })
    });
    let mut failed = 0;
    let mut latencies: Vec<Duration> = Vec::new();
    for r in join_all(tasks).await {
        let (l, f) = r.unwrap();
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Run {
        failed,
        events_per_s: changes as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    }
}

fn bodies(customers: usize, batch: usize, changes: usize) -> Vec<String> {
    samples::order_batches(1_000_000, changes / batch, batch, customers)
        .iter()
        .map(|d| cosmos_trigger_body("documents", "orders", d, None))
        .collect()
}

fn row(label: &str, r: &Run, extra: &str) {
    let extra = if r.failed > 0 {
        format!(
            "{extra}; {} invocations FAILED (stalled until the budget ran out)",
            r.failed
        )
    } else {
        extra.to_string()
    };
    println!(
        "| {label} | {:.0} events/s | p50 {:.1} ms, p99 {:.1} ms | {extra} |",
        r.events_per_s,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
    );
}

fn log_level() -> String {
    std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into())
}

async fn kafka_run(binary: &Path, customers: usize, extra: &str) -> Run {
    let broker = kafka::Tansu::start();
    broker.create_topic("orders-changes", 8).await;
    let dir = tempfile::tempdir().unwrap();
    write_app(
        dir.path(),
        &format!(
            "type = \"kafka\"\nbrokers = \"{}\"\ntopic = \"orders-changes\"\n{extra}",
            broker.brokers()
        ),
    );
    let host = Arc::new(
        EmulatedHost::start(binary, dir.path(), &[("FANOUT_LOG", &log_level())])
            .await
            .unwrap(),
    );
    let run = drive(host, bodies(customers, BATCH, CHANGES), SENDERS, CHANGES).await;
    let records = tokio::task::spawn_blocking(move || {
        let n = broker.consume("orders-changes", 8, CHANGES).len();
        drop(broker);
        n
    })
    .await
    .unwrap();
    assert!(
        run.failed > 0 || records == CHANGES,
        "every event is in the topic"
    );
    run
}

async fn amqp_run(
    binary: &Path,
    identity: &FakeIdentity,
    limit: u64,
    customers: usize,
    batch: usize,
    senders: usize,
    extra: &str,
) -> (Run, Arc<FakeEventHubs>) {
    let hub = FakeEventHubs::new("orders", 8, limit);
    let endpoint = hub.start(0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_app(
        dir.path(),
        &format!(
            "type = \"event_hubs\"\nnamespace = \"fake.servicebus.windows.net\"\nevent_hub = \"orders\"\nendpoint = \"{endpoint}\"\n{extra}"
        ),
    );
    let mut env: Vec<(&str, String)> = identity.env();
    env.push(("FANOUT_LOG", log_level()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let host = Arc::new(EmulatedHost::start(binary, dir.path(), &env).await.unwrap());
    // Connect once before timing (the first batch opens the connection and authorizes).
    let warm = bodies(customers, batch, batch);
    drive(host.clone(), warm, 1, batch).await;
    let before = hub.events().len();
    let run = drive(host, bodies(customers, batch, CHANGES), senders, CHANGES).await;
    assert!(
        run.failed > 0 || hub.events().len() - before == CHANGES,
        "every event reached the fake"
    );
    (run, hub)
}

#[tokio::main]
async fn main() {
    let binary = Path::new(env!("CARGO_BIN_EXE_fanout"));
    println!(
        "## event streams: {CHANGES} changes (~1 KB documents), {SENDERS} senders x {BATCH}-change batches, real binary\n"
    );
    println!("| run | throughput | invocation latency | notes |");
    println!("|---|---|---|---|");

    // BENCH_ONLY=kafka|amqp runs one half.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only != "amqp" {
        let r = kafka_run(binary, 1000, "").await;
        row(
            "Kafka (tansu), key = partition key, 1000 keys, structured",
            &r,
            "8 partitions, idempotent, read back",
        );
        let r = kafka_run(
            binary,
            1000,
            "compression = \"lz4\"\nformat = { mode = \"binary\" }",
        )
        .await;
        row("Kafka (tansu), binary mode + lz4", &r, "");
    }
    if only == "kafka" {
        return;
    }

    let identity = FakeIdentity::start().await;
    let scenarios = [
        (
            "key = partition key, 1000 keys",
            1000,
            "",
            "one key per batch",
        ),
        (
            "key = partition key, 1000 keys, 1 connection",
            1000,
            "connections = 1",
            "one key per batch",
        ),
        (
            "hash of the key -> partition id, 1000 keys",
            1000,
            "partitioning = \"hash\"",
            "8 partitions",
        ),
        ("key = partition key, 10 keys", 10, "", ""),
        ("no key", 1000, "partitioning = \"none\"", ""),
    ];
    for (label, customers, extra, note) in scenarios {
        let (r, hub) = amqp_run(
            binary,
            &identity,
            1024 * 1024,
            customers,
            BATCH,
            SENDERS,
            extra,
        )
        .await;
        let t = hub.transfers();
        let per = t.iter().map(|t| t.events).sum::<usize>() as f64 / t.len() as f64;
        row(
            &format!("Event Hubs AMQP (fake), {label}"),
            &r,
            &format!("{} batches, {per:.1} events per batch {note}", t.len()),
        );
    }

    // Batch fill: small events (projection of two fields, ~330 B), no key, 1000-change
    // invocations one at a time, against the Basic tier's 256 KB limit and Standard's 1 MB.
    println!(
        "\n| batch fill, small events (~330 B), no key, 1000-change invocations | batches | fill of batches closed because the next event did not fit | mean fill of all batches |"
    );
    println!("|---|---|---|---|");
    for limit in [256 * 1024u64, 1024 * 1024] {
        let (_, hub) = amqp_run(
            binary,
            &identity,
            limit,
            1000,
            1000,
            1,
            "partitioning = \"none\"\nformat = { fields = [\"/id\", \"/customerId\"] }",
        )
        .await;
        let t = hub.transfers();
        let fills: Vec<f64> = t.iter().map(|t| t.bytes as f64 / limit as f64).collect();
        // A batch is closed full when it is not the last of its invocation: with one sender,
        // an invocation's batches are consecutive, and its last one holds the remainder.
        let mut full = Vec::new();
        let mut events_seen = 0;
        for (i, tr) in t.iter().enumerate() {
            events_seen += tr.events;
            let last_of_invocation = events_seen % 1000 == 0;
            if !last_of_invocation {
                full.push(fills[i]);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let closed_full = if full.is_empty() {
            "none (every invocation fits in one batch)".to_string()
        } else {
            format!("{:.1}% ({} batches)", mean(&full) * 100.0, full.len())
        };
        println!(
            "| limit {} KB | {} | {closed_full} | {:.1}% |",
            limit / 1024,
            t.len(),
            mean(&fills) * 100.0
        );
    }
}
