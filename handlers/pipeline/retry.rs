//! The shared retry loop every sink runs in: exponential backoff with jitter (backon),
//! honouring Retry-After, inside a time budget below the function timeout. Partial failures
//! re-drive only the changes the sink reported pending.

use crate::change::Change;
use crate::config::RetrySettings;
use crate::sinks::{BatchContext, Sink, SinkError};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::FutureExt;
use std::time::{Duration, Instant};

/// How one sink fared with one batch.
#[derive(Debug, Clone)]
pub struct SinkRun {
    pub sink: String,
    pub kind: &'static str,
    pub attempts: u32,
    pub elapsed: Duration,
    /// Changes refused for good, by index into the batch, with the sink's reason.
    pub rejected: Vec<(usize, String)>,
    pub result: SinkResult,
    /// Output bindings for the host (see [`Sink::host_delivers`]).
    pub outputs: std::collections::BTreeMap<String, Vec<String>>,
    pub host_delivers: bool,
    /// How many changes the sink was given.
    pub batch_len: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkResult {
    Delivered {
        detail: String,
    },
    /// Gave up: `undelivered` (indices into the batch) did not reach the sink.
    Failed {
        error: String,
        permanent: bool,
        undelivered: Vec<usize>,
    },
}

impl SinkRun {
    pub fn delivered(&self) -> bool {
        matches!(self.result, SinkResult::Delivered { .. })
    }

