//! OpenTelemetry export through the real binary: a FAKE OTLP/HTTP collector (an axum app on
//! 127.0.0.1 decoding the protobuf bodies with the official `opentelemetry-proto` messages)
//! receives the traces and metrics the handler exports when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, and nothing when it is not.

use fanout_test_kit as common;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::TestApp;
use fanout::hostsim::{cosmos_trigger_body, samples};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value as AnyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value as Number};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Collected {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    content_types: Arc<Mutex<Vec<String>>>,
}

async fn collector() -> (String, Collected) {
    let collected = Collected::default();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(
                |State(c): State<Collected>, headers: axum::http::HeaderMap, body: Bytes| async move {
                    c.content_types.lock().unwrap().push(
                        headers["content-type"].to_str().unwrap_or_default().to_string(),
                    );
                    c.traces
                        .lock()
                        .unwrap()
                        .push(ExportTraceServiceRequest::decode(body).expect("OTLP trace protobuf"));
                },
            ),
        )
        .route(
            "/v1/metrics",
            post(|State(c): State<Collected>, body: Bytes| async move {
                c.metrics.lock().unwrap().push(
                    ExportMetricsServiceRequest::decode(body).expect("OTLP metrics protobuf"),
                );
            }),
        )
        .with_state(collected.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (endpoint, collected)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text(v: Option<&AnyValue>) -> Option<String> {
    match v {
        Some(AnyValue::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn app() -> TestApp {
    common::orders_to_delta(Some(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_metrics_reach_an_otlp_collector() {
    let (endpoint, collected) = collector().await;
    let app = app();
    let mut host = app
        .start_with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            ("WEBSITE_INSTANCE_ID", "instance-7"),
        ])
        .await;
    let batches = samples::order_batches(1, 3, 40, 5);
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
    // SIGTERM: the handler finishes, then flushes both exporters before it exits.
    let status = host.terminate().expect("the handler was running");
    assert!(status.success(), "{status:?}");

    // Traces: one server span per invocation, a client span per sink under it.
    let traces = collected.traces.lock().unwrap().clone();
    assert!(!traces.is_empty(), "no trace export arrived");
    assert!(
        collected
            .content_types
            .lock()
            .unwrap()
            .iter()
            .all(|c| c == "application/x-protobuf")
    );
    let mut spans = Vec::new();
    for request in &traces {
        for rs in &request.resource_spans {
            let resource = rs.resource.as_ref().unwrap();
            assert_eq!(
                text(attr(&resource.attributes, "service.name")).as_deref(),
                Some("fanout")
            );
            assert_eq!(
                text(attr(&resource.attributes, "service.instance.id")).as_deref(),
                Some("instance-7")
            );
            for ss in &rs.scope_spans {
                spans.extend(ss.spans.iter().cloned());
            }
        }
    }
    let invocations: Vec<_> = spans.iter().filter(|s| s.name == "invoke orders").collect();
    assert_eq!(
        invocations.len(),
        3,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for inv in &invocations {
        assert_eq!(inv.kind, SpanKind::Server as i32);
        assert_eq!(
            text(attr(&inv.attributes, "function")).as_deref(),
            Some("orders")
        );
        let children: Vec<_> = spans
            .iter()
            .filter(|s| s.parent_span_id == inv.span_id && s.trace_id == inv.trace_id)
            .collect();
        assert_eq!(children.len(), 1, "one sink span per sink");
        assert_eq!(children[0].name, "deliver changelog");
        assert_eq!(children[0].kind, SpanKind::Client as i32);
        assert_eq!(
            text(attr(&children[0].attributes, "kind")).as_deref(),
            Some("delta")
        );
    }

    // Metrics: the last export holds the cumulative totals.
    let metrics = collected.metrics.lock().unwrap().clone();
    let last = metrics.last().expect("no metrics export arrived");
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut histogram_counts: BTreeMap<String, u64> = BTreeMap::new();
    for rm in &last.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                match m.data.as_ref().unwrap() {
                    Data::Sum(s) => {
                        for p in &s.data_points {
                            let v = match p.value {
                                Some(Number::AsInt(i)) => i as f64,
                                Some(Number::AsDouble(d)) => d,
                                None => 0.0,
                            };
                            let sink = text(attr(&p.attributes, "sink"));
                            let key = match sink {
                                Some(sink) => format!("{}[{sink}]", m.name),
                                None => m.name.clone(),
                            };
                            *sums.entry(key).or_default() += v;
                        }
                    }
                    Data::Histogram(h) => {
                        for p in &h.data_points {
                            *histogram_counts.entry(m.name.clone()).or_default() += p.count;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    assert_eq!(sums.get("fanout.changes"), Some(&120.0), "{sums:?}");
    assert_eq!(sums.get("fanout.invocations"), Some(&3.0), "{sums:?}");
    assert_eq!(
        sums.get("fanout.sink.deliveries[changelog]"),
        Some(&3.0),
        "{sums:?}"
    );
    assert_eq!(
        histogram_counts.get("fanout.sink.duration"),
        Some(&3),
        "{histogram_counts:?}"
    );
    assert_eq!(histogram_counts.get("fanout.invocation.duration"), Some(&3));
    assert_eq!(histogram_counts.get("fanout.lag"), Some(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_unless_an_endpoint_is_set() {
    let (_endpoint, collected) = collector().await;
    let app = app();
    let mut host = app.start().await;
    let docs = samples::order_batches(1, 1, 10, 2).remove(0);
    let call = host
        .invoke(
            "orders",
            &cosmos_trigger_body("documents", "orders", &docs, None),
        )
        .await
        .unwrap();
    assert_eq!(call.status, 200);
    let pid = host.pid().unwrap();
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .collect();
    assert!(
        !threads.iter().any(|t| t.starts_with("OpenTelemetry")),
        "no exporter thread without an endpoint: {threads:?}"
    );
    host.terminate();
    assert!(collected.traces.lock().unwrap().is_empty());
    assert!(collected.metrics.lock().unwrap().is_empty());
}
