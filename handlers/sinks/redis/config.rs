use super::keys::KeyTemplate;
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

impl RedisConfig {
    /// What works but may surprise. Refresh mode compares each change's version with the one
    /// the key holds: a key that leaves the partition key out makes two documents with the
    /// same id in different partitions (Cosmos allows it) overwrite and out-version each other.
    pub fn warnings(&self, partition_key: &[Vec<String>]) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.mode == RedisMode::Refresh
            && let Some(key) = self.key.as_deref().and_then(|k| KeyTemplate::parse(k).ok())
            && !key.names_the_partition(partition_key)
        {
            warnings.push(format!(
                "`key = \"{}\"` leaves the partition key out: documents with the same id in different partitions share one key, and refresh keeps only the one with the higher version. Add `{{pk}}` (e.g. `order:{{pk}}:{{id}}`) unless ids are unique across partitions",
                self.key.as_deref().unwrap_or_default()
            ));
        }
        warnings
    }

    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://")) {
            problems.push(format!(
                "`url` must start with redis:// or rediss://, got `{}` (an Azure connection string is not a URL: use rediss://host:port and put the key in `password`)",
                super::connection::redact(&self.url)
            ));
        }
        if self.url.contains('@') && self.auth != RedisAuth::None {
            problems.push("`url` carries credentials and `auth` is set too; keep secrets in `password` (from an app setting)".into());
        }
        match self.mode {
            RedisMode::Invalidate => {
                if self.keys.is_empty() {
                    problems.push(
                        "invalidate mode needs `keys`, e.g. `keys = [\"order:{id}\"]`".into(),
                    );
                }
                if self.key.is_some() || !self.fields.is_empty() || self.ttl_seconds > 0 {
                    problems.push(
                        "`key`, `fields` and `ttl_seconds` belong to `mode = \"refresh\"`".into(),
                    );
                }
            }
            RedisMode::Refresh => {
                if self.key.is_none() {
                    problems.push("refresh mode needs `key`, e.g. `key = \"order:{id}\"`".into());
                }
                if !self.keys.is_empty() {
                    problems.push(
                        "`keys` belongs to invalidate mode; refresh mode writes one `key`".into(),
                    );
                }
            }
        }
        for template in self.keys.iter().chain(&self.key) {
            if let Err(e) = KeyTemplate::parse(template) {
                problems.push(e);
            }
        }
        match self.auth {
            RedisAuth::Password if self.password.as_deref().unwrap_or("").is_empty() => {
                problems.push("`auth = \"password\"` needs `password = \"${REDIS_PASSWORD}\"` (the access key, from an app setting)".into())
            }
            RedisAuth::Entra if self.username.as_deref().unwrap_or("").is_empty() => problems.push(
                "`auth = \"entra\"` needs `username`: the object (principal) id of the managed identity, e.g. `\"${REDIS_USERNAME}\"`".into(),
            ),
            RedisAuth::Entra if !self.url.starts_with("rediss://") => problems.push("`auth = \"entra\"` needs TLS: use a rediss:// URL".into()),
            _ => {}
        }
        if let Some(ca) = &self.ca_file
            && !std::path::Path::new(ca).exists()
        {
            problems.push(format!("`ca_file` {ca} does not exist"));
        }
        problems
    }
}
