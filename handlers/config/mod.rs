//! The routing config (`fanout.toml` at the app root): which function (monitored container)
//! feeds which sinks, with app-setting interpolation, validated at start-up with messages that
//! say how to fix each problem. `fanout check-config` runs the same validation without serving.

mod functions;
mod interpolate;
mod settings;

pub use functions::{
    ChangeFeedMode, DEFAULT_FUNCTION_TIMEOUT, FunctionDefinition, FunctionFileError,
    HostRetryPolicy, discover_cosmos_functions, parse_timespan, read_function,
    read_function_timeout,
};
pub use interpolate::{InterpolationError, interpolate};
pub use settings::AppSettings;

use crate::change::DocPath;
use crate::change::{PartitionKeyPaths, SoftDelete};
use crate::sinks::{RouteContext, SinkConfig, ValidatedSink};
use crate::storage::Location;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The config file's name at the app root.
pub const CONFIG_FILE: &str = "fanout.toml";
/// Default request-size limit. Decoding holds a few copies of a body, so this keeps a batch
/// well inside a Consumption instance's memory; a larger body is dead-lettered, not refused.
pub const DEFAULT_MAX_BODY_BYTES: usize = 100 * 1024 * 1024;
/// Dead-letter store used when the config names none: a folder under the app root.
pub const DEFAULT_DEAD_LETTER_URL: &str = ".fanout/dead-letter";

pub use crate::problem::Problem;

/// The config could not be used; lists every problem found, not just the first.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} has {n} problem{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            if p.at.is_empty() {
                write!(f, "\n  - {}", p.message)?;
            } else {
                write!(f, "\n  - {}: {}", p.at, p.message)?;
            }
        }
        Ok(())
    }
}

/// Retry of one sink inside one invocation, before the host's own retry policy takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Total time a sink may spend on one batch, retries included; kept well below the
    /// function timeout so the handler answers before the host gives up on it.
    pub budget: Duration,
}

pub use crate::deadletter::DeadLetterConfig;

/// One routed function, validated.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub function: FunctionDefinition,
    pub partition_key: PartitionKeyPaths,
    pub soft_delete: Option<SoftDelete>,
    pub retry: RetrySettings,
    pub sinks: BTreeMap<String, ValidatedSink>,
}

impl RouteConfig {
    /// Combinations of the trigger's settings and the route's that cannot work or do nothing,
    /// each saying what to change. Shown by `check-config` and logged at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let f = &self.function;
        let mut warnings = Vec::new();
        if f.change_feed_mode == ChangeFeedMode::AllVersionsAndDeletes {
            if f.start_from_beginning {
                warnings.push(format!("{}/function.json: `startFromBeginning` cannot be used with changeFeedMode `AllVersionsAndDeletes` (that mode starts from now only; the host will not start the trigger): remove it, and take the baseline with a temporary latest-version function (docs/change-feed-modes.md)", f.name));
            }
            if f.start_from_time.is_some() {
                warnings.push(format!("{}/function.json: `startFromTime` cannot be used with changeFeedMode `AllVersionsAndDeletes` (that mode starts from now only): remove it", f.name));
            }
            if self.soft_delete.is_some() {
                warnings.push("soft_delete: with changeFeedMode `AllVersionsAndDeletes` hard deletes and TTL expiry reach the sinks as deletes by themselves; keep `soft_delete` only if the application also marks documents deleted instead of deleting them".to_string());
            }
        }
        warnings
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub app_root: PathBuf,
    pub file: PathBuf,
    pub dead_letter: DeadLetterConfig,
    pub max_body_bytes: usize,
    pub function_timeout: Duration,
    pub routes: BTreeMap<String, RouteConfig>,
}

