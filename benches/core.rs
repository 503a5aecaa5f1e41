//! CPU cost of the hot path, per stage: decoding the host's double-encoded body, normalizing
//! and routing the changes, and encoding them for the Delta sink, next to a plain serde_json
//! parse of the same documents (the floor any handler pays).
//!
//! Run: `cargo bench --bench core`. Throughput is reported in changes/s.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fanout::change::{Normalizer, PartitionKeyPaths, SoftDelete};
use fanout::host::HostRequest;
use fanout::hostsim::{cosmos_trigger_body, samples};
use fanout::pipeline::fingerprint;
use serde_json::Value;
use std::collections::BTreeMap;
use std::hint::black_box;

fn stages(c: &mut Criterion) {
    let docs = samples::order_batches(1, 1, 100, 20).remove(0);
    let doc_bytes = Value::Array(docs.clone()).to_string();
    let body = cosmos_trigger_body("documents", "orders", &docs, None);
    eprintln!(
        "100 documents: {} bytes as an array ({} bytes/doc), {} bytes as a host request body",
        doc_bytes.len(),
        doc_bytes.len() / 100,
        body.len()
    );
    let normalizer = Normalizer::new(
        PartitionKeyPaths::parse(&["/customerId"]).unwrap(),
        Some(SoftDelete {
            path: vec!["deleted".into()],
            equals: Value::Bool(true),
        }),
    );
    let routes: BTreeMap<String, Normalizer> = [("orders".to_string(), normalizer)].into();

    let mut group = c.benchmark_group("batch_of_100_1kb_docs");
    group.throughput(Throughput::Elements(100));
    group.bench_function(BenchmarkId::new("plain_serde_json_parse", 100), |b| {
        b.iter(|| black_box(serde_json::from_str::<Vec<Value>>(black_box(&doc_bytes)).unwrap()))
    });
    group.bench_function(BenchmarkId::new("decode", 100), |b| {
        b.iter(|| black_box(HostRequest::decode(black_box(body.as_bytes()), "documents").unwrap()))
    });
    group.bench_function(BenchmarkId::new("decode_normalize_route", 100), |b| {
        b.iter(|| {
            let route = routes.get(black_box("orders")).unwrap();
            let request = HostRequest::decode(black_box(body.as_bytes()), "documents").unwrap();
            let changes: Vec<_> = request
                .items
                .into_iter()
                .enumerate()
                .map(|(i, item)| route.normalize(i, item).unwrap())
                .collect();
            let fp = fingerprint("orders", &changes, &[]);
            black_box((changes, fp))
        })
    });
    let request = HostRequest::decode(body.as_bytes(), "documents").unwrap();
    let changes: Vec<_> = request
        .items
        .into_iter()
        .enumerate()
        .map(|(i, item)| routes["orders"].normalize(i, item).unwrap())
        .collect();
    let refs: Vec<_> = changes.iter().collect();
    let ctx = fanout::testing::batch_context("orders");
    group.bench_function(BenchmarkId::new("delta_encode_arrow", 100), |b| {
        b.iter(|| {
            black_box(
                fanout::sinks::delta::encode(&ctx, black_box(&refs), chrono::Utc::now()).unwrap(),
            )
        })
    });
    let search_config: fanout::sinks::SinkConfig = toml::from_str(
        r#"type = "azure_search"
endpoint = "http://127.0.0.1:9"
index = "orders"
auth = "api_key"
api_key = "k"
index_definition = "infra/search/orders.json"
fields = { id = "/id", customerId = "/customerId", status = "/status", total = "/total", skus = "/lines/sku" }"#,
    )
    .unwrap();
    let ctx = fanout::testing::route_context(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        &["/customerId"],
    );
    let Ok(fanout::sinks::ValidatedSink::AzureSearch(validated)) = search_config.validate(&ctx)
    else {
        unreachable!()
    };
    let search = fanout::sinks::azure_search::SearchSink::new("search", &validated).unwrap();
    group.bench_function(BenchmarkId::new("search_serialize", 100), |b| {
        b.iter(|| black_box(search.request_bodies(black_box(&refs))))
    });
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
