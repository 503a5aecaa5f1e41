//! `type = "delta"`: an append-only changelog table, one row per change, partitioned by date.
//! Local paths and Azure Blob / ADLS (`az://`, `abfss://`). The embedded default sink.

pub mod baseline;
mod commit;
mod compaction;
mod config;
mod error;
pub mod materialize;
mod reader;
mod scan;
mod schema;
mod state;
mod table;
mod txn_index;
mod writer;

pub use compaction::{CompactionReport, VacuumReport, vacuum};
pub use config::{
    ColumnType, CompactionConfig, DeltaConfig, DeltaMode, GroupCommitConfig, TypedColumn,
    ValidatedDelta,
};
pub use reader::{ChangelogRow, ChangelogSnapshot, read_changelog};
pub use scan::{RowFilter, ScanStats, scan};
pub use schema::{ARROW_SCHEMA, ChangelogSchema, EncodeError, PARTITION_COLUMN, encode};
pub use table::{AppendOutcome, batch_app_id, open, table_url};
pub use writer::{ChangelogTable, settle_background};

use super::{BatchContext, Delivery, Sink, SinkError};
use crate::change::Change;
use async_trait::async_trait;
use std::sync::Arc;

pub const KIND: &str = "delta";

pub struct DeltaSink {
    name: String,
    table: ChangelogTable,
    /// `mode = "state"`: the table is materialized from a changelog, not appended to.
    state: Option<Arc<materialize::Refresher>>,
}

impl DeltaSink {
    pub fn new(name: &str, v: &ValidatedDelta) -> Result<Self, SinkError> {
        register_storage_handlers();
        let state = v.state_table().map(|t| {
            Arc::new(materialize::Refresher::new(
                t,
                std::time::Duration::from_secs(v.config.refresh_seconds),
            ))
        });
        Ok(Self {
            name: name.to_string(),
            table: ChangelogTable::new(v.url.clone(), &v.config).with_source(v.source.clone()),
            state,
        })
    }

    pub fn table(&self) -> &ChangelogTable {
        &self.table
    }
}

/// Registers the az:// / abfss:// URL schemes with delta-rs (idempotent).
pub fn register_storage_handlers() {
    deltalake::azure::register_handlers(None);
}

#[async_trait]
impl Sink for DeltaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn state(&self) -> Option<&dyn super::state::SinkState> {
        // A state table is not compared by verify yet (its changelog is).
        match self.state {
            None => Some(self),
            Some(_) => None,
        }
    }

    async fn baseline_complete(
        &self,
        function: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), SinkError> {
        if self.state.is_some() {
            return Ok(());
        }
        let scope = self
            .table
            .source()
            .map(str::to_string)
            .unwrap_or_else(|| format!("/function/{function}"));
        baseline::record(
            self.table.url().clone(),
            self.table.storage_options().clone(),
            &scope,
            at,
        )
        .await
        .map_err(|e| {
            SinkError::transient(format!("recording the baseline of {}", self.table.url()))
                .with_source(e)
        })
    }

    async fn deliver(
        &self,
        ctx: &BatchContext,
        changes: &[&Change],
    ) -> Result<Delivery, SinkError> {
        if let Some(state) = &self.state {
            // The changelog sink of the route holds these changes durably; the state table
            // takes them from it at its next refresh, which this asks for.
            state.poke();
            return Ok(Delivery::done(format!(
                "{} changes: the state table refreshes from its changelog within {} s",
                changes.len(),
                state.interval().as_secs()
            )));
        }
        let out = self.table.append(ctx, &self.name, changes).await?;
        let version = out
            .table_version
            .map(|v| match out.batches_in_commit {
                0 | 1 => format!(", table version {v}"),
                n => format!(", table version {v} (group commit of {n} batches)"),
            })
            .unwrap_or_default();
        Ok(Delivery::done(if out.rows_already_present > 0 {
            format!(
                "{} rows appended, {} already present{version}",
                out.rows_written, out.rows_already_present
            )
        } else {
            format!("{} rows appended{version}", out.rows_written)
        }))
    }
}
