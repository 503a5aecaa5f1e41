//! The changelog writer of one sink: group commit in front of the table.
//!
//! Invocations encode their rows on their own task and hand them to one committer task per
//! table, which owns the long-lived table state. The committer takes the first waiting batch,
//! holds the commit open until as many batches as the previous group held have arrived (the
//! concurrency to expect), for at most `group_commit.window_ms`, or until `max_rows`, and
//! writes every batch it collected in one commit with one `txn` per batch. A lone sender
//! therefore never waits for the window; eight steady senders commit as soon as all eight
//! are in. Each invocation is answered
//! only after the commit that holds its rows succeeded; if the commit fails, every invocation
//! in the group gets the error and the shared retry loop re-drives it (the `txn` records make
//! that safe).
//!
//! The committer writes each commit directly ([`super::commit`]): the data files, then one
//! conditional PUT of the next commit file; it keeps the `txn` index and the version itself,
//! so the steady state reads nothing back from the log. delta-rs's snapshot is refreshed only
//! by background work (checkpoints every `checkpoint_interval` versions, compaction), which
//! hands its newer state back, and on a conflict with another writer. Once a partition got
//! `min_small_files` new files, a background task plans a size-tiered compaction and rewrites
//! the files; the committer commits the rewrite between two groups, so the process never
//! conflicts with itself. Tables whose protocol direct commits do not implement go through
//! delta-rs's transaction builder, with compaction committed by the background task.

use super::commit;
use super::compaction::{self, CompactionReport, Packing};
use super::config::{CompactionConfig, DeltaConfig, GroupCommitConfig};
use super::error;
use super::schema::{ChangelogSchema, PARTITION_COLUMN};
use super::table::{
    self, AppendOutcome, PendingAppend, TXN_RETENTION_MS, TableSettings, batch_app_id,
    commit_with_delta_rs, evolve_schema, open_or_create, prepare_group,
};
use super::txn_index::TxnIndex;
use crate::change::Change;
use crate::sinks::BatchContext;
use crate::sinks::SinkError;
use chrono::Utc;
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

struct Request {
    append: PendingAppend,
    reply: oneshot::Sender<Result<AppendOutcome, SinkError>>,
}

pub struct ChangelogTable {
    settings: Arc<TableSettings>,
    group: GroupCommitConfig,
    compaction: CompactionConfig,
    committer: OnceLock<mpsc::UnboundedSender<Request>>,
    /// The monitored container (`/cosmosdb/{database}/{container}`): its changes' lsns are
    /// one sequence per partition key, whichever function delivers them.
    source: Option<String>,
}

impl ChangelogTable {
    pub fn new(url: url::Url, config: &DeltaConfig) -> Self {
        Self {
            settings: Arc::new(TableSettings {
                url,
                storage_options: config.storage_options.clone().into_iter().collect(),
                schema: ChangelogSchema::new(&config.columns),
                checkpoint_interval: config.checkpoint_interval,
            }),
            group: config.group_commit.clone(),
            compaction: config.compaction.clone(),
            committer: OnceLock::new(),
            source: None,
        }
    }

    /// Names the monitored container, so every function reading it (a baseline function and
    /// the tailing one, say) shares the per-partition-key marks.
    pub fn with_source(mut self, source: String) -> Self {
        self.source = Some(source);
        self
    }

    pub fn url(&self) -> &url::Url {
        &self.settings.url
    }

