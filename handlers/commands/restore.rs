//! `fanout restore`: the state as of a time, from the changelog, to JSON Lines files.

use super::{CommandError, Context};
use fanout::changelog::restore::{JsonLines, RestoreError, RestoreRequest, plan};
use fanout::changelog::to_cosmos::{
    CosmosRestore, CosmosRestoreError, CosmosRestoreOptions, Progress, RestoreCheckpoints,
};
use fanout::changelog::{changelog_of, partition_key_wire};
use fanout::cosmos::Throttle;
use fanout::storage::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The documents as they were at a time, from the changelog: for each document its newest
/// change at or before the time, unless that was a delete. Written as JSON Lines (system
/// properties removed), or into a Cosmos DB container (`--to cosmos --container NAME`).
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub function: String,
    /// The time (RFC 3339, e.g. 2026-01-31T12:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub as_of: String,
    /// Where the `part-NNNNN.jsonl` files go: a folder (under the app root unless absolute)
    /// or an Azure storage URL; or `cosmos`, with `--container`.
    #[arg(long, value_name = "DEST")]
    pub to: String,
    /// What `--to` (a location) receives: `jsonl` files, or `delta`, a state table as of the
    /// time (one row per document, as `mode = "state"` keeps it).
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// With `--format delta`: hash buckets of the partition key (the table's partitions).
    #[arg(long, default_value_t = 64)]
    pub buckets: u32,
    /// With `--to cosmos`: the container, CONTAINER (in the function's database),
    /// DATABASE/CONTAINER or ENDPOINT/DATABASE/CONTAINER.
    #[arg(long, value_name = "CONTAINER")]
    pub container: Option<String>,
    /// With `--to cosmos` on another account: the app setting that reaches it (a connection
    /// string, or `NAME__accountEndpoint` for Entra).
    #[arg(long, value_name = "SETTING")]
    pub connection: Option<String>,
    /// With `--to cosmos`: also delete the container's documents that did not exist at the
    /// time (restore in place).
    #[arg(long)]
    pub exact: bool,
    /// With `--to cosmos`: continue the unfinished restore from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// With `--to cosmos`: start over, discarding an unfinished restore's checkpoint.
    #[arg(long)]
    pub restart: bool,
    /// With `--to cosmos`: keep the write rate under this many request units per second.
    #[arg(long, value_name = "RU")]
    pub max_ru_per_second: Option<f64>,
    /// With `--to cosmos`: documents written at once.
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
    /// Where restore checkpoints live (a folder under the app root, or an Azure storage URL).
    #[arg(long, default_value = ".fanout/restore", value_name = "LOCATION")]
    pub state: String,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Delta,
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
    let route = super::route_of(&config, &args.function)?;
    let table = changelog_of(route, args.sink.as_deref())
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    let to_cosmos = args.to == "cosmos";
    if to_cosmos != args.container.is_some() {
        return Err(CommandError::Usage(
            "`--to cosmos` needs `--container NAME`, and `--container` goes with `--to cosmos`"
                .into(),
        ));
    }
    if to_cosmos && args.format == Format::Delta {
        return Err(CommandError::Usage(
            "--format delta writes a table to a location: not with `--to cosmos`".into(),
        ));
    }
    if !to_cosmos && (args.exact || args.resume || args.restart || args.connection.is_some()) {
        return Err(CommandError::Usage(
            "--exact, --resume, --restart and --connection go with `--to cosmos`".into(),
        ));
    }
    if args.resume && args.restart {
        return Err(CommandError::Usage(
            "--resume and --restart exclude each other".into(),
        ));
    }
    super::check_rate(args.max_ru_per_second, args.parallel)?;
    let request = RestoreRequest {
        as_of,
        partition_key: args.partition_key.as_deref().map(partition_key_wire),
        id: args.id.clone(),
        check_baseline: !args.without_baseline,
        version: None,
    };
    if to_cosmos {
        return to_container(ctx, &args, route, &table, request).await;
    }
    let to = Location::parse(&args.to, Default::default(), &ctx.app_root)
        .map_err(|e| CommandError::Usage(format!("--to: {e}")))?;
    if args.format == Format::Delta {
        return to_state_table(&args, &table, request, &to).await;
    }
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
    // Pass 2 reads the version pass 1 read (appends since then are not restored).
    let request = RestoreRequest {
        version: Some(planned.scan.version),
        ..request
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

fn cosmos_failure(e: CosmosRestoreError) -> CommandError {
    if e.is_usage() {
        CommandError::Usage(e.to_string())
    } else {
        CommandError::Failed(e.to_string())
    }
}

async fn to_container(
    ctx: &Context,
    args: &Args,
    route: &fanout::config::RouteConfig,
    table: &fanout::changelog::Changelog,
    request: RestoreRequest,
) -> Result<(), CommandError> {
    let state = Location::parse(&args.state, Default::default(), &ctx.app_root)
        .map_err(|e| CommandError::Usage(format!("--state: {e}")))?;
    let checkpoints = RestoreCheckpoints::open(&state, &args.function).map_err(failure)?;
    let throttle = Arc::new(Throttle::new(args.max_ru_per_second));
    let restore = CosmosRestore::open(
        route,
        args.container.as_deref().unwrap_or_default(),
        args.connection.as_deref(),
        &|name| ctx.settings.get(name),
        azure_data_cosmos::CosmosClientBuilder::new(),
        throttle,
        checkpoints,
    )
    .await
    .map_err(cosmos_failure)?;
    if args.dry_run {
        let (_, planned) = plan(table, &args.function, &request)
            .await
            .map_err(failure)?;
        println!(
            "dry run: would upsert {} documents into {} ({} were deleted by the time){}",
            planned.documents,
            restore.target.describe(),
            planned.deleted,
            if args.exact {
                "; --exact would then delete the container's other documents"
            } else {
                ""
            }
        );
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let on_ctrl_c = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("fanout: stopping after the documents in flight (Ctrl-C again to abort)");
            on_ctrl_c.store(true, Ordering::Relaxed);
            let _ = tokio::signal::ctrl_c().await;
            std::process::exit(130);
        }
    });
    let bar = Bar::new();
    let options = CosmosRestoreOptions {
        parallel: args.parallel,
        exact: args.exact,
        overwrite: args.overwrite,
        resume: args.resume,
        restart: args.restart,
    };
    let report = restore
        .run(&args.function, table, &request, &options, &bar, &stop)
        .await;
    bar.0.finish_and_clear();
    let report = report.map_err(cosmos_failure)?;
    let s = &report.spent;
    println!(
        "restored {} documents as of {} into {}{}: {} written by this run, {} deleted (--exact); {:.1} RU ({:.1} RU/s), {} throttled (429), {:.1} s",
        report.plan.documents,
        request.as_of.to_rfc3339(),
        report.container,
        if report.resumed { " (resumed)" } else { "" },
        report.written,
        report.deleted,
        s.request_units,
        s.ru_per_second(),
        s.throttled,
        s.seconds
    );
    println!(
        "report: {}",
        serde_json::to_string(&report).expect("a report serializes")
    );
    Ok(())
}

