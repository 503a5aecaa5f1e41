use crate::change::DocPath;
use crate::problem::{Problem, Problems};
use crate::sinks::RouteContext;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// `type = "delta"`: an append-only changelog table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaConfig {
    /// Local path (relative to the app root) or `az://container/path`,
    /// `abfss://container@account.dfs.core.windows.net/path`, `file:///abs/path`.
    pub table: String,
    /// object_store options, e.g. `azure_storage_account_name`, `azure_storage_use_emulator`.
    /// Azure credentials otherwise come from the environment (`AZURE_*`, managed identity).
    #[serde(default)]
    pub storage_options: BTreeMap<String, String>,
    /// Concurrent invocations share one commit.
    #[serde(default)]
    pub group_commit: GroupCommitConfig,
    /// Automatic rewriting of small files into large ones.
    #[serde(default)]
    pub compaction: CompactionConfig,
    /// Written as `delta.checkpointInterval` when this sink creates the table: a checkpoint
    /// every N commits keeps opening the table (by us and by every reader) fast.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
    /// Typed columns projected from the document, after the fixed ones (see docs/changelog.md).
    #[serde(default)]
    pub columns: Vec<TypedColumn>,
    /// `changelog` (default): one row per change. `state`: one row per live document,
    /// materialized from the changelog table named by `changelog`.
    #[serde(default)]
    pub mode: DeltaMode,
    /// State mode: the changelog table it is materialized from (a location, as `table`).
    #[serde(default)]
    pub changelog: Option<String>,
    /// State mode: how often the table is refreshed (seconds); deliveries also ask for one.
    #[serde(default = "default_refresh_seconds")]
    pub refresh_seconds: u64,
    /// State mode: hash buckets of the partition key (the table's partitions; a refresh
    /// rewrites the buckets of the changed keys only).
    #[serde(default = "default_buckets")]
    pub buckets: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaMode {
    #[default]
    Changelog,
    State,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCommitConfig {
    /// How long the first waiting invocation holds the commit open for others. 0 = commit at
    /// once (invocations that arrive during a commit still share the next one).
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// A group is committed as soon as it holds this many rows.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            window_ms: default_window_ms(),
            max_rows: default_max_rows(),
        }
    }
}

impl GroupCommitConfig {
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionConfig {
    /// Compact in the background after commits (on demand: `fanout compact`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A file smaller than this is "small".
    #[serde(default = "default_small_file_mb")]
    pub small_file_mb: u64,
    /// A partition is compacted once it holds this many small files.
    #[serde(default = "default_min_small_files")]
    pub min_small_files: usize,
    /// Size the rewritten files aim at.
    #[serde(default = "default_target_file_mb")]
    pub target_file_mb: u64,
    /// After a background compaction, delete files that left the table longer ago than the
    /// table's `delta.deletedFileRetentionDuration` (7 days unless set). Never shorter.
    #[serde(default)]
    pub vacuum: bool,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            small_file_mb: default_small_file_mb(),
            min_small_files: default_min_small_files(),
            target_file_mb: default_target_file_mb(),
            vacuum: false,
        }
    }
}

/// A column projected from the document: `{ name = "customer_id", path = "/customerId", type = "string" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedColumn {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: ColumnType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    String,
    Long,
    Double,
    Boolean,
    /// RFC 3339 text or epoch seconds -> timestamp (UTC, µs).
    Timestamp,
    /// `YYYY-MM-DD` or an RFC 3339 timestamp (its UTC date).
    Date,
}

