use super::keys::KeyTemplate;
use crate::change::DocPath;
use crate::change::projection::FieldSelection;
use crate::problem::{Problem, Problems};
use crate::sinks::RouteContext;
use serde::Deserialize;

/// `type = "redis"`: cache invalidation (and optional refresh) of the keys a change affects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:6379`, `rediss://host:6380` (Azure Cache for Redis) or
    /// `rediss://host:10000` (Azure Managed Redis). Credentials belong in `password`, not here.
    pub url: String,
    /// `invalidate` (default): UNLINK the keys a change affects. `refresh`: write the new
    /// projection (deletes remove it), never letting an older change overwrite a newer one.
    #[serde(default)]
    pub mode: RedisMode,
    /// Invalidate mode: key templates, e.g. `["order:{id}", "customer:{customerId}:orders"]`.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Refresh mode: the one key template the projection is written to.
    pub key: Option<String>,
    /// Refresh mode: document fields to keep (`/`-paths); empty keeps the whole document
    /// without Cosmos system properties.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Refresh mode: expiry of written values (0: none).
    #[serde(default)]
    pub ttl_seconds: u64,
    /// Refresh mode: how long a delete's tombstone version is kept, so that a late, older
    /// change cannot resurrect the key (default 1 day).
    #[serde(default = "default_tombstone_ttl")]
    pub tombstone_ttl_seconds: u64,
    /// Publish one invalidation message per change on this channel (client-side caches).
    pub channel: Option<String>,
    /// `none` (default, or credentials in the URL), `password` (access key), `entra`.
    #[serde(default)]
    pub auth: RedisAuth,
    /// Access key (`auth = "password"`), from an app setting: `"${REDIS_PASSWORD}"`.
    pub password: Option<String>,
    /// ACL user name; for `auth = "entra"` the object (principal) id of the identity.
    pub username: Option<String>,
    /// Redis Cluster (Azure Managed Redis with the OSS cluster policy, or any OSS cluster).
    #[serde(default)]
    pub cluster: bool,
    /// PEM file of a CA to trust for `rediss://` in addition to none (tests, private CAs).
    pub ca_file: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub response_timeout_ms: u64,
}

fn default_tombstone_ttl() -> u64 {
    86_400
}

fn default_timeout_ms() -> u64 {
    2_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    #[default]
    Invalidate,
    Refresh,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisAuth {
    #[default]
    None,
    Password,
    Entra,
}

/// A Redis sink's settings, checked and parsed.
#[derive(Debug, Clone)]
pub struct ValidatedRedis {
    pub config: RedisConfig,
    /// Invalidate mode: `keys`; refresh mode: the one `key`.
    pub templates: Vec<KeyTemplate>,
    pub fields: FieldSelection,
    /// The route's partition key paths (a hard delete's key fields are read from them).
    pub partition_key: Vec<Vec<String>>,
}

impl ValidatedRedis {
    /// What works but may surprise. Refresh mode compares each change's version with the one
    /// the key holds: a key that leaves the partition key out makes two documents with the
    /// same id in different partitions (Cosmos allows it) overwrite and out-version each other.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut warnings = Vec::new();
        if self.config.mode == RedisMode::Refresh
            && let Some(key) = self.templates.first()
            && !key.names_the_partition(&self.partition_key)
        {
            warnings.push(Problem::new("key", format!(
                "`key = \"{}\"` leaves the partition key out: documents with the same id in different partitions share one key, and refresh keeps only the one with the higher version. Add `{{pk}}` (e.g. `order:{{pk}}:{{id}}`) unless ids are unique across partitions",
                key.raw()
            )));
        }
        warnings
    }
}

impl RedisConfig {
    pub fn validate(&self, ctx: &RouteContext) -> Result<ValidatedRedis, Vec<Problem>> {
        let mut problems = Problems::default();
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://")) {
            problems.push("", format!(
                "`url` must start with redis:// or rediss://, got `{}` (an Azure connection string is not a URL: use rediss://host:port and put the key in `password`)",
                super::connection::redact(&self.url)
            ));
        }
        if self.url.contains('@') && self.auth != RedisAuth::None {
            problems.push("", "`url` carries credentials and `auth` is set too; keep secrets in `password` (from an app setting)");
        }
        match self.mode {
            RedisMode::Invalidate => {
                if self.keys.is_empty() {
                    problems.push(
                        "",
                        "invalidate mode needs `keys`, e.g. `keys = [\"order:{id}\"]`",
                    );
                }
                if self.key.is_some() || !self.fields.is_empty() || self.ttl_seconds > 0 {
                    problems.push(
                        "",
                        "`key`, `fields` and `ttl_seconds` belong to `mode = \"refresh\"`",
                    );
                }
            }
            RedisMode::Refresh => {
                if self.key.is_none() {
                    problems.push("", "refresh mode needs `key`, e.g. `key = \"order:{id}\"`");
                }
                if !self.keys.is_empty() {
                    problems.push(
                        "",
                        "`keys` belongs to invalidate mode; refresh mode writes one `key`",
                    );
                }
            }
        }
        let at = match self.mode {
            RedisMode::Invalidate => "keys",
            RedisMode::Refresh => "key",
        };
        let templates: Vec<KeyTemplate> = match self.mode {
            RedisMode::Invalidate => self.keys.iter().collect::<Vec<_>>(),
            RedisMode::Refresh => self.key.iter().collect(),
        }
        .into_iter()
        .filter_map(|t| problems.take(at, KeyTemplate::parse(t)))
        .collect();
        let fields: Vec<DocPath> = self
            .fields
            .iter()
            .filter_map(|f| problems.take("fields", DocPath::parse_lenient(f)))
            .collect();
        match self.auth {
            RedisAuth::Password if self.password.as_deref().unwrap_or("").is_empty() => {
                problems.push("", "`auth = \"password\"` needs `password = \"${REDIS_PASSWORD}\"` (the access key, from an app setting)")
            }
            RedisAuth::Entra if self.username.as_deref().unwrap_or("").is_empty() => problems.push("",
                "`auth = \"entra\"` needs `username`: the object (principal) id of the managed identity, e.g. `\"${REDIS_USERNAME}\"`",
            ),
            RedisAuth::Entra if !self.url.starts_with("rediss://") => problems.push("", "`auth = \"entra\"` needs TLS: use a rediss:// URL"),
            _ => {}
        }
        if let Some(ca) = &self.ca_file
            && !std::path::Path::new(ca).exists()
        {
            problems.push("", format!("`ca_file` {ca} does not exist"));
        }
        problems.into_result(|| ValidatedRedis {
            config: self.clone(),
            templates,
            fields: FieldSelection::new(&fields),
            partition_key: ctx.partition_key.segments().to_vec(),
        })
    }
}
