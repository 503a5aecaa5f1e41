//! What to do with one attempt's outcome, as pure functions: [`plan`] (the sink runs, the
//! attempt and what earlier attempts did -> what to dead-letter, what the host must retry)
//! and [`settle`] (the plan and which dead-letter writes failed -> which sinks are done for
//! this batch, and whether to answer 2xx). The pipeline does the I/O and the reporting around
//! them.

use super::Attempt;
use super::retry::{SinkResult, SinkRun};
use crate::deadletter::INPUT_SINK;
use std::collections::HashSet;

/// Something to put in the dead-letter store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// The feed items that could not be normalized.
    Unreadable,
    /// The changes a sink refused for good (`SinkRun::rejected`).
    Rejected { sink: String, attempts: u32 },
    /// What a sink did not take: it failed for good, or transiently on the last attempt.
    Failure {
        sink: String,
        attempts: u32,
        error: String,
        undelivered: Vec<usize>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub keep: Vec<Keep>,
    /// Sinks that failed transiently before the last attempt: the host re-delivers for them.
    pub retry: Vec<String>,
}

/// Decides, per sink, what happens to what it could not take. `input_done`: an earlier
/// attempt already kept this batch's unreadable items.
pub fn plan(runs: &[SinkRun], unreadable: bool, input_done: bool, attempt: Attempt) -> Plan {
    let mut plan = Plan::default();
    if unreadable && !input_done {
        plan.keep.push(Keep::Unreadable);
    }
    for run in runs {
        if !run.rejected.is_empty() {
            plan.keep.push(Keep::Rejected {
                sink: run.sink.clone(),
                attempts: run.attempts,
            });
        }
        match &run.result {
            SinkResult::Delivered { .. } => {}
            SinkResult::Failed {
                error,
                permanent,
                undelivered,
            } if *permanent || attempt.is_last() => plan.keep.push(Keep::Failure {
                sink: run.sink.clone(),
                attempts: run.attempts,
                error: error.clone(),
                undelivered: undelivered.clone(),
            }),
            SinkResult::Failed { .. } => plan.retry.push(run.sink.clone()),
        }
    }
    plan
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Sinks (and the input) done with this batch: a re-delivery skips them.
    pub done: HashSet<String>,
    /// Answer 2xx: nothing to retry, and everything planned was kept.
    pub ok: bool,
}

