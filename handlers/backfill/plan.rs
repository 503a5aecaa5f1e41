//! What a backfill will do, decided before any work (pure, table-tested): which sinks, and
//! whether it starts fresh or resumes a checkpoint.

use super::checkpoint::Checkpoint;
use crate::cosmos::Start;

/// A sink of the route: its name, and whether the host delivers what it produces.
pub struct RouteSink<'a> {
    pub name: &'a str,
    pub host_delivers: bool,
}

impl<'a> RouteSink<'a> {
    /// The sinks of a route, as the plan sees them.
    pub fn of(route: &'a crate::pipeline::Route) -> Vec<RouteSink<'a>> {
        route
            .sinks
            .iter()
            .map(|s| RouteSink {
                name: s.name(),
                host_delivers: s.host_delivers(),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("function `{function}` has no sink `{sink}`; its sinks: {known}")]
    UnknownSink {
        function: String,
        sink: String,
        known: String,
    },
    #[error(
        "sink `{0}` is the host's output binding: only the Functions host can send it, so a backfill cannot fill it (use `type = \"event_hubs\"` to send events directly)"
    )]
    HostDelivered(String),
    #[error("function `{0}` has no sink a backfill can fill")]
    NothingToFill(String),
    #[error("nothing to resume: no backfill of `{function}` has run (no {state})")]
    NothingToResume { function: String, state: String },
    #[error("nothing to resume: the backfill of `{function}` completed at {at}")]
    Completed { function: String, at: String },
    #[error(
        "a backfill of `{function}` started at {started} is unfinished ({left} of {total} feed ranges left): `--resume` continues it, `--restart` starts over"
    )]
    Unfinished {
        function: String,
        started: String,
        left: usize,
        total: usize,
    },
    #[error(
        "the unfinished backfill of `{function}` was of {was}, not {now}: resume it as it was (leave out --sink / --since), or `--restart`"
    )]
    Different {
        function: String,
        was: String,
        now: String,
    },
}

/// The sinks to fill: the ones asked for, or every sink fanout can deliver to itself.
pub fn select_sinks(
    function: &str,
    route: &[RouteSink<'_>],
    asked: &[String],
) -> Result<Vec<String>, PlanError> {
    for name in asked {
        match route.iter().find(|s| s.name == name) {
            None => {
                return Err(PlanError::UnknownSink {
                    function: function.into(),
                    sink: name.clone(),
                    known: route.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
                });
            }
            Some(s) if s.host_delivers => return Err(PlanError::HostDelivered(name.clone())),
            Some(_) => {}
        }
    }
    let chosen: Vec<String> = route
        .iter()
        .filter(|s| !s.host_delivers)
        .filter(|s| asked.is_empty() || asked.iter().any(|a| a == s.name))
        .map(|s| s.name.to_string())
        .collect();
    if chosen.is_empty() {
        return Err(PlanError::NothingToFill(function.into()));
    }
    Ok(chosen)
}

/// What the command line asked for.
pub struct Asked<'a> {
    pub function: &'a str,
    pub container: &'a str,
    /// Empty: not given.
    pub sinks: &'a [String],
    pub chosen_sinks: &'a [String],
    /// `None`: not given (from the beginning, or the checkpoint's).
    pub start: Option<Start>,
    pub resume: bool,
    pub restart: bool,
    pub state: &'a str,
}

#[derive(Debug, PartialEq)]
pub enum Begin {
    Fresh,
    Resume(Box<Checkpoint>),
}

