//! `fanout backfill`: the command line around `fanout::backfill` - arguments checked before
//! any work (exit 2), the container opened from the trigger's own settings, progress bars per
//! feed range, Ctrl-C ending after the pages in flight (checkpointed), a summary and a JSON
//! report.

use super::{CommandError, Context};
use fanout::backfill::checkpoint::{CheckpointStore, RangeState};
use fanout::backfill::{Backfill, BackfillError, BackfillOptions, Observer};
use fanout::cosmos::{Start, Throttle};
use fanout::storage::Location;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Fill sinks from the live container: every item's current version (or the changes since a
/// time) read from its change feed, per feed range in parallel, through the same pipeline as
/// live batches. Resumable; overlapping with the live trigger is harmless.
#[derive(clap::Args)]
pub struct Args {
    /// The function whose container and route to use.
    #[arg(long)]
    pub function: String,
    /// Only these sinks of the route (repeat). Default: every sink fanout delivers to itself.
    #[arg(long = "sink", value_name = "SINK")]
    pub sinks: Vec<String>,
    /// Read every item's current version (the default).
    #[arg(long)]
    pub from_beginning: bool,
    /// Only changes since this time (RFC 3339, e.g. 2026-01-31T12:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Keep the read rate under this many request units per second (429s are honoured anyway).
    #[arg(long, value_name = "RU")]
    pub max_ru_per_second: Option<f64>,
    /// Feed ranges read at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Items per change feed page (and per delivery to the sinks).
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    /// Continue the unfinished backfill of this function from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Start over, discarding an unfinished backfill's checkpoint.
    #[arg(long)]
    pub restart: bool,
    /// Where checkpoints live (a folder under the app root, or an Azure storage URL).
    #[arg(long, default_value = ".fanout/backfill", value_name = "LOCATION")]
    pub state: String,
}

/// `--since`: an RFC 3339 time, as epoch seconds.
pub fn parse_since(since: &str) -> Result<i64, CommandError> {
    chrono::DateTime::parse_from_rfc3339(since.trim())
        .map(|t| t.timestamp())
        .map_err(|e| {
            CommandError::Usage(format!(
                "--since `{since}` is not an RFC 3339 time such as 2026-01-31T12:00:00Z: {e}"
            ))
        })
}