/// After the dead-letter writes: `unkept` names the sinks whose record could not be written.
pub fn settle(
    runs: &[SinkRun],
    plan: &Plan,
    unkept: &HashSet<&str>,
    already: &HashSet<String>,
) -> Settled {
    let mut done = already.clone();
    if !unkept.contains(INPUT_SINK) {
        done.insert(INPUT_SINK.to_string());
    }
    for run in runs {
        // What the host delivers (output bindings) is discarded with a non-2xx answer: such
        // a sink must run again on the re-delivery.
        if !plan.retry.contains(&run.sink)
            && !unkept.contains(run.sink.as_str())
            && !run.host_delivers
        {
            done.insert(run.sink.clone());
        }
    }
    Settled {
        done,
        ok: plan.retry.is_empty() && unkept.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run(sink: &str, result: SinkResult, rejected: &[usize], host_delivers: bool) -> SinkRun {
        SinkRun {
            sink: sink.into(),
            kind: "test",
            attempts: 2,
            elapsed: Duration::ZERO,
            rejected: rejected.iter().map(|&i| (i, "bad".to_string())).collect(),
            result,
            outputs: Default::default(),
            host_delivers,
            batch_len: 3,
        }
    }

    fn ok() -> SinkResult {
        SinkResult::Delivered { detail: "".into() }
    }

    fn failed(permanent: bool) -> SinkResult {
        SinkResult::Failed {
            error: "down".into(),
            permanent,
            undelivered: vec![0, 1, 2],
        }
    }

    const FIRST: Attempt = Attempt {
        retry_count: 0,
        max_retry_count: 3,
    };
    const LAST: Attempt = Attempt {
        retry_count: 3,
        max_retry_count: 3,
    };
    const FOREVER: Attempt = Attempt {
        retry_count: 99,
        max_retry_count: -1,
    };

    fn failure(sink: &str) -> Keep {
        Keep::Failure {
            sink: sink.into(),
            attempts: 2,
            error: "down".into(),
            undelivered: vec![0, 1, 2],
        }
    }

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_outcome_of_an_attempt() {
        struct Case {
            name: &'static str,
            runs: Vec<SinkRun>,
            unreadable: bool,
            already: &'static [&'static str],
            attempt: Attempt,
            unkept: &'static [&'static str],
            keep: Vec<Keep>,
            retry: &'static [&'static str],
            done: &'static [&'static str],
            ok: bool,
        }
        let cases = vec![
            Case {
                name: "all delivered",
                runs: vec![run("a", ok(), &[], false), run("b", ok(), &[], false)],
                unreadable: false,
                already: &[],
                attempt: FIRST,
                unkept: &[],
                keep: vec![],
                retry: &[],
                done: &["_input", "a", "b"],
                ok: true,
            },
            Case {
                name: "transient failure before the last attempt: the host retries that sink",
                runs: vec![
                    run("a", ok(), &[], false),
                    run("b", failed(false), &[], false),
                ],
                unreadable: false,
                already: &[],
                attempt: FIRST,
                unkept: &[],
                keep: vec![],
                retry: &["b"],
                done: &["_input", "a"],
                ok: false,
            },
            Case {
                name: "transient failure on the last attempt: dead-lettered, answered 2xx",
                runs: vec![run("b", failed(false), &[], false)],
                unreadable: false,
                already: &[],
                attempt: LAST,
                unkept: &[],
                keep: vec![failure("b")],
                retry: &[],
                done: &["_input", "b"],
                ok: true,
            },
            Case {
                name: "permanent failure: dead-lettered at once",
                runs: vec![run("b", failed(true), &[], false)],
                unreadable: false,
                already: &[],
                attempt: FIRST,
                unkept: &[],
                keep: vec![failure("b")],
                retry: &[],
                done: &["_input", "b"],
                ok: true,
            },
            Case {
                name: "retry forever: never dead-letters a transient failure",
                runs: vec![run("b", failed(false), &[], false)],
                unreadable: false,
                already: &[],
                attempt: FOREVER,
                unkept: &[],
                keep: vec![],
                retry: &["b"],
                done: &["_input"],
                ok: false,
            },
            Case {
                name: "refused changes are kept, the rest delivered",
                runs: vec![run("a", ok(), &[1], false)],
                unreadable: true,
                already: &[],
                attempt: FIRST,
                unkept: &[],
                keep: vec![
                    Keep::Unreadable,
                    Keep::Rejected {
                        sink: "a".into(),
                        attempts: 2,
                    },
                ],
                retry: &[],
                done: &["_input", "a"],
                ok: true,
            },
            Case {
                name: "unreadable items kept by an earlier attempt are not kept again",
                runs: vec![run("a", ok(), &[], false)],
                unreadable: true,
                already: &["_input"],
                attempt: FIRST,
                unkept: &[],
                keep: vec![],
                retry: &[],
                done: &["_input", "a"],
                ok: true,
            },
            Case {
                name: "a dead-letter write that failed: that sink is not done, no 2xx",
                runs: vec![
                    run("a", ok(), &[], false),
                    run("b", failed(false), &[], false),
                ],
                unreadable: true,
                already: &[],
                attempt: LAST,
                unkept: &["b", "_input"],
                keep: vec![Keep::Unreadable, failure("b")],
                retry: &[],
                done: &["a"],
                ok: false,
            },
            Case {
                name: "an output binding is never done: the host drops it with a non-2xx answer",
                runs: vec![
                    run("events", ok(), &[], true),
                    run("b", failed(false), &[], false),
                ],
                unreadable: false,
                already: &[],
                attempt: FIRST,
                unkept: &[],
                keep: vec![],
                retry: &["b"],
                done: &["_input"],
                ok: false,
            },
        ];
        for c in cases {
            let p = plan(
                &c.runs,
                c.unreadable,
                c.already.contains(&INPUT_SINK),
                c.attempt,
            );
            assert_eq!(p.keep, c.keep, "{}: keep", c.name);
            let retry: Vec<String> = c.retry.iter().map(|s| s.to_string()).collect();
            assert_eq!(p.retry, retry, "{}: retry", c.name);
            let unkept: HashSet<&str> = c.unkept.iter().copied().collect();
            let s = settle(&c.runs, &p, &unkept, &set(c.already));
            assert_eq!(s.done, set(c.done), "{}: done", c.name);
            assert_eq!(s.ok, c.ok, "{}: ok", c.name);
        }
    }
}
