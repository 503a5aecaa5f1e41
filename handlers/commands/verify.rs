//! `fanout verify`: the command line around `fanout::verify` - arguments checked before any
//! work (exit 2), a table per sink, the JSON report written, exit 3 when drift is left.

use super::{CommandError, Context};
use fanout::cosmos::Throttle;
use fanout::verify::against::{Against, AgainstReport};
use fanout::verify::sample::Sample;
use fanout::verify::{Observer, SinkReport, Verify, VerifyError, VerifyOptions, VerifyReport};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;

/// Drifted documents printed per sink (the JSON report has them all).
const SHOWN: usize = 20;

/// Compare the sinks that hold state (changelog, Redis refresh keys, AI Search) with the
/// container: documents missing, extra, stale, and a sample compared field by field. Exits 3
/// when drift is left. `--against` compares two containers instead.
#[derive(clap::Args)]
pub struct Args {
    /// The function whose container and route to use.
    #[arg(long)]
    pub function: String,
    /// Only these sinks of the route (repeat). Default: every sink that holds state.
    #[arg(long = "sink", value_name = "SINK")]
    pub sinks: Vec<String>,
    /// Compare the fields of this many documents (a uniform sample).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub sample: usize,
    /// Compare the fields of every document.
    #[arg(long)]
    pub full: bool,
    /// Re-drive each drifted document through its sink (and delete extras), then verify again.
    #[arg(long)]
    pub repair: bool,
    /// Compare the function's container with another: ENDPOINT/DATABASE/CONTAINER,
    /// DATABASE/CONTAINER (same account) or CONTAINER (same database).
    #[arg(long, value_name = "CONTAINER")]
    pub against: Option<String>,
    /// The app setting that reaches the `--against` account (a connection string, or
    /// `NAME__accountEndpoint` for Entra). Default: the function's own credential on the same
    /// account, Entra on another.
    #[arg(long, value_name = "SETTING", requires = "against")]
    pub against_connection: Option<String>,
    /// Keep the read rate under this many request units per second (429s are honoured anyway).
    #[arg(long, value_name = "RU")]
    pub max_ru_per_second: Option<f64>,
    /// Feed ranges read at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Items per change feed page.
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    /// Where the JSON report goes. Default: .fanout/verify/<function>.json under the app root.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

fn usage_or_failure(e: VerifyError) -> CommandError {
    if e.is_usage() {
        CommandError::Usage(e.to_string())
    } else {
        CommandError::Failed(e.to_string())
    }
}

pub async fn run(ctx: &Context, args: Args) -> Result<(), CommandError> {
    super::check_rate(args.max_ru_per_second, args.parallel)?;
    if args.page_size == 0 {
        return Err(CommandError::Usage("--page-size must be at least 1".into()));
    }
    if args.against.is_some() && (args.repair || !args.sinks.is_empty()) {
        return Err(CommandError::Usage(
            "--against compares two containers: --sink and --repair do not apply".into(),
        ));
    }
    let sample = if args.full {
        Sample::Full
    } else {
        Sample::Count(args.sample)
    };
    let (config, pipeline) = ctx.pipeline()?;
    let throttle = Arc::new(Throttle::new(args.max_ru_per_second));
    let report_path = args.report.clone().unwrap_or_else(|| {
        ctx.app_root
            .join(".fanout/verify")
            .join(format!("{}.json", args.function))
    });
    let setting = |name: &str| ctx.settings.get(name);
    let bar = Spinner::new();
    if let Some(spec) = &args.against {
        let pair = Against::prepare(
            &config,
            &pipeline,
            &args.function,
            spec,
            args.against_connection.as_deref(),
            &setting,
            azure_data_cosmos::CosmosClientBuilder::new(),
            azure_data_cosmos::CosmosClientBuilder::new(),
        )
        .await
        .map_err(usage_or_failure)?;
        bar.phase("reading both containers");
        let report = pair
            .run(&throttle, sample, args.parallel, args.page_size)
            .await
            .map_err(|e| usage_or_failure(e.into()))?;
        bar.done();
        print_against(&report);
        write_report(&report_path, &report)?;
        return if report.clean {
            Ok(())
        } else {
            Err(CommandError::Drift(format!(
                "the containers differ: {} missing, {} extra, {} different, {} partition keys with other counts",
                report.missing.len(),
                report.extra.len(),
                report.different.len(),
                report.partition_keys_differing.len()
            )))
        };
    }
    let verify = Verify::prepare(
        &config,
        &pipeline,
        &args.function,
        &args.sinks,
        &setting,
        azure_data_cosmos::CosmosClientBuilder::new(),
        throttle,
    )
    .await
    .map_err(usage_or_failure)?;
    let options = VerifyOptions {
        sinks: args.sinks,
        sample,
        repair: args.repair,
        parallel: args.parallel,
        page_size: args.page_size,
    };
    let report = verify.run(&options, &bar).await;
    bar.done();
    let report = report.map_err(usage_or_failure)?;
    print_report(&report);
    write_report(&report_path, &report)?;
    if report.clean {
        Ok(())
    } else {
        let left = report.after_repair.as_ref().unwrap_or(&report.sinks);
        Err(CommandError::Drift(format!(
            "drift in {}{}",
            left.iter()
                .filter(|s| s.drifted() > 0)
                .map(|s| format!("`{}` ({} documents)", s.sink, s.drifted()))
                .collect::<Vec<_>>()
                .join(", "),
            if options.repair {
                " after the repair"
            } else {
                ": `--repair` re-drives them"
            }
        )))
    }
}

fn write_report(
    path: &std::path::Path,
    report: &impl serde::Serialize,
) -> Result<(), CommandError> {
    let fail = |e: std::io::Error| {
        CommandError::Failed(format!("writing the report {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let json = serde_json::to_vec_pretty(report).expect("a report serializes");
    std::fs::write(path, json).map_err(fail)?;
    println!("report: {}", path.display());
    Ok(())
}

fn print_report(report: &VerifyReport) {
    let s = &report.spent;
    println!(
        "verify of `{}` against {} (read at {}): {} documents ({} soft-deleted, {} unreadable); {:.1} RU, {} throttled (429), {:.1} s",
        report.function,
        report.container,
        report.read_at,
        report.documents,
        report.deleted_markers,
        report.unreadable,
        s.request_units,
        s.throttled,
        s.seconds
    );
    print_table(&report.sinks);
    if !report.repaired.is_empty() {
        println!("repair:");
        for r in &report.repaired {
            println!(
                "  {}: {} re-driven, {} extras deleted, {} dead-lettered",
                r.sink, r.redriven, r.removed, r.dead_lettered
            );
            for left in &r.left {
                println!("    not repaired: {left}");
            }
        }
    }
    if let Some(after) = &report.after_repair {
        println!("after the repair:");
        print_table(after);
    }
    println!(
        "{}",
        if report.clean {
            "no drift"
        } else {
            "DRIFT (see the report)"
        }
    );
}

fn print_table(sinks: &[SinkReport]) {
    println!(
        "  {:<16} {:<13} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7} {:>9}",
        "sink", "kind", "expected", "held", "compared", "missing", "extra", "stale", "different"
    );
    for s in sinks {
        println!(
            "  {:<16} {:<13} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7} {:>9}",
            s.sink,
            s.kind,
            s.expected,
            s.held,
            s.compared,
            s.missing,
            s.extra,
            s.stale,
            s.different
        );
    }
    for s in sinks {
        for note in &s.notes {
            println!("  {}: {note}", s.sink);
        }
        if s.refused > 0 {
            println!(
                "  {}: {} documents the sink refuses (a delivery dead-letters them with the reason)",
                s.sink, s.refused
            );
        }
        if s.changed_during_verify > 0 {
            println!(
                "  {}: {} documents changed while verify ran (not drift)",
                s.sink, s.changed_during_verify
            );
        }
        for d in s.drift.iter().take(SHOWN) {
            let what = serde_json::to_value(&d.drift).expect("drift serializes");
            println!(
                "  {} {}: key {}{}{}",
                s.sink,
                what["drift"].as_str().unwrap_or("drift"),
                d.key,
                d.id.as_ref()
                    .map(|id| format!(", id {id}"))
                    .unwrap_or_default(),
                match &d.drift {
                    fanout::verify::compare::Drift::Stale { sink, container } =>
                        format!(", sink holds {sink:?}, the container {container:?} (lsn, _ts)"),
                    fanout::verify::compare::Drift::Different { fields } =>
                        format!(", fields {}", fields.join(", ")),
                    _ => String::new(),
                }
            );
        }
        if s.drift.len() > SHOWN {
            println!(
                "  {}: ... {} more in the report",
                s.sink,
                s.drift.len() - SHOWN
            );
        }
    }
}

fn print_against(r: &AgainstReport) {
    println!(
        "{} ({} documents, {} partition keys in all) against {} ({} documents): {} missing on the target, {} only on the target, {} of {} compared documents differ; {:.1} RU",
        r.source,
        r.source_documents,
        r.partition_keys,
        r.target,
        r.target_documents,
        r.missing.len(),
        r.extra.len(),
        r.different.len(),
        r.compared,
        r.spent.request_units
    );
    for p in r.partition_keys_differing.iter().take(SHOWN) {
        println!(
            "  partition key {}: {} on the source, {} on the target",
            p.partition_key, p.source, p.target
        );
    }
    for d in r.missing.iter().take(SHOWN) {
        println!("  missing: {} {}", d.partition_key, d.id);
    }
    for d in r.extra.iter().take(SHOWN) {
        println!("  only on the target: {} {}", d.partition_key, d.id);
    }
    for d in r.different.iter().take(SHOWN) {
        println!(
            "  different: {} {} ({})",
            d.partition_key,
            d.id,
            d.fields.join(", ")
        );
    }
    println!(
        "{}",
        if r.clean {
            "no drift"
        } else {
            "DRIFT (see the report)"
        }
    );
}

/// A spinner on a terminal (nothing elsewhere).
struct Spinner(ProgressBar);

impl Spinner {
    fn new() -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a template"));
        Self(bar)
    }

    fn done(&self) {
        self.0.finish_and_clear();
    }
}

impl Observer for Spinner {
    fn read(&self, items: u64) {
        self.0.set_message(format!("read {items} documents"));
        self.0.tick();
    }

    fn phase(&self, what: &str) {
        self.0.set_message(what.to_string());
        self.0.tick();
    }
}
