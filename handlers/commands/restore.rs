//! `fanout restore`: the state as of a time, from the changelog, to JSON Lines files.

use super::{CommandError, Context};
use fanout::changelog::restore::{JsonLines, RestoreError, RestoreRequest, plan};
use fanout::changelog::{changelog_of, partition_key_wire};
use fanout::storage::Location;

/// The documents as they were at a time, from the changelog: for each document its newest
/// change at or before the time, unless that was a delete. Written as JSON Lines, system
/// properties removed.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub function: String,
    /// The time (RFC 3339, e.g. 2026-01-31T12:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub as_of: String,
    /// Where the `part-NNNNN.jsonl` files go: a folder (under the app root unless absolute)
    /// or an Azure storage URL.
    #[arg(long, value_name = "DEST")]
    pub to: String,
    /// Only this partition key value (`c1`; JSON for other types or a hierarchical key).
    #[arg(long, value_name = "VALUE")]
    pub partition_key: Option<String>,
    /// Only this document id.
    #[arg(long)]
    pub id: Option<String>,
    /// Count what would be restored; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace the `.jsonl` files of a destination that is not empty.
    #[arg(long)]
    pub overwrite: bool,
    /// The changelog sink, when the route has several.
    #[arg(long)]
    pub sink: Option<String>,
    /// Restore without a recorded baseline: the changelog holds every document from the
    /// container's creation (its trigger started from the beginning).
    #[arg(long)]
    pub without_baseline: bool,
}

fn failure(e: RestoreError) -> CommandError {
    if e.is_usage() {
        CommandError::Usage(e.to_string())
    } else {
        CommandError::Failed(e.to_string())
    }
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CommandError> {
    let as_of = chrono::DateTime::parse_from_rfc3339(args.as_of.trim())
        .map_err(|e| {
            CommandError::Usage(format!(
                "--as-of `{}` is not an RFC 3339 time such as 2026-01-31T12:00:00Z: {e}",
                args.as_of
            ))
        })?
        .to_utc();
    let config = ctx.load()?;
    let route = config.routes.get(&args.function).ok_or_else(|| {
        CommandError::Usage(format!(
            "no function `{}` in {}; its functions: {}",
            args.function,
            config.file.display(),
            config.routes.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let table = changelog_of(route, args.sink.as_deref())
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    let to = Location::parse(&args.to, Default::default(), &ctx.app_root)
        .map_err(|e| CommandError::Usage(format!("--to: {e}")))?;
    let request = RestoreRequest {
        as_of,
        partition_key: args.partition_key.as_deref().map(partition_key_wire),
        id: args.id.clone(),
        check_baseline: !args.without_baseline,
    };
    // Every check before the table is read twice.
    let destination = if args.dry_run {
        None
    } else {
        Some(
            JsonLines::open(&to, args.overwrite)
                .await
                .map_err(failure)?,
        )
    };
    let (chosen, planned) = plan(&table, &args.function, &request)
        .await
        .map_err(failure)?;
    let scope = match (&request.partition_key, &request.id) {
        (Some(pk), Some(id)) => format!("document {id} (partition key {pk})"),
        (Some(pk), None) => format!("partition key {pk}"),
        (None, Some(id)) => format!("documents with id {id}"),
        (None, None) => "every document".to_string(),
    };
    println!(
        "restore of {scope} of `{}` as of {} from `{}` ({}): {} documents existed then, {} were deleted by then; {} of {} data files read{}",
        args.function,
        as_of.to_rfc3339(),
        table.sink,
        table.url,
        planned.documents,
        planned.deleted,
        planned.scan.files_read,
        planned.scan.files,
        planned
            .baseline
            .as_ref()
            .map(|b| format!("; baseline complete since {b}"))
            .unwrap_or_else(|| "; no baseline check (--without-baseline)".into())
    );
    let Some(destination) = destination else {
        println!(
            "dry run: would write {} documents to {to}",
            planned.documents
        );
        return Ok(());
    };
    let report = destination
        .write(&table, &request, chosen, planned)
        .await
        .map_err(failure)?;
    println!(
        "wrote {} documents in {} files to {to}",
        report.written,
        report.files.len()
    );
    println!(
        "report: {}",
        serde_json::to_string(&report).expect("a report serializes")
    );
    Ok(())
}
