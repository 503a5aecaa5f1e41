//! `fanout backfill`: fills sinks from the live container. Each feed range's latest-version
//! change feed is read from the beginning (the current version of every item) or from a
//! time, page by page, ranges in parallel; every page goes through the pipeline exactly as a
//! host batch on its last attempt (normalize -> route -> the selected sinks -> dead-letter
//! what they cannot take), and the range's continuation is checkpointed only after that.
//! Sinks are idempotent and version-guarded, so overlapping with the live trigger (or a
//! second backfill) is harmless.
//!
//! A change's version is its `_lsn`, as in live traffic. An item without one (the SDK's
//! in-memory emulator leaves it out) is read again by id: the service returns the lsn it
//! keeps for the document (`x-ms-item-lsn`) with the document as of that lsn, so the change
//! carries its true version and exactly-once and the version guards hold as for live
//! changes. A document deleted before that read is left out (it no longer exists).
//!
//! Memory is bounded: a range reads its next page only after the sinks took the last, and at
//! most `parallel` ranges run at once.

pub mod checkpoint;
pub mod plan;

use crate::change::PartitionKeyPaths;
use crate::cosmos::{CosmosTarget, RangeReader, SourceError, Spent, Start, Throttle};
use crate::pipeline::{Pipeline, Route};
use crate::source::FunctionSource;
use azure_data_cosmos::clients::ContainerClient;
use checkpoint::{Checkpoint, CheckpointError, CheckpointStore, RangeState};
use chrono::Utc;
use futures::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the command line asked for, parsed.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub sinks: Vec<String>,
    /// `None`: from the beginning (or as the resumed checkpoint was).
    pub start: Option<Start>,
    pub max_ru_per_second: Option<f64>,
    pub parallel: usize,
    pub page_size: u32,
    pub resume: bool,
    pub restart: bool,
}

impl Default for BackfillOptions {
    fn default() -> Self {
        Self {
            sinks: Vec::new(),
            start: None,
            max_ru_per_second: None,
            parallel: 4,
            page_size: 100,
            resume: false,
            restart: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Open(#[from] crate::source::OpenError),
    #[error(
        "feed range {range}: the sinks did not take a page and the dead-letter store did not keep it; nothing past the last checkpoint counts as done (`--resume` retries it): {detail}"
    )]
    Delivery { range: String, detail: String },
    #[error("interrupted; `fanout backfill --function {0} --resume` continues where it stopped")]
    Interrupted(String),
}

impl BackfillError {
    /// Bad input (stopped before any work): exit 2.
    pub fn is_usage(&self) -> bool {
        match self {
            BackfillError::Plan(_) => true,
            BackfillError::Open(e) => e.is_usage(),
            BackfillError::Source(e) => e.is_usage(),
            _ => false,
        }
    }
}

/// Told as the backfill goes (the command draws progress bars from it).
pub trait Observer: Send + Sync {
    fn ranges(&self, _ranges: &[RangeState]) {}
    /// A page of `range` went through: its items, the range's totals so far, and how far
    /// through the range it is (0..=1: the page's newest lsn against the partition's, when
    /// the service says).
    fn page(&self, _range: usize, _items: usize, _state: &RangeState, _progress: Option<f64>) {}
    fn range_done(&self, _range: usize, _state: &RangeState) {}
}

/// An observer that says nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// How far a page is through its range: its newest `_lsn` against the partition's.
fn progress(items: &[Value], partition_lsn: Option<u64>) -> Option<f64> {
    let newest = items
        .iter()
        .filter_map(|i| i.get("_lsn").and_then(Value::as_u64))
        .max()?;
    let end = partition_lsn.filter(|e| *e > 0)?;
    Some((newest as f64 / end as f64).clamp(0.0, 1.0))
}

/// What a backfill did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackfillReport {
    pub function: String,
    pub container: String,
    pub sinks: Vec<String>,
    pub resumed: bool,
    pub items: u64,
    pub pages: u64,
    /// Items whose lsn came from a read by id (the feed item had none).
    pub lsn_read_back: u64,
    pub dead_lettered: u64,
    pub ranges: Vec<RangeState>,
    pub spent: Spent,
    pub checkpoint: String,
    /// Sinks that recorded the completed baseline (a backfill from the beginning).
    pub baseline: Vec<String>,
}

/// Everything a backfill runs against, set up by the caller.
pub struct Backfill<'a> {
    pub pipeline: &'a Pipeline,
    pub route: &'a Route,
    pub partition_key: &'a PartitionKeyPaths,
    pub container: ContainerClient,
    pub target: CosmosTarget,
    pub checkpoints: CheckpointStore,
    pub throttle: Arc<Throttle>,
}

struct Shared {
    checkpoint: tokio::sync::Mutex<Checkpoint>,
    /// Set by the first range that fails: the others stop after their page in flight.
    failed: AtomicBool,
    pages: std::sync::atomic::AtomicU64,
    lsn_read_back: std::sync::atomic::AtomicU64,
    dead_lettered: std::sync::atomic::AtomicU64,
}