    /// The monitored container (`/cosmosdb/{database}/{container}`), when the route names it.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    pub fn storage_options(&self) -> &HashMap<String, String> {
        &self.settings.storage_options
    }

    /// Appends the changes not yet in the table. Returns once the commit holding them landed.
    pub async fn append(
        &self,
        ctx: &BatchContext,
        sink: &str,
        changes: &[&Change],
    ) -> Result<AppendOutcome, SinkError> {
        if changes.is_empty() {
            return Ok(AppendOutcome {
                rows_written: 0,
                rows_already_present: 0,
                table_version: None,
                batches_in_commit: 0,
            });
        }
        let batch = self.settings.schema.encode(ctx, changes, Utc::now())?;
        let append = PendingAppend {
            app_id: batch_app_id(ctx, sink, changes),
            scope: match &self.source {
                Some(source) => format!("fanout{source}"),
                None => format!("fanout/{}/{sink}", ctx.function),
            },
            batch,
        };
        let (reply, answer) = oneshot::channel();
        self.committer()
            .send(Request { append, reply })
            .map_err(|_| error::transient("the table's committer has stopped"))?;
        answer.await.unwrap_or_else(|_| {
            Err(error::transient(
                "the table's committer stopped before answering",
            ))
        })
    }

    /// On demand (`fanout compact`): every partition with at least two small files.
    pub async fn compact(&self) -> Result<CompactionReport, SinkError> {
        let table = table::open(
            self.settings.url.clone(),
            self.settings.storage_options.clone(),
        )
        .await?;
        compaction::compact(&table, &self.compaction, 2, Packing::All).await
    }

    fn committer(&self) -> &mpsc::UnboundedSender<Request> {
        self.committer.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let committer = Committer {
                settings: self.settings.clone(),
                group: self.group.clone(),
                compaction: self.compaction.clone(),
                live: None,
                carried: VecDeque::new(),
                compacting: Arc::new(AtomicBool::new(false)),
                checkpointing: Arc::new(AtomicBool::new(false)),
                checkpoint_due: Arc::new(std::sync::atomic::AtomicU64::new(0)),
                refreshed: Arc::new(Mutex::new(None)),
                rewrite: Arc::new(Mutex::new(None)),
                rewrite_ready: Arc::new(tokio::sync::Notify::new()),
                last_group_len: 1,
                exact: Default::default(),
            };
            tokio::spawn(committer.run(rx));
            tx
        })
    }
}

/// The background work of every Delta sink in the process (checkpoints, compactions, vacuums),
/// so that the process can let it finish before the runtime goes away: delta-rs's log scans
/// run on blocking threads and panic when their runtime is dropped under them.
fn background() -> &'static tokio_util::task::TaskTracker {
    static TRACKER: std::sync::OnceLock<tokio_util::task::TaskTracker> = std::sync::OnceLock::new();
    TRACKER.get_or_init(tokio_util::task::TaskTracker::new)
}

/// Waits, at most `limit`, for the background checkpoints and compactions still running.
/// Whatever does not finish is harmless to cut short (a checkpoint or a rewrite is redone
/// later; an uncommitted rewrite's files are removed by vacuum), but says so.
pub async fn settle_background(limit: std::time::Duration) {
    let tracker = background();
    if tracker.is_empty() {
        return;
    }
    tracker.close();
    if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
        tracing::warn!(
            tasks = tracker.len(),
            limit_s = limit.as_secs(),
            "background Delta work (checkpoint or compaction) still running at exit; it is redone later"
        );
    }
}

/// Clears a flag when dropped (a background task that ends, however it ends), unless kept.
struct ClearOnDrop(Option<Arc<AtomicBool>>);

impl ClearOnDrop {
    /// Leaves the flag set: someone else clears it.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(false, Ordering::Release);
        }
    }
}

struct Committer {
    settings: Arc<TableSettings>,
    group: GroupCommitConfig,
    compaction: CompactionConfig,
    /// The long-lived table state; `None` after a failure (reloaded before the next commit).
    live: Option<Live>,
    /// Requests deferred to the next group (a second batch with an identity already in the group).
    carried: VecDeque<Request>,
    compacting: Arc<AtomicBool>,
    /// A checkpoint is being written in the background.
    checkpointing: Arc<AtomicBool>,
    /// The newest version a checkpoint is due at.
    checkpoint_due: Arc<std::sync::atomic::AtomicU64>,
    /// The table at the last checkpoint, handed back by the background task: the committer's
    /// snapshot catches up with its own direct commits from there (no log read of its own).
    refreshed: Arc<Mutex<Option<DeltaTable>>>,
    /// A background compaction's rewrite, written and waiting for its commit.
    rewrite: Arc<Mutex<Option<compaction::Rewrite>>>,
    /// Signalled when `rewrite` is filled.
    rewrite_ready: Arc<tokio::sync::Notify>,
    /// How many batches the previous group held: the concurrency to expect.
    last_group_len: usize,
    /// The table's change identities, loaded the first time a replay needs them.
    exact: super::table::ExactRows,
}