// ---- the file as written -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    dead_letter: Option<DeadLetterFile>,
    #[serde(default)]
    server: ServerFile,
    #[serde(default)]
    retry: RetryFile,
    #[serde(default)]
    functions: BTreeMap<String, FunctionFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterFile {
    url: String,
    #[serde(default)]
    storage_options: BTreeMap<String, String>,
    fallback: Option<LocationFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationFile {
    url: String,
    #[serde(default)]
    storage_options: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    max_body_bytes: Option<usize>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    budget_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SoftDeleteFile {
    field: String,
    #[serde(default = "default_soft_delete_value")]
    equals: serde_json::Value,
}

fn default_soft_delete_value() -> serde_json::Value {
    serde_json::Value::Bool(true)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionFile {
    partition_key: Option<OneOrMany>,
    soft_delete: Option<SoftDeleteFile>,
    retry: Option<RetryFile>,
    #[serde(default)]
    sinks: BTreeMap<String, SinkConfig>,
}

// ---- loading ---------------------------------------------------------------------------

/// Where the app root is: `--app-root`, else `AzureWebJobsScriptRoot` (set by the host), else
/// the working directory (the host starts the handler in the app root).
pub fn resolve_app_root(explicit: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| {
            env("AzureWebJobsScriptRoot")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")))
}

impl AppConfig {
    /// Reads, interpolates and validates the config file and the function folders it names.
    pub fn load(
        app_root: &Path,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AppConfig, ConfigError> {
        let fail = |problems| ConfigError {
            file: file.to_path_buf(),
            problems,
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            fail(vec![Problem {
                at: String::new(),
                message: format!(
                    "cannot read it ({e}); create it at the app root or point FANOUT_CONFIG at it"
                ),
            }])
        })?;
        Self::from_toml(app_root, file, &text, env)
    }

    pub fn from_toml(
        app_root: &Path,
        file: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AppConfig, ConfigError> {
        let fail = |problems| ConfigError {
            file: file.to_path_buf(),
            problems,
        };
        let mut tree: toml::Table = toml::from_str(text).map_err(|e| {
            fail(vec![Problem {
                at: String::new(),
                message: format!("not valid TOML: {}", e.message()),
            }])
        })?;
        let mut problems = Vec::new();
        interpolate_tree(&mut tree, String::new(), env, &mut problems);
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        let parsed: FileConfig = FileConfig::deserialize(tree).map_err(|e| {
            fail(vec![Problem {
                at: String::new(),
                message: e.message().to_string(),
            }])
        })?;
        let config = validate(app_root, file, parsed, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }
}

fn interpolate_tree(
    table: &mut toml::Table,
    prefix: String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    for (key, value) in table.iter_mut() {
        let at = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        interpolate_value(value, at, env, problems);
    }
}

fn interpolate_value(
    value: &mut toml::Value,
    at: String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        toml::Value::String(s) => match interpolate(s, env) {
            Ok(expanded) => *s = expanded,
            Err(e) => problems.push(Problem {
                at,
                message: e.to_string(),
            }),
        },
        toml::Value::Table(t) => interpolate_tree(t, at, env, problems),
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, format!("{at}[{i}]"), env, problems);
            }
        }
        _ => {}
    }
}

fn is_simple_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn validate(
    app_root: &Path,
    file: &Path,
    parsed: FileConfig,
    problems: &mut Vec<Problem>,
) -> AppConfig {
    let mut problem = |at: &str, message: String| {
        problems.push(Problem {
            at: at.to_string(),
            message,
        })
    };
    let function_timeout = match read_function_timeout(app_root) {
        Ok(t) => t,
        Err(e) => {
            problem("", e.to_string());
            DEFAULT_FUNCTION_TIMEOUT
        }
    };
    let defaults = parsed.retry;
    // Names in the file, valid or not: a route that failed validation is already reported.
    let configured: std::collections::BTreeSet<String> = parsed.functions.keys().cloned().collect();
    let mut routes = BTreeMap::new();
    if parsed.functions.is_empty() {
        problem(
            "functions",
            "no function is routed; add a `[functions.<folder name>]` table with at least one sink"
                .into(),
        );
    }
    for (name, f) in parsed.functions {
        let at = format!("functions.{name}");
        let function = match read_function(app_root, &name) {
            Ok(def) => def,
            Err(e) => {
                problem(
                    &at,
                    format!(
                        "{e}; the table name must be a function folder (with a cosmosDBTrigger function.json) under the app root {}",
                        app_root.display()
                    ),
                );
                continue;
            }
        };
        let partition_key = match f.partition_key {
            None => {
                problem(&format!("{at}.partition_key"), "missing; set it to the container's partition key path, e.g. `partition_key = \"/customerId\"` (or a list for hierarchical keys)".into());
                None
            }
            Some(pk) => {
                let paths = match pk {
                    OneOrMany::One(p) => vec![p],
                    OneOrMany::Many(ps) => ps,
                };
                PartitionKeyPaths::parse(&paths)
                    .map_err(|e| problem(&format!("{at}.partition_key"), e.to_string()))
                    .ok()
            }
        };
        let soft_delete = match f.soft_delete {
            None => None,
            Some(sd) => match DocPath::parse(&sd.field) {
                Ok(path) => Some(SoftDelete {
                    path: path.segments().to_vec(),
                    equals: sd.equals,
                }),
                Err(e) => {
                    problem(&format!("{at}.soft_delete.field"), e.to_string());
                    None
                }
            },
        };
        let retry = retry_settings(
            defaults,
            f.retry,
            function_timeout,
            &format!("{at}.retry"),
            &mut problem,
        );
        if f.sinks.is_empty() {
            problem(&format!("{at}.sinks"), "no sinks; add one, e.g. `[functions.NAME.sinks.changelog]` with `type = \"delta\"`".into());
        }
        // Sinks are checked even when the partition key is wrong (with a stand-in), so one
        // run of check-config lists every problem.
        let context = RouteContext {
            function: name.clone(),
            app_root: app_root.to_path_buf(),
            partition_key: partition_key
                .clone()
                .unwrap_or_else(|| PartitionKeyPaths::parse(&["/id"]).expect("a valid path")),
            event_source: format!(
                "/cosmosdb/{}/{}",
                function.database.as_deref().unwrap_or("database"),
                function.container.as_deref().unwrap_or(&function.name)
            ),
            output_bindings: function.outputs.clone(),
        };
        let mut sinks = BTreeMap::new();
        for (sink_name, sink) in &f.sinks {
            let sink_at = format!("{at}.sinks.{sink_name}");
            if !is_simple_name(sink_name) {
                problem(&sink_at, "sink names may use only letters, digits, `_` and `-` (they name dead-letter folders)".into());
            } else if sink_name.starts_with('_') {
                // `_input` names what failed before reaching any sink (dead-letter records,
                // re-delivery progress): a sink of that name would be counted as done.
                problem(&sink_at, "sink names starting with `_` are reserved for fanout itself (`_input` is what failed before any sink); rename the sink".into());
            }
            match sink.validate(&context) {
                Ok(validated) => {
                    sinks.insert(sink_name.clone(), validated);
                }
                Err(found) => {
                    for p in found {
                        let p = p.under(&sink_at);
                        problem(&p.at, p.message);
                    }
                }
            }
        }
        // Everything above is checked even when the partition key is wrong, so one run of
        // check-config lists every problem.
        if let Some(partition_key) = partition_key {
            routes.insert(
                name,
                RouteConfig {
                    function,
                    partition_key,
                    soft_delete,
                    retry,
                    sinks,
                },
            );
        }
    }
    // Every Cosmos-triggered function folder must be routed: otherwise the host would call a
    // function whose batches have nowhere to go.
    for (name, path) in discover_cosmos_functions(app_root) {
        if !configured.contains(&name) {
            problem(
                &format!("functions.{name}"),
                format!(
                    "{} has a cosmosDBTrigger but no route; add `[functions.{name}]` with its sinks, or delete the folder",
                    path.display()
                ),
            );
        }
    }
    let mut location = |at: &str, url: &str, options: BTreeMap<String, String>| {
        Location::parse(url, options, app_root)
            .map_err(|e| problem(at, e.to_string()))
            .ok()
    };
    let default = || {
        Location::parse(DEFAULT_DEAD_LETTER_URL, BTreeMap::new(), app_root)
            .expect("the default location parses")
    };
    let (dead_letter, primary_parsed) = match parsed.dead_letter {
        Some(d) => {
            let primary = location("dead_letter.url", &d.url, d.storage_options);
            let parsed = primary.is_some();
            let fallback = d
                .fallback
                .and_then(|f| location("dead_letter.fallback.url", &f.url, f.storage_options));
            (
                DeadLetterConfig {
                    primary: primary.unwrap_or_else(default),
                    fallback,
                },
                parsed,
            )
        }
        None => (
            DeadLetterConfig {
                primary: default(),
                fallback: None,
            },
            true,
        ),
    };
    if primary_parsed
        && dead_letter.fallback.as_ref().map(|f| f.url()) == Some(dead_letter.primary.url())
    {
        problem(
            "dead_letter.fallback.url",
            "is the same location as `dead_letter.url`; a fallback helps only when it fails apart from the primary: use another container, account or a local folder".into(),
        );
    }
    AppConfig {
        app_root: app_root.to_path_buf(),
        file: file.to_path_buf(),
        dead_letter,
        max_body_bytes: parsed
            .server
            .max_body_bytes
            .unwrap_or(DEFAULT_MAX_BODY_BYTES),
        function_timeout,
        routes,
    }
}

fn retry_settings(
    defaults: RetryFile,
    route: Option<RetryFile>,
    function_timeout: Duration,
    at: &str,
    problem: &mut impl FnMut(&str, String),
) -> RetrySettings {
    let route = route.unwrap_or_default();
    let ms = Duration::from_millis;
    let initial = route
        .initial_backoff_ms
        .or(defaults.initial_backoff_ms)
        .map(ms)
        .unwrap_or(ms(100));
    let max = route
        .max_backoff_ms
        .or(defaults.max_backoff_ms)
        .map(ms)
        .unwrap_or(ms(5_000));
    // Leave the host room to receive the answer: half the timeout, at most a minute.
    let default_budget = (function_timeout / 2).min(Duration::from_secs(60));
    let budget = route
        .budget_ms
        .or(defaults.budget_ms)
        .map(ms)
        .unwrap_or(default_budget);
    if initial.is_zero() || initial > max {
        problem(
            at,
            format!(
                "initial_backoff_ms ({}) must be above 0 and at most max_backoff_ms ({})",
                initial.as_millis(),
                max.as_millis()
            ),
        );
    }
    if budget + Duration::from_secs(10) > function_timeout {
        problem(
            at,
            format!(
                "budget_ms ({}) must end at least 10 s before host.json's functionTimeout ({} s), or the host cancels the invocation mid-retry",
                budget.as_millis(),
                function_timeout.as_secs()
            ),
        );
    }
    RetrySettings {
        initial_backoff: initial,
        max_backoff: max,
        budget,
    }
}
