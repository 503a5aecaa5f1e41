//! A backfill's checkpoint: per feed range, the continuation after the last page every
//! selected sink took (or the dead-letter store kept), in one JSON object under the state
//! location (`{state}/{function}.json`, a local folder or Azure storage). Written after every
//! page, so an interrupted run repeats at most one page per range when resumed.

use crate::cosmos::Start;
use crate::storage::{Location, LocationError};
use chrono::{DateTime, Utc};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as StorePath};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub function: String,
    /// `endpoint/database/container`: a checkpoint resumes only against the same container.
    pub container: String,
    pub sinks: Vec<String>,
    pub start: Start,
    pub page_size: u32,
    pub started_at: DateTime<Utc>,
    /// Set when every range caught up. A completed backfill from the beginning into a
    /// changelog is that table's baseline.
    pub completed_at: Option<DateTime<Utc>>,
    pub ranges: Vec<RangeState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeState {
    /// The feed range as the SDK writes it (base64 JSON of its key bounds).
    pub range: String,
    pub continuation: Option<String>,
    pub items: u64,
    pub request_units: f64,
    pub done: bool,
}

impl Checkpoint {
    pub fn unfinished_ranges(&self) -> usize {
        self.ranges.iter().filter(|r| !r.done).count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Location(#[from] LocationError),
    #[error("backfill state {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("backfill state {path} is not a checkpoint: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Where a function's checkpoint lives.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    shown: String,
}

impl CheckpointStore {
    pub fn open(location: &Location, function: &str) -> Result<Self, CheckpointError> {
        let (store, root) = location.object_store()?;
        let file = format!("{function}.json");
        Ok(Self {
            store,
            path: root.clone().join(file.as_str()),
            shown: format!("{}{file}", location.url()),
        })
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub async fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let bytes = match self.store.get(&self.path).await {
            Ok(got) => got.bytes().await.map_err(|source| self.failed(source))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(self.failed(source)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CheckpointError::Unreadable {
                path: self.shown.clone(),
                source,
            })
    }

    pub async fn save(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let body = serde_json::to_vec_pretty(checkpoint).expect("a checkpoint serializes");
        self.store
            .put(&self.path, PutPayload::from(body))
            .await
            .map_err(|source| self.failed(source))?;
        Ok(())
    }

    fn failed(&self, source: object_store::Error) -> CheckpointError {
        CheckpointError::Store {
            path: self.shown.clone(),
            source,
        }
    }
}