pub fn begin(existing: Option<Checkpoint>, asked: &Asked<'_>) -> Result<Begin, PlanError> {
    let function = asked.function.to_string();
    let Some(cp) = existing else {
        return if asked.resume {
            Err(PlanError::NothingToResume {
                function,
                state: asked.state.into(),
            })
        } else {
            Ok(Begin::Fresh)
        };
    };
    if let Some(at) = cp.completed_at {
        return if asked.resume {
            Err(PlanError::Completed {
                function,
                at: at.to_rfc3339(),
            })
        } else {
            Ok(Begin::Fresh)
        };
    }
    if asked.restart {
        return Ok(Begin::Fresh);
    }
    if !asked.resume {
        return Err(PlanError::Unfinished {
            function,
            started: cp.started_at.to_rfc3339(),
            left: cp.unfinished_ranges(),
            total: cp.ranges.len(),
        });
    }
    let describe = |container: &str, sinks: &[String], start: Start| {
        format!(
            "{container} into {} from {}",
            sinks.join(", "),
            match start {
                Start::Beginning => "the beginning".to_string(),
                Start::Since(ts) => format!("time {ts}"),
            }
        )
    };
    let same_container = cp.container == asked.container;
    let same_sinks = asked.sinks.is_empty() || asked.chosen_sinks == cp.sinks.as_slice();
    let same_start = asked.start.is_none_or(|s| s == cp.start);
    if !(same_container && same_sinks && same_start) {
        return Err(PlanError::Different {
            function,
            was: describe(&cp.container, &cp.sinks, cp.start),
            now: describe(
                asked.container,
                asked.chosen_sinks,
                asked.start.unwrap_or(Start::Beginning),
            ),
        });
    }
    Ok(Begin::Resume(Box::new(cp)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn route() -> Vec<RouteSink<'static>> {
        vec![
            RouteSink {
                name: "changelog",
                host_delivers: false,
            },
            RouteSink {
                name: "cache",
                host_delivers: false,
            },
            RouteSink {
                name: "events",
                host_delivers: true,
            },
        ]
    }

    #[test]
    fn sinks_are_chosen_or_refused() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        type Case = (Vec<String>, Result<Vec<String>, &'static str>);
        let cases: Vec<Case> = vec![
            (s(&[]), Ok(s(&["changelog", "cache"]))),
            (s(&["cache"]), Ok(s(&["cache"]))),
            (s(&["cache", "changelog"]), Ok(s(&["changelog", "cache"]))),
            (
                s(&["nope"]),
                Err("has no sink `nope`; its sinks: changelog, cache, events"),
            ),
            (s(&["events"]), Err("only the Functions host can send it")),
        ];
        for (asked, want) in cases {
            match (select_sinks("orders", &route(), &asked), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w),
                (Err(e), Err(fragment)) => assert!(e.to_string().contains(fragment), "{e}"),
                (got, want) => panic!("{asked:?}: {got:?} vs {want:?}"),
            }
        }
        let only_binding = [RouteSink {
            name: "events",
            host_delivers: true,
        }];
        assert_eq!(
            select_sinks("orders", &only_binding, &[]),
            Err(PlanError::NothingToFill("orders".into()))
        );
    }

    fn checkpoint(done: bool) -> Checkpoint {
        Checkpoint {
            function: "orders".into(),
            container: "https://a/shop/orders".into(),
            sinks: vec!["changelog".into(), "cache".into()],
            start: Start::Beginning,
            page_size: 100,
            started_at: Utc::now(),
            completed_at: done.then(Utc::now),
            ranges: vec![RangeState {
                range: "r".into(),
                continuation: None,
                items: 0,
                request_units: 0.0,
                done,
            }],
        }
    }
    use super::super::checkpoint::RangeState;

    #[test]
    fn a_checkpoint_is_resumed_only_when_asked_and_only_as_it_was() {
        let chosen = vec!["changelog".to_string(), "cache".to_string()];
        let asked = |resume, restart, sinks: &'static [String], start| Asked {
            function: "orders",
            container: "https://a/shop/orders",
            sinks,
            chosen_sinks: &[],
            start,
            resume,
            restart,
            state: ".fanout/backfill/orders.json",
        };
        static NONE: [String; 0] = [];
        let run = |cp: Option<Checkpoint>, a: Asked<'_>, chosen: &[String]| {
            begin(
                cp,
                &Asked {
                    chosen_sinks: chosen,
                    ..a
                },
            )
        };
        // (existing, resume, restart, start given, expected)
        type Case = (Option<bool>, bool, bool, Option<Start>, &'static str);
        let cases: Vec<Case> = vec![
            (None, false, false, None, "fresh"),
            (None, true, false, None, "no backfill of `orders` has run"),
            (Some(true), false, false, None, "fresh"),
            (Some(true), true, false, None, "completed at"),
            (Some(false), false, false, None, "`--resume` continues it"),
            (Some(false), false, true, None, "fresh"),
            (Some(false), true, false, None, "resume"),
            (
                Some(false),
                true,
                false,
                Some(Start::Since(5)),
                "not https://a/shop/orders",
            ),
        ];
        for (existing, resume, restart, start, want) in cases {
            let got = run(
                existing.map(checkpoint),
                asked(resume, restart, &NONE, start),
                &chosen,
            );
            let said = match &got {
                Ok(Begin::Fresh) => "fresh".to_string(),
                Ok(Begin::Resume(_)) => "resume".to_string(),
                Err(e) => e.to_string(),
            };
            assert!(
                said.contains(want),
                "{existing:?} {resume} {restart}: {said}"
            );
        }
    }
}
