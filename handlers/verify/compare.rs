//! The comparison at the heart of `verify`, pure: what a sink holds against what the
//! container holds, document by document. A document is missing (the container has it, the
//! sink does not), extra (the sink has it, the container no longer does), stale (the sink
//! holds an older version: lower (lsn, `_ts`)), or, for the documents whose fields are
//! compared, different (the same version with other projected values). A sink holding a
//! newer version than the container was read at is not drift: a live change overtook the
//! read.

use crate::sinks::state::Held;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A document's identity: (partition key as on the wire, id).
pub type DocKey = (String, String);

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "drift")]
pub enum Drift {
    Missing,
    Extra,
    Stale {
        sink: (i64, i64),
        container: (i64, i64),
    },
    Different {
        fields: Vec<String>,
    },
}

/// How a sink's holdings are judged.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// A document the sink lacks is drift (not for a cache whose keys expire).
    pub missing_is_drift: bool,
    /// When the container read began (epoch seconds): a sink entry written at or after it,
    /// for a document the read did not see, was created while verify ran - not drift.
    pub read_started: i64,
}

/// Every drift, in key order. Fields are compared where both sides carry them (the sample,
/// or all).
pub fn compare<K: Ord + Clone>(
    container: &BTreeMap<K, Held>,
    sink: &BTreeMap<K, Held>,
    rules: Rules,
) -> Vec<(K, Drift)> {
    let mut drift = Vec::new();
    for (key, want) in container {
        match sink.get(key) {
            None if rules.missing_is_drift => drift.push((key.clone(), Drift::Missing)),
            None => {}
            Some(held) if held.version < want.version => drift.push((
                key.clone(),
                Drift::Stale {
                    sink: held.version,
                    container: want.version,
                },
            )),
            Some(held) if held.version == want.version => {
                if let (Some(w), Some(h)) = (&want.fields, &held.fields) {
                    let fields = differing(w, h);
                    if !fields.is_empty() {
                        drift.push((key.clone(), Drift::Different { fields }));
                    }
                }
            }
            Some(_) => {}
        }
    }
    for (key, held) in sink {
        if !container.contains_key(key) && held.version.1 < rules.read_started {
            drift.push((key.clone(), Drift::Extra));
        }
    }
    drift.sort_by(|a, b| a.0.cmp(&b.0));
    drift
}

/// The fields (of either side) whose values differ, sorted.
fn differing(want: &Map<String, Value>, held: &Map<String, Value>) -> Vec<String> {
    let mut names: Vec<&String> = want.keys().chain(held.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| want.get(*n) != held.get(*n))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn held(lsn: i64, status: &str) -> Held {
        Held {
            version: (lsn, 100),
            fields: Some(json!({"status": status}).as_object().unwrap().clone()),
        }
    }

    fn unsampled(h: Held) -> Held {
        Held { fields: None, ..h }
    }

    const RULES: Rules = Rules {
        missing_is_drift: true,
        read_started: 1000,
    };

    fn key(id: &str) -> DocKey {
        ("[\"c1\"]".into(), id.into())
    }

    #[test]
    fn each_kind_of_drift_is_named_and_nothing_else() {
        // (container, sink, fields compared, expected drift)
        type Case = (Option<Held>, Option<Held>, bool, Option<Drift>);
        let written_during_the_read = Held {
            version: (9, 1000),
            fields: None,
        };
        let cases: Vec<Case> = vec![
            (Some(held(5, "a")), Some(held(5, "a")), true, None),
            (Some(held(5, "a")), None, true, Some(Drift::Missing)),
            (None, Some(held(5, "a")), true, Some(Drift::Extra)),
            (
                Some(held(7, "b")),
                Some(held(5, "a")),
                true,
                Some(Drift::Stale {
                    sink: (5, 100),
                    container: (7, 100),
                }),
            ),
            // A live change overtook the read: not drift.
            (Some(held(5, "a")), Some(held(9, "c")), true, None),
            (
                Some(held(5, "a")),
                Some(held(5, "x")),
                true,
                Some(Drift::Different {
                    fields: vec!["status".into()],
                }),
            ),
            // Fields of a document outside the sample are not compared.
            (Some(held(5, "a")), Some(held(5, "x")), false, None),
            // Written while verify read the container: not an extra.
            (None, Some(written_during_the_read), true, None),
        ];
        for (i, (c, s, fields, want)) in cases.into_iter().enumerate() {
            let pick = |h: Held| if fields { h } else { unsampled(h) };
            let container: BTreeMap<_, _> = c.into_iter().map(|h| (key("o1"), pick(h))).collect();
            let sink: BTreeMap<_, _> = s.into_iter().map(|h| (key("o1"), pick(h))).collect();
            let got = compare(&container, &sink, RULES);
            let want: Vec<_> = want.into_iter().map(|d| (key("o1"), d)).collect();
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn drift_comes_in_key_order_with_extras_among_the_rest() {
        let container = BTreeMap::from([(key("a"), held(1, "x")), (key("c"), held(1, "x"))]);
        let sink = BTreeMap::from([(key("b"), held(1, "x")), (key("c"), held(1, "x"))]);
        let got: Vec<String> = compare(&container, &sink, RULES)
            .into_iter()
            .map(|(k, d)| format!("{}:{d:?}", k.1))
            .collect();
        assert_eq!(got, ["a:Missing", "b:Extra"]);
    }

    #[test]
    fn a_cache_that_lets_keys_expire_is_not_missing_them() {
        let container = BTreeMap::from([(key("a"), held(1, "x"))]);
        let rules = Rules {
            missing_is_drift: false,
            ..RULES
        };
        assert!(compare(&container, &BTreeMap::new(), rules).is_empty());
    }
}