/// What the committer keeps of the table between commits.
struct Live {
    /// delta-rs's state: schema, configuration, file list. With direct commits it may be behind
    /// `version` (the committer's own commits since are not replayed into it).
    table: DeltaTable,
    /// The batch identities and partition-key marks, through `version`.
    index: TxnIndex,
    /// The newest version this process knows the log holds.
    version: Option<u64>,
    /// Whether commits are written directly ([`commit`]); otherwise through delta-rs.
    direct: bool,
    /// Files added per `change_date` partition since compaction was last planned.
    added: HashMap<String, usize>,
    /// Plan compaction on the full file list once (after a load: small files of earlier runs).
    plan_on_next: bool,
    /// The newest version known to hold another writer's commit (seen on a conflict).
    foreign_seen_at: Option<u64>,
}

/// How often a group is re-prepared after another writer committed the version it aimed at.
const CONFLICT_ATTEMPTS: usize = 20;

impl Live {
    async fn load(settings: &TableSettings) -> Result<Self, SinkError> {
        let table = open_or_create(settings).await?;
        Self::from_table(table).await
    }

    async fn from_table(table: DeltaTable) -> Result<Self, SinkError> {
        let index = TxnIndex::load(&table, TXN_RETENTION_MS).await?;
        let why_not = commit::why_not_direct(&table);
        let direct = why_not.is_none() && index.is_complete();
        if let Some(reason) = why_not {
            tracing::info!(table = %table.table_url(), %reason, "commits go through delta-rs's transaction builder");
        }
        let table_version = table.version();
        Ok(Live {
            version: table_version,
            table,
            index,
            direct,
            added: HashMap::new(),
            plan_on_next: true,
            // Whatever happened before this load is unknown: a rewrite planned earlier is
            // checked against this state.
            foreign_seen_at: table_version,
        })
    }

    /// After another writer took a version: the table's newest state.
    async fn refresh(&mut self) -> Result<(), SinkError> {
        self.table.update_state().await?;
        self.version = self.table.version();
        self.foreign_seen_at = self.version;
        Ok(())
    }
}

