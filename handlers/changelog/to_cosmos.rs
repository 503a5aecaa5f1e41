//! `fanout restore --to cosmos`: the state as of a time written into a Cosmos DB container
//! with `azure_data_cosmos` upserts, `parallel` at a time, 429-aware within the shared RU
//! budget ([`Throttle`]). Resumable: the restore reads a pinned table version, so pass 2 hands
//! over the documents in the same order every run, and a checkpoint counts the documents
//! written; a resumed run skips that many (upserts are idempotent, so a chunk in flight when
//! it stopped is simply written again). `exact` then deletes the documents of the container
//! (within the restore's partition key / id) that did not exist at the time: restore in
//! place.

use super::Changelog;
use super::as_of::AsOf;
use super::restore::{RestoreError, RestorePlan, RestoreRequest, documents};
use crate::change::{PartitionKey, PartitionKeyPaths};
use crate::cosmos::{CosmosTarget, SourceError, Spent, Throttle};
use crate::storage::Location;
use azure_data_cosmos::clients::ContainerClient;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as StorePath};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Documents written between checkpoints.
const CHUNK: usize = 100;

/// Where a restore into a container stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RestoreCheckpoint {
    pub function: String,
    pub container: String,
    pub as_of: DateTime<Utc>,
    pub partition_key: Option<String>,
    pub id: Option<String>,
    pub exact: bool,
    pub table_version: u64,
    /// Documents written, in pass 2's order.
    pub written: u64,
    pub deleted: u64,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl RestoreCheckpoint {
    fn same_request(&self, other: &RestoreCheckpoint) -> bool {
        (
            &self.function,
            &self.container,
            self.as_of,
            &self.partition_key,
            &self.id,
            self.exact,
        ) == (
            &other.function,
            &other.container,
            other.as_of,
            &other.partition_key,
            &other.id,
            other.exact,
        )
    }
}

/// `{state}/restore-{function}.json`.
pub struct RestoreCheckpoints {
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    shown: String,
}

impl RestoreCheckpoints {
    pub fn open(state: &Location, function: &str) -> Result<Self, RestoreError> {
        let (store, prefix) = state.object_store()?;
        Ok(Self {
            store,
            path: prefix
                .clone()
                .join(format!("restore-{function}.json").as_str()),
            shown: format!(
                "{}/restore-{function}.json",
                state.to_string().trim_end_matches('/')
            ),
        })
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    async fn load(&self) -> Result<Option<RestoreCheckpoint>, RestoreError> {
        match self.store.get(&self.path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|source| self.error(source))?;
                Ok(serde_json::from_slice(&bytes).ok())
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(self.error(source)),
        }
    }

    async fn save(&self, cp: &RestoreCheckpoint) -> Result<(), RestoreError> {
        let json = serde_json::to_vec_pretty(cp).expect("a checkpoint serializes");
        self.store
            .put(&self.path, PutPayload::from(json))
            .await
            .map_err(|source| self.error(source))?;
        Ok(())
    }

    fn error(&self, source: object_store::Error) -> RestoreError {
        RestoreError::Write {
            path: self.shown.clone(),
            source,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CosmosRestoreError {
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(
        "container {0} is not empty: restore into an empty container, `--overwrite` to write over what it holds, or `--exact` to make it exactly the state as of the time"
    )]
    NotEmpty(String),
    #[error(
        "a restore of `{function}` into {container} is unfinished ({written} documents written, checkpoint {checkpoint}): `--resume` continues it, `--restart` starts over"
    )]
    Unfinished {
        function: String,
        container: String,
        written: u64,
        checkpoint: String,
    },
    #[error(
        "nothing to resume: {checkpoint} holds no unfinished restore of this time, container and filter (it was: {was})"
    )]
    NothingToResume { checkpoint: String, was: String },
    #[error("interrupted; the same command with `--resume` continues where it stopped")]
    Interrupted,
}

