//! Backfill throughput against Microsoft's in-memory Cosmos DB EMULATOR (not the service: its
//! request costs and latencies are the emulator's), printed as a table: documents/s and RU
//! per document into the changelog alone and into every sink (Delta + Redis refresh + the AI
//! Search FAKE + Kafka on tansu), and the peak RSS the backfill adds on top of the container
//! the emulator holds in the same process; then `fanout verify` of the result (a sample and
//! every document).
//!
//! Run: `cargo bench --bench backfill` (release build; needs tests/setup.sh for redis-server
//! and tansu). `BENCH_BACKFILL_DOCS` (default 20000) sets the container's size.

mod support;

use fanout::backfill::{BackfillOptions, Quiet};
use fanout::cosmos::Throttle;
use fanout::verify::VerifyOptions;
use fanout::verify::sample::Sample;
use fanout_test_kit::cosmos::CosmosEmulator;
use fanout_test_kit::kafka::Tansu;
use fanout_test_kit::search::SearchFake;
use fanout_test_kit::{RedisServer, TestApp};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use support::proc_status_kb;

fn docs() -> usize {
    std::env::var("BENCH_BACKFILL_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn config(redis: &str, search: &str, brokers: &str, all: bool) -> String {
    let mut toml = String::from(
        r#"
[functions.orders]
partition_key = "/customerId"

[functions.orders.sinks.changelog]
type = "delta"
table = "tables/orders"
"#,
    );
    if all {
        toml.push_str(&format!(
            r#"
[functions.orders.sinks.cache]
type = "redis"
url = "{redis}"
mode = "refresh"
key = "order:{{pk}}:{{id}}"

{search_sink}
[functions.orders.sinks.stream]
type = "kafka"
brokers = "{brokers}"
topic = "orders"
"#,
            search_sink = fanout_test_kit::search::orders_sink_toml("search", search)
        ));
    }
    toml
}

struct Figures {
    docs_per_s: f64,
    ru_per_doc: f64,
    ru_per_s: f64,
    rss_added_mb: f64,
}

async fn run(emulator: &CosmosEmulator, toml: &str) -> (Figures, TestApp) {
    let app = TestApp::new();
    app.function("orders", "documents", None).config(toml);
    fanout_test_kit::search::install_index_definition(app.path());
    let builder = emulator.builder().await;
    let rss_before = proc_status_kb(std::process::id(), "VmRSS:");
    let started = Instant::now();
    let report = fanout_test_kit::cosmos::run_backfill(
        app.path(),
        emulator,
        builder,
        Arc::new(Throttle::new(None)),
        &BackfillOptions {
            page_size: 1000,
            ..BackfillOptions::default()
        },
        &Quiet,
        &AtomicBool::new(false),
    )
    .await
    .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let hwm = proc_status_kb(std::process::id(), "VmHWM:");
    assert_eq!(report.items as usize, docs(), "every document read");
    let figures = Figures {
        docs_per_s: report.items as f64 / secs,
        ru_per_doc: report.spent.request_units / report.items as f64,
        ru_per_s: report.spent.ru_per_second(),
        rss_added_mb: hwm.saturating_sub(rss_before) as f64 / 1024.0,
    };
    (figures, app)
}

/// `fanout verify` of the backfilled app: documents/s and RU per document, and that it is clean.
async fn verify(emulator: &CosmosEmulator, app: &TestApp, sample: Sample) -> Figures {
    let rss_before = proc_status_kb(std::process::id(), "VmRSS:");
    let started = Instant::now();
    let options = VerifyOptions {
        sample,
        page_size: 1000,
        ..VerifyOptions::default()
    };
    let report = fanout_test_kit::cosmos::run_verify(app.path(), emulator, &options)
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let hwm = proc_status_kb(std::process::id(), "VmHWM:");
    assert!(report.clean, "{:?}", report.sinks);
    Figures {
        docs_per_s: report.documents as f64 / secs,
        ru_per_doc: report.spent.request_units / report.documents as f64,
        ru_per_s: report.spent.ru_per_second(),
        rss_added_mb: hwm.saturating_sub(rss_before) as f64 / 1024.0,
    }
}

fn main() {
    fanout::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let n = docs();
        let emulator = CosmosEmulator::start("shop", "orders", "/customerId", 4);
        let filler = "x".repeat(800);
        let orders: Vec<_> = (0..n)
            .map(|i| {
                json!({"id": format!("o{i}"), "customerId": format!("c{}", i % 1000),
                       "status": "placed", "total": i as f64, "note": filler})
            })
            .collect();
        emulator.upsert_all(orders, "customerId").await;
        let redis = RedisServer::start();
        let search = SearchFake::start("key").await;
        let broker = Tansu::start();
        broker.create_topic("orders", 4).await;
        let (changelog, _) = run(&emulator, &config("", "", "", false)).await;
        let (all, app) = run(
            &emulator,
            &config(&redis.url(), &search.endpoint(), &broker.brokers(), true),
        )
        .await;
        println!("\n### Backfill ({n} documents of ~1 KB over 1,000 partition keys, 4 feed ranges, in-memory emulator)\n");
        println!("| into | documents/s | RU per document | RU/s | peak RSS added |");
        println!("|---|---|---|---|---|");
        for (name, f) in [("changelog (Delta) alone", &changelog), ("Delta + Redis + AI Search (fake) + Kafka", &all)] {
            println!(
                "| {name} | {:.0} | {:.2} | {:.0} | {:.0} MB |",
                f.docs_per_s, f.ru_per_doc, f.ru_per_s, f.rss_added_mb
            );
        }
        let sampled = verify(&emulator, &app, Sample::Count(100)).await;
        let full = verify(&emulator, &app, Sample::Full).await;
        println!("\n### Verify of the same container against the three state sinks (Delta, Redis, AI Search fake)\n");
        println!("| fields compared | documents/s | RU per document | RU/s | peak RSS added |");
        println!("|---|---|---|---|---|");
        for (name, f) in [("a sample of 100", &sampled), ("every document (`--full`)", &full)] {
            println!(
                "| {name} | {:.0} | {:.2} | {:.0} | {:.0} MB |",
                f.docs_per_s, f.ru_per_doc, f.ru_per_s, f.rss_added_mb
            );
        }
        println!("\nRU per document: one change feed page (1 RU in the emulator) per 1000 documents, plus one point read per document, because the emulator's feed items lack `_lsn` (the service's carry it: there a backfill costs the feed pages alone).");
    });
}
