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
//! that safe). After a commit, a partition with too many small files is compacted in the
//! background, one compaction at a time.

use super::compaction::{self, CompactionReport};
use super::config::{CompactionConfig, DeltaConfig, GroupCommitConfig};
use super::error;
use super::schema::ChangelogSchema;
use super::table::{
    self, AppendOutcome, PendingAppend, TXN_RETENTION_MS, TableSettings, batch_app_id,
    commit_appends, evolve_schema, open_or_create,
};
use super::txn_index::TxnIndex;
use crate::change::Change;
use crate::sinks::BatchContext;
use crate::sinks::SinkError;
use chrono::Utc;
use deltalake::DeltaTable;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
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
        compaction::compact(&table, &self.compaction, 2).await
    }

    fn committer(&self) -> &mpsc::UnboundedSender<Request> {
        self.committer.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let committer = Committer {
                settings: self.settings.clone(),
                group: self.group.clone(),
                compaction: self.compaction.clone(),
                table: None,
                carried: VecDeque::new(),
                compacting: Arc::new(AtomicBool::new(false)),
                last_group_len: 1,
                exact: Default::default(),
            };
            tokio::spawn(committer.run(rx));
            tx
        })
    }
}

struct Committer {
    settings: Arc<TableSettings>,
    group: GroupCommitConfig,
    compaction: CompactionConfig,
    /// The long-lived table state and its batch identities; `None` after a failure (reloaded
    /// before the next commit).
    table: Option<(DeltaTable, TxnIndex)>,
    /// Requests deferred to the next group (a second batch with an identity already in the group).
    carried: VecDeque<Request>,
    compacting: Arc<AtomicBool>,
    /// How many batches the previous group held: the concurrency to expect.
    last_group_len: usize,
    /// The table's change identities, loaded the first time a replay needs them.
    exact: super::table::ExactRows,
}

impl Committer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        use futures::FutureExt;
        while let Some(group) = self.collect(&mut rx).await {
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
                self.table = None;
                continue;
            }
            self.maybe_compact();
        }
    }

    /// The next group: the first waiting request, then whatever arrives within the window.
    async fn collect(&mut self, rx: &mut mpsc::UnboundedReceiver<Request>) -> Option<Vec<Request>> {
        let first = match self.carried.pop_front() {
            Some(r) => r,
            None => rx.recv().await?,
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
        let (table, mut index) = match self.table.take() {
            // No catch-up read before committing: the commit itself checks every commit other
            // writers made since our version (a `txn` of one of our batches there is a
            // conflict, and the group is re-checked), and leaves the state at the newest
            // version. That saves a log listing per commit.
            Some(kept) => kept,
            None => {
                let table = open_or_create(&self.settings).await?;
                let index = TxnIndex::load(&table, TXN_RETENTION_MS).await?;
                (table, index)
            }
        };
        let mut table = evolve_schema(table, &self.settings.schema).await?;
        index.catch_up(&table).await?;
        let outcomes = commit_appends(&mut table, &index, appends, &mut self.exact).await?;
        index.catch_up(&table).await?;
        self.table = Some((table, index));
        Ok(outcomes)
    }

    fn maybe_compact(&self) {
        if !self.compaction.enabled || self.compacting.load(Ordering::Acquire) {
            return;
        }
        let Some((table, _)) = &self.table else {
            return;
        };
        if compaction::plan(table, &self.compaction, self.compaction.min_small_files).is_empty() {
            return;
        }
        self.compacting.store(true, Ordering::Release);
        let (table, config, flag) = (
            table.clone(),
            self.compaction.clone(),
            self.compacting.clone(),
        );
        tokio::spawn(async move {
            // Plan again on the newest state: a compaction that just landed is not in the
            // committer's snapshot yet, and its files must not be rewritten twice.
            let mut table = table;
            let result = match table.update_state().await {
                Ok(()) => compaction::compact(&table, &config, config.min_small_files).await,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(report) => {
                    tracing::info!(table = %table.table_url(), %report, "background compaction");
                    if config.vacuum {
                        compaction::vacuum_logged(&table).await;
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
