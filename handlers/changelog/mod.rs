//! Reading the changelog back for what its users came for: one document's history
//! ([`history`]) and the state as of a time ([`restore`]). Decisions are pure and
//! table-tested; the reading is `sinks::delta::scan` (file skipping by statistics).

pub mod as_of;
pub mod history;
pub mod restore;
pub mod to_cosmos;

use crate::config::RouteConfig;
use crate::sinks::delta::ChangelogRow;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("function `{0}` has no changelog (a sink with `type = \"delta\"`)")]
    NoChangelog(String),
    #[error("function `{function}` has no changelog sink `{sink}`; its changelogs: {known}")]
    UnknownSink {
        function: String,
        sink: String,
        known: String,
    },
    #[error("function `{function}` has several changelogs ({known}): name one with `--sink`")]
    Several { function: String, known: String },
}

/// The changelog a command reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changelog {
    pub sink: String,
    pub url: url::Url,
    pub storage_options: HashMap<String, String>,
    /// The monitored container (`/cosmosdb/{database}/{container}`): whose baseline counts.
    pub scope: String,
}

/// The changelog a command reads: the route's one Delta sink, or the one named.
pub fn changelog_of(route: &RouteConfig, sink: Option<&str>) -> Result<Changelog, TableError> {
    let function = route.function.name.clone();
    let tables: Vec<Changelog> = route
        .sinks
        .iter()
        .filter_map(|(name, s)| {
            s.as_changelog().map(|v| Changelog {
                sink: name.clone(),
                url: v.url.clone(),
                storage_options: v.config.storage_options.clone().into_iter().collect(),
                scope: v.source.clone(),
            })
        })
        .collect();
    let known = || {
        tables
            .iter()
            .map(|t| t.sink.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match sink {
        Some(want) => {
            tables
                .iter()
                .find(|t| t.sink == want)
                .ok_or_else(|| TableError::UnknownSink {
                    function: function.clone(),
                    sink: want.to_string(),
                    known: known(),
                })?
        }
        None => match tables.as_slice() {
            [] => return Err(TableError::NoChangelog(function)),
            [one] => one,
            _ => {
                return Err(TableError::Several {
                    function,
                    known: known(),
                });
            }
        },
    };
    Ok(chosen.clone())
}

/// A row's order among the changes of one document: (lsn, `_ts`), a missing part first.
pub fn version(row: &ChangelogRow) -> (i64, i64) {
    (row.lsn.unwrap_or(-1), row.ts.unwrap_or(-1))
}

/// `--partition-key V` as the changelog's wire form: a JSON array as is (a hierarchical
/// key, `["t1","u1"]`), any other JSON value (`5`, `true`, `"5"`) as one component, and
/// anything that is not JSON as a string (`c1`).
pub fn partition_key_wire(value: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Array(items)) => serde_json::Value::Array(items).to_string(),
        Ok(v) => serde_json::Value::Array(vec![v]).to_string(),
        Err(_) => serde_json::Value::Array(vec![value.into()]).to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn partition_keys_are_given_as_values() {
        for (given, wire) in [
            ("c1", "[\"c1\"]"),
            ("\"5\"", "[\"5\"]"),
            ("5", "[5]"),
            ("[\"t1\",\"u1\"]", "[\"t1\",\"u1\"]"),
            ("null", "[null]"),
        ] {
            assert_eq!(super::partition_key_wire(given), wire, "{given}");
        }
    }
}