fn yes() -> bool {
    true
}
fn default_window_ms() -> u64 {
    10
}
fn default_max_rows() -> usize {
    20_000
}
fn default_small_file_mb() -> u64 {
    16
}
fn default_min_small_files() -> usize {
    16
}
fn default_target_file_mb() -> u64 {
    128
}
fn default_checkpoint_interval() -> u64 {
    100
}
fn default_refresh_seconds() -> u64 {
    30
}
fn default_buckets() -> u32 {
    64
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A changelog sink's settings, checked and parsed.
#[derive(Debug, Clone)]
pub struct ValidatedDelta {
    pub config: DeltaConfig,
    /// The table, as a URL (a local path resolved against the app root).
    pub url: url::Url,
    /// The monitored container, `/cosmosdb/{database}/{container}`: the scope of the
    /// exactly-once marks.
    pub source: String,
    /// State mode: the changelog table's URL.
    pub changelog: Option<url::Url>,
}

impl ValidatedDelta {
    /// State mode: where the state table is and what it is made from.
    pub fn state_table(&self) -> Option<super::materialize::StateTable> {
        let options: std::collections::HashMap<String, String> =
            self.config.storage_options.clone().into_iter().collect();
        Some(super::materialize::StateTable {
            url: self.url.clone(),
            storage_options: options.clone(),
            changelog: self.changelog.clone()?,
            changelog_options: options,
            buckets: self.config.buckets,
            columns: super::schema::ChangelogSchema::new(&self.config.columns),
        })
        .filter(|_| self.config.mode == DeltaMode::State)
    }
}

impl DeltaConfig {
    /// A table at `table` with every other setting at its default.
    pub fn at(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            storage_options: BTreeMap::new(),
            group_commit: GroupCommitConfig::default(),
            compaction: CompactionConfig::default(),
            checkpoint_interval: default_checkpoint_interval(),
            columns: Vec::new(),
            mode: DeltaMode::Changelog,
            changelog: None,
            refresh_seconds: default_refresh_seconds(),
            buckets: default_buckets(),
        }
    }

    /// Checks the settings; the parsed state is the table's URL and the route's scope.
    pub fn validate(&self, ctx: &RouteContext) -> Result<ValidatedDelta, Vec<Problem>> {
        let mut problems = Problems::here(self.check());
        let location = problems.take(
            "table",
            crate::storage::Location::parse(
                &self.table,
                self.storage_options.clone(),
                &ctx.app_root,
            ),
        );
        let changelog = match (self.mode, &self.changelog) {
            (DeltaMode::State, Some(at)) => problems.take(
                "changelog",
                crate::storage::Location::parse(at, self.storage_options.clone(), &ctx.app_root),
            ),
            _ => None,
        };
        problems.into_result(|| ValidatedDelta {
            config: self.clone(),
            url: location
                .expect("parsed when nothing is wrong")
                .url()
                .clone(),
            source: ctx.event_source.clone(),
            changelog: changelog.map(|l| l.url().clone()),
        })
    }

    /// What is wrong with the settings as written, each saying how to fix it.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.group_commit.window_ms > 1_000 {
            problems.push(format!(
                "`group_commit.window_ms` is {}; every invocation may wait that long: use 0-1000 (default 10)",
                self.group_commit.window_ms
            ));
        }
        if self.group_commit.max_rows == 0 {
            problems.push("`group_commit.max_rows` must be at least 1 (default 20000)".into());
        }
        let c = &self.compaction;
        if c.min_small_files < 2 {
            problems.push("`compaction.min_small_files` must be at least 2 (default 16)".into());
        }
        if c.small_file_mb == 0 || c.target_file_mb < c.small_file_mb {
            problems.push(format!(
                "`compaction.small_file_mb` ({}) must be at least 1 and at most `compaction.target_file_mb` ({})",
                c.small_file_mb, c.target_file_mb
            ));
        }
        if self.checkpoint_interval == 0 {
            problems.push("`checkpoint_interval` must be at least 1 (default 100)".into());
        }
        match self.mode {
            DeltaMode::State => {
                if self.changelog.is_none() {
                    problems.push("`mode = \"state\"` needs `changelog`: the changelog table it is materialized from, e.g. `changelog = \"tables/orders\"` (the `table` of the route's changelog sink)".into());
                }
                if self.changelog.as_deref() == Some(self.table.as_str()) {
                    problems.push("`changelog` names this state table itself: give the changelog sink's `table`".into());
                }
                if !(1..=4096).contains(&self.buckets) {
                    problems.push(format!(
                        "`buckets` is {}: use 1-4096 (default 64)",
                        self.buckets
                    ));
                }
                if self.refresh_seconds == 0 {
                    problems.push("`refresh_seconds` must be at least 1 (default 30)".into());
                }
            }
            DeltaMode::Changelog => {
                if self.changelog.is_some() {
                    problems.push("`changelog` belongs to `mode = \"state\"`".into());
                }
            }
        }
        let fixed = super::schema::FIXED_COLUMN_NAMES;
        let mut seen = std::collections::HashSet::new();
        for (i, col) in self.columns.iter().enumerate() {
            let at = format!("`columns[{i}]`");
            if !is_identifier(&col.name) {
                problems.push(format!(
                    "{at}: name `{}` is not a plain column name; use letters, digits and _ (not first)",
                    col.name
                ));
            } else if fixed.contains(&col.name.to_ascii_lowercase().as_str()) {
                problems.push(format!(
                    "{at}: `{}` is one of the changelog's fixed columns; pick another name",
                    col.name
                ));
            } else if !seen.insert(col.name.to_ascii_lowercase()) {
                problems.push(format!(
                    "{at}: column `{}` is defined twice (names are case-insensitive)",
                    col.name
                ));
            }
            if DocPath::parse(&col.path).is_err() {
                problems.push(format!(
                    "{at}: path `{}` must be a document path such as `/customerId` or `/address/city`",
                    col.path
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> DeltaConfig {
        toml::from_str(&format!("table = \"t\"\n{extra}")).unwrap()
    }

    #[test]
    fn state_mode_names_its_changelog() {
        // (settings, a problem that must be reported, or none)
        let cases = [
            ("mode = \"state\"\nchangelog = \"c\"", None),
            ("mode = \"state\"", Some("needs `changelog`")),
            (
                "mode = \"state\"\nchangelog = \"t\"",
                Some("names this state table itself"),
            ),
            (
                "mode = \"state\"\nchangelog = \"c\"\nbuckets = 0",
                Some("`buckets` is 0"),
            ),
            ("changelog = \"c\"", Some("belongs to `mode = \"state\"`")),
        ];
        for (settings, want) in cases {
            let problems = parse(settings).check();
            match want {
                None => assert!(problems.is_empty(), "{settings}: {problems:?}"),
                Some(w) => assert!(
                    problems.iter().any(|p| p.contains(w)),
                    "{settings}: {problems:?}"
                ),
            }
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse("");
        assert!(c.check().is_empty());
        assert_eq!(c.group_commit.window_ms, 10);
        assert_eq!(c.checkpoint_interval, 100);
        assert!(c.compaction.enabled);
    }

    #[test]
    fn typed_column_problems_are_named_with_their_fix() {
        let c = parse(
            r#"columns = [
  { name = "customer_id", path = "/customerId", type = "string" },
  { name = "Customer_Id", path = "/x", type = "long" },
  { name = "lsn", path = "/y", type = "long" },
  { name = "bad name", path = "/z", type = "date" },
  { name = "ok", path = "z", type = "double" },
]"#,
        );
        let problems = c.check();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("`columns[1]`: column `Customer_Id` is defined twice"));
        assert!(problems[1].contains("`lsn` is one of the changelog's fixed columns"));
        assert!(problems[2].contains("`bad name` is not a plain column name"));
        assert!(problems[3].contains("path `z` must be a document path"));
    }

    #[test]
    fn unknown_types_and_settings_are_refused() {
        assert!(
            toml::from_str::<DeltaConfig>(
                "table = \"t\"\ncolumns = [{ name = \"a\", path = \"/a\", type = \"decimal\" }]"
            )
            .is_err()
        );
        assert!(
            toml::from_str::<DeltaConfig>("table = \"t\"\ngroup_commit = { windw_ms = 1 }")
                .is_err()
        );
        let c = parse(
            "group_commit = { window_ms = 5000, max_rows = 0 }\ncompaction = { min_small_files = 1, small_file_mb = 200 }\ncheckpoint_interval = 0",
        );
        assert_eq!(c.check().len(), 5, "{:?}", c.check());
    }
}
