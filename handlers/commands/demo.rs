use super::{CommandError, Context};
use fanout::hostsim::{EmulatedHost, cosmos_trigger_body, samples, with_retry_context};
use std::time::Instant;

/// The function the quickstart drives (its folder ships in the repo).
const DEMO_FUNCTION: &str = "orders";

/// Quickstart: the handler serving, sample batches in the host's exact wire format posted over
/// HTTP, then a summary of what landed in the Delta changelog.
pub async fn run(ctx: &Context, batches: usize) -> Result<(), CommandError> {
    let (config, pipeline) = ctx.pipeline()?;
    let route = config.routes.get(DEMO_FUNCTION).ok_or_else(|| {
        CommandError::Usage(format!(
            "the demo drives function `{DEMO_FUNCTION}`, which {} does not route",
            config.file.display()
        ))
    })?;
    let binding = route.function.binding.clone();
    let exe = std::env::current_exe()
        .map_err(|e| CommandError::Failed(format!("cannot find my own binary: {e}")))?;

    println!(
        "Starting the handler as the Functions host does ({} in {}) ...",
        exe.display(),
        config.app_root.display()
    );
    let mut host = EmulatedHost::start(&exe, &config.app_root, &[("FANOUT_LOG", "warn")])
        .await
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    println!(
        "  ready on 127.0.0.1:{} after {:.1} ms",
        host.port(),
        host.startup.as_secs_f64() * 1000.0
    );

    // A run-specific lsn range, so each run adds new changes (a real feed never repeats lsns).
    let lsn_base = chrono::Utc::now().timestamp() * 1000;
    let mut bodies: Vec<(String, String)> = samples::CAPTURED_BODIES
        .iter()
        .map(|(name, body)| (format!("captured {name}"), body.to_string()))
        .collect();
    for (i, docs) in samples::order_batches(lsn_base, batches, 100, 20)
        .into_iter()
        .enumerate()
    {
        bodies.push((
            format!("generated batch {} (latest version)", i + 1),
            cosmos_trigger_body(&binding, DEMO_FUNCTION, &docs, None),
        ));
    }
    let avad = samples::all_versions_batch(lsn_base + 1_000_000, chrono::Utc::now().timestamp());
    bodies.push((
        "all-versions-and-deletes batch".into(),
        cosmos_trigger_body(&binding, DEMO_FUNCTION, &avad, None),
    ));
    let mut with_bad_item = samples::order_batches(lsn_base + 2_000_000, 1, 5, 2).remove(0);
    with_bad_item
        .push(serde_json::json!({"customerId": "customer-1", "note": "this item has no id"}));
    bodies.push((
        "batch with one malformed item".into(),
        cosmos_trigger_body(&binding, DEMO_FUNCTION, &with_bad_item, None),
    ));
    // The host re-delivering the first generated batch (as after a failure): nothing doubles.
    let redelivery = with_retry_context(&bodies[3].1, 1, 5);
    bodies.push(("re-delivery of generated batch 1".into(), redelivery));

    println!(
        "\nPosting {} invocations to POST /{DEMO_FUNCTION}:",
        bodies.len()
    );
    let started = Instant::now();
    let mut failures = 0;
    for (label, body) in &bodies {
        let call = host
            .invoke(DEMO_FUNCTION, body)
            .await
            .map_err(|e| CommandError::Failed(e.to_string()))?;
        failures += usize::from(!call.is_success());
        println!(
            "  {} {:>6.1} ms  {label}",
            call.status,
            call.elapsed.as_secs_f64() * 1000.0
        );
        for line in call.logs().iter().skip(1) {
            println!("                   {line}");
        }
    }
    let elapsed = started.elapsed();
    host.terminate();
    println!(
        "  {} invocations in {:.2} s",
        bodies.len(),
        elapsed.as_secs_f64()
    );

    println!();
    for sink in route.sinks.values() {
        let Some(d) = sink.as_delta() else { continue };
        super::changelog::summarize_table(
            &d.table,
            d.storage_options.clone().into_iter().collect(),
            &config.app_root,
        )
        .await?;
    }
    let pending = pipeline
        .dead_letter()
        .list_pending()
        .await
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    println!(
        "dead-letter store {}: {} records pending (`fanout replay` re-drives them)",
        pipeline.dead_letter().location(),
        pending.len()
    );
    for key in pending.iter().take(5) {
        println!("  pending/{key}");
    }
    if failures > 0 {
        return Err(CommandError::Failed(format!(
            "{failures} invocations failed"
        )));
    }
    Ok(())
}