/// A progress bar on a terminal (nothing elsewhere).
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new() -> Self {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} documents, ETA {eta}")
                .expect("a template"),
        );
        Self(bar)
    }
}

impl Progress for Bar {
    fn written(&self, done: u64, of: usize) {
        self.0.set_length(of as u64);
        self.0.set_position(done);
    }
}

/// `--format delta`: a state table as of the time.
async fn to_state_table(
    args: &Args,
    table: &fanout::changelog::Changelog,
    request: RestoreRequest,
    to: &Location,
) -> Result<(), CommandError> {
    if !(1..=4096).contains(&args.buckets) {
        return Err(CommandError::Usage("--buckets must be 1-4096".into()));
    }
    fanout::sinks::delta::register_storage_handlers();
    // The baseline check and the counts (pass 1), as for every destination.
    let (_, planned) = plan(table, &args.function, &request)
        .await
        .map_err(failure)?;
    if args.dry_run {
        println!(
            "dry run: would write a state table of {} documents to {to}",
            planned.documents
        );
        return Ok(());
    }
    let state = fanout::sinks::delta::materialize::StateTable {
        url: to.url().clone(),
        storage_options: to.options().clone().into_iter().collect(),
        changelog: table.url.clone(),
        changelog_options: table.storage_options.clone(),
        buckets: args.buckets,
        columns: fanout::sinks::delta::ChangelogSchema::new(&[]),
    };
    let filter = fanout::sinks::delta::RowFilter {
        id: request.id.clone(),
        partition_key: request.partition_key.clone(),
        ts_at_most: Some(request.as_of.timestamp()),
        without_documents: false,
    };
    let report = fanout::sinks::delta::materialize::build_as_of(&state, &filter)
        .await
        .map_err(|e| {
            let text = e.to_string();
            if text.contains("holds a table already") {
                CommandError::Usage(format!("--to {to}: {text}"))
            } else {
                CommandError::Failed(format!("writing the state table {to}: {text}"))
            }
        })?;
    println!(
        "wrote a state table of {} documents as of {} to {to} ({} buckets, {} bytes)",
        report.rows,
        request.as_of.to_rfc3339(),
        report.buckets_rewritten,
        report.bytes_added
    );
    Ok(())
}
