//! `fanout compact` and `fanout vacuum`: table maintenance on demand (the handler also
//! compacts in the background; see the delta sink's `compaction` settings).

use super::changelog::delta_tables;
use super::{CommandError, Context};
use fanout::sinks::delta::{ChangelogTable, open, register_storage_handlers, table_url, vacuum};

/// Rewrites the small files of every partition that has at least two.
pub async fn compact(ctx: &Context, table: Option<String>) -> Result<(), CommandError> {
    register_storage_handlers();
    for config in delta_tables(ctx, table)? {
        let url = table_url(&config.table, &ctx.app_root)
            .map_err(|e| CommandError::Usage(e.to_string()))?;
        let report = ChangelogTable::new(url.clone(), &config)
            .compact()
            .await
            .map_err(|e| CommandError::Failed(format!("cannot compact {url}: {e}")))?;
        println!("compact {url}: {report}");
    }
    Ok(())
}

/// Deletes files that left the table longer ago than the retention.
pub async fn run_vacuum(
    ctx: &Context,
    table: Option<String>,
    retain_hours: Option<u64>,
    dry_run: bool,
    force: bool,
) -> Result<(), CommandError> {
    register_storage_handlers();
    for config in delta_tables(ctx, table)? {
        let url = table_url(&config.table, &ctx.app_root)
            .map_err(|e| CommandError::Usage(e.to_string()))?;
        let table = open(
            url.clone(),
            config.storage_options.clone().into_iter().collect(),
        )
        .await
        .map_err(|e| CommandError::Failed(format!("cannot open {url}: {e}")))?;
        let report = vacuum(table, retain_hours, dry_run, force)
            .await
            .map_err(|e| CommandError::Failed(format!("cannot vacuum {url}: {e}")))?;
        let verb = if report.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        println!("vacuum {url}: {verb} {} files", report.files.len());
        for file in &report.files {
            println!("  {file}");
        }
    }
    Ok(())
}
