use super::{CommandError, Context};
use fanout::sinks::delta::{DeltaConfig, DeltaMode, read_changelog, table_url};
use std::collections::HashMap;

/// Prints a summary of one table, or of every delta sink's table in the config.
pub async fn run(ctx: &Context, table: Option<String>) -> Result<(), CommandError> {
    for config in delta_tables(ctx, table, false)? {
        summarize_table(
            &config.table,
            config.storage_options.clone().into_iter().collect(),
            &ctx.app_root,
        )
        .await?;
    }
    Ok(())
}

/// The table given on the command line (default settings), or every delta sink's table
/// (changelogs only, unless `state_tables`).
pub fn delta_tables(
    ctx: &Context,
    table: Option<String>,
    state_tables: bool,
) -> Result<Vec<DeltaConfig>, CommandError> {
    if let Some(t) = table {
        return Ok(vec![DeltaConfig::at(t)]);
    }
    let config = ctx.load()?;
    Ok(config
        .routes
        .values()
        .flat_map(|route| route.sinks.values())
        .filter_map(|sink| sink.as_delta().cloned())
        .filter(|c| state_tables || c.mode == DeltaMode::Changelog)
        .collect())
}

/// Reads one changelog table and prints its summary.
pub async fn summarize_table(
    location: &str,
    options: HashMap<String, String>,
    app_root: &std::path::Path,
) -> Result<(), CommandError> {
    let url = table_url(location, app_root).map_err(|e| CommandError::Usage(e.to_string()))?;
    let snapshot = read_changelog(url.clone(), options)
        .await
        .map_err(|e| CommandError::Failed(format!("cannot read {url}: {e}")))?;
    print_summary(url.as_str(), &snapshot);
    Ok(())
}

fn print_summary(url: &str, snapshot: &fanout::sinks::delta::ChangelogSnapshot) {
    let s = snapshot.summary();
    println!("changelog {url}");
    println!(
        "  table version {}, {} data files",
        snapshot.version, snapshot.files
    );
    let ops: Vec<String> = s
        .by_operation
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    println!("  {} rows: {}", s.rows, ops.join(", "));
    println!(
        "  {} documents, {} live (newest change is not a delete)",
        s.distinct_ids, s.live_documents
    );
    println!("  duplicate (id, lsn) rows: {}", s.duplicate_rows);
}
