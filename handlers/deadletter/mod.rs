//! The dead-letter store: where a change goes when a sink cannot take it, so nothing is lost
//! silently. One JSON record per (batch, sink) on object storage (a local folder by default,
//! Azure Blob / ADLS in production). `fanout replay` re-drives the records.
//!
//! Layout under the configured root:
//! `pending/{function}/{sink}/{fingerprint}-{kind}.json` - waiting for replay;
//! `replayed/{function}/{sink}/{fingerprint}-{kind}.json` - delivered by a replay (kept for audit).
//! The key is deterministic, so a re-delivered batch overwrites its own record instead of adding one.

use crate::change::Change;
use crate::config::DeadLetterConfig;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

pub const PENDING: &str = "pending";
pub const REPLAYED: &str = "replayed";
/// The pseudo-sink name for items or batches that failed before reaching any sink.
pub const INPUT_SINK: &str = "_input";

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter store `{location}`: {message}")]
    Config { location: String, message: String },
    #[error("dead-letter store: {0}")]
    Store(#[from] object_store::Error),
    #[error("dead-letter record {key} is not valid: {source}")]
    Record {
        key: String,
        source: serde_json::Error,
    },
}

/// Why the record exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    /// A sink kept failing (or failed permanently) for these changes.
    SinkFailure,
    /// A sink refused these particular changes for good (e.g. a value it cannot index).
    RejectedChanges,
    /// Feed items that could not be normalized (no id, wrong types, ...): kept raw.
    MalformedItems,
    /// The request body itself could not be decoded: kept raw.
    MalformedBatch,
}

impl DeadLetterKind {
    fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::SinkFailure => "sink_failure",
            DeadLetterKind::RejectedChanges => "rejected_changes",
            DeadLetterKind::MalformedItems => "malformed_items",
            DeadLetterKind::MalformedBatch => "malformed_batch",
        }
    }
}

/// One dead-lettered (batch, sink).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    pub kind: DeadLetterKind,
    pub function: String,
    /// The sink that failed, or [`INPUT_SINK`] for input that never reached a sink.
    pub sink: String,
    pub invocation_id: String,
    pub batch_fingerprint: String,
    /// The last error, as the sink or decoder reported it.
    pub error: String,
    /// Delivery attempts made by the handler in the last invocation.
    pub attempts: u32,
    /// The host's RetryContext.RetryCount of the invocation that dead-lettered.
    pub host_retry_count: i64,
    pub dead_lettered_at: DateTime<Utc>,
    /// SinkFailure / RejectedChanges: the changes, normalized.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// RejectedChanges / MalformedItems: one reason per change or item.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// MalformedItems: the raw feed items.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Value>,
    /// MalformedBatch: the request body (lossy UTF-8 if it was not valid UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_body: Option<String>,
    /// MalformedBatch too large to hold: the body, byte for byte, in this object (a key under
    /// `pending/`, beside the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_body_object: Option<String>,
}

impl DeadLetterRecord {
    /// A record with no payload yet, one attempt, the first delivery, dead-lettered now; the
    /// caller fills in what it has (changes, items, body, attempts, retry count).
    pub fn new(
        kind: DeadLetterKind,
        function: &str,
        sink: &str,
        invocation_id: String,
        batch_fingerprint: String,
        error: String,
    ) -> Self {
        Self {
            kind,
            function: function.to_string(),
            sink: sink.to_string(),
            invocation_id,
            batch_fingerprint,
            error,
            attempts: 1,
            host_retry_count: 0,
            dead_lettered_at: Utc::now(),
            changes: Vec::new(),
            reasons: Vec::new(),
            items: Vec::new(),
            raw_body: None,
            raw_body_object: None,
        }
    }

    /// The record's key relative to `pending/` or `replayed/`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}-{}.json",
            sanitize(&self.function),
            sanitize(&self.sink),
            self.batch_fingerprint,
            self.kind.as_str()
        )
    }

    /// How many changes (or raw items) the record holds.
    pub fn size(&self) -> usize {
        match self.kind {
            DeadLetterKind::MalformedBatch => 1,
            DeadLetterKind::MalformedItems => self.items.len(),
            _ => self.changes.len(),
        }
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Clone)]
pub struct DeadLetterStore {
    store: Arc<dyn ObjectStore>,
    root: StorePath,
    location: String,
}

impl std::fmt::Debug for DeadLetterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeadLetterStore({})", self.location)
    }
}

