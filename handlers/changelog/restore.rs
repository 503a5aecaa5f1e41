//! `fanout restore`: the state as of a time, from the changelog, written out. Pass 1 reads
//! the matching rows' versions ([`AsOf::fold`]); pass 2 reads them again and lets each
//! document's chosen row through ([`AsOf::take`]) to the destination, so memory holds one
//! version per document and one output file at a time. Both passes skip the data files whose
//! statistics rule the filter out, so one document or one partition key reads a few files.
//!
//! A time before the table's baseline is refused: the changelog cannot know a document that
//! did not change after fanout began, unless a backfill from the beginning recorded a
//! complete baseline (`_fanout/baseline.json`, see `sinks::delta::baseline`).

use super::Changelog;
use super::as_of::{AsOf, Restored};
use crate::sinks::delta::{RowFilter, ScanStats, baseline, scan};
use crate::storage::{Location, LocationError};
use chrono::{DateTime, Utc};
use deltalake::DeltaTableError;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as StorePath};
use std::sync::Arc;

/// A JSON Lines file is put once it holds this much (memory holds one file).
pub const FILE_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub as_of: DateTime<Utc>,
    /// The wire form (`["c1"]`).
    pub partition_key: Option<String>,
    pub id: Option<String>,
    /// Refuse times before the recorded baseline (off: the caller says the changelog holds
    /// every document from its creation, e.g. a trigger that started from the beginning).
    pub check_baseline: bool,
    /// The table version to read (`None`: the current one; pass 1 reports it in its
    /// [`ScanStats`], so pass 2 and a resumed restore read exactly the same rows).
    pub version: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "the changelog {table} holds no complete baseline of {scope}: it knows only documents that changed after fanout began. Run `fanout backfill --function {function} --sink {sink}` (from the beginning) first; restore then answers times after it completes. If the changelog was fed from the container's creation (a trigger that started from the beginning), pass `--without-baseline`"
    )]
    NoBaseline {
        table: String,
        scope: String,
        function: String,
        sink: String,
    },
    #[error(
        "{as_of} is before the changelog's baseline of {scope}, completed at {baseline}: a document that did not change since then is not in it; restore a time after {baseline}"
    )]
    BeforeBaseline {
        as_of: String,
        scope: String,
        baseline: String,
    },
    #[error("reading the changelog {table}: {source}")]
    Table {
        table: String,
        #[source]
        source: DeltaTableError,
    },
    #[error("--to {0}")]
    Location(#[from] LocationError),
    #[error(
        "--to {0} exists and is not empty: choose an empty destination, or `--overwrite` to replace its .jsonl files"
    )]
    NotEmpty(String),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: object_store::Error,
    },
}

impl RestoreError {
    pub fn is_usage(&self) -> bool {
        !matches!(
            self,
            RestoreError::Table { .. } | RestoreError::Write { .. }
        )
    }
}

/// What the state as of the time holds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestorePlan {
    /// Documents that existed at the time (restored).
    pub documents: usize,
    /// Documents whose last change by then was a delete (not restored).
    pub deleted: usize,
    pub scan: ScanStats,
    /// The baseline the time was checked against.
    pub baseline: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreReport {
    #[serde(flatten)]
    pub plan: RestorePlan,
    pub written: usize,
    pub files: Vec<String>,
}

fn filter(request: &RestoreRequest) -> RowFilter {
    RowFilter {
        id: request.id.clone(),
        partition_key: request.partition_key.clone(),
        ts_at_most: Some(request.as_of.timestamp()),
        without_documents: false,
    }
}

fn table_error(table: &Changelog) -> impl Fn(DeltaTableError) -> RestoreError + '_ {
    |source| RestoreError::Table {
        table: table.url.to_string(),
        source,
    }
}

/// Pass 1: checks the time against the baseline and picks each document's change.
pub async fn plan(
    table: &Changelog,
    function: &str,
    request: &RestoreRequest,
) -> Result<(AsOf, RestorePlan), RestoreError> {
    let mut checked = None;
    if request.check_baseline {
        let baselines = baseline::read(table.url.clone(), table.storage_options.clone())
            .await
            .map_err(table_error(table))?;
        let Some(at) = baselines.get(&table.scope) else {
            return Err(RestoreError::NoBaseline {
                table: table.url.to_string(),
                scope: table.scope.clone(),
                function: function.to_string(),
                sink: table.sink.clone(),
            });
        };
        if request.as_of < *at {
            return Err(RestoreError::BeforeBaseline {
                as_of: request.as_of.to_rfc3339(),
                scope: table.scope.clone(),
                baseline: at.to_rfc3339(),
            });
        }
        checked = Some(at.to_rfc3339());
    }
    let mut as_of = AsOf::default();
    let stats = scan(
        table.url.clone(),
        table.storage_options.clone(),
        request.version,
        // Pass 1 needs versions only: documents are read in pass 2, for the chosen rows.
        &RowFilter {
            without_documents: true,
            ..filter(request)
        },
        async |rows| -> Result<(), DeltaTableError> {
            for row in &rows {
                as_of.fold(row);
            }
            Ok(())
        },
    )
    .await
    .map_err(table_error(table))?;
    let plan = RestorePlan {
        documents: as_of.live(),
        deleted: as_of.deleted(),
        scan: stats,
        baseline: checked,
    };
    Ok((as_of, plan))
}

