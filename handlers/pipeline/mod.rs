//! The engine: host request -> decode -> normalize -> route -> fan out -> sinks -> outcome.
//!
//! The answer is 2xx only when every sink of the route has the batch or the part it could not
//! take is in the dead-letter store. Otherwise it is 500, so the host's retry policy re-delivers;
//! on the policy's last attempt (the trigger checkpoints after it, whatever we answer) failures
//! are dead-lettered first. A re-delivery re-drives only the sinks that failed before.

mod budget;
mod decide;
mod progress;
mod retry;

pub use budget::Deadlines;
pub use progress::ProgressBook;
pub use retry::{SinkResult, SinkRun, deliver_with_retry};

use crate::change::{Change, Normalizer, Unreadable};
use crate::config::{AppConfig, FunctionDefinition, HostRetryPolicy, RetrySettings};
use crate::deadletter::{
    DeadLetterError, DeadLetterKind, DeadLetterRecord, DeadLetterStore, INPUT_SINK, Stored,
};
use crate::host::{HostRequest, InvocationResponse, RetryContext, RetryState};
use crate::sinks::{BatchContext, Sink, SinkError};
use crate::telemetry;
use chrono::Utc;
use futures::future::join_all;
use futures::{StreamExt, TryStreamExt};
use opentelemetry::KeyValue;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// One routed function, ready to run.
#[derive(Clone)]
pub struct Route {
    pub function: FunctionDefinition,
    pub normalizer: Normalizer,
    pub retry: RetrySettings,
    pub sinks: Vec<Arc<dyn Sink>>,
}

/// Who is delivering: the host (its retry policy decides the last attempt), or a replay
/// (always the last attempt: failures go back to the dead-letter store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Host,
    Replay,
    /// A backfill: items fanout read from the container itself. Always the last attempt
    /// (nobody re-delivers); what the sinks cannot take is dead-lettered, and sinks read
    /// versions before writing as in a replay (live changes may be newer).
    Backfill,
}

impl Route {
    /// Feed items as changes, and the ones that could not be read (kept raw, with why).
    pub fn normalize(&self, items: Vec<serde_json::Value>) -> (Vec<Change>, Vec<Unreadable>) {
        let mut changes = Vec::with_capacity(items.len());
        let mut unreadable = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            match self.normalizer.normalize(index, item) {
                Ok(change) => changes.push(change),
                Err(u) => unreadable.push(u),
            }
        }
        (changes, unreadable)
    }

    /// The same route with only the sinks named (in the route's order).
    pub fn with_sinks(&self, names: &[String]) -> Route {
        Route {
            sinks: self
                .sinks
                .iter()
                .filter(|s| names.iter().any(|n| n == s.name()))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }
}

/// Which delivery of a batch this is, and whether the trigger checkpoints after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub retry_count: i64,
    pub max_retry_count: i64,
}

impl Attempt {
    /// The RetryContext is authoritative when present; otherwise this is the first execution
    /// under the policy in function.json.
    pub fn new(context: Option<&RetryContext>, policy: HostRetryPolicy) -> Self {
        match context {
            Some(c) => Attempt {
                retry_count: c.retry_count.max(0),
                max_retry_count: c.max_retry_count,
            },
            None => Attempt {
                retry_count: 0,
                max_retry_count: policy.max_retry_count,
            },
        }
    }

    pub const LAST: Attempt = Attempt {
        retry_count: 0,
        max_retry_count: 0,
    };

    /// After this attempt the trigger checkpoints the lease whatever we answer.
    /// With `maxRetryCount: -1` there is no last attempt: the route blocks instead.
    pub fn is_last(&self) -> bool {
        self.max_retry_count >= 0 && self.retry_count >= self.max_retry_count
    }
}

/// What to answer the host.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub response: InvocationResponse,
    pub dead_lettered: usize,
    /// The last attempt's write-ahead record is what keeps the batch (the dead-letter writes
    /// failed): it must not be settled.
    pub kept_in_write_ahead: bool,
}

impl Answer {
    /// An answer with one log line and nothing dead-lettered.
    pub fn logged(status: u16, line: String) -> Self {
        Self {
            status,
            response: InvocationResponse::with_logs(vec![line]),
            dead_lettered: 0,
            kept_in_write_ahead: false,
        }
    }
}