impl<'a> Backfill<'a> {
    /// Sets up a backfill of `function` the one way the command and the tests do: its route
    /// and partition key from the config, the sinks asked for checked (no request yet), the
    /// container named by the trigger's settings (`setting`: the app settings) and opened with
    /// `builder` (`CosmosClientBuilder::new()`; tests pass the in-memory emulator's).
    #[allow(clippy::too_many_arguments)]
    pub async fn prepare(
        config: &'a crate::config::AppConfig,
        pipeline: &'a Pipeline,
        function: &str,
        sinks: &[String],
        setting: &dyn Fn(&str) -> Option<String>,
        builder: azure_data_cosmos::CosmosClientBuilder,
        checkpoints: CheckpointStore,
        throttle: Arc<Throttle>,
    ) -> Result<Self, BackfillError> {
        let (route, partition_key) = FunctionSource::route(config, pipeline, function)?;
        plan::select_sinks(function, &plan::RouteSink::of(route), sinks)?;
        let source = FunctionSource::open(route, partition_key, setting, builder).await?;
        Ok(Backfill {
            pipeline,
            route,
            partition_key,
            container: source.container,
            target: source.target,
            checkpoints,
            throttle,
        })
    }

    /// Checks what was asked against the route, the container and the checkpoint, then runs.
    /// `stop`: set it (Ctrl-C) to end after the pages in flight, checkpointed.
    pub async fn run(
        &self,
        options: &BackfillOptions,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<BackfillReport, BackfillError> {
        let function = self.route.function.name.clone();
        let route_sinks = plan::RouteSink::of(self.route);
        let chosen = plan::select_sinks(&function, &route_sinks, &options.sinks)?;
        crate::cosmos::check_partition_key(
            &self.container,
            &self.target,
            &function,
            self.partition_key,
            &self.throttle,
        )
        .await?;
        let container = self.target.describe();
        let existing = self.checkpoints.load().await?;
        let begin = plan::begin(
            existing,
            &plan::Asked {
                function: &function,
                container: &container,
                sinks: &options.sinks,
                chosen_sinks: &chosen,
                start: options.start,
                resume: options.resume,
                restart: options.restart,
                state: self.checkpoints.shown(),
            },
        )?;
        let (checkpoint, resumed) = match begin {
            plan::Begin::Resume(cp) => {
                // The sinks it was filling must still be there (renamed or removed: refuse).
                plan::select_sinks(&function, &route_sinks, &cp.sinks)?;
                (*cp, true)
            }
            plan::Begin::Fresh => {
                let ranges =
                    crate::cosmos::feed_ranges(&self.container, &self.target, &self.throttle)
                        .await?;
                let cp = Checkpoint {
                    function: function.clone(),
                    container: container.clone(),
                    sinks: chosen.clone(),
                    start: options.start.unwrap_or(Start::Beginning),
                    page_size: options.page_size,
                    started_at: Utc::now(),
                    completed_at: None,
                    ranges: ranges
                        .iter()
                        .map(|r| RangeState {
                            range: r.to_string(),
                            continuation: None,
                            items: 0,
                            request_units: 0.0,
                            done: false,
                        })
                        .collect(),
                };
                self.checkpoints.save(&cp).await?;
                (cp, false)
            }
        };
        observer.ranges(&checkpoint.ranges);
        let route = self.route.with_sinks(&checkpoint.sinks);
        let shared = Shared {
            checkpoint: tokio::sync::Mutex::new(checkpoint.clone()),
            failed: AtomicBool::new(false),
            pages: Default::default(),
            lsn_read_back: Default::default(),
            dead_lettered: Default::default(),
        };
        let todo: Vec<(usize, RangeState)> = checkpoint
            .ranges
            .iter()
            .cloned()
            .enumerate()
            .filter(|(_, r)| !r.done)
            .collect();
        let results: Vec<Result<(), BackfillError>> = futures::stream::iter(todo)
            .map(|(index, state)| {
                self.read_range(&route, &checkpoint, index, state, &shared, observer, stop)
            })
            .buffer_unordered(options.parallel.max(1))
            .collect()
            .await;
        let mut cp = shared.checkpoint.lock().await.clone();
        // The first failure says why (the others stopped after it, checkpointed).
        let mut errors = results.into_iter().filter_map(Result::err);
        if let Some(e) = errors.next() {
            for other in errors {
                tracing::warn!(function = %function, error = %other, "another feed range failed too");
            }
            return Err(e);
        }
        if stop.load(Ordering::Relaxed) && cp.unfinished_ranges() > 0 {
            return Err(BackfillError::Interrupted(function));
        }
        let completed = Utc::now();
        cp.completed_at = Some(completed);
        self.checkpoints.save(&cp).await?;
        // Every document was read from the beginning and delivered: the sinks that keep
        // history now hold a complete baseline as of now (restore can answer times from here
        // on). Not when some were dead-lettered: those are not in the sinks yet.
        let mut baseline = Vec::new();
        if cp.start == Start::Beginning && shared.dead_lettered.load(Ordering::Relaxed) == 0 {
            for sink in &route.sinks {
                match sink.baseline_complete(&function, completed).await {
                    Ok(()) => baseline.push(sink.name().to_string()),
                    Err(e) => {
                        tracing::warn!(function = %function, sink = sink.name(), error = %e.detail(), "the backfill completed but its baseline could not be recorded: restore will refuse times before a later backfill")
                    }
                }
            }
        }
        Ok(BackfillReport {
            function,
            container,
            sinks: cp.sinks.clone(),
            resumed,
            items: cp.ranges.iter().map(|r| r.items).sum(),
            pages: shared.pages.load(Ordering::Relaxed),
            lsn_read_back: shared.lsn_read_back.load(Ordering::Relaxed),
            dead_lettered: shared.dead_lettered.load(Ordering::Relaxed),
            ranges: cp.ranges,
            spent: self.throttle.spent(),
            checkpoint: self.checkpoints.shown().to_string(),
            baseline,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_range(
        &self,
        route: &Route,
        checkpoint: &Checkpoint,
        index: usize,
        mut state: RangeState,
        shared: &Shared,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<(), BackfillError> {
        let range: azure_data_cosmos::feed::FeedRange =
            state
                .range
                .parse()
                .map_err(|e: azure_data_cosmos::CosmosError| {
                    BackfillError::Source(SourceError::Service {
                        what: format!("the checkpoint's feed range {}", state.range),
                        target: self.target.describe(),
                        source: e,
                    })
                })?;
        let mut reader = RangeReader::new(
            self.container.clone(),
            self.target.clone(),
            range,
            checkpoint.start,
            checkpoint.page_size,
            state.continuation.clone(),
        );
        let result = self
            .read_pages(
                route,
                checkpoint,
                index,
                &mut state,
                &mut reader,
                shared,
                observer,
                stop,
            )
            .await;
        if result.is_err() {
            shared.failed.store(true, Ordering::Relaxed);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_pages(
        &self,
        route: &Route,
        checkpoint: &Checkpoint,
        index: usize,
        state: &mut RangeState,
        reader: &mut RangeReader,
        shared: &Shared,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<(), BackfillError> {
        let mut page_number = 0u64;
        let drained = crate::cosmos::feed::drain(
            reader,
            &self.throttle,
            checkpoint.started_at.timestamp(),
            &|| stop.load(Ordering::Relaxed) || shared.failed.load(Ordering::Relaxed),
            async |page: crate::cosmos::Page| {
                state.request_units += page.request_units;
                if page.items.is_empty() {
                    // Everything on it was older than `--since`.
                    state.continuation = Some(page.continuation);
                    return self.save_range(shared, index, state).await;
                }
                page_number += 1;
                let items = self.with_versions(page.items, shared).await?;
                // Documents deleted before their read-back are not counted.
                let count = items.len();
                let progress = progress(&items, page.partition_lsn);
                let answer = self
                    .pipeline
                    .deliver_items(
                        route,
                        items,
                        // Unique across resumes too (the items so far differ).
                        format!(
                            "backfill:{}:{index}:{}:{page_number}",
                            checkpoint.started_at.timestamp(),
                            state.items
                        ),
                    )
                    .await;
                if !(200..300).contains(&answer.status) {
                    return Err(BackfillError::Delivery {
                        range: state.range.clone(),
                        detail: answer.response.logs.join("; "),
                    });
                }
                shared
                    .dead_lettered
                    .fetch_add(answer.dead_lettered as u64, Ordering::Relaxed);
                shared.pages.fetch_add(1, Ordering::Relaxed);
                state.items += count as u64;
                state.continuation = Some(page.continuation);
                self.save_range(shared, index, state).await?;
                observer.page(index, count, state, progress);
                Ok(())
            },
        )
        .await?;
        if let crate::cosmos::feed::Drained::CaughtUp(continuation) = drained {
            state.done = true;
            state.continuation = Some(continuation);
            self.save_range(shared, index, state).await?;
            observer.range_done(index, state);
        }
        Ok(())
    }

    async fn save_range(
        &self,
        shared: &Shared,
        index: usize,
        state: &RangeState,
    ) -> Result<(), BackfillError> {
        let mut cp = shared.checkpoint.lock().await;
        cp.ranges[index] = state.clone();
        self.checkpoints.save(&cp).await?;
        Ok(())
    }

    /// Items without `_lsn` read back by id (see the module doc).
    async fn with_versions(
        &self,
        items: Vec<Value>,
        shared: &Shared,
    ) -> Result<Vec<Value>, BackfillError> {
        let (items, read_back) = crate::cosmos::items::with_lsns(
            &self.container,
            &self.target,
            &self.throttle,
            self.partition_key,
            items,
        )
        .await?;
        shared.lsn_read_back.fetch_add(read_back, Ordering::Relaxed);
        Ok(items)
    }
}