/// Pass 2: the restored documents, a batch at a time, to `on_documents` (which may wait).
pub async fn documents<E: From<RestoreError>>(
    table: &Changelog,
    request: &RestoreRequest,
    mut as_of: AsOf,
    mut on_documents: impl AsyncFnMut(Vec<Restored>) -> Result<(), E>,
) -> Result<(), E> {
    let shown = table.url.to_string();
    scan(
        table.url.clone(),
        table.storage_options.clone(),
        request.version,
        &filter(request),
        async |rows| -> Result<(), Failure<E>> {
            let docs: Vec<Restored> = rows.into_iter().filter_map(|r| as_of.take(r)).collect();
            if docs.is_empty() {
                return Ok(());
            }
            on_documents(docs).await.map_err(Failure::Caller)
        },
    )
    .await
    .map_err(|f| match f {
        Failure::Table(source) => E::from(RestoreError::Table {
            table: shown.clone(),
            source,
        }),
        Failure::Caller(e) => e,
    })?;
    Ok(())
}

/// A scan's failure: reading the table, or what the caller did with the rows.
enum Failure<E> {
    Table(DeltaTableError),
    Caller(E),
}

impl<E> From<DeltaTableError> for Failure<E> {
    fn from(e: DeltaTableError) -> Self {
        Failure::Table(e)
    }
}

/// A folder (or Azure storage URL) of JSON Lines files, `part-00000.jsonl`, ...
pub struct JsonLines {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    shown: String,
}

impl JsonLines {
    /// The destination, checked: refused when it holds anything, unless `overwrite` (then
    /// its `.jsonl` files are removed first).
    pub async fn open(to: &Location, overwrite: bool) -> Result<Self, RestoreError> {
        let (store, prefix) = to.object_store()?;
        let shown = to.to_string();
        let existing: Vec<_> = {
            use futures::TryStreamExt;
            store
                .list(Some(&prefix))
                .try_collect::<Vec<_>>()
                .await
                .map_err(|source| RestoreError::Write {
                    path: shown.clone(),
                    source,
                })?
        };
        if !existing.is_empty() {
            if !overwrite {
                return Err(RestoreError::NotEmpty(shown));
            }
            for meta in existing {
                if meta.location.as_ref().ends_with(".jsonl") {
                    store
                        .delete(&meta.location)
                        .await
                        .map_err(|source| RestoreError::Write {
                            path: meta.location.to_string(),
                            source,
                        })?;
                }
            }
        }
        Ok(Self {
            store,
            prefix,
            shown,
        })
    }

    /// Writes the documents of pass 2, one line each; a file is put once it holds
    /// [`FILE_BYTES`], so memory holds one file.
    pub async fn write(
        &self,
        table: &Changelog,
        request: &RestoreRequest,
        as_of: AsOf,
        plan: RestorePlan,
    ) -> Result<RestoreReport, RestoreError> {
        let mut report = RestoreReport {
            plan,
            ..RestoreReport::default()
        };
        let mut buffer = Vec::new();
        documents(
            table,
            request,
            as_of,
            async |docs| -> Result<(), RestoreError> {
                for doc in docs {
                    serde_json::to_writer(&mut buffer, &doc.document)
                        .expect("a document serializes");
                    buffer.push(b'\n');
                    report.written += 1;
                    if buffer.len() >= FILE_BYTES {
                        let name = self
                            .put(report.files.len(), std::mem::take(&mut buffer))
                            .await?;
                        report.files.push(name);
                    }
                }
                Ok(())
            },
        )
        .await?;
        if !buffer.is_empty() {
            let name = self.put(report.files.len(), buffer).await?;
            report.files.push(name);
        }
        Ok(report)
    }

    async fn put(&self, n: usize, body: Vec<u8>) -> Result<String, RestoreError> {
        let name = format!("part-{n:05}.jsonl");
        let path = self.prefix.clone().join(name.as_str());
        self.store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|source| RestoreError::Write {
                path: path.to_string(),
                source,
            })?;
        Ok(format!("{}/{name}", self.shown.trim_end_matches('/')))
    }
}
