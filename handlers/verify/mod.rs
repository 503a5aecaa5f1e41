//! `fanout verify`: every sink that holds state - the changelog's latest state per document,
//! Redis refresh keys, the AI Search index - compared with the container, document by
//! document. The container is read once (every item's current version, feed ranges in
//! parallel, 429-aware, within the RU budget), each document turned into what each sink keeps
//! for it by the sink's own projection ([`crate::sinks::state::SinkState::expect`]); then
//! each sink lists what it holds and [`compare::compare`] names the drift: missing, extra
//! (deleted in Cosmos but still in the sink), stale (an older version), and for a sample (or
//! all) the fields that differ.
//!
//! Live traffic keeps flowing while verify runs, so nothing is called drift that a live
//! change explains: a sink holding a newer version than the read is not stale; a sink entry
//! written after the read began is not extra; a missing document is read again and not
//! counted if it is gone by then.
//!
//! `--repair` re-drives the current version of each drifted document through that sink only
//! (the same pipeline as live changes, version-guarded), deletes extras through the sink's
//! own guarded write (as a delete one lsn after the version the sink holds: the earliest the
//! real delete can have been, so a later re-create still wins), then verifies again.

pub mod against;
pub mod compare;
pub mod sample;

use crate::change::{Change, PartitionKey, PartitionKeyPaths};
use crate::cosmos::{SourceError, Spent, Throttle};
use crate::pipeline::{Pipeline, Route};
use crate::sinks::Sink;
use crate::sinks::state::{Held, Origin, SinkState};
use crate::source::{FunctionSource, OpenError};
use compare::{DocKey, Drift, Rules};
use futures::StreamExt;
use sample::{Offer, Sample, Sampler};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Missing documents are read again (to tell a live delete from drift) up to this many per
/// sink; beyond it they are reported as found.
const CONFIRM_AT_MOST: usize = 1000;
/// Drifted documents re-driven per delivery.
const REPAIR_BATCH: usize = 100;
/// How far this machine's clock and the service's `_ts` may differ.
const CLOCK_SKEW_S: i64 = 60;
/// Changes this recent (`_ts`, against the read's start) may still be on their way to a sink.
const RECENT_S: i64 = 60;
/// How long drift of recent changes is given to resolve before it is looked at again.
const LAG_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Only these sinks (empty: every sink that holds state).
    pub sinks: Vec<String>,
    pub sample: Sample,
    pub repair: bool,
    pub parallel: usize,
    pub page_size: u32,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            sinks: Vec::new(),
            sample: Sample::Count(100),
            repair: false,
            parallel: 4,
            page_size: 100,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("function `{function}` has no sink `{sink}`; its sinks: {known}")]
    UnknownSink {
        function: String,
        sink: String,
        known: String,
    },
    #[error(
        "sink `{sink}` ({kind}) holds no state to compare: event streams and cache invalidation keep nothing per document; verify compares the changelog, Redis refresh keys and AI Search"
    )]
    NoState { sink: String, kind: String },
    #[error(
        "function `{0}` has no sink that holds state (a changelog, Redis refresh keys, an AI Search index)"
    )]
    NothingToVerify(String),
    #[error("sink `{sink}`: {source}")]
    Sink {
        sink: String,
        #[source]
        source: crate::sinks::SinkError,
    },
    #[error("repairing sink `{sink}`: {detail}")]
    Repair { sink: String, detail: String },
}

impl VerifyError {
    pub fn is_usage(&self) -> bool {
        match self {
            VerifyError::Open(e) => e.is_usage(),
            VerifyError::Source(e) => e.is_usage(),
            VerifyError::UnknownSink { .. }
            | VerifyError::NoState { .. }
            | VerifyError::NothingToVerify(_) => true,
            _ => false,
        }
    }
}

/// One drifted document.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DriftEntry {
    /// The sink's key.
    pub key: String,
    /// The document, when the container has it (an extra's may be gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    #[serde(flatten)]
    pub drift: Drift,
    /// The version the sink holds ((lsn, `_ts`), -1 where it keeps none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink_version: Option<(i64, i64)>,
}