impl CosmosRestoreError {
    pub fn is_usage(&self) -> bool {
        match self {
            CosmosRestoreError::Restore(e) => e.is_usage(),
            CosmosRestoreError::Source(e) => e.is_usage(),
            CosmosRestoreError::NotEmpty(_)
            | CosmosRestoreError::Unfinished { .. }
            | CosmosRestoreError::NothingToResume { .. } => true,
            CosmosRestoreError::Interrupted => false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CosmosRestoreOptions {
    pub parallel: usize,
    pub exact: bool,
    pub overwrite: bool,
    pub resume: bool,
    pub restart: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CosmosRestoreReport {
    #[serde(flatten)]
    pub plan: RestorePlan,
    pub container: String,
    pub resumed: bool,
    /// Documents upserted by this run.
    pub written: u64,
    /// Documents a resumed run did not write again (the checkpoint had them).
    pub skipped: u64,
    /// Documents `exact` deleted (they did not exist at the time).
    pub deleted: u64,
    pub spent: Spent,
    pub checkpoint: String,
}

/// Told as the restore goes.
pub trait Progress: Send + Sync {
    fn written(&self, _done: u64, _of: usize) {}
}

pub struct Silent;
impl Progress for Silent {}

pub struct CosmosRestore<'a> {
    pub container: ContainerClient,
    pub target: CosmosTarget,
    pub partition_key: &'a PartitionKeyPaths,
    pub throttle: Arc<Throttle>,
    pub checkpoints: RestoreCheckpoints,
}

impl<'a> CosmosRestore<'a> {
    /// Opens the destination: `spec` names it relative to the function's own container (see
    /// [`crate::cosmos::resolve_other`]), reached with `connection` or the function's
    /// credential; `builder` is `CosmosClientBuilder::new()` outside tests.
    pub async fn open(
        route: &'a crate::config::RouteConfig,
        spec: &str,
        connection: Option<&str>,
        setting: &dyn Fn(&str) -> Option<String>,
        builder: azure_data_cosmos::CosmosClientBuilder,
        throttle: Arc<Throttle>,
        checkpoints: RestoreCheckpoints,
    ) -> Result<Self, CosmosRestoreError> {
        let source =
            crate::cosmos::resolve_target(&route.function, setting).map_err(SourceError::from)?;
        let target = crate::cosmos::resolve_other(&source, spec, connection, setting)
            .map_err(SourceError::from)?;
        let container = crate::cosmos::open_container(&target, builder).await?;
        Ok(Self {
            container,
            target,
            partition_key: &route.partition_key,
            throttle,
            checkpoints,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        &self,
        function: &str,
        table: &Changelog,
        request: &RestoreRequest,
        options: &CosmosRestoreOptions,
        progress: &dyn Progress,
        stop: &AtomicBool,
    ) -> Result<CosmosRestoreReport, CosmosRestoreError> {
        crate::cosmos::check_partition_key(
            &self.container,
            &self.target,
            function,
            self.partition_key,
            &self.throttle,
        )
        .await?;
        let asked = RestoreCheckpoint {
            function: function.to_string(),
            container: self.target.describe(),
            as_of: request.as_of,
            partition_key: request.partition_key.clone(),
            id: request.id.clone(),
            exact: options.exact,
            table_version: 0,
            written: 0,
            deleted: 0,
            started_at: Utc::now(),
            completed_at: None,
        };
        let existing = self.checkpoints.load().await?;
        let resume = match existing {
            Some(cp) if options.resume => {
                if cp.completed_at.is_some() || !cp.same_request(&asked) {
                    return Err(CosmosRestoreError::NothingToResume {
                        checkpoint: self.checkpoints.shown().into(),
                        was: format!(
                            "as of {} into {}{}",
                            cp.as_of.to_rfc3339(),
                            cp.container,
                            if cp.completed_at.is_some() {
                                ", completed"
                            } else {
                                ""
                            }
                        ),
                    });
                }
                Some(cp)
            }
            Some(cp) if cp.completed_at.is_none() && !options.restart => {
                return Err(CosmosRestoreError::Unfinished {
                    function: function.into(),
                    container: cp.container,
                    written: cp.written,
                    checkpoint: self.checkpoints.shown().into(),
                });
            }
            None if options.resume => {
                return Err(CosmosRestoreError::NothingToResume {
                    checkpoint: self.checkpoints.shown().into(),
                    was: "no restore".into(),
                });
            }
            _ => None,
        };
        if resume.is_none()
            && !options.overwrite
            && !options.exact
            && !crate::cosmos::items::is_empty(&self.container, &self.target, &self.throttle)
                .await?
        {
            return Err(CosmosRestoreError::NotEmpty(self.target.describe()));
        }
        let request = RestoreRequest {
            version: resume.as_ref().map(|cp| cp.table_version),
            ..request.clone()
        };
        let (as_of, plan) = super::restore::plan(table, function, &request).await?;
        let mut cp = resume.clone().unwrap_or(RestoreCheckpoint {
            table_version: plan.scan.version,
            ..asked
        });
        self.checkpoints.save(&cp).await?;
        let request = RestoreRequest {
            version: Some(cp.table_version),
            ..request
        };
        let skip = cp.written;
        let (written, restored) = self
            .write(
                table,
                &request,
                as_of,
                &plan,
                &mut cp,
                options.parallel,
                progress,
                stop,
            )
            .await?;
        if options.exact {
            cp.deleted = self.delete_others(&request, &restored).await?;
        }
        cp.completed_at = Some(Utc::now());
        self.checkpoints.save(&cp).await?;
        Ok(CosmosRestoreReport {
            plan,
            container: self.target.describe(),
            resumed: resume.is_some(),
            written,
            skipped: skip.min(cp.written),
            deleted: cp.deleted,
            spent: self.throttle.spent(),
            checkpoint: self.checkpoints.shown().into(),
        })
    }

    /// Pass 2 into the container: the first `cp.written` documents skipped, the rest upserted
    /// a chunk at a time, the checkpoint saved after each. Returns the documents written by
    /// this run and the (partition key, id) of every document restored.
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        table: &Changelog,
        request: &RestoreRequest,
        as_of: AsOf,
        plan: &RestorePlan,
        cp: &mut RestoreCheckpoint,
        parallel: usize,
        progress: &dyn Progress,
        stop: &AtomicBool,
    ) -> Result<(u64, HashSet<(String, String)>), CosmosRestoreError> {
        let mut seen: u64 = 0;
        let mut written: u64 = 0;
        let mut restored = HashSet::new();
        let parallel = parallel.max(1);
        documents(
            table,
            request,
            as_of,
            async |docs| -> Result<(), CosmosRestoreError> {
                let mut todo = Vec::new();
                for doc in docs {
                    restored.insert((doc.partition_key.clone(), doc.id.clone()));
                    seen += 1;
                    if seen > cp.written {
                        todo.push(doc);
                    }
                }
                for chunk in todo.chunks(CHUNK) {
                    if stop.load(Ordering::Relaxed) {
                        return Err(CosmosRestoreError::Interrupted);
                    }
                    let results: Vec<Result<(), SourceError>> = futures::stream::iter(chunk)
                        .map(|doc| async move {
                            let pk =
                                PartitionKey::from_wire(&doc.partition_key).ok_or_else(|| {
                                    SourceError::Unaddressable {
                                        id: doc.id.clone(),
                                        partition_key: doc.partition_key.clone(),
                                    }
                                })?;
                            crate::cosmos::items::upsert(
                                &self.container,
                                &self.target,
                                &self.throttle,
                                &pk,
                                &doc.id,
                                &Value::Object(doc.document.clone()),
                            )
                            .await
                        })
                        .buffer_unordered(parallel)
                        .collect()
                        .await;
                    if let Some(e) = results.into_iter().find_map(Result::err) {
                        return Err(e.into());
                    }
                    cp.written += chunk.len() as u64;
                    written += chunk.len() as u64;
                    self.checkpoints.save(cp).await?;
                    progress.written(cp.written, plan.documents);
                }
                Ok(())
            },
        )
        .await?;
        Ok((written, restored))
    }

    /// `exact`: deletes the container's documents (within the request's partition key / id)
    /// that the restore did not write.
    async fn delete_others(
        &self,
        request: &RestoreRequest,
        restored: &HashSet<(String, String)>,
    ) -> Result<u64, CosmosRestoreError> {
        let extra = std::sync::Mutex::new(Vec::new());
        let on_items = |items: Vec<Value>| -> Result<(), SourceError> {
            let mut extra = extra.lock().expect("extra");
            for item in items {
                let Some(map) = item.as_object() else {
                    continue;
                };
                let Some(id) = map.get("id").and_then(Value::as_str) else {
                    continue;
                };
                let pk = self.partition_key.extract(map);
                let wire = pk.to_wire();
                let in_scope = request.partition_key.as_ref().is_none_or(|p| *p == wire)
                    && request.id.as_deref().is_none_or(|i| i == id);
                if in_scope && !restored.contains(&(wire, id.to_string())) {
                    extra.push((pk, id.to_string()));
                }
            }
            Ok(())
        };
        crate::cosmos::snapshot::read_all(
            &self.container,
            &self.target,
            &self.throttle,
            self.partition_key,
            4,
            1000,
            Utc::now().timestamp(),
            false,
            &on_items,
        )
        .await?;
        let extra = extra.into_inner().expect("extra");
        let deleted: Vec<Result<bool, SourceError>> = futures::stream::iter(&extra)
            .map(|(pk, id)| {
                crate::cosmos::items::delete(&self.container, &self.target, &self.throttle, pk, id)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut n = 0;
        for d in deleted {
            n += u64::from(d?);
        }
        Ok(n)
    }
}
