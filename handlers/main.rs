//! `fanout`: started with no arguments (as the Functions host starts it) it serves.

use clap::{Parser, Subcommand};
mod commands;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fanout",
    version,
    about = "Azure Functions custom handler: Cosmos DB change feed -> Delta Lake, Event Hubs, AI Search, Redis, with nothing lost"
)]
struct Cli {
    /// The Function App root (host.json, function folders, fanout.toml).
    /// Default: $AzureWebJobsScriptRoot, else the working directory.
    #[arg(long, global = true, env = "FANOUT_APP_ROOT")]
    app_root: Option<PathBuf>,
    /// The routing config. Default: fanout.toml in the app root.
    #[arg(long, global = true, env = "FANOUT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the host's invocations (the default). Port from --port or FUNCTIONS_CUSTOMHANDLER_PORT.
    Serve {
        #[arg(long, env = "FUNCTIONS_CUSTOMHANDLER_PORT")]
        port: Option<u16>,
    },
    /// Validate fanout.toml and the function folders without serving; exit 2 on problems.
    CheckConfig,
    /// Re-drive dead-lettered records (and/or files of host-format batches) through the sinks.
    Replay {
        /// Only records of this function.
        #[arg(long)]
        function: Option<String>,
        /// Only records of this sink.
        #[arg(long)]
        sink: Option<String>,
        /// Files of host-format request bodies (one JSON body per line, or a JSON array of
        /// bodies) to deliver as if the host sent them; needs --function. Skips the store.
        #[arg(long = "batches", value_name = "FILE")]
        batches: Vec<PathBuf>,
        /// List what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Retry budget per record and sink (default: the route's `budget_ms`). A replay is
        /// not bound by the host's function timeout: a sink that was down may need longer
        /// than an invocation's budget for its first write (a Delta table created, a
        /// connection pool warmed).
        #[arg(long, value_name = "MS")]
        budget_ms: Option<u64>,
    },
    Backfill(commands::backfill::Args),
    Verify(commands::verify::Args),
    History(commands::history::Args),
    Restore(commands::restore::Args),
    /// Refresh state tables (delta sinks with `mode = "state"`) from their changelogs now.
    Materialize {
        /// Only this function's state tables.
        #[arg(long)]
        function: Option<String>,
        /// Only this sink.
        #[arg(long)]
        sink: Option<String>,
    },
    /// Summarize a changelog table: versions, files, rows per operation, latest state.
    Changelog {
        /// Table location (path or URL). Default: every delta sink in the config.
        table: Option<String>,
    },
    /// Compact changelog tables now: rewrite each partition's small files into large ones (a
    /// commit that changes no data, like OPTIMIZE).
    Compact {
        /// Table location (path or URL). Default: every delta sink in the config.
        table: Option<String>,
    },
    /// Delete files that left changelog tables longer ago than the retention.
    Vacuum {
        /// Table location (path or URL). Default: every delta sink in the config.
        table: Option<String>,
        /// Retention in hours. Default: the table's delta.deletedFileRetentionDuration (7 days).
        #[arg(long)]
        retain_hours: Option<u64>,
        /// List the files; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Allow a retention shorter than the table's (unsafe while readers or writers run).
        #[arg(long)]
        force: bool,
    },
    /// Create or update the Azure AI Search indexes the config names, from their definitions.
    SearchIndex,
    /// Quickstart: start the handler as the host would, post sample Cosmos trigger batches in
    /// the host's exact wire format, and summarize what landed in the local Delta table.
    Demo {
        /// Generated batches to send (100 changes each), besides the captured real ones.
        #[arg(long, default_value_t = 10)]
        batches: usize,
    },
}

fn main() -> ExitCode {
    fanout::limit_malloc_arenas();
    let cli = Cli::parse();
    fanout::install_crypto_provider();
    let telemetry = fanout::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fanout: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = commands::Context::new(cli.app_root, cli.config);
    let result = runtime.block_on(async {
        let result = match cli.command.unwrap_or(Command::Serve { port: None }) {
            Command::Serve { port } => commands::serve::run(&ctx, port).await,
            Command::CheckConfig => commands::check::run(&ctx),
            Command::Replay {
                function,
                sink,
                batches,
                dry_run,
                budget_ms,
            } => {
                let budget = budget_ms.map(std::time::Duration::from_millis);
                commands::replay::run(&ctx, function, sink, batches, dry_run, budget).await
            }
            Command::Backfill(args) => commands::backfill::run(&ctx, args).await,
            Command::Verify(args) => commands::verify::run(&ctx, args).await,
            Command::History(args) => commands::history::run(&ctx, args).await,
            Command::Restore(args) => commands::restore::run(&ctx, args).await,
            Command::Materialize { function, sink } => {
                commands::maintain::materialize(&ctx, function, sink).await
            }
            Command::Changelog { table } => commands::changelog::run(&ctx, table).await,
            Command::Compact { table } => commands::maintain::compact(&ctx, table).await,
            Command::Vacuum {
                table,
                retain_hours,
                dry_run,
                force,
            } => commands::maintain::run_vacuum(&ctx, table, retain_hours, dry_run, force).await,
            Command::SearchIndex => commands::search_index::run(&ctx).await,
            Command::Demo { batches } => commands::demo::run(&ctx, batches).await,
        };
        // Checkpoints and compactions still running finish before the runtime is dropped.
        fanout::sinks::delta::settle_background(std::time::Duration::from_secs(10)).await;
        result
    });
    // Outside the runtime: flushing the OTLP exporters blocks.
    drop(runtime);
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fanout: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