/// What one sink holds against the container.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SinkReport {
    pub sink: String,
    pub kind: String,
    /// Documents of the container this sink should hold.
    pub expected: usize,
    /// Documents the sink holds.
    pub held: usize,
    /// Documents whose fields were compared.
    pub compared: usize,
    /// Container documents the sink refuses (a delivery dead-letters them, with the reason).
    pub refused: usize,
    pub missing: usize,
    pub extra: usize,
    pub stale: usize,
    pub different: usize,
    /// Drift a live change explained on a second look (not counted).
    pub changed_during_verify: usize,
    pub drift: Vec<DriftEntry>,
    pub notes: Vec<String>,
}

impl SinkReport {
    pub fn drifted(&self) -> usize {
        self.missing + self.extra + self.stale + self.different
    }
}

/// What `--repair` did to one sink.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepairReport {
    pub sink: String,
    /// Documents re-driven from the container's current version.
    pub redriven: usize,
    /// Extras deleted.
    pub removed: usize,
    /// Changes the sink refused on the way and that went to the dead-letter store.
    pub dead_lettered: usize,
    /// Drift repair cannot fix, and why.
    pub left: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub function: String,
    pub container: String,
    /// When the container read began.
    pub read_at: String,
    /// Items the container holds (soft-deleted ones included).
    pub documents: u64,
    /// Items that are soft-delete markers (no sink should hold them).
    pub deleted_markers: usize,
    /// Items fanout cannot read as documents (no id, ...): delivered, they are dead-lettered.
    pub unreadable: usize,
    pub sinks: Vec<SinkReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<RepairReport>,
    /// The verify after the repair.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_repair: Option<Vec<SinkReport>>,
    pub spent: Spent,
    /// No drift left.
    pub clean: bool,
}

/// Told as verify goes.
pub trait Observer: Send + Sync {
    fn read(&self, _items: u64) {}
    fn phase(&self, _what: &str) {}
}

pub struct Quiet;
impl Observer for Quiet {}

pub struct Verify<'a> {
    pub pipeline: &'a Pipeline,
    pub source: FunctionSource<'a>,
    pub throttle: Arc<Throttle>,
    /// The sinks compared (each holds state).
    pub sinks: Vec<Arc<dyn Sink>>,
}