impl DeadLetterStore {
    /// Opens the store: a local folder (relative to the app root, created if missing) or an
    /// `az://container/prefix` / `abfss://container@account.dfs.core.windows.net/prefix` URL,
    /// with credentials from `storage_options` and the environment (`AZURE_*`, managed identity).
    pub fn open(config: &DeadLetterConfig, app_root: &Path) -> Result<Self, DeadLetterError> {
        let location = config.url.clone();
        let fail = |message: String| DeadLetterError::Config {
            location: location.clone(),
            message,
        };
        if !location.contains("://") || location.starts_with("file://") {
            let raw = location.strip_prefix("file://").unwrap_or(&location);
            let path = app_root.join(raw);
            std::fs::create_dir_all(&path)
                .map_err(|e| fail(format!("cannot create {}: {e}", path.display())))?;
            let store = LocalFileSystem::new_with_prefix(&path).map_err(|e| fail(e.to_string()))?;
            return Ok(Self {
                store: Arc::new(store),
                root: StorePath::default(),
                location,
            });
        }
        let url = url::Url::parse(&location).map_err(|e| fail(format!("not a valid URL: {e}")))?;
        match url.scheme() {
            "az" | "azure" | "abfs" | "abfss" | "adl" => {
                let mut builder = MicrosoftAzureBuilder::from_env().with_url(location.as_str());
                for (key, value) in &config.storage_options {
                    let key = key.parse().map_err(|e: object_store::Error| {
                        fail(format!("storage option `{key}`: {e}"))
                    })?;
                    builder = builder.with_config(key, value);
                }
                let store = builder.build().map_err(|e| fail(e.to_string()))?;
                // az://container/prefix: the prefix is the path; abfss://container@host/prefix likewise.
                let root = StorePath::from(url.path().trim_start_matches('/'));
                Ok(Self {
                    store: Arc::new(store),
                    root,
                    location,
                })
            }
            other => Err(fail(format!(
                "unsupported scheme `{other}://`; use a folder, `az://` or `abfss://`"
            ))),
        }
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    fn path(&self, area: &str, key: &str) -> StorePath {
        let mut p = self.root.clone();
        for part in area
            .split('/')
            .chain(key.split('/'))
            .filter(|p| !p.is_empty())
        {
            p = p.clone().join(part);
        }
        p
    }

    /// Writes (or overwrites) the record; returns its key.
    pub async fn put(&self, record: &DeadLetterRecord) -> Result<String, DeadLetterError> {
        let key = record.key();
        let body = serde_json::to_vec_pretty(record).expect("records serialize");
        self.store
            .put(&self.path(PENDING, &key), PutPayload::from(body))
            .await?;
        Ok(key)
    }

    /// Keys of the records waiting for replay, sorted (oldest batches are not necessarily first:
    /// replay order across records does not matter because sinks compare versions).
    pub async fn list_pending(&self) -> Result<Vec<String>, DeadLetterError> {
        let prefix = self.path(PENDING, "");
        let prefix_str = format!("{}/", prefix.as_ref().trim_end_matches('/'));
        let mut keys: Vec<String> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| {
                meta.location
                    .as_ref()
                    .strip_prefix(&prefix_str)
                    .unwrap_or(meta.location.as_ref())
                    .to_string()
            })
            .try_collect()
            .await?;
        // Records only: stored request bodies (`.body`) belong to their record.
        keys.retain(|k| k.ends_with(".json"));
        keys.sort();
        Ok(keys)
    }

    pub async fn get(&self, key: &str) -> Result<DeadLetterRecord, DeadLetterError> {
        let bytes = self
            .store
            .get(&self.path(PENDING, key))
            .await?
            .bytes()
            .await?;
        serde_json::from_slice(&bytes).map_err(|source| DeadLetterError::Record {
            key: key.to_string(),
            source,
        })
    }

    /// Streams a request body into `pending/{key}` without holding it in memory; returns its size.
    pub async fn put_body_stream<S>(
        &self,
        key: &str,
        head: Vec<bytes::Bytes>,
        mut rest: S,
    ) -> Result<u64, DeadLetterError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, String>> + Unpin,
    {
        use futures::StreamExt;
        let upload = self.store.put_multipart(&self.path(PENDING, key)).await?;
        let mut writer = object_store::WriteMultipart::new(upload);
        let mut size = 0u64;
        for chunk in head {
            size += chunk.len() as u64;
            writer.put(chunk);
        }
        while let Some(chunk) = rest.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(DeadLetterError::Config {
                        location: self.location.clone(),
                        message: format!("request body broke off: {e}"),
                    });
                }
            };
            size += chunk.len() as u64;
            writer.wait_for_capacity(4).await?;
            writer.put(chunk);
        }
        writer.finish().await?;
        Ok(size)
    }

    /// Reads an object under `pending/` (a stored request body).
    pub async fn get_raw(&self, key: &str) -> Result<bytes::Bytes, DeadLetterError> {
        Ok(self
            .store
            .get(&self.path(PENDING, key))
            .await?
            .bytes()
            .await?)
    }

    /// Moves a record from `pending/` to `replayed/` once a replay delivered it.
    pub async fn mark_replayed(&self, key: &str) -> Result<(), DeadLetterError> {
        let from = self.path(PENDING, key);
        self.store.copy(&from, &self.path(REPLAYED, key)).await?;
        self.store.delete(&from).await?;
        Ok(())
    }
}
