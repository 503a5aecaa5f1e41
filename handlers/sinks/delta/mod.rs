//! `type = "delta"`: an append-only changelog table, one row per change, partitioned by date.
//! Local paths and Azure Blob / ADLS (`az://`, `abfss://`). The embedded default sink.

mod config;
mod reader;
mod schema;
mod table;

pub use config::DeltaConfig;
pub use reader::{ChangelogRow, ChangelogSnapshot, read_changelog};
pub use schema::{ARROW_SCHEMA, PARTITION_COLUMN, encode};
pub use table::{AppendOutcome, ChangelogTable, batch_app_id, table_url};

use super::{BatchContext, Delivery, Sink, SinkError};
use crate::change::Change;
use async_trait::async_trait;
use deltalake::DeltaTableError;
use std::path::Path;

pub const KIND: &str = "delta";

pub struct DeltaSink {
    name: String,
    table: ChangelogTable,
}

impl DeltaSink {
    pub fn new(name: &str, config: &DeltaConfig, app_root: &Path) -> Result<Self, SinkError> {
        // Registers the az:// / abfss:// URL schemes with delta-rs (idempotent).
        deltalake::azure::register_handlers(None);
        let url = table::table_url(&config.table, app_root).map_err(SinkError::permanent)?;
        let options = config.storage_options.clone().into_iter().collect();
        Ok(Self {
            name: name.to_string(),
            table: ChangelogTable::new(url, options),
        })
    }

    pub fn table(&self) -> &ChangelogTable {
        &self.table
    }
}

/// Bad settings or data the table cannot take are permanent; storage, network and commit
/// conflicts are transient.
fn classify(e: DeltaTableError) -> SinkError {
    let message = format!("delta: {e}");
    match e {
        DeltaTableError::SchemaMismatch { .. }
        | DeltaTableError::InvalidTableLocation(_)
        | DeltaTableError::Arrow { .. }
        | DeltaTableError::InvalidJsonLog { .. } => SinkError::permanent(message),
        _ => SinkError::transient(message),
    }
}

#[async_trait]
impl Sink for DeltaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    async fn deliver(
        &self,
        ctx: &BatchContext,
        changes: &[&Change],
    ) -> Result<Delivery, SinkError> {
        let out = self
            .table
            .append(ctx, &self.name, changes)
            .await
            .map_err(classify)?;
        let version = out
            .table_version
            .map(|v| format!(", table version {v}"))
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
