//! `fanout compact` and `fanout vacuum`: table maintenance on demand (the handler also
//! compacts in the background; see the delta sink's `compaction` settings).

use super::changelog::delta_tables;
use super::{CommandError, Context};
use fanout::sinks::delta::{ChangelogTable, open, register_storage_handlers, table_url, vacuum};

/// Rewrites the small files of every partition that has at least two.
pub async fn compact(ctx: &Context, table: Option<String>) -> Result<(), CommandError> {
    register_storage_handlers();
    for config in delta_tables(ctx, table, false)? {
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
    // State tables too: every refresh leaves the files it rewrote for vacuum.
    for config in delta_tables(ctx, table, true)? {
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

/// Refreshes state tables now (`mode = "state"`): the changes their changelogs gained since
/// the last refresh.
pub async fn materialize(
    ctx: &Context,
    function: Option<String>,
    sink: Option<String>,
) -> Result<(), CommandError> {
    register_storage_handlers();
    let config = ctx.load()?;
    let mut found = 0;
    for (name, route) in &config.routes {
        if function.as_ref().is_some_and(|f| f != name) {
            continue;
        }
        for (sink_name, s) in &route.sinks {
            if sink.as_ref().is_some_and(|w| w != sink_name) {
                continue;
            }
            let Some(table) = s.as_changelog().and_then(|v| v.state_table()) else {
                continue;
            };
            found += 1;
            let report = fanout::sinks::delta::materialize::materialize(&table)
                .await
                .map_err(|e| {
                    CommandError::Failed(format!("refreshing the state table {}: {e}", table.url))
                })?;
            println!(
                "materialize `{name}`.`{sink_name}` {} from {} version {}: {} changes{} over {} changelog files, {} buckets rewritten, {} rows in them, {} bytes written, {} removed",
                table.url,
                table.changelog,
                report.changelog_version,
                report.changes,
                if report.rebuilt { " (rebuilt)" } else { "" },
                report.changelog_files_read,
                report.buckets_rewritten,
                report.rows,
                report.bytes_added,
                report.bytes_removed
            );
        }
    }
    if found == 0 {
        return Err(CommandError::Usage(format!(
            "no state table (a delta sink with `mode = \"state\"`){}{} in {}",
            function
                .map(|f| format!(" in function `{f}`"))
                .unwrap_or_default(),
            sink.map(|s| format!(" named `{s}`")).unwrap_or_default(),
            config.file.display()
        )));
    }
    Ok(())
}
