//! Reads what the Functions host itself reads: `host.json` (the function timeout) and each
//! function folder's `function.json` (the Cosmos trigger binding and the retry policy). The
//! handler needs the retry policy to know which delivery is the last before the trigger
//! checkpoints the lease anyway.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Used when host.json sets no functionTimeout: the Consumption plan's default.
pub const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum FunctionFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The host's retry policy for a function (`retry` in function.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRetryPolicy {
    /// Number of retries after the first execution; -1 retries forever.
    pub max_retry_count: i64,
}

impl HostRetryPolicy {
    /// No policy at all: the first failure is the last.
    pub const NONE: HostRetryPolicy = HostRetryPolicy { max_retry_count: 0 };
}

/// The trigger's `changeFeedMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChangeFeedMode {
    /// The default: the latest version of each changed item; no deletes (mark them instead).
    #[default]
    LatestVersion,
    /// Every version and every delete (hard deletes and TTL expiry); needs continuous backup,
    /// starts from now only.
    AllVersionsAndDeletes,
}

/// What the handler needs from one function folder.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionDefinition {
    pub name: String,
    /// The trigger binding's `name`: the key of the documents in the request's `Data`.
    pub binding: String,
    pub database: Option<String>,
    pub container: Option<String>,
    /// The trigger's `connection`: the app-setting prefix of the account
    /// (`{connection}__accountEndpoint`, or a connection string in `{connection}`).
    pub connection: Option<String>,
    pub retry: HostRetryPolicy,
    /// Output bindings: (name, type), e.g. ("events", "eventHub").
    pub outputs: Vec<(String, String)>,
    pub change_feed_mode: ChangeFeedMode,
    /// `startFromBeginning: true`.
    pub start_from_beginning: bool,
    /// `startFromTime`, as written.
    pub start_from_time: Option<String>,
}

#[derive(Deserialize)]
struct FunctionJson {
    #[serde(default)]
    bindings: Vec<Value>,
    #[serde(default)]
    retry: Option<RetryJson>,
}

#[derive(Deserialize)]
struct RetryJson {
    #[serde(rename = "maxRetryCount")]
    max_retry_count: Option<i64>,
}