/// Why a dead-letter record could not be replayed (it stays in the store).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("function `{0}` has no route in this config")]
    NoRoute(String),
    #[error("sink `{sink}` is no longer in route `{function}`")]
    NoSink { sink: String, function: String },
    #[error("{0}")]
    Store(#[source] DeadLetterError),
    #[error("still malformed: {0}")]
    StillMalformed(#[source] crate::host::DecodeError),
    #[error("still unreadable: {0}")]
    StillUnreadable(#[source] crate::change::NormalizeError),
    #[error("{sink}: tombstones unreadable: {source}")]
    Tombstones {
        sink: String,
        #[source]
        source: DeadLetterError,
    },
    /// Sinks that did not take every change: one `sink: reason` each.
    #[error("{}", .0.join("; "))]
    Sinks(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("sink `{function}.{sink}`: {source}")]
    Sink {
        function: String,
        sink: String,
        source: SinkError,
    },
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
}

pub struct Pipeline {
    routes: BTreeMap<String, Route>,
    dead_letter: DeadLetterStore,
    progress: ProgressBook,
    function_timeout: Duration,
}

/// What could not be kept anywhere on a delivery after which the trigger may checkpoint.
/// Reported one way only ([`report_lost`]), which the `CHANGES LOST` alert matches.
#[derive(Debug, Clone)]
pub struct Lost {
    pub function: String,
    pub invocation_id: String,
    /// How many changes (or, for a body that was never decoded, 1 batch).
    pub count: usize,
    pub first: Option<(String, Option<i64>)>,
    pub last: Option<(String, Option<i64>)>,
    /// Whether the trigger checkpoints after this answer for sure (the last attempt), or may
    /// (the attempt is unknown: the body was never read).
    pub certain: bool,
    pub reason: String,
}

/// Logs a loss the one way every path does: `CHANGES LOST` at ERROR, with the function, the
/// first and last id and lsn, and the count. Returns the line for the host's Logs.
pub fn report_lost(lost: &Lost) -> String {
    let first_id = lost.first.as_ref().map(|f| f.0.as_str());
    let first_lsn = lost.first.as_ref().and_then(|f| f.1);
    let last_id = lost.last.as_ref().map(|l| l.0.as_str());
    let last_lsn = lost.last.as_ref().and_then(|l| l.1);
    let when = if lost.certain {
        "the trigger checkpoints after this last attempt"
    } else {
        "the trigger checkpoints after this answer if it was the last attempt"
    };
    tracing::error!(
        function = %lost.function,
        invocation_id = %lost.invocation_id,
        count = lost.count,
        first_id,
        first_lsn,
        last_id,
        last_lsn,
        certain = lost.certain,
        reason = %lost.reason,
        "CHANGES LOST: {when}, and neither dead-letter store could keep the batch"
    );
    format!(
        "CHANGES LOST: fanout {}: {} ({}..{}) could not be kept: {}; {when}",
        lost.function,
        plural(lost.count, "change"),
        first_id.unwrap_or("?"),
        last_id.unwrap_or("?"),
        lost.reason
    )
}

impl Pipeline {
    /// Builds every route and sink from a validated config. Opens no network connection.
    pub fn build(config: &AppConfig) -> Result<Self, BuildError> {
        let mut routes = BTreeMap::new();
        for (name, route) in &config.routes {
            let mut sinks = Vec::new();
            for (sink_name, sink) in &route.sinks {
                sinks.push(sink.build(sink_name).map_err(|source| BuildError::Sink {
                    function: name.clone(),
                    sink: sink_name.clone(),
                    source,
                })?);
            }
            routes.insert(
                name.clone(),
                Route {
                    function: route.function.clone(),
                    normalizer: Normalizer::new(
                        route.partition_key.clone(),
                        route.soft_delete.clone(),
                    ),
                    retry: route.retry,
                    sinks,
                },
            );
        }
        let dead_letter = DeadLetterStore::open(&config.dead_letter)?;
        Ok(Self {
            routes,
            dead_letter,
            progress: ProgressBook::default(),
            function_timeout: config.function_timeout,
        })
    }

    pub fn routes(&self) -> &BTreeMap<String, Route> {
        &self.routes
    }

    pub fn dead_letter(&self) -> &DeadLetterStore {
        &self.dead_letter
    }

    pub fn function_timeout(&self) -> Duration {
        self.function_timeout
    }

    /// Moves the write-ahead records of attempts that never finished (older than the function
    /// timeout: their process is gone) to `pending/`, and says so. Returns their keys.
    pub async fn recover_in_flight(&self) -> Result<Vec<String>, DeadLetterError> {
        let moved = self
            .dead_letter
            .recover_in_flight(self.function_timeout)
            .await?;
        if !moved.is_empty() {
            tracing::warn!(records = moved.len(), keys = ?moved, "last attempts that never finished (the process died) moved to the dead-letter store; `fanout replay` delivers them");
        }
        Ok(moved)
    }

    /// Handles one invocation body for `function`, in an `invocation` span, and records the
    /// invocation's metrics.
    pub async fn handle(
        &self,
        function: &str,
        invocation_id: Option<String>,
        body: &[u8],
        origin: Origin,
    ) -> Answer {
        let span = tracing::info_span!(
            "invocation",
            otel.name = %format_args!("invoke {function}"),
            otel.kind = "server",
            function,
            invocation_id = invocation_id.as_deref().unwrap_or_default(),
            otel.status_code = tracing::field::Empty,
        );
        let started = Instant::now();
        let answer = self
            .handle_in_span(function, invocation_id, body, origin)
            .instrument(span.clone())
            .await;
        let ok = (200..300).contains(&answer.status);
        span.record("otel.status_code", if ok { "OK" } else { "ERROR" });
        let m = telemetry::metrics();
        let f = KeyValue::new("function", function.to_string());
        m.invocations.add(
            1,
            &[
                f.clone(),
                KeyValue::new("outcome", if ok { "ok" } else { "retry" }),
            ],
        );
        m.invocation_duration
            .record(started.elapsed().as_secs_f64(), std::slice::from_ref(&f));
        if answer.dead_lettered > 0 {
            m.dead_lettered.add(answer.dead_lettered as u64, &[f]);
        }
        answer
    }

    /// Delivers feed items fanout read from the container itself (a backfill page) through
    /// `route` (the function's, or [`Route::with_sinks`]): normalized, fanned out, and what a
    /// sink cannot take dead-lettered, as for a host batch on its last attempt. 2xx when
    /// every change reached every sink or the store; otherwise nothing is lost (the container
    /// still has the items) but the caller must not move past them.
    pub async fn deliver_items(
        &self,
        route: &Route,
        items: Vec<serde_json::Value>,
        invocation_id: String,
    ) -> Answer {
        let function = route.function.name.as_str();
        let deadlines = Deadlines::new(Instant::now(), self.function_timeout);
        let (changes, unreadable) = route.normalize(items);
        let ctx = BatchContext {
            function: function.to_string(),
            invocation_id,
            fingerprint: fingerprint(function, &changes, &unreadable),
            received_at: Utc::now(),
            replay: true,
        };
        self.fan_out(
            route,
            &ctx,
            changes,
            unreadable,
            (Origin::Backfill, Attempt::LAST),
            &deadlines,
            None,
        )
        .await
    }

    async fn handle_in_span(
        &self,
        function: &str,
        invocation_id: Option<String>,
        body: &[u8],
        origin: Origin,
    ) -> Answer {
        let started = Instant::now();
        let deadlines = Deadlines::new(started, self.function_timeout);
        let Some(route) = self.routes.get(function) else {
            let known: Vec<&str> = self.routes.keys().map(String::as_str).collect();
            let message = format!(
                "no route for function `{function}`; routed functions: {}. Add `[functions.{function}]` to fanout.toml, then `fanout replay` delivers what was kept",
                known.join(", ")
            );
            tracing::error!(function, "{message}");
            return self
                .dead_letter_raw(function, invocation_id, body, message, &deadlines)
                .await;
        };
        let request = match HostRequest::decode(body, &route.function.binding) {
            Ok(request) => request,
            Err(e) => {
                return self
                    .dead_letter_raw(function, invocation_id, body, e.to_string(), &deadlines)
                    .await;
            }
        };
        let invocation_id = invocation_id
            .or_else(|| request.sys.rand_guid.clone())
            .unwrap_or_else(|| {
                format!(
                    "local-{}",
                    Utc::now().timestamp_nanos_opt().unwrap_or_default()
                )
            });
        let attempt = match origin {
            Origin::Host if request.retry == RetryState::Unreadable => {
                tracing::warn!(
                    function,
                    "RetryContext is unreadable: treating this delivery as the last attempt"
                );
                Attempt::LAST
            }
            Origin::Host => Attempt::new(request.retry.context(), route.function.retry),
            Origin::Replay | Origin::Backfill => Attempt::LAST,
        };
        let (changes, unreadable) = route.normalize(request.items);
        let ctx = BatchContext {
            function: function.to_string(),
            invocation_id,
            fingerprint: fingerprint(function, &changes, &unreadable),
            received_at: Utc::now(),
            replay: origin != Origin::Host,
        };
        // Write-ahead: after the last attempt the trigger checkpoints whatever happens, so the
        // batch is kept before it is delivered - a process that dies now loses nothing.
        let write_ahead = if origin == Origin::Host && attempt.is_last() {
            self.write_ahead(&ctx, body, &deadlines).await
        } else {
            None
        };
        let answer = self
            .fan_out(
                route,
                &ctx,
                changes,
                unreadable,
                (origin, attempt),
                &deadlines,
                write_ahead.as_ref(),
            )
            .await;
        if let Some(stored) = &write_ahead
            && !answer.kept_in_write_ahead
            && let Err(e) = self
                .dead_letter
                .settle_in_flight(stored, deadlines.answer)
                .await
        {
            // Harmless: recovered into pending/ later, and replay is idempotent.
            tracing::warn!(function, key = %stored.key, error = %e, "write-ahead record not settled; it will be replayed");
        }
        answer
    }

    /// Writes the write-ahead record of a last attempt (the raw body). A store that fails
    /// does not stop the attempt: the usual dead-letter path still runs after it.
    async fn write_ahead(
        &self,
        ctx: &BatchContext,
        body: &[u8],
        deadlines: &Deadlines,
    ) -> Option<Stored> {
        let record = DeadLetterRecord {
            owner: Some(crate::deadletter::process_owner()),
            ..DeadLetterRecord::raw(
                DeadLetterKind::InFlight,
                &ctx.function,
                ctx.invocation_id.clone(),
                ctx.fingerprint.clone(),
                "the last attempt did not finish (the process died while delivering it)".into(),
                body,
            )
        };
        match self
            .dead_letter
            .put_in_flight(&record, deadlines.write_ahead)
            .await
        {
            Ok(stored) => Some(stored),
            Err(e) => {
                tracing::warn!(function = %ctx.function, error = %e, "write-ahead record of the last attempt could not be written; delivering without it");
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn fan_out(
        &self,
        route: &Route,
        ctx: &BatchContext,
        changes: Vec<Change>,
        unreadable: Vec<Unreadable>,
        (origin, attempt): (Origin, Attempt),
        deadlines: &Deadlines,
        write_ahead: Option<&Stored>,
    ) -> Answer {
        let started = deadlines.started;
        let retry = RetrySettings {
            budget: deadlines.sink_budget(Instant::now(), route.retry.budget),
            ..route.retry
        };
        let function = ctx.function.as_str();
        let already = self.progress.done(function, &ctx.fingerprint);
        let runs: Vec<SinkRun> = if changes.is_empty() {
            Vec::new()
        } else {
            join_all(
                route
                    .sinks
                    .iter()
                    .filter(|s| !already.contains(s.name()))
                    .map(|s| {
                        let span = tracing::info_span!(
                            "sink",
                            otel.name = %format_args!("deliver {}", s.name()),
                            otel.kind = "client",
                            sink = s.name(),
                            kind = s.kind(),
                            attempts = tracing::field::Empty,
                            otel.status_code = tracing::field::Empty,
                        );
                        let run = deliver_with_retry(s.as_ref(), ctx, &changes, &retry);
                        async move {
                            let run = run.instrument(span.clone()).await;
                            span.record("attempts", run.attempts);
                            span.record(
                                "otel.status_code",
                                if run.delivered() { "OK" } else { "ERROR" },
                            );
                            run
                        }
                    }),
            )
            .await
        };
        let runs: Vec<SinkRun> = match origin {
            Origin::Host => runs,
            Origin::Replay | Origin::Backfill => runs.into_iter().map(without_host).collect(),
        };
        let tombstones_by = deadlines.tombstones(Instant::now());
        let runs: Vec<SinkRun> = join_all(runs.into_iter().map(|run| {
            let sink = route.sinks.iter().find(|s| s.name() == run.sink);
            self.keep_tombstones(sink, function, &changes, run, tombstones_by)
        }))
        .await;

        // Decide, per sink, what happens to what it could not take (pure: `decide`), then
        // turn the plan into records.
        let plan = decide::plan(
            &runs,
            !unreadable.is_empty(),
            already.contains(INPUT_SINK),
            attempt,
        );
        let record = |kind, sink: &str, error: String, attempts: u32| DeadLetterRecord {
            attempts,
            host_retry_count: attempt.retry_count,
            ..DeadLetterRecord::new(
                kind,
                function,
                sink,
                ctx.invocation_id.clone(),
                ctx.fingerprint.clone(),
                error,
            )
        };
        let records: Vec<DeadLetterRecord> = plan
            .keep
            .iter()
            .map(|keep| match keep {
                decide::Keep::Unreadable => DeadLetterRecord {
                    reasons: unreadable.iter().map(|u| u.error.to_string()).collect(),
                    items: unreadable.iter().map(|u| u.item.clone()).collect(),
                    ..record(
                        DeadLetterKind::MalformedItems,
                        INPUT_SINK,
                        format!("{} feed items could not be read", unreadable.len()),
                        1,
                    )
                },
                decide::Keep::Rejected { sink, attempts } => {
                    let run = runs
                        .iter()
                        .find(|r| &r.sink == sink)
                        .expect("planned from a run");
                    DeadLetterRecord {
                        changes: run
                            .rejected
                            .iter()
                            .map(|(i, _)| changes[*i].clone())
                            .collect(),
                        reasons: run
                            .rejected
                            .iter()
                            .map(|(_, reason)| reason.clone())
                            .collect(),
                        ..record(
                            DeadLetterKind::RejectedChanges,
                            sink,
                            format!("{} changes refused by the sink", run.rejected.len()),
                            *attempts,
                        )
                    }
                }
                decide::Keep::Failure {
                    sink,
                    attempts,
                    error,
                    undelivered,
                } => DeadLetterRecord {
                    changes: undelivered.iter().map(|&i| changes[i].clone()).collect(),
                    ..record(DeadLetterKind::SinkFailure, sink, error.clone(), *attempts)
                },
            })
            .collect();
        let writes = join_all(
            records
                .iter()
                .map(|r| self.dead_letter.put(r, deadlines.answer)),
        )
        .await;
        let mut dead_lettered = 0;
        let mut lost: Vec<String> = Vec::new();
        let mut lost_count = 0;
        let mut dl_lines: Vec<String> = Vec::new();
        let mut failed_sinks: HashSet<&str> = HashSet::new();
        for (r, written) in records.iter().zip(writes) {
            match written {
                Ok(stored) => {
                    dead_lettered += r.size();
                    dl_lines.push(format!(
                        "dead-lettered {} from `{}` to {}: {}",
                        plural(r.size(), "change"),
                        r.sink,
                        stored.path,
                        r.error
                    ));
                }
                Err(e) => {
                    failed_sinks.insert(&r.sink);
                    lost_count += r.size();
                    lost.push(format!(
                        "could not dead-letter {} from `{}`: {e}",
                        plural(r.size(), "change"),
                        r.sink
                    ));
                }
            }
        }
        let settled = decide::settle(&runs, &plan, &failed_sinks, &already);
        let ok = settled.ok;
        let handled = settled.done;
        let mut kept_in_write_ahead = false;
        if ok {
            self.progress.forget(function, &ctx.fingerprint);
        } else {
            self.progress.remember(function, &ctx.fingerprint, handled);
        }

        // Tell the host (Logs) and the operator (tracing) what happened, per sink.
        let deletes = changes.iter().filter(|c| c.operation.is_delete()).count();
        let newest_ts = changes.iter().filter_map(|c| c.ts).max();
        let lag_s = newest_ts.map(|ts| Utc::now().timestamp() - ts);
        let verdict = if ok {
            "ok"
        } else if attempt.is_last() {
            "FAILED on the last attempt (changes that could not be dead-lettered are listed below)"
        } else {
            "failed, asking the host to retry"
        };
        let mut logs = vec![format!(
            "fanout {function}: {} ({} deletes, {} unreadable) attempt {}{} -> {verdict}",
            plural(changes.len(), "change"),
            deletes,
            unreadable.len(),
            attempt.retry_count + 1,
            if attempt.max_retry_count < 0 {
                " of unlimited".to_string()
            } else {
                format!(" of {}", attempt.max_retry_count + 1)
            },
        )];
        for sink in &route.sinks {
            if already.contains(sink.name()) {
                logs.push(format!(
                    "sink {} ({}): already delivered by an earlier attempt",
                    sink.name(),
                    sink.kind()
                ));
            }
        }
        for run in &runs {
            let line = match &run.result {
                SinkResult::Delivered { detail } => format!(
                    "sink {} ({}): delivered in {} ms, {}: {detail}",
                    run.sink,
                    run.kind,
                    run.elapsed.as_millis(),
                    plural(run.attempts as usize, "attempt")
                ),
                SinkResult::Failed {
                    error, permanent, ..
                } => format!(
                    "sink {} ({}): {} failure after {} in {} ms: {error}",
                    run.sink,
                    run.kind,
                    if *permanent { "permanent" } else { "transient" },
                    plural(run.attempts as usize, "attempt"),
                    run.elapsed.as_millis()
                ),
            };
            logs.push(line);
        }
        logs.extend(dl_lines);
        logs.extend(lost.iter().cloned());
        let elapsed_ms = started.elapsed().as_millis() as u64;
        // Per sink, for dashboards: `name=outcome/attempts/ms`, one entry per sink of the route.
        let sinks = route
            .sinks
            .iter()
            .map(|sink| match runs.iter().find(|r| r.sink == sink.name()) {
                Some(run) => format!(
                    "{}={}/{}/{}",
                    run.sink,
                    if run.delivered() { "ok" } else { "failed" },
                    run.attempts,
                    run.elapsed.as_millis()
                ),
                None if changes.is_empty() => format!("{}=empty/0/0", sink.name()),
                None => format!("{}=already/0/0", sink.name()),
            })
            .collect::<Vec<_>>()
            .join(",");
        record_batch_metrics(function, changes.len(), lag_s, &runs);
        if ok {
            tracing::info!(function, invocation_id = %ctx.invocation_id, changes = changes.len(), deletes, dead_lettered, retry = attempt.retry_count, lag_s, elapsed_ms, sinks, "batch delivered");
        } else if attempt.is_last() && !lost.is_empty() && origin == Origin::Host {
            // The trigger checkpoints after this answer: what is in no store is gone from the feed.
            match write_ahead {
                Some(stored) => {
                    kept_in_write_ahead = true;
                    let line = format!(
                        "the dead-letter store failed, but the whole batch is kept in its write-ahead record {}: `fanout replay` delivers it",
                        stored.path
                    );
                    tracing::warn!(function, invocation_id = %ctx.invocation_id, key = %stored.key, problems = ?lost, "last attempt failed and the dead-letter store failed; the batch is kept in its write-ahead record");
                    logs.push(line);
                }
                None => logs.push(report_lost(&Lost {
                    function: function.to_string(),
                    invocation_id: ctx.invocation_id.clone(),
                    count: lost_count,
                    first: changes.first().map(|c| (c.id.clone(), c.lsn)),
                    last: changes.last().map(|c| (c.id.clone(), c.lsn)),
                    certain: true,
                    reason: lost.join("; "),
                })),
            }
        } else {
            let failing = &plan.retry;
            if origin == Origin::Host {
                tracing::warn!(function, invocation_id = %ctx.invocation_id, changes = changes.len(), ?failing, retry = attempt.retry_count, lag_s, elapsed_ms, sinks, "batch failed; the host will re-deliver");
            } else {
                tracing::warn!(function, invocation_id = %ctx.invocation_id, changes = changes.len(), ?failing, elapsed_ms, sinks, "batch failed and could not be dead-lettered; it stays where it came from");
            }
        }
        for line in &logs[1..] {
            tracing::debug!(function, "{line}");
        }
        let mut response = InvocationResponse::with_logs(logs);
        for run in &runs {
            for (binding, items) in &run.outputs {
                // Always an array of strings: a single string would be base64-decoded by the host.
                let array = response
                    .outputs
                    .entry(binding.clone())
                    .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                if let serde_json::Value::Array(a) = array {
                    a.extend(items.iter().cloned().map(serde_json::Value::String));
                }
            }
        }
        Answer {
            status: if ok { 200 } else { 500 },
            response,
            dead_lettered,
            kept_in_write_ahead,
        }
    }

    /// Keeps a request body that cannot go through the sinks (it does not decode, its function
    /// has no route, the handler panicked on it, it broke off): a `malformed_batch` record with
    /// the raw body and the reason, answered 2xx, since retrying cannot help and the trigger
    /// would checkpoint it away. `fanout replay` delivers it once the cause is fixed. Only when
    /// no store takes it: `CHANGES LOST` (the attempt is unknown unless the body says) and 500.
    pub async fn dead_letter_raw(
        &self,
        function: &str,
        invocation_id: Option<String>,
        body: &[u8],
        reason: String,
        deadlines: &Deadlines,
    ) -> Answer {
        let fingerprint = hex::encode(&Sha256::digest(body)[..16]);
        let invocation_id = invocation_id.unwrap_or_default();
        let record = DeadLetterRecord::raw(
            DeadLetterKind::MalformedBatch,
            function,
            invocation_id.clone(),
            fingerprint,
            reason.clone(),
            body,
        );
        match self.dead_letter.put(&record, deadlines.answer).await {
            Ok(stored) => {
                tracing::warn!(function, reason, key = %stored.key, "batch kept raw in the dead-letter store");
                Answer {
                    dead_lettered: 1,
                    ..Answer::logged(
                        200,
                        format!(
                            "fanout {function}: malformed batch dead-lettered to {}: {reason}",
                            stored.path
                        ),
                    )
                }
            }
            Err(e) => {
                // Which attempt this is, if the body says: unreadable counts as unknown.
                let attempt = match HostRequest::peek_retry(body) {
                    None | Some(RetryState::Unreadable) => None,
                    Some(retry) => Some(Attempt::new(retry.context(), self.policy(function))),
                };
                let mut answer = Answer::logged(
                    500,
                    format!("fanout {function}: {reason}; the dead-letter store failed: {e}"),
                );
                if attempt.is_none_or(|a| a.is_last()) {
                    let line = report_lost(&Lost {
                        function: function.to_string(),
                        invocation_id,
                        count: 1,
                        first: None,
                        last: None,
                        certain: attempt.is_some(),
                        reason: format!("{reason}; {e}"),
                    });
                    answer.response.logs.push(line);
                } else {
                    tracing::error!(function, reason, dead_letter_error = %e, "batch could not be dead-lettered; the host will re-deliver");
                }
                answer
            }
        }
    }

    /// The host's retry policy for `function` (none for a function with no route).
    fn policy(&self, function: &str) -> HostRetryPolicy {
        self.routes
            .get(function)
            .map(|r| r.function.retry)
            .unwrap_or(HostRetryPolicy::NONE)
    }

    /// A request body over the size limit: streamed into the dead-letter store as it arrives
    /// (never held in memory) with a record saying why, and answered 2xx, so the batch is kept
    /// rather than lost when the trigger checkpoints. `fanout replay` delivers it later. A body
    /// stored without its record is still listed by replay (see `DeadLetterStore::list_pending`).
    pub async fn dead_letter_oversized<S>(
        &self,
        function: &str,
        invocation_id: Option<String>,
        head: Vec<bytes::Bytes>,
        rest: S,
        limit: usize,
    ) -> Answer
    where
        S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
    {
        let deadlines = Deadlines::new(Instant::now(), self.function_timeout);
        let invocation_id = invocation_id.unwrap_or_else(|| {
            format!(
                "local-{}",
                Utc::now().timestamp_nanos_opt().unwrap_or_default()
            )
        });
        let fingerprint = format!(
            "{}-oversized",
            hex::encode(&Sha256::digest(invocation_id.as_bytes())[..16])
        );
        let body_key = crate::deadletter::body_key(function, &fingerprint);
        let upload = self.dead_letter.put_body_stream(&body_key, head, rest);
        let stored = match tokio::time::timeout_at(deadlines.answer.into(), upload).await {
            Ok(stored) => stored.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "no answer within {} ms",
                (deadlines.answer - deadlines.started).as_millis()
            )),
        };
        let size = match stored {
            Ok(size) => size,
            Err(e) => {
                // The body was never held: nothing else can keep it.
                let mut answer = Answer::logged(
                    500,
                    format!(
                        "fanout {function}: request body over server.max_body_bytes ({limit}) and the dead-letter store failed: {e}"
                    ),
                );
                answer.response.logs.push(report_lost(&Lost {
                    function: function.to_string(),
                    invocation_id,
                    count: 1,
                    first: None,
                    last: None,
                    certain: false,
                    reason: format!("oversized request body; the dead-letter store failed: {e}"),
                }));
                return answer;
            }
        };
        let error = format!(
            "the request body ({size} bytes) exceeds server.max_body_bytes ({limit}); it is stored as {body_key}"
        );
        let record = DeadLetterRecord {
            raw_body_object: Some(body_key.clone()),
            ..DeadLetterRecord::new(
                DeadLetterKind::MalformedBatch,
                function,
                INPUT_SINK,
                invocation_id,
                fingerprint,
                error.clone(),
            )
        };
        let line = match self.dead_letter.put(&record, deadlines.answer).await {
            Ok(stored) => {
                tracing::warn!(function, size, key = %stored.key, "oversized batch dead-lettered");
                format!(
                    "fanout {function}: batch dead-lettered to {}: {error}; raise the limit and run `fanout replay`",
                    stored.path
                )
            }
            Err(e) => {
                // The body is stored: replay lists it by itself.
                tracing::warn!(function, size, key = %body_key, error = %e, "oversized batch stored without its record");
                format!(
                    "fanout {function}: {error}; its record could not be written ({e}), the stored body is replayed by itself: run `fanout replay`"
                )
            }
        };
        Answer {
            dead_lettered: 1,
            ..Answer::logged(200, line)
        }
    }

    /// Re-drives one dead-letter record through the sinks it names (or the whole route, for
    /// input that could not be read before). Ok when every change is delivered.
    ///
    /// `seen`: the whole batches (raw bodies) replayed so far in this run, by the fingerprint
    /// of their changes: the same batch stored twice (an oversized body the host delivered
    /// twice, a write-ahead record beside its dead-letter record) is delivered once, so the
    /// event streams do not carry it twice.
    pub async fn replay_record(
        &self,
        record: &DeadLetterRecord,
        seen: &mut HashSet<String>,
    ) -> Result<String, ReplayError> {
        let route = self
            .routes
            .get(&record.function)
            .ok_or_else(|| ReplayError::NoRoute(record.function.clone()))?;
        let ctx = BatchContext {
            function: record.function.clone(),
            invocation_id: format!("replay:{}", record.invocation_id),
            fingerprint: record.batch_fingerprint.clone(),
            received_at: Utc::now(),
            replay: true,
        };
        // Set for a whole batch (raw body), remembered in `seen` once it is delivered.
        let mut whole_batch = None;
        let (changes, sinks): (Vec<Change>, Vec<&Arc<dyn Sink>>) = match record.kind {
            DeadLetterKind::SinkFailure | DeadLetterKind::RejectedChanges => {
                let sink = route
                    .sinks
                    .iter()
                    .find(|s| s.name() == record.sink)
                    .ok_or_else(|| ReplayError::NoSink {
                        sink: record.sink.clone(),
                        function: record.function.clone(),
                    })?;
                (record.changes.clone(), vec![sink])
            }
            DeadLetterKind::MalformedItems
            | DeadLetterKind::MalformedBatch
            | DeadLetterKind::InFlight => {
                let stored_body = match &record.raw_body_object {
                    Some(key) => Some(
                        String::from_utf8_lossy(
                            &self
                                .dead_letter
                                .get_raw(key)
                                .await
                                .map_err(ReplayError::Store)?,
                        )
                        .into_owned(),
                    ),
                    None => record.raw_body.clone(),
                };
                let items = match &stored_body {
                    Some(body) if record.kind != DeadLetterKind::MalformedItems => {
                        HostRequest::decode(body.as_bytes(), &route.function.binding)
                            .map_err(ReplayError::StillMalformed)?
                            .items
                    }
                    _ => record.items.clone(),
                };
                let mut changes = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    changes.push(
                        route
                            .normalizer
                            .normalize(i, item)
                            .map_err(|u| ReplayError::StillUnreadable(u.error))?,
                    );
                }
                let batch = fingerprint(&record.function, &changes, &[]);
                if seen.contains(&batch) {
                    return Ok(format!(
                        "the same {} as a batch already replayed in this run: not delivered again",
                        plural(changes.len(), "change")
                    ));
                }
                whole_batch = Some(batch);
                (changes, route.sinks.iter().collect())
            }
        };
        // A sink that keeps tombstones is not given upserts older than a delete it received.
        let mut given = Vec::with_capacity(sinks.len());
        let mut hidden = 0;
        for sink in &sinks {
            if !sink.keeps_tombstones() {
                given.push(None);
                continue;
            }
            // One read per change, a few at a time (a record can hold a thousand changes).
            let tombstones: Vec<_> = futures::stream::iter(&changes)
                .map(|change| {
                    self.dead_letter
                        .tombstone(&record.function, sink.name(), change)
                })
                .buffered(16)
                .try_collect()
                .await
                .map_err(|source| ReplayError::Tombstones {
                    sink: sink.name().to_string(),
                    source,
                })?;
            let mut kept = Vec::with_capacity(changes.len());
            for (change, tombstone) in changes.iter().zip(tombstones) {
                if tombstone.is_some_and(|t| t.hides(change)) {
                    hidden += 1;
                } else {
                    kept.push(change.clone());
                }
            }
            given.push(Some(kept));
        }
        let tombstones_by = Instant::now() + route.retry.budget;
        let ctx = &ctx;
        let runs = join_all(sinks.iter().zip(&given).map(|(s, given)| {
            let given = given.as_deref().unwrap_or(&changes);
            async move {
                let run =
                    without_host(deliver_with_retry(s.as_ref(), ctx, given, &route.retry).await);
                self.keep_tombstones(Some(s), &record.function, given, run, tombstones_by)
                    .await
            }
        }))
        .await;
        let mut problems = Vec::new();
        let mut details = Vec::new();
        if hidden > 0 {
            details.push(format!(
                "{} not given to the sinks that keep tombstones: the document was deleted since",
                plural(hidden, "older upsert")
            ));
        }
        for run in runs {
            match run.result {
                SinkResult::Delivered { detail } if run.rejected.is_empty() => {
                    details.push(format!("{}: {detail}", run.sink))
                }
                SinkResult::Delivered { .. } => problems.push(format!(
                    "{}: refused {}: {}",
                    run.sink,
                    plural(run.rejected.len(), "change"),
                    run.rejected[0].1
                )),
                SinkResult::Failed { error, .. } => problems.push(format!("{}: {error}", run.sink)),
            }
        }
        if problems.is_empty() {
            seen.extend(whole_batch);
            Ok(details.join("; "))
        } else {
            Err(ReplayError::Sinks(problems))
        }
    }
}

impl Pipeline {
    /// The deletes a sink that keeps tombstones took from `given`, kept as tombstones while
    /// something of that sink waits in the store (`deadletter::tombstone`), by `deadline`.
    /// When they cannot be kept, the deletes count as undelivered to that sink (transient): the
    /// host re-delivers them, or the last attempt dead-letters them for replay.
    async fn keep_tombstones(
        &self,
        sink: Option<&Arc<dyn Sink>>,
        function: &str,
        given: &[Change],
        mut run: SinkRun,
        deadline: Instant,
    ) -> SinkRun {
        if !sink.is_some_and(|s| s.keeps_tombstones()) || !run.delivered() {
            return run;
        }
        let indices: Vec<usize> = run
            .delivered_indices()
            .into_iter()
            .filter(|&i| given[i].operation.is_delete())
            .collect();
        if indices.is_empty() {
            return run;
        }
        let deletes: Vec<&Change> = indices.iter().map(|&i| &given[i]).collect();
        let store = &self.dead_letter;
        let kept = tokio::time::timeout_at(deadline.into(), async {
            if store.holds_changes_for(function, &run.sink).await? {
                store
                    .put_tombstones(function, &run.sink, &deletes, deadline)
                    .await
                    .map(|t| t.len())
            } else {
                Ok(0)
            }
        })
        .await;
        let error = match kept {
            Ok(Ok(n)) => {
                if n > 0 {
                    tracing::debug!(function, sink = %run.sink, tombstones = n, "deletes kept as tombstones: older changes of this sink wait for replay");
                }
                return run;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer in time".to_string(),
        };
        run.result = SinkResult::Failed {
            error: format!(
                "{} delivered, but their tombstones could not be kept (older changes of this sink wait for replay, and would bring the documents back): {error}",
                plural(indices.len(), "delete")
            ),
            permanent: false,
            undelivered: indices,
        };
        run
    }
}

/// With no host to hand `Outputs` to (a replay), what an output-binding sink produced is
/// never sent: its run is a permanent failure, so the changes stay in the dead-letter store.
fn without_host(mut run: SinkRun) -> SinkRun {
    if run.host_delivers && run.delivered() {
        run.result = SinkResult::Failed {
            error: format!(
                "sink `{}` is sent by the Functions host's output binding, and a replay has no host: its events cannot be sent from here. They stay in the dead-letter store; to deliver them, route the same event hub through an `event_hubs` (AMQP) sink",
                run.sink
            ),
            permanent: true,
            undelivered: run.delivered_indices(),
        };
        run.outputs.clear();
    }
    run
}

/// A stable digest of the batch: the same changes re-delivered give the same fingerprint.
pub fn fingerprint(function: &str, changes: &[Change], unreadable: &[Unreadable]) -> String {
    let mut h = Sha256::new();
    h.update(function.as_bytes());
    for c in changes {
        h.update([0xff]);
        h.update(c.operation.as_str().as_bytes());
        h.update([0]);
        h.update(c.id.as_bytes());
        h.update([0]);
        h.update(c.partition_key.to_wire().as_bytes());
        h.update([0]);
        h.update(c.lsn.unwrap_or(-1).to_le_bytes());
        h.update(c.ts.unwrap_or(-1).to_le_bytes());
        h.update(c.etag.as_deref().unwrap_or("").as_bytes());
    }
    for u in unreadable {
        h.update([0xfe]);
        h.update(u.item.to_string().as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Per-batch metrics: changes and lag per function, outcome and latency per sink.
fn record_batch_metrics(function: &str, changes: usize, lag_s: Option<i64>, runs: &[SinkRun]) {
    let m = telemetry::metrics();
    let f = KeyValue::new("function", function.to_string());
    m.changes.add(changes as u64, std::slice::from_ref(&f));
    if let Some(lag) = lag_s {
        m.lag.record(lag.max(0) as f64, std::slice::from_ref(&f));
    }
    for run in runs {
        let attrs = [
            f.clone(),
            KeyValue::new("sink", run.sink.clone()),
            KeyValue::new("outcome", if run.delivered() { "ok" } else { "failed" }),
        ];
        m.sink_deliveries.add(1, &attrs);
        m.sink_duration.record(run.elapsed.as_secs_f64(), &attrs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_attempt_rules() {
        let policy = HostRetryPolicy { max_retry_count: 3 };
        assert!(!Attempt::new(None, policy).is_last());
        let ctx = |n, max| RetryContext {
            retry_count: n,
            max_retry_count: max,
            exception: None,
        };
        assert!(!Attempt::new(Some(&ctx(2, 3)), policy).is_last());
        assert!(Attempt::new(Some(&ctx(3, 3)), policy).is_last());
        // No policy: the first failure is the last.
        assert!(Attempt::new(None, HostRetryPolicy::NONE).is_last());
        // -1 retries forever: never the last, so the route blocks instead of dead-lettering.
        assert!(
            !Attempt::new(
                Some(&ctx(1000, -1)),
                HostRetryPolicy {
                    max_retry_count: -1
                }
            )
            .is_last()
        );
        assert!(Attempt::LAST.is_last());
    }
}