fn usage_or_failure(e: BackfillError) -> CommandError {
    if e.is_usage() {
        CommandError::Usage(e.to_string())
    } else {
        CommandError::Failed(e.to_string())
    }
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CommandError> {
    if args.from_beginning && args.since.is_some() {
        return Err(CommandError::Usage(
            "--from-beginning and --since exclude each other".into(),
        ));
    }
    if args.resume && args.restart {
        return Err(CommandError::Usage(
            "--resume and --restart exclude each other".into(),
        ));
    }
    super::check_rate(args.max_ru_per_second, args.parallel)?;
    if args.page_size == 0 {
        return Err(CommandError::Usage("--page-size must be at least 1".into()));
    }
    let start = match (&args.since, args.from_beginning) {
        (Some(since), _) => Some(Start::Since(parse_since(since)?)),
        (None, true) => Some(Start::Beginning),
        (None, false) => None,
    };
    let (config, pipeline) = ctx.pipeline()?;
    let state = Location::parse(&args.state, Default::default(), &ctx.app_root)
        .map_err(|e| CommandError::Usage(format!("--state: {e}")))?;
    let checkpoints = CheckpointStore::open(&state, &args.function)
        .map_err(|e| CommandError::Usage(format!("--state: {e}")))?;
    // Every check that needs no service runs before the first request.
    let backfill = Backfill::prepare(
        &config,
        &pipeline,
        &args.function,
        &args.sinks,
        &|name| ctx.settings.get(name),
        azure_data_cosmos::CosmosClientBuilder::new(),
        checkpoints,
        Arc::new(Throttle::new(args.max_ru_per_second)),
    )
    .await
    .map_err(usage_or_failure)?;
    let options = BackfillOptions {
        sinks: args.sinks,
        start,
        max_ru_per_second: args.max_ru_per_second,
        parallel: args.parallel,
        page_size: args.page_size,
        resume: args.resume,
        restart: args.restart,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let on_ctrl_c = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("fanout: stopping after the pages in flight (Ctrl-C again to abort)");
            on_ctrl_c.store(true, Ordering::Relaxed);
            let _ = tokio::signal::ctrl_c().await;
            std::process::exit(130);
        }
    });
    let bars = Bars::new(backfill.throttle.clone());
    let report = backfill.run(&options, &bars, &stop).await;
    bars.multi.clear().ok();
    let report = report.map_err(usage_or_failure)?;
    let s = &report.spent;
    println!(
        "backfill of `{}` from {} into {}: {} items in {} pages over {} feed ranges{}; {:.1} RU ({:.1} RU/s, {:.2} RU per item), {} requests, {} throttled (429), {:.1} s; {} dead-lettered",
        report.function,
        report.container,
        report.sinks.join(", "),
        report.items,
        report.pages,
        report.ranges.len(),
        if report.resumed { " (resumed)" } else { "" },
        s.request_units,
        s.ru_per_second(),
        s.request_units / (report.items.max(1) as f64),
        s.requests,
        s.throttled,
        s.seconds,
        report.dead_lettered
    );
    if report.lsn_read_back > 0 {
        println!(
            "{} items came without `_lsn`: each was read back by id for its version",
            report.lsn_read_back
        );
    }
    println!("checkpoint: {}", report.checkpoint);
    println!(
        "report: {}",
        serde_json::to_string(&report).expect("a report serializes")
    );
    if report.dead_lettered > 0 {
        // Everything was read, but not every sink has it yet.
        return Err(CommandError::Failed(format!(
            "{} changes could not be delivered and were dead-lettered: `fanout replay --function {}` delivers them once the sink is back",
            report.dead_lettered, report.function
        )));
    }
    Ok(())
}

/// One bar per feed range (items, RU, rate), drawn only on a terminal.
struct Bars {
    multi: MultiProgress,
    bars: std::sync::Mutex<Vec<ProgressBar>>,
    started: Instant,
    throttle: Arc<Throttle>,
}

impl Bars {
    fn new(throttle: Arc<Throttle>) -> Self {
        Self {
            multi: MultiProgress::new(),
            bars: Default::default(),
            started: Instant::now(),
            throttle,
        }
    }
}

impl Observer for Bars {
    fn ranges(&self, ranges: &[RangeState]) {
        let style = ProgressStyle::with_template("{spinner} {prefix} {msg}").expect("a template");
        let mut bars = self.bars.lock().expect("bars");
        for (i, r) in ranges.iter().enumerate() {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(format!("feed range {}/{}", i + 1, ranges.len()));
            bar.set_message(if r.done {
                "done earlier".to_string()
            } else {
                format!("{} items", r.items)
            });
            bars.push(bar);
        }
    }

    fn page(&self, range: usize, _items: usize, state: &RangeState, progress: Option<f64>) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let spent = self.throttle.spent();
        // The ETA assumes the rest of the range goes as fast as the run so far.
        let eta = match progress {
            Some(p) if p > 0.0 => format!(" {:.0}%, ETA {:.0} s", p * 100.0, secs * (1.0 - p) / p),
            _ => String::new(),
        };
        if let Some(bar) = self.bars.lock().expect("bars").get(range) {
            bar.set_message(format!(
                "{} items, {:.0} RU, {:.0} items/s{eta} | all ranges {:.0} RU/s, {} throttled",
                state.items,
                state.request_units,
                state.items as f64 / secs,
                spent.request_units / secs,
                spent.throttled
            ));
            bar.tick();
        }
    }

    fn range_done(&self, range: usize, state: &RangeState) {
        if let Some(bar) = self.bars.lock().expect("bars").get(range) {
            bar.finish_with_message(format!(
                "caught up: {} items, {:.0} RU",
                state.items, state.request_units
            ));
        }
    }
}
