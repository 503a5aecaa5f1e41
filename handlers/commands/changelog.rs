use super::{CommandError, Context};
use fanout::sinks::SinkConfig;
use fanout::sinks::delta::{read_changelog, table_url};
use std::collections::HashMap;

/// Prints a summary of one table, or of every delta sink's table in the config.
pub async fn run(ctx: &Context, table: Option<String>) -> Result<(), CommandError> {
    let mut tables: Vec<(String, HashMap<String, String>)> = Vec::new();
    match table {
        Some(t) => tables.push((t, HashMap::new())),
        None => {
            let config = ctx.load()?;
            for route in config.routes.values() {
                for sink in route.sinks.values() {
                    let SinkConfig::Delta(d) = sink else { continue };
                    tables.push((
                        d.table.clone(),
                        d.storage_options.clone().into_iter().collect(),
                    ));
                }
            }
        }
    }
    for (location, options) in tables {
        summarize_table(&location, options, &ctx.app_root).await?;
    }
    Ok(())
}

/// Reads one changelog table and prints its summary.
pub async fn summarize_table(
    location: &str,
    options: HashMap<String, String>,
    app_root: &std::path::Path,
) -> Result<(), CommandError> {
    let url = table_url(location, app_root).map_err(CommandError::Usage)?;
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