/// The sinks to verify: those asked for (each must hold state), or every one that does.
pub fn select_sinks(route: &Route, asked: &[String]) -> Result<Vec<Arc<dyn Sink>>, VerifyError> {
    let function = &route.function.name;
    for name in asked {
        match route.sinks.iter().find(|s| s.name() == name) {
            None => {
                return Err(VerifyError::UnknownSink {
                    function: function.clone(),
                    sink: name.clone(),
                    known: route
                        .sinks
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            Some(s) if s.state().is_none() => {
                return Err(VerifyError::NoState {
                    sink: name.clone(),
                    kind: s.kind().to_string(),
                });
            }
            Some(_) => {}
        }
    }
    let chosen: Vec<_> = route
        .sinks
        .iter()
        .filter(|s| s.state().is_some())
        .filter(|s| asked.is_empty() || asked.iter().any(|a| a == s.name()))
        .cloned()
        .collect();
    if chosen.is_empty() {
        return Err(VerifyError::NothingToVerify(function.clone()));
    }
    Ok(chosen)
}

/// What the container read gave one sink.
#[derive(Default)]
struct SinkSide {
    expected: BTreeMap<String, Held>,
    /// Sink key -> the document it comes from (soft-deleted ones too).
    origin: HashMap<String, DocKey>,
    /// Keys of documents changed within [`RECENT_S`] of the read's start (or after it).
    recent: HashSet<String>,
    refused: usize,
}

/// A sampled document's key in one sink and the fields the sink should hold for it.
type SampledFields = (String, Map<String, Value>);

/// The container as every sink should hold it.
struct ContainerView {
    sides: Vec<SinkSide>,
    documents: u64,
    deleted_markers: usize,
    unreadable: usize,
    /// Per sampled document, per sink: (sink key, the fields the sink should hold).
    sampled: HashMap<DocKey, Vec<Option<SampledFields>>>,
    /// When the read began (epoch seconds).
    started: i64,
    /// When it ended.
    read_done: tokio::time::Instant,
}

fn state_of(sink: &Arc<dyn Sink>) -> &dyn SinkState {
    sink.state().expect("only sinks that hold state are chosen")
}

impl<'a> Verify<'a> {
    /// Sets up a verify of `function` (see [`crate::backfill::Backfill::prepare`]).
    pub async fn prepare(
        config: &'a crate::config::AppConfig,
        pipeline: &'a Pipeline,
        function: &str,
        sinks: &[String],
        setting: &dyn Fn(&str) -> Option<String>,
        builder: azure_data_cosmos::CosmosClientBuilder,
        throttle: Arc<Throttle>,
    ) -> Result<Self, VerifyError> {
        let (route, partition_key) = FunctionSource::route(config, pipeline, function)?;
        let sinks = select_sinks(route, sinks)?;
        let source = FunctionSource::open(route, partition_key, setting, builder).await?;
        Ok(Self {
            pipeline,
            source,
            throttle,
            sinks,
        })
    }

    fn route(&self) -> &Route {
        self.source.route
    }

    fn partition_key(&self) -> &PartitionKeyPaths {
        self.source.partition_key
    }

    pub async fn run(
        &self,
        options: &VerifyOptions,
        observer: &dyn Observer,
    ) -> Result<VerifyReport, VerifyError> {
        crate::cosmos::check_partition_key(
            &self.source.container,
            &self.source.target,
            &self.route().function.name,
            self.partition_key(),
            &self.throttle,
        )
        .await?;
        let read_at = chrono::Utc::now();
        let (view, sinks) = self.check(&self.sinks, options, observer).await?;
        let mut report = VerifyReport {
            function: self.route().function.name.clone(),
            container: self.source.target.describe(),
            read_at: read_at.to_rfc3339(),
            documents: view.documents,
            deleted_markers: view.deleted_markers,
            unreadable: view.unreadable,
            clean: sinks.iter().all(|s| s.drifted() == 0),
            sinks,
            repaired: Vec::new(),
            after_repair: None,
            spent: self.throttle.spent(),
        };
        if options.repair && !report.clean {
            let mut repaired_sinks = Vec::new();
            for (sink, sink_report) in self.sinks.iter().zip(&report.sinks) {
                if sink_report.drifted() == 0 {
                    continue;
                }
                observer.phase(&format!("repairing {}", sink.name()));
                report.repaired.push(self.repair(sink, sink_report).await?);
                repaired_sinks.push(sink.clone());
            }
            observer.phase("verifying again");
            let (_, after) = self.check(&repaired_sinks, options, observer).await?;
            report.clean = after.iter().all(|s| s.drifted() == 0);
            report.after_repair = Some(after);
            report.spent = self.throttle.spent();
        }
        Ok(report)
    }

    /// Reads the container and compares it with each sink.
    async fn check(
        &self,
        sinks: &[Arc<dyn Sink>],
        options: &VerifyOptions,
        observer: &dyn Observer,
    ) -> Result<(ContainerView, Vec<SinkReport>), VerifyError> {
        let started = chrono::Utc::now().timestamp();
        let view = self.read_container(sinks, options, observer).await?;
        let mut reports = Vec::with_capacity(sinks.len());
        for (i, sink) in sinks.iter().enumerate() {
            observer.phase(&format!("reading {}", sink.name()));
            reports.push(self.check_sink(sink, &view, i, started).await?);
        }
        Ok((view, reports))
    }

    async fn read_container(
        &self,
        sinks: &[Arc<dyn Sink>],
        options: &VerifyOptions,
        observer: &dyn Observer,
    ) -> Result<ContainerView, VerifyError> {
        struct Fold {
            view: ContainerView,
            sampler: Sampler<DocKey>,
        }
        let fold = Mutex::new(Fold {
            view: ContainerView {
                sides: sinks.iter().map(|_| SinkSide::default()).collect(),
                documents: 0,
                deleted_markers: 0,
                unreadable: 0,
                sampled: HashMap::new(),
                started: chrono::Utc::now().timestamp(),
                read_done: tokio::time::Instant::now(),
            },
            sampler: Sampler::new(options.sample),
        });
        let started = chrono::Utc::now().timestamp();
        let on_items = |items: Vec<Value>| -> Result<(), VerifyError> {
            let n = items.len() as u64;
            let (changes, unreadable) = self.route().normalize(items);
            let mut f = fold.lock().expect("verify fold");
            let Fold { view, sampler } = &mut *f;
            view.documents += n;
            view.unreadable += unreadable.len();
            for change in &changes {
                fold_change(view, sampler, sinks, change);
            }
            observer.read(view.documents);
            Ok(())
        };
        crate::cosmos::snapshot::read_all(
            &self.source.container,
            &self.source.target,
            &self.throttle,
            self.partition_key(),
            options.parallel,
            options.page_size,
            started,
            true,
            &on_items,
        )
        .await?;
        let Fold { mut view, .. } = fold.into_inner().expect("verify fold");
        view.read_done = tokio::time::Instant::now();
        // The sampled documents' fields, now that the sample is final.
        for per_sink in view.sampled.values_mut() {
            for (i, entry) in per_sink.iter_mut().enumerate() {
                if let Some((key, fields)) = entry.take()
                    && let Some(held) = view.sides[i].expected.get_mut(&key)
                {
                    held.fields = Some(fields);
                }
            }
        }
        Ok(view)
    }

    async fn check_sink(
        &self,
        sink: &Arc<dyn Sink>,
        view: &ContainerView,
        index: usize,
        started: i64,
    ) -> Result<SinkReport, VerifyError> {
        let state = state_of(sink);
        let side = &view.sides[index];
        let sampled: HashSet<&str> = side
            .expected
            .iter()
            .filter(|(_, h)| h.fields.is_some())
            .map(|(k, _)| k.as_str())
            .collect();
        let expected_keys: Vec<&str> = side.expected.keys().map(String::as_str).collect();
        let fields_of = |k: &str| sampled.contains(k);
        let list = async || {
            state
                .list(&expected_keys, &fields_of)
                .await
                .map_err(|source| VerifyError::Sink {
                    sink: sink.name().to_string(),
                    source,
                })
        };
        let mut listing = list().await?;
        let rules = Rules {
            missing_is_drift: state.missing_is_drift(),
            // An extra whose key leads back to its document is looked up in the container
            // below. One that does not is judged by time: an entry written after the read
            // began (less a minute: this machine's clock and the service's `_ts` differ) may
            // be a live write the read missed.
            read_started: if state.traces_keys() {
                i64::MAX
            } else {
                started - CLOCK_SKEW_S
            },
        };
        let mut drift = compare::compare(&side.expected, &listing.held, rules);
        let mut report = SinkReport {
            sink: sink.name().to_string(),
            kind: sink.kind().to_string(),
            expected: side.expected.len(),
            compared: sampled.len(),
            refused: side.refused,
            ..SinkReport::default()
        };
        // A document that changed just before or during the read may not have reached the
        // sink yet (delivery lag): such drift is looked at again after a moment.
        let lagging = drift.iter().any(|(k, d)| {
            matches!(d, Drift::Missing | Drift::Stale { .. }) && side.recent.contains(k)
        });
        if lagging {
            // Once per verify, whichever sink waits first: the time counts from the read.
            tokio::time::sleep_until(view.read_done + LAG_WAIT).await;
            listing = list().await?;
            let again = compare::compare(&side.expected, &listing.held, rules);
            let still: HashSet<&String> = again.iter().map(|(k, _)| k).collect();
            let before = drift.len();
            drift.retain(|(k, _)| still.contains(k) || !side.recent.contains(k));
            report.changed_during_verify += before - drift.len();
        }
        report.held = listing.held.len();
        if let Some(note) = listing.extras_unchecked.take() {
            report.notes.push(note);
        }
        if !state.missing_is_drift() {
            report
                .notes
                .push("keys expire (ttl_seconds): a document the cache lacks is not drift".into());
        }
        let confirmable = drift
            .iter()
            .filter(|(_, d)| matches!(d, Drift::Missing | Drift::Extra))
            .count();
        let confirm = confirmable <= CONFIRM_AT_MOST;
        if !confirm {
            report.notes.push(format!(
                "{confirmable} documents missing or extra: more than {CONFIRM_AT_MOST}, so they were not looked up again to rule out live changes"
            ));
        }
        for (key, d) in drift {
            let doc = side.origin.get(&key).cloned();
            if confirm {
                let explained = match (&d, &doc) {
                    // Gone by now: a live delete.
                    (Drift::Missing, Some(doc)) => !self.exists(doc).await?,
                    // In the container by now (the read missed it): a live create.
                    (Drift::Extra, None) => match state.document_of(&key) {
                        Some(Origin::Document(pk, id)) => self.exists(&(pk, id)).await?,
                        Some(Origin::Id(id)) => self.exists_id(&id).await?,
                        None => false,
                    },
                    _ => false,
                };
                if explained {
                    report.changed_during_verify += 1;
                    continue;
                }
            }
            match &d {
                Drift::Missing => report.missing += 1,
                Drift::Extra => report.extra += 1,
                Drift::Stale { .. } => report.stale += 1,
                Drift::Different { .. } => report.different += 1,
            }
            report.drift.push(DriftEntry {
                sink_version: listing.held.get(&key).map(|h| h.version),
                key,
                id: doc.as_ref().map(|d| d.1.clone()),
                partition_key: doc.map(|d| d.0),
                drift: d,
            });
        }
        Ok(report)
    }

    /// Whether a live (not soft-deleted) document with this id is in the container, in any
    /// partition key (a query).
    async fn exists_id(&self, id: &str) -> Result<bool, VerifyError> {
        let found = crate::cosmos::items::find_by_id(
            &self.source.container,
            &self.source.target,
            &self.throttle,
            id,
        )
        .await?;
        let (changes, _) = self.route().normalize(found);
        Ok(changes.iter().any(|c| !c.operation.is_delete()))
    }

    /// Whether the container still holds the document, as a live one (not soft-deleted).
    async fn exists(&self, doc: &DocKey) -> Result<bool, VerifyError> {
        Ok(self.current(doc).await?.is_some_and(|item| {
            let (changes, _) = self.route().normalize(vec![item]);
            changes.first().is_some_and(|c| !c.operation.is_delete())
        }))
    }

    /// The document's current version with its lsn, or `None` when it is gone.
    async fn current(&self, doc: &DocKey) -> Result<Option<Value>, VerifyError> {
        let Some(pk) = PartitionKey::from_wire(&doc.0) else {
            return Ok(None);
        };
        Ok(crate::cosmos::items::read_with_lsn(
            &self.source.container,
            &self.source.target,
            &self.throttle,
            &pk,
            &doc.1,
        )
        .await?)
    }

    async fn repair(
        &self,
        sink: &Arc<dyn Sink>,
        found: &SinkReport,
    ) -> Result<RepairReport, VerifyError> {
        let state = state_of(sink);
        let function = &self.route().function.name;
        let mut out = RepairReport {
            sink: sink.name().to_string(),
            ..RepairReport::default()
        };
        let mut redrive: Vec<DocKey> = Vec::new();
        for entry in &found.drift {
            let doc = entry.partition_key.clone().zip(entry.id.clone());
            match (&entry.drift, doc) {
                (Drift::Different { .. }, _) if !state.rewrites_same_version() => {
                    out.left.push(format!(
                        "`{}`: the sink is append-only and holds this version with other fields; it cannot be rewritten",
                        entry.key
                    ));
                }
                // The container has it (for an extra: as a soft-delete marker).
                (_, Some(doc)) => redrive.push(doc),
                (Drift::Extra, None) => {
                    let held = entry.sink_version.unwrap_or((-1, -1));
                    match state.remove(function, &entry.key, held).await {
                        Ok(true) => out.removed += 1,
                        Ok(false) => out.left.push(format!(
                            "`{}`: not deleted, the sink holds a newer version now (a live write)",
                            entry.key
                        )),
                        Err(e) => out.left.push(format!(
                            "`{}`: deleting it failed: {}",
                            entry.key,
                            e.detail()
                        )),
                    }
                }
                (_, None) => out
                    .left
                    .push(format!("`{}`: no document to re-drive", entry.key)),
            }
        }
        let route = self.route().with_sinks(&[sink.name().to_string()]);
        let stamp = chrono::Utc::now().timestamp_millis();
        for (n, chunk) in redrive.chunks(REPAIR_BATCH).enumerate() {
            let items: Vec<Option<Value>> = futures::stream::iter(chunk)
                .map(|doc| self.current(doc))
                .buffered(16)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            let gone = items.iter().filter(|i| i.is_none()).count();
            let items: Vec<Value> = items.into_iter().flatten().collect();
            // A document deleted since the verify read: its delete reaches the sink live.
            out.left.extend(
                (0..gone).map(|_| "a drifted document was deleted before its repair".to_string()),
            );
            if items.is_empty() {
                continue;
            }
            let count = items.len();
            let answer = self
                .pipeline
                .deliver_items(
                    &route,
                    items,
                    format!("verify-repair:{stamp}:{}:{n}", sink.name()),
                )
                .await;
            if !(200..300).contains(&answer.status) {
                // Reported with the rest; the verify after the repair shows what is left.
                out.left.push(format!(
                    "{count} documents could not be re-driven: {}",
                    answer.response.logs.join("; ")
                ));
                continue;
            }
            out.redriven += count;
            out.dead_lettered += answer.dead_lettered;
        }
        Ok(out)
    }
}

/// One container document into every sink's expected state.
fn fold_change(
    view: &mut ContainerView,
    sampler: &mut Sampler<DocKey>,
    sinks: &[Arc<dyn Sink>],
    change: &Change,
) {
    let doc: DocKey = (change.partition_key.to_wire(), change.id.clone());
    let deleted = change.operation.is_delete();
    if deleted {
        view.deleted_markers += 1;
    }
    let kept = if deleted {
        false
    } else {
        match sampler.offer(&doc) {
            Offer::Kept(evicted) => {
                if let Some(e) = evicted {
                    view.sampled.remove(&e);
                }
                true
            }
            Offer::NotKept => false,
        }
    };
    let recent = change.ts.is_some_and(|ts| ts >= view.started - RECENT_S);
    let mut per_sink = Vec::with_capacity(sinks.len());
    let mut any_newer = false;
    for (i, sink) in sinks.iter().enumerate() {
        let side = &mut view.sides[i];
        match state_of(sink).expect(change) {
            Ok(e) => {
                side.origin.insert(e.key.clone(), doc.clone());
                if recent {
                    side.recent.insert(e.key.clone());
                }
                if deleted {
                    // A newer soft delete of a document read earlier in the feed.
                    if side
                        .expected
                        .get(&e.key)
                        .is_some_and(|h| h.version <= e.version)
                    {
                        side.expected.remove(&e.key);
                    }
                    per_sink.push(None);
                    continue;
                }
                let newer = side
                    .expected
                    .get(&e.key)
                    .is_none_or(|h| h.version <= e.version);
                if newer {
                    side.expected.insert(
                        e.key.clone(),
                        Held {
                            version: e.version,
                            fields: None,
                        },
                    );
                    any_newer = true;
                }
                // The fields go with the version kept: an older copy of the document (read
                // twice, updated in between) does not replace them.
                per_sink.push((kept && newer).then_some((e.key, e.fields)));
            }
            Err(_) => {
                if !deleted {
                    side.refused += 1;
                }
                per_sink.push(None);
            }
        }
    }
    if kept && any_newer {
        view.sampled.insert(doc, per_sink);
    }
}