#[derive(Deserialize)]
struct HostJson {
    #[serde(rename = "functionTimeout")]
    function_timeout: Option<String>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, FunctionFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FunctionFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| FunctionFileError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The function timeout from `host.json` (`hh:mm:ss`, or `-1` for unbounded, which we cap
/// at one hour for budgeting purposes).
pub fn read_function_timeout(app_root: &Path) -> Result<Duration, FunctionFileError> {
    let path = app_root.join("host.json");
    if !path.exists() {
        return Ok(DEFAULT_FUNCTION_TIMEOUT);
    }
    let host: HostJson = read_json(&path)?;
    match host.function_timeout.as_deref() {
        None => Ok(DEFAULT_FUNCTION_TIMEOUT),
        Some("-1") => Ok(Duration::from_secs(3600)),
        Some(s) => parse_timespan(s).ok_or_else(|| FunctionFileError::Invalid {
            path,
            message: format!("functionTimeout `{s}` is not a `hh:mm:ss` time span"),
        }),
    }
}

/// Parses the `[d.]hh:mm:ss` time spans used in host.json.
pub fn parse_timespan(s: &str) -> Option<Duration> {
    let (days, clock) = match s.split_once('.') {
        Some((d, rest)) if !d.contains(':') => (d.parse::<u64>().ok()?, rest),
        _ => (0, s),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    let [h, m, sec] = parts.as_slice() else {
        return None;
    };
    let secs: f64 = sec.parse().ok()?;
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    if m >= 60 || !(0.0..60.0).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs(days * 86_400 + h * 3600 + m * 60) + Duration::from_secs_f64(secs))
}

/// Reads `{app_root}/{name}/function.json`.
pub fn read_function(app_root: &Path, name: &str) -> Result<FunctionDefinition, FunctionFileError> {
    let path = app_root.join(name).join("function.json");
    let file: FunctionJson = read_json(&path)?;
    let trigger = file
        .bindings
        .iter()
        .find(|b| b.get("type").and_then(Value::as_str) == Some("cosmosDBTrigger"))
        .ok_or_else(|| FunctionFileError::Invalid {
            path: path.clone(),
            message: "has no binding of type `cosmosDBTrigger`".into(),
        })?;
    let text = |key: &str| trigger.get(key).and_then(Value::as_str).map(str::to_string);
    // The host takes the mode case-insensitively ("AllVersionsAndDeletes" in the docs).
    let change_feed_mode = match text("changeFeedMode") {
        None => ChangeFeedMode::LatestVersion,
        Some(m) if m.eq_ignore_ascii_case("LatestVersion") => ChangeFeedMode::LatestVersion,
        Some(m) if m.eq_ignore_ascii_case("AllVersionsAndDeletes") => {
            ChangeFeedMode::AllVersionsAndDeletes
        }
        Some(other) => {
            return Err(FunctionFileError::Invalid {
                path,
                message: format!(
                    "changeFeedMode `{other}` is not a mode of the Cosmos DB trigger: use `LatestVersion` (the default) or `AllVersionsAndDeletes`"
                ),
            });
        }
    };
    let binding = text("name").ok_or_else(|| FunctionFileError::Invalid {
        path: path.clone(),
        message: "the cosmosDBTrigger binding has no `name`".into(),
    })?;
    Ok(FunctionDefinition {
        name: name.to_string(),
        binding,
        database: text("databaseName"),
        container: text("containerName"),
        connection: text("connection"),
        retry: file
            .retry
            .map(|r| HostRetryPolicy {
                max_retry_count: r.max_retry_count.unwrap_or(0),
            })
            .unwrap_or(HostRetryPolicy::NONE),
        outputs: file
            .bindings
            .iter()
            .filter(|b| b.get("direction").and_then(Value::as_str) == Some("out"))
            .filter_map(|b| {
                Some((
                    b.get("name")?.as_str()?.to_string(),
                    b.get("type")?.as_str()?.to_string(),
                ))
            })
            .collect(),
        change_feed_mode,
        start_from_beginning: trigger.get("startFromBeginning").and_then(Value::as_bool)
            == Some(true),
        start_from_time: text("startFromTime").filter(|t| !t.trim().is_empty()),
    })
}

/// Every folder under the app root whose function.json has a Cosmos DB trigger.
pub fn discover_cosmos_functions(app_root: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(app_root) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path().join("function.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if text.contains("cosmosDBTrigger")
            && let Some(name) = entry.file_name().to_str()
        {
            found.insert(name.to_string(), path);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans() {
        assert_eq!(parse_timespan("00:05:00"), Some(Duration::from_secs(300)));
        assert_eq!(
            parse_timespan("01:00:30.5"),
            Some(Duration::from_secs_f64(3630.5))
        );
        assert_eq!(
            parse_timespan("1.00:00:00"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(parse_timespan("5 minutes"), None);
        assert_eq!(parse_timespan("00:61:00"), None);
    }

    #[test]
    fn reads_trigger_and_retry_policy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("orders")).unwrap();
        std::fs::write(
            dir.path().join("orders/function.json"),
            r#"{"bindings":[{"type":"cosmosDBTrigger","name":"docs","direction":"in","databaseName":"shop","containerName":"orders"}],
               "retry":{"strategy":"fixedDelay","maxRetryCount":3,"delayInterval":"00:00:01"}}"#,
        )
        .unwrap();
        let f = read_function(dir.path(), "orders").unwrap();
        assert_eq!(f.binding, "docs");
        assert_eq!(f.retry.max_retry_count, 3);
        assert_eq!(f.container.as_deref(), Some("orders"));
        assert_eq!(discover_cosmos_functions(dir.path()).len(), 1);
        let missing = read_function(dir.path(), "nope").unwrap_err();
        assert!(
            missing.to_string().contains("nope/function.json"),
            "{missing}"
        );
    }
}