    /// Indices into the batch that the sink took (every one it did not refuse).
    pub fn delivered_indices(&self) -> Vec<usize> {
        (0..self.batch_len)
            .filter(|i| !self.rejected.iter().any(|(r, _)| r == i))
            .collect()
    }
}

/// Delivers `batch` (all of it, in order) to `sink`, retrying transient failures until the
/// budget runs out.
pub async fn deliver_with_retry(
    sink: &dyn Sink,
    ctx: &BatchContext,
    batch: &[Change],
    settings: &RetrySettings,
) -> SinkRun {
    let started = Instant::now();
    let deadline = started + settings.budget;
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(settings.initial_backoff)
        .with_max_delay(settings.max_backoff)
        .with_jitter()
        .without_max_times()
        .build();
    // Indices into `batch` still to deliver.
    let mut todo: Vec<usize> = (0..batch.len()).collect();
    let mut rejected: Vec<(usize, String)> = Vec::new();
    let mut attempts = 0u32;
    let run = |attempts, rejected, result| SinkRun {
        sink: sink.name().to_string(),
        kind: sink.kind(),
        attempts,
        elapsed: started.elapsed(),
        rejected,
        result,
        outputs: Default::default(),
        host_delivers: sink.host_delivers(),
        batch_len: batch.len(),
    };
    loop {
        attempts += 1;
        let changes: Vec<&Change> = todo.iter().map(|&i| &batch[i]).collect();
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        // A panicking sink must not take the invocation down with it: its changes are
        // dead-lettered like any permanent failure, and the other sinks carry on.
        let guarded = std::panic::AssertUnwindSafe(async {
            crate::failpoint::hit(sink.name());
            sink.deliver(ctx, &changes).await
        })
        .catch_unwind();
        let attempt = match tokio::time::timeout(remaining, guarded).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(SinkError::permanent(format!(
                "the sink panicked: {}",
                crate::panic_message(panic.as_ref())
            ))),
            Err(_) => Err(SinkError::transient(format!(
                "no answer within the retry budget ({} ms)",
                settings.budget.as_millis()
            ))),
        };
        let (error, retry_after) = match attempt {
            Ok(delivery) => {
                rejected.extend(
                    delivery
                        .rejected
                        .iter()
                        .map(|r| (todo[r.index], r.reason.clone())),
                );
                if delivery.pending.is_empty() {
                    let mut done = run(
                        attempts,
                        rejected,
                        SinkResult::Delivered {
                            detail: delivery.detail,
                        },
                    );
                    done.outputs = delivery.outputs;
                    return done;
                }
                let n = delivery.pending.len();
                todo = delivery.pending.iter().map(|&i| todo[i]).collect();
                (
                    format!("{n} changes still pending after a partial failure"),
                    delivery.retry_after,
                )
            }
            Err(e @ SinkError::Permanent { .. }) => {
                let message = e.detail();
                return run(
                    attempts,
                    rejected,
                    SinkResult::Failed {
                        error: message,
                        permanent: true,
                        undelivered: todo,
                    },
                );
            }
            Err(e @ SinkError::Transient { .. }) => {
                let retry_after = match &e {
                    SinkError::Transient { retry_after, .. } => *retry_after,
                    SinkError::Permanent { .. } => None,
                };
                (e.detail(), retry_after)
            }
        };
        let delay = backoff
            .next()
            .unwrap_or(settings.max_backoff)
            .max(retry_after.unwrap_or_default());
        if Instant::now() + delay >= deadline {
            tracing::warn!(sink = sink.name(), attempts, %error, "retry budget exhausted");
            return run(
                attempts,
                rejected,
                SinkResult::Failed {
                    error,
                    permanent: false,
                    undelivered: todo,
                },
            );
        }
        tracing::debug!(sink = sink.name(), attempts, delay_ms = delay.as_millis() as u64, %error, "retrying");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::{Delivery, Rejected};
    use crate::testing::{ChangeBuilder, PanickingSink, ScriptedSink, batch_context};

    fn change(id: &str) -> Change {
        ChangeBuilder::upsert(id).build()
    }

    fn ctx() -> BatchContext {
        batch_context("f")
    }

    fn settings(budget_ms: u64) -> RetrySettings {
        RetrySettings {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            budget: Duration::from_millis(budget_ms),
        }
    }

    #[tokio::test]
    async fn partial_failure_redrives_only_pending_and_keeps_rejections() {
        let sink = ScriptedSink::new(
            "scripted",
            vec![
                Ok(Delivery {
                    pending: vec![1, 2],
                    rejected: vec![Rejected {
                        index: 0,
                        reason: "bad".into(),
                    }],
                    ..Delivery::default()
                }),
                Err(SinkError::transient("blip")),
                Ok(Delivery {
                    pending: vec![1],
                    ..Delivery::default()
                }),
                Ok(Delivery::done("ok")),
            ],
        );
        let batch = vec![change("a"), change("b"), change("c")];
        let run = deliver_with_retry(&sink, &ctx(), &batch, &settings(5_000)).await;
        assert!(run.delivered());
        assert_eq!(run.attempts, 4);
        assert_eq!(run.rejected, vec![(0, "bad".to_string())]);
        let seen = sink.seen();
        assert_eq!(
            seen,
            vec![
                vec!["a", "b", "c"],
                vec!["b", "c"],
                vec!["b", "c"],
                vec!["c"]
            ]
        );
    }

    #[tokio::test]
    async fn a_panicking_sink_is_a_permanent_failure_not_a_crash() {
        let run = deliver_with_retry(
            &PanickingSink {
                name: "panics".into(),
                message: "index out of bounds",
            },
            &ctx(),
            &[change("a")],
            &settings(5_000),
        )
        .await;
        assert_eq!(
            run.result,
            SinkResult::Failed {
                error: "the sink panicked: index out of bounds".into(),
                permanent: true,
                undelivered: vec![0]
            }
        );
    }

    #[tokio::test]
    async fn permanent_errors_stop_at_once() {
        let sink = ScriptedSink::new("scripted", vec![Err(SinkError::permanent("schema"))]);
        let run = deliver_with_retry(&sink, &ctx(), &[change("a")], &settings(5_000)).await;
        assert_eq!(run.attempts, 1);
        assert_eq!(
            run.result,
            SinkResult::Failed {
                error: "schema".into(),
                permanent: true,
                undelivered: vec![0]
            }
        );
    }

    #[tokio::test]
    async fn retry_after_longer_than_the_budget_gives_up_early() {
        let sink = ScriptedSink::new(
            "scripted",
            vec![Err(
                SinkError::transient("429").retry_after(Some(Duration::from_secs(30)))
            )],
        );
        let started = Instant::now();
        let run = deliver_with_retry(&sink, &ctx(), &[change("a")], &settings(2_000)).await;
        assert!(matches!(
            run.result,
            SinkResult::Failed {
                permanent: false,
                ..
            }
        ));
        assert_eq!(run.attempts, 1);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "must not sleep past the budget"
        );
    }
}
