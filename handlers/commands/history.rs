//! `fanout history`: every change of one document from the changelog, oldest first.

use super::{CommandError, Context};
use fanout::changelog::history::{HistoryEntry, history};
use fanout::changelog::{changelog_of, partition_key_wire};
use fanout::sinks::delta::{RowFilter, scan};

/// Every change of one document: time, lsn, operation and the fields it touched, oldest
/// first, from the function's changelog.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub function: String,
    /// The document's id.
    #[arg(long)]
    pub id: String,
    /// Its partition key value (`c1`; JSON for other types or a hierarchical key: `5`,
    /// `["t1","u1"]`). Default: every document with this id.
    #[arg(long, value_name = "VALUE")]
    pub partition_key: Option<String>,
    /// The changelog sink, when the route has several.
    #[arg(long)]
    pub sink: Option<String>,
    /// One JSON object per change (with the document), instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CommandError> {
    let config = ctx.load()?;
    let route = super::route_of(&config, &args.function)?;
    let table = changelog_of(route, args.sink.as_deref())
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    let (sink, url) = (&table.sink, &table.url);
    let filter = RowFilter {
        id: Some(args.id.clone()),
        partition_key: args.partition_key.as_deref().map(partition_key_wire),
        ts_at_most: None,
        without_documents: false,
    };
    let mut rows = Vec::new();
    let stats = scan(
        url.clone(),
        table.storage_options.clone(),
        None,
        &filter,
        async |batch| -> Result<(), deltalake::DeltaTableError> {
            rows.extend(batch);
            Ok(())
        },
    )
    .await
    .map_err(|e| CommandError::Failed(format!("reading {url}: {e}")))?;
    let entries = history(rows);
    if args.json {
        for e in &entries {
            println!("{}", serde_json::to_string(e).expect("an entry serializes"));
        }
        return Ok(());
    }
    println!(
        "history of `{}`{} in `{sink}` ({url}): {} changes ({} of {} data files read)",
        args.id,
        filter
            .partition_key
            .as_ref()
            .map(|pk| format!(" (partition key {pk})"))
            .unwrap_or_default(),
        entries.len(),
        stats.files_read,
        stats.files
    );
    for e in &entries {
        println!("{}", line(e));
    }
    Ok(())
}

fn line(e: &HistoryEntry) -> String {
    let op = match &e.delete_kind {
        Some(kind) => format!("{} ({kind})", e.operation),
        None => e.operation.clone(),
    };
    let mut touched = Vec::new();
    for (what, fields) in [
        ("added", &e.added),
        ("changed", &e.changed),
        ("removed", &e.removed),
    ] {
        if !fields.is_empty() {
            touched.push(format!("{what} {}", fields.join(", ")));
        }
    }
    format!(
        "  {}  {}  lsn {:<8} {:<14} {}",
        e.time.as_deref().unwrap_or("(no _ts)"),
        e.partition_key,
        e.lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
        op,
        touched.join("; ")
    )
}
