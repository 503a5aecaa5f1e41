//! What the process tells the outside: structured logs on stderr (the host collects them into
//! its Logs / Application Insights traces), and, when configured, OpenTelemetry traces and
//! metrics over OTLP/HTTP (protobuf) for any OTel backend (an OpenTelemetry Collector in front
//! of Application Insights, Grafana, ...).
//!
//! - Logs: `FANOUT_LOG` (or `RUST_LOG`) sets the filter, `FANOUT_LOG_FORMAT=json` switches to
//!   JSON lines. Logs never carry config values (secrets).
//! - OTLP: on only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
//!   `..._METRICS_ENDPOINT`) is set; the exporter reads the standard `OTEL_*` variables itself
//!   (headers, timeout, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_METRIC_EXPORT_INTERVAL`, ...). `OTEL_SDK_DISABLED=true` or
//!   `OTEL_{TRACES,METRICS}_EXPORTER=none` turn a signal off. When off, no exporter thread
//!   runs and the instruments below are no-ops.
//!
//! Spans: `invocation` (server) per host invocation and `sink` (client) per sink delivery.
//! Metrics: see [`Metrics`]. Attributes stay low-cardinality (function, sink, outcome).

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, global};
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The exporters, kept so that the process flushes them before it exits.
#[must_use = "call shutdown() before the process exits, or buffered telemetry is lost"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// True when some signal is exported.
    pub fn exporting(&self) -> bool {
        self.tracer_provider.is_some() || self.meter_provider.is_some()
    }

    /// Flushes and stops the exporters (blocking: call it outside the async runtime). Bounded by
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` per signal when the collector is unreachable.
    pub fn shutdown(self) {
        if let Some(tp) = self.tracer_provider
            && let Err(e) = tp.shutdown()
        {
            eprintln!("fanout: flushing traces to the OTLP endpoint: {e}");
        }
        if let Some(mp) = self.meter_provider
            && let Err(e) = mp.shutdown()
        {
            eprintln!("fanout: flushing metrics to the OTLP endpoint: {e}");
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// service.name `fanout` unless OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES name it;
/// service.instance.id from App Service's WEBSITE_INSTANCE_ID (one per scaled-out instance).
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    let instance = std::env::var("WEBSITE_INSTANCE_ID")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut builder = Resource::builder().with_attributes([
        KeyValue::new("service.instance.id", instance),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ]);
    if !named {
        builder = builder.with_service_name("fanout");
    }
    builder.build()
}

/// delta-rs logs a commit that lost a race ("exceeded maximum commit attempts") as an error,
/// and each conflict check as a warning; the changelog sink commits with no delta-rs retries
/// on purpose and re-checks the conflict itself, so for us they are routine. That module of
/// delta-rs (its commit loop) is silenced unless the filter names deltalake itself.
const QUIET_COMMIT_CONFLICTS: &str = "deltalake_core::kernel::transaction=off";

fn log_filter() -> EnvFilter {
    // FANOUT_LOG, else RUST_LOG, else the default; an unreadable one is skipped, as before.
    let (written, filter) = ["FANOUT_LOG", "RUST_LOG"]
        .iter()
        .filter_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .find_map(|v| EnvFilter::try_new(&v).ok().map(|f| (v, f)))
        .unwrap_or_else(|| {
            (
                "warn,fanout=info".into(),
                EnvFilter::new("warn,fanout=info"),
            )
        });
    if written.contains("deltalake") {
        filter
    } else {
        filter.add_directive(QUIET_COMMIT_CONFLICTS.parse().expect("a valid directive"))
    }
}

/// Log lines stay as they were before spans: the events carry their own fields, and the
/// span context (function, invocation id) would only repeat them.
fn events_only() -> tracing_subscriber::filter::FilterFn {
    tracing_subscriber::filter::filter_fn(|meta| meta.is_event())
}

/// Spans from our code only: the exporter's own HTTP stack must not trace itself.
fn span_filter() -> EnvFilter {
    EnvFilter::new("off,fanout=info")
}

/// Sets up logging and, when configured, the OTLP exporters. Call once, first thing.
pub fn init() -> Telemetry {
    let disabled = env_is("OTEL_SDK_DISABLED", "true");
    let any_endpoint = env_set("OTEL_EXPORTER_OTLP_ENDPOINT");
    let want_traces = !disabled
        && !env_is("OTEL_TRACES_EXPORTER", "none")
        && (any_endpoint || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
    let want_metrics = !disabled
        && !env_is("OTEL_METRICS_EXPORTER", "none")
        && (any_endpoint || env_set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"));
    let mut problems: Vec<String> = Vec::new();
    let resource = (want_traces || want_metrics).then(resource);

    let tracer_provider = match want_traces.then(|| {
        SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
    }) {
        Some(Ok(exporter)) => Some(
            SdkTracerProvider::builder()
                .with_resource(resource.clone().expect("built when a signal is on"))
                .with_batch_exporter(exporter)
                .build(),
        ),
        Some(Err(e)) => {
            problems.push(format!("trace export is off: {e}"));
            None
        }
        None => None,
    };
    let meter_provider = match want_metrics.then(|| {
        MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
    }) {
        Some(Ok(exporter)) => {
            let provider = SdkMeterProvider::builder()
                .with_resource(resource.clone().expect("built when a signal is on"))
                .with_reader(PeriodicReader::builder(exporter).build())
                .build();
            // Before the first global::meter(): a meter taken earlier stays a no-op.
            global::set_meter_provider(provider.clone());
            Some(provider)
        }
        Some(Err(e)) => {
            problems.push(format!("metric export is off: {e}"));
            None
        }
        None => None,
    };

    let spans = tracer_provider.as_ref().map(|tp| {
        tracing_opentelemetry::layer()
            .with_tracer(tp.tracer("fanout"))
            .with_location(false)
            .with_threads(false)
            .with_filter(span_filter())
    });
    let json = std::env::var("FANOUT_LOG_FORMAT").as_deref() == Ok("json");
    let json_logs = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
            .with_filter(events_only())
    });
    let text_logs = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
            .with_filter(events_only())
    });
    let _ = tracing_subscriber::registry()
        .with(json_logs)
        .with(text_logs)
        .with(spans)
        .try_init();
    for problem in problems {
        tracing::warn!("{problem}; check the OTEL_EXPORTER_OTLP_* settings");
    }
    let telemetry = Telemetry {
        tracer_provider,
        meter_provider,
    };
    if telemetry.exporting() {
        tracing::info!(
            traces = want_traces,
            metrics = want_metrics,
            "exporting OpenTelemetry over OTLP/HTTP"
        );
    }
    telemetry
}

/// The instruments, recorded once per invocation by the pipeline.
pub struct Metrics {
    /// `fanout.changes` {change}: changes received, per function.
    pub changes: Counter<u64>,
    /// `fanout.invocations` {invocation}: per function and outcome (ok / retry / failed).
    pub invocations: Counter<u64>,
    /// `fanout.dead_lettered` {change}: changes written to the dead-letter store.
    pub dead_lettered: Counter<u64>,
    /// `fanout.sink.deliveries` {delivery}: per function, sink and outcome (ok / failed).
    pub sink_deliveries: Counter<u64>,
    /// `fanout.sink.duration` (s): one batch into one sink, retries included.
    pub sink_duration: Histogram<f64>,
    /// `fanout.invocation.duration` (s): the whole invocation, as the host waits for it.
    pub invocation_duration: Histogram<f64>,
    /// `fanout.lag` (s): now minus the newest `_ts` in the batch.
    pub lag: Histogram<f64>,
}

impl Metrics {
    fn new(meter: &Meter) -> Self {
        let seconds = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ];
        Self {
            changes: meter
                .u64_counter("fanout.changes")
                .with_description("Changes received from the change feed")
                .with_unit("{change}")
                .build(),
            invocations: meter
                .u64_counter("fanout.invocations")
                .with_description("Host invocations by outcome")
                .with_unit("{invocation}")
                .build(),
            dead_lettered: meter
                .u64_counter("fanout.dead_lettered")
                .with_description("Changes written to the dead-letter store")
                .with_unit("{change}")
                .build(),
            sink_deliveries: meter
                .u64_counter("fanout.sink.deliveries")
                .with_description("Batch deliveries to a sink by outcome")
                .with_unit("{delivery}")
                .build(),
            sink_duration: meter
                .f64_histogram("fanout.sink.duration")
                .with_description("Time to deliver one batch to one sink, retries included")
                .with_unit("s")
                .with_boundaries(seconds.clone())
                .build(),
            invocation_duration: meter
                .f64_histogram("fanout.invocation.duration")
                .with_description("Time to answer one host invocation")
                .with_unit("s")
                .with_boundaries(seconds)
                .build(),
            lag: meter
                .f64_histogram("fanout.lag")
                .with_description("Age of the newest change in the batch (now - _ts)")
                .with_unit("s")
                .with_boundaries(vec![
                    0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0,
                ])
                .build(),
        }
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The instruments (no-ops unless [`init`] turned metric export on before the first call).
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(&global::meter("fanout")))
}