impl Committer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        use futures::FutureExt;
        while let Some(group) = self.collect(&mut rx).await {
            if group.is_empty() {
                self.commit_ready_rewrite().await;
                continue;
            }
            // A panic in one commit (a log another writer wrote in a shape we did not expect,
            // say) must not stop the table for good: the group's invocations get a transient
            // error (their reply senders drop), the table state is reloaded, and the next
            // group is committed as usual.
            let committed = std::panic::AssertUnwindSafe(self.commit(group))
                .catch_unwind()
                .await;
            if let Err(panic) = committed {
                let what = crate::panic_message(panic.as_ref());
                tracing::error!(table = %self.settings.url, panic = %what, "the committer panicked; its group is retried and the table state reloaded");
                self.live = None;
                self.exact = Default::default();
                continue;
            }
            self.maybe_compact();
        }
    }

    /// The next group: the first waiting request, then whatever arrives within the window.
    async fn collect(&mut self, rx: &mut mpsc::UnboundedReceiver<Request>) -> Option<Vec<Request>> {
        let first = match self.carried.pop_front() {
            Some(r) => r,
            // Waiting for work: a background rewrite that is ready is committed now rather
            // than at the next append (an empty group). `recv` is cancel-safe.
            None => tokio::select! {
                r = rx.recv() => r?,
                _ = self.rewrite_ready.notified() => return Some(Vec::new()),
            },
        };
        let deadline = Instant::now() + self.group.window();
        let mut rows = first.append.batch.num_rows();
        let mut group = vec![first];
        let mut ids: HashSet<String> = HashSet::from([group[0].append.app_id.clone()]);
        let mut carried = std::mem::take(&mut self.carried);
        let mut closed = false;
        loop {
            let next = match carried.pop_front() {
                Some(r) => Some(r),
                None if rows >= self.group.max_rows || closed => break,
                None => match rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    // Everyone who was in the last group is back: commit now rather than
                    // idle until the window ends (adaptive; a lone sender never waits).
                    Err(mpsc::error::TryRecvError::Empty) if group.len() >= self.last_group_len => {
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        tokio::select! {
                            r = rx.recv() => { closed = r.is_none(); r }
                            _ = tokio::time::sleep_until(deadline) => break,
                        }
                    }
                },
            };
            let Some(request) = next else { continue };
            if rows >= self.group.max_rows || !ids.insert(request.append.app_id.clone()) {
                // Full, or the same batch twice (a re-delivery racing the original): it goes
                // in the next group, where it sees this group's txn.
                self.carried.push_back(request);
                continue;
            }
            rows += request.append.batch.num_rows();
            group.push(request);
        }
        self.carried.extend(carried);
        self.last_group_len = group.len();
        Some(group)
    }

    async fn commit(&mut self, group: Vec<Request>) {
        let appends: Vec<PendingAppend> = group.iter().map(|r| r.append.clone()).collect();
        let started = std::time::Instant::now();
        let result = self.try_commit(&appends).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        match &result {
            Ok(outcomes) => tracing::debug!(
                table = %self.settings.url,
                batches = group.len(),
                rows = outcomes.iter().map(|o| o.rows_written).sum::<usize>(),
                version = ?outcomes.first().and_then(|o| o.table_version),
                elapsed_ms,
                "group commit"
            ),
            Err(e) => tracing::warn!(
                table = %self.settings.url,
                batches = group.len(),
                error = %e,
                elapsed_ms,
                "group commit failed; every invocation in the group retries"
            ),
        }
        match result {
            Ok(outcomes) => {
                for (request, outcome) in group.into_iter().zip(outcomes) {
                    let _ = request.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for request in group {
                    let _ = request.reply.send(Err(e.clone()));
                }
            }
        }
    }

    async fn try_commit(
        &mut self,
        appends: &[PendingAppend],
    ) -> Result<Vec<AppendOutcome>, SinkError> {
        let mut live = match self.live.take() {
            // No catch-up read before committing: a direct commit aims at the version after the
            // newest one this process knows, and only lands if no other writer took it; a
            // delta-rs commit checks every commit made since its snapshot. Either way the
            // group is re-checked against what another writer wrote.
            Some(kept) => kept,
            None => Live::load(&self.settings).await?,
        };
        // A fresher state from a background checkpoint or compaction: it holds every commit
        // up to its version (the committer's own direct ones included); the index reads the
        // ones it has not seen (a compaction's).
        if let Some(fresher) = self.refreshed.lock().expect("not poisoned").take()
            && fresher.version() > live.table.version()
        {
            if fresher.version() > live.version {
                // It holds commits this committer has not seen: another writer's.
                live.foreign_seen_at = fresher.version();
            }
            live.version = live.version.max(fresher.version());
            live.table = fresher;
        }
        if live.direct {
            self.commit_rewrite(&mut live).await?;
        }
        let before = live.table.version();
        live.table = evolve_schema(live.table, &self.settings.schema).await?;
        if live.table.version() != before {
            // A metadata commit landed (and the table caught up to it): the index reads it and
            // whatever other writers committed before it.
            live.version = live.table.version();
        }
        for _ in 0..CONFLICT_ATTEMPTS {
            live.index.catch_up(&live.table).await?;
            let group = prepare_group(
                &mut live.table,
                live.version,
                &live.index,
                appends,
                &mut self.exact,
            )
            .await?;
            if group.batches.is_empty() {
                let version = live.version;
                let outcomes = group.landed(version, &mut self.exact);
                self.live = Some(live);
                return Ok(outcomes);
            }
            if !live.direct {
                let version = commit_with_delta_rs(&mut live.table, &group).await?;
                live.version = version;
                live.index.catch_up(&live.table).await?;
                let outcomes = group.landed(version, &mut self.exact);
                self.live = Some(live);
                return Ok(outcomes);
            }
            let mut writer = RecordBatchWriter::for_table(&live.table)?
                .with_writer_properties(table::writer_properties());
            for batch in &group.batches {
                writer.write(batch.clone()).await?;
            }
            let adds = writer.flush().await?;
            let partitions: Vec<String> = adds
                .iter()
                .filter_map(|a| a.partition_values.get(PARTITION_COLUMN).cloned().flatten())
                .collect();
            let next = live.version.map_or(0, |v| v + 1);
            let bytes = commit::commit_bytes(
                adds.into_iter().map(Action::Add).collect(),
                group.txns.clone(),
                commit::append_operation(&live.table)?,
            )?;
            match commit::write(live.table.log_store().as_ref(), next, bytes).await? {
                commit::Outcome::Committed => {
                    live.version = Some(next);
                    live.index.record_own_commit(next, &group.txns);
                    for p in partitions {
                        *live.added.entry(p).or_default() += 1;
                    }
                    self.maybe_checkpoint(&live, next);
                    let outcomes = group.landed(Some(next), &mut self.exact);
                    self.live = Some(live);
                    return Ok(outcomes);
                }
                commit::Outcome::Conflict => {
                    // Another writer (another instance, a compaction) took the version: read
                    // what it wrote and choose the rows again. The files just written are left
                    // out of the table (vacuum removes them).
                    tracing::debug!(table = %self.settings.url, version = next, "another writer committed first; re-checking the group");
                    live.refresh().await?;
                    if let Some(reason) = commit::why_not_direct(&live.table) {
                        tracing::info!(table = %self.settings.url, %reason, "commits go through delta-rs's transaction builder from now on");
                        live.direct = false;
                    }
                }
            }
        }
        self.live = Some(live);
        Err(error::transient(format!(
            "other writers committed first {CONFLICT_ATTEMPTS} times in a row"
        )))
    }

    /// Between groups: the ready rewrite's commit.
    async fn commit_ready_rewrite(&mut self) {
        let Some(mut live) = self.live.take() else {
            // Reloaded before the next group, which commits it.
            return;
        };
        match self.commit_rewrite(&mut live).await {
            Ok(()) => self.live = Some(live),
            Err(e) => {
                tracing::warn!(table = %self.settings.url, error = %e, "committing the compaction failed; the table state is reloaded")
            }
        }
    }

    /// Commits the background compaction's rewrite, if one is ready: its own commit (operation
    /// OPTIMIZE, `dataChange = false`) at the next version. Valid only while every file it
    /// removes is still in the table: certain when no other writer committed since it was
    /// planned (this process removes files only by its own rewrites, one at a time), checked
    /// on the table state otherwise. An invalid or conflicting rewrite is dropped: its files
    /// stay out of the table (vacuum removes them) and the next compaction plans again.
    async fn commit_rewrite(&mut self, live: &mut Live) -> Result<(), SinkError> {
        let Some(rewrite) = self.rewrite.lock().expect("not poisoned").take() else {
            return Ok(());
        };
        let _done = ClearOnDrop(Some(self.compacting.clone()));
        let url = &self.settings.url;
        // The index must be through `live.version` before this commit is recorded after it.
        live.index.catch_up(&live.table).await?;
        if live.foreign_seen_at > rewrite.planned_at {
            let live_files: HashSet<String> = live
                .table
                .snapshot()?
                .log_data()
                .iter()
                .map(|f| f.path().into_owned())
                .collect();
            if let Some(gone) = rewrite.removed.iter().find(|p| !live_files.contains(*p)) {
                tracing::info!(table = %url, file = %gone, "compaction dropped: another writer already rewrote or removed a file of it");
                return Ok(());
            }
        }
        let next = live.version.map_or(0, |v| v + 1);
        let bytes = commit::commit_bytes(rewrite.actions, Vec::new(), rewrite.operation)?;
        match commit::write(live.table.log_store().as_ref(), next, bytes).await? {
            commit::Outcome::Committed => {
                live.version = Some(next);
                live.index.record_own_commit(next, &[]);
                self.maybe_checkpoint(live, next);
                let mut report = rewrite.report;
                report.version = Some(next);
                tracing::info!(table = %url, %report, "background compaction");
                if self.compaction.vacuum {
                    let table = live.table.clone();
                    background().spawn(async move { compaction::vacuum_logged(&table).await });
                }
            }
            commit::Outcome::Conflict => {
                tracing::info!(table = %url, version = next, "compaction dropped: another writer committed first");
                live.refresh().await?;
            }
        }
        Ok(())
    }

    /// Every `delta.checkpointInterval` versions, a checkpoint (and expired-log cleanup) in
    /// the background, as delta-rs's post-commit hook would do before answering. One task at a
    /// time; a checkpoint that falls due while one is written is written next.
    fn maybe_checkpoint(&self, live: &Live, version: u64) {
        let interval = self.settings.checkpoint_interval.max(1);
        // delta-rs's rule: after every `interval` commits counting version 0 (4, 9, ... for 5).
        if !(version + 1).is_multiple_of(interval) {
            return;
        }
        self.checkpoint_due.fetch_max(version, Ordering::AcqRel);
        if self.checkpointing.swap(true, Ordering::AcqRel) {
            return; // the running task takes it
        }
        let (table, flag, slot, due) = (
            live.table.clone(),
            self.checkpointing.clone(),
            self.refreshed.clone(),
            self.checkpoint_due.clone(),
        );
        background().spawn(async move {
            let url = table.table_url().to_string();
            let mut table = table;
            let mut written = None;
            loop {
                let version = due.load(Ordering::Acquire);
                if written == Some(version) {
                    flag.store(false, Ordering::Release);
                    // Due again between the check and the store: keep going if nobody else took it.
                    if due.load(Ordering::Acquire) == version || flag.swap(true, Ordering::AcqRel) {
                        break;
                    }
                    continue;
                }
                match commit::checkpoint(table.clone(), version).await {
                    Ok(at) => {
                        tracing::debug!(table = %url, version, "checkpoint");
                        table = at.clone();
                        *slot.lock().expect("not poisoned") = Some(at);
                    }
                    // The next interval tries again; readers replay a few more commits meanwhile.
                    Err(e) => {
                        tracing::warn!(table = %url, version, error = %e, "checkpoint failed")
                    }
                }
                written = Some(version);
            }
        });
    }

    /// After a commit: compacts in the background when a partition may hold `min_small_files`
    /// small files (counted from this process's own commits, planned on the full file list
    /// only then), one compaction at a time.
    fn maybe_compact(&mut self) {
        if !self.compaction.enabled || self.compacting.load(Ordering::Acquire) {
            return;
        }
        let Some(live) = &mut self.live else {
            return;
        };
        let threshold = self.compaction.min_small_files.max(2);
        let due = live.plan_on_next || !live.direct || live.added.values().any(|n| *n >= threshold);
        if !due {
            return;
        }
        if live.direct {
            live.added.clear();
        }
        live.plan_on_next = false;
        // Planned on the newest state in the task (the committer's snapshot may be behind its
        // own commits, and a compaction that just landed is not in it).
        if !live.direct
            && compaction::plan(
                &live.table,
                &self.compaction,
                self.compaction.min_small_files,
                Packing::Tiered,
            )
            .is_empty()
        {
            return;
        }
        self.compacting.store(true, Ordering::Release);
        let (table, config, flag, slot) = (
            live.table.clone(),
            self.compaction.clone(),
            self.compacting.clone(),
            self.refreshed.clone(),
        );
        if live.direct {
            // The rewrite (the reading and writing) in the background; its commit by the
            // committer ([`Committer::commit_rewrite`]), which clears `compacting`.
            let (rewrite, ready) = (self.rewrite.clone(), self.rewrite_ready.clone());
            background().spawn(async move {
                let done = ClearOnDrop(Some(flag));
                let mut table = table;
                let result = match table.update_state().await {
                    Ok(()) => {
                        compaction::rewrite(
                            &table,
                            &config,
                            config.min_small_files,
                            Packing::Tiered,
                        )
                        .await
                    }
                    Err(e) => Err(e.into()),
                };
                match result {
                    Ok(Some(written)) => {
                        *rewrite.lock().expect("not poisoned") = Some(written);
                        ready.notify_one();
                        // Cleared once the committer has committed or dropped it.
                        done.keep();
                    }
                    Ok(None) => drop(done),
                    Err(e) => {
                        tracing::warn!(table = %table.table_url(), error = %e, "background compaction failed");
                        drop(done);
                    }
                }
                // The committer's next compaction starts from this state, not an older one.
                *slot.lock().expect("not poisoned") = Some(table);
            });
            return;
        }
        background().spawn(async move {
            let mut table = table;
            let result = match table.update_state().await {
                Ok(()) => {
                    compaction::compact(&table, &config, config.min_small_files, Packing::Tiered)
                        .await
                }
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(report) if report.files_removed == 0 => {}
                Ok(report) => {
                    tracing::info!(table = %table.table_url(), %report, "background compaction");
                    if config.vacuum {
                        compaction::vacuum_logged(&table).await;
                    }
                    // The committer takes the state with the compaction in it, rather than
                    // find out by a conflict and read the log itself.
                    if table.update_state().await.is_ok() {
                        *slot.lock().expect("not poisoned") = Some(table);
                    }
                }
                // Another writer compacted the same files first, or storage failed: the files
                // stay as they are and the next commit plans again.
                Err(e) => {
                    tracing::warn!(table = %table.table_url(), error = %e, "background compaction failed")
                }
            }
            flag.store(false, Ordering::Release);
        });
    }
}
