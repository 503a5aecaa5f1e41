use super::index::IndexDefinition;
use super::project::{FieldMapping, mappings};
use crate::change::DocPath;
use crate::problem::{Problem, Problems};
use crate::sinks::RouteContext;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const DEFAULT_API_VERSION: &str = "2025-09-01";

/// `type = "azure_search"`: `mergeOrUpload` / `delete` into an Azure AI Search index.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// `https://<service>.search.windows.net`
    pub endpoint: String,
    pub index: String,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// `entra` (default: managed identity, role Search Index Data Contributor) or `api_key`.
    #[serde(default)]
    pub auth: SearchAuth,
    /// `auth = "api_key"`: the admin key, from an app setting (`"${SEARCH_API_KEY}"`).
    pub api_key: Option<String>,
    /// The checked-in index definition (REST JSON: `{"name", "fields": [...]}`), relative to the
    /// app root. Gives the EDM types values are coerced to and the key field; `fanout
    /// search-index` creates or updates the index from it.
    pub index_definition: Option<String>,
    /// Index field -> document path (`/address/city`). Empty: every top-level document field
    /// the index has (all non-system fields when there is no index definition).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// The index's key field; default: the definition's key field, else `id`.
    pub key_field: Option<String>,
    /// What identifies a document in the index: `partition_key_and_id` (default; Cosmos ids
    /// are unique only within a logical partition) or `id` (only when ids are unique across
    /// partitions, e.g. GUIDs, or the partition key is `/id`).
    #[serde(default)]
    pub key: KeySource,
    /// How document ids become keys (keys allow only letters, digits, `_`, `-`, `=`):
    /// `base64url` (default; every id, unpadded URL-safe base64, collision-free) or `none`
    /// (ids used as they are; an id with other characters is refused).
    #[serde(default)]
    pub key_encoding: KeyEncoding,
    /// Most actions per request (the service takes at most 1000).
    #[serde(default = "default_max_actions")]
    pub max_actions: usize,
    /// Most bytes per request body (the service refuses about 16 MB).
    #[serde(default = "default_max_bytes")]
    pub max_request_bytes: usize,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// An `Edm.Int64` index field (filterable, retrievable) that receives each change's
    /// version (its lsn, else `_ts`). With it, a replay reads the versions the index holds
    /// before writing and skips a change older than the document there (the service has no
    /// conditional writes, so a replayed change could otherwise overwrite a newer one). The
    /// live path only writes the field: it never reads.
    pub version_field: Option<String>,
}

fn default_api_version() -> String {
    DEFAULT_API_VERSION.into()
}
fn default_max_actions() -> usize {
    1000
}
fn default_max_bytes() -> usize {
    15 * 1024 * 1024
}
fn default_timeout_ms() -> u64 {
    30_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchAuth {
    #[default]
    Entra,
    ApiKey,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    #[default]
    PartitionKeyAndId,
    Id,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyEncoding {
    #[default]
    Base64url,
    None,
}

/// A search sink's settings, checked and parsed: the index definition read once (when there
/// is one), and the projection.
#[derive(Debug, Clone)]
pub struct ValidatedSearch {
    pub config: SearchConfig,
    /// The checked-in index definition, parsed and as written (for creating the index).
    pub definition: Option<(IndexDefinition, serde_json::Value)>,
    /// Field name -> EDM type, from the definition (empty without one).
    pub types: BTreeMap<String, String>,
    pub key_field: String,
    pub mappings: Vec<FieldMapping>,
}

impl ValidatedSearch {
    /// Projected fields the index definition lacks: the service would refuse those documents.
    pub fn warnings(&self) -> Vec<Problem> {
        if self.definition.is_none() {
            return Vec::new();
        }
        self.config
            .fields
            .keys()
            .chain(&self.config.version_field)
            .filter(|f| !self.types.contains_key(*f))
            .map(|f| Problem::new("fields", format!("the projection writes `{f}`, which the index definition does not have: the service will refuse those documents")))
            .collect()
    }
}

impl SearchConfig {
    pub fn validate(&self, ctx: &RouteContext) -> Result<ValidatedSearch, Vec<Problem>> {
        let mut problems = Problems::default();
        if !(self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://")) {
            problems.push("", format!("`endpoint` must be an https:// URL such as https://<service>.search.windows.net, got `{}`", self.endpoint));
        }
        if self.index.is_empty()
            || !self
                .index
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            problems.push(
                "",
                format!(
                    "`index` `{}` is not a valid index name (lowercase letters, digits, dashes)",
                    self.index
                ),
            );
        }
        if self.auth == SearchAuth::ApiKey && self.api_key.as_deref().unwrap_or("").is_empty() {
            problems.push("", "`auth = \"api_key\"` needs `api_key = \"${SEARCH_API_KEY}\"` (from an app setting)");
        }
        if self.key == KeySource::PartitionKeyAndId && self.key_encoding == KeyEncoding::None {
            problems.push("", "`key_encoding = \"none\"` works only with `key = \"id\"`: a partition key and id together always need encoding");
        }
        if !(1..=1000).contains(&self.max_actions) {
            problems.push(
                "",
                format!("`max_actions` must be 1..=1000, got {}", self.max_actions),
            );
        }
        let mut paths = Vec::with_capacity(self.fields.len());
        for (field, path) in &self.fields {
            match DocPath::parse(path) {
                Ok(p) => paths.push((field.clone(), p)),
                Err(_) => problems.push(
                    "",
                    format!(
                        "`fields.{field}` = `{path}` must be a `/`-path such as `/address/city`"
                    ),
                ),
            }
        }
        let definition = match &self.index_definition {
            Some(path) => problems.take(
                "index_definition",
                IndexDefinition::load(&ctx.app_root.join(path)),
            ),
            None => None,
        };
        let types = definition
            .as_ref()
            .map(|(d, _)| d.types())
            .unwrap_or_default();
        let key_field = self
            .key_field
            .clone()
            .or_else(|| definition.as_ref().map(|(d, _)| d.key_field().to_string()))
            .unwrap_or_else(|| "id".into());
        let mappings = mappings(&paths, &types);
        problems.into_result(|| ValidatedSearch {
            config: self.clone(),
            definition,
            types,
            key_field,
            mappings,
        })
    }
}
