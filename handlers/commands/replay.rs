use super::{CommandError, Context};
use fanout::pipeline::Origin;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Duration;

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} {{msg}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// One line of the run's report: above the bar on a terminal, on stdout otherwise (a hidden
/// bar's `println` prints nothing, and a script must still see why a record stayed pending).
fn say(bar: &ProgressBar, line: impl AsRef<str>) {
    if bar.is_hidden() {
        println!("{}", line.as_ref());
    } else {
        bar.println(line);
    }
}

/// Replays dead-letter records (or files of host-format batches) through the same pipeline.
pub async fn run(
    ctx: &Context,
    function: Option<String>,
    sink: Option<String>,
    batches: Vec<PathBuf>,
    dry_run: bool,
    budget: Option<Duration>,
) -> Result<(), CommandError> {
    if budget.is_some_and(|b| b.is_zero()) {
        return Err(CommandError::Usage(
            "--budget-ms must be at least 1 (the time each sink may spend on a record)".into(),
        ));
    }
    let (_, pipeline) = ctx.pipeline_with(|config| {
        for route in config.routes.values_mut() {
            route.retry.budget = budget.unwrap_or(route.retry.budget);
        }
    })?;
    if !batches.is_empty() {
        let function = function.ok_or_else(|| {
            CommandError::Usage(
                "--batches needs --function (the function the batches were meant for)".into(),
            )
        })?;
        let mut bodies = Vec::new();
        for file in &batches {
            let text = std::fs::read_to_string(file)
                .map_err(|e| CommandError::Usage(format!("cannot read {}: {e}", file.display())))?;
            bodies.extend(
                split_bodies(&text)
                    .map_err(|e| CommandError::Usage(format!("{}: {e}", file.display())))?,
            );
        }
        if dry_run {
            println!("would deliver {} batches to `{function}`", bodies.len());
            return Ok(());
        }
        let progress = bar(bodies.len(), "batches");
        let (mut failed, mut dead_lettered) = (0, 0);
        for body in &bodies {
            let answer = pipeline
                .handle(&function, None, body.as_bytes(), Origin::Replay)
                .await;
            dead_lettered += answer.dead_lettered;
            if answer.status >= 300 {
                failed += 1;
                say(&progress, answer.response.logs.join("\n  "));
            }
            progress.inc(1);
        }
        progress.finish_with_message("done");
        println!(
            "{} batches: {} delivered, {failed} failed, {dead_lettered} changes dead-lettered",
            bodies.len(),
            bodies.len() - failed
        );
        return if failed == 0 {
            Ok(())
        } else {
            Err(CommandError::Failed(format!("{failed} batches failed")))
        };
    }

    let store = pipeline.dead_letter();
    // Tombstones older than this run (a minute of clock skew between here and the store
    // allowed) are no longer needed once nothing of their sink waits (`deadletter::tombstone`).
    let started = chrono::Utc::now() - chrono::Duration::minutes(1);
    // Last attempts whose process died mid-way are replayed like any other record.
    if !dry_run {
        let recovered = pipeline
            .recover_in_flight()
            .await
            .map_err(|e| CommandError::Failed(e.to_string()))?;
        if !recovered.is_empty() {
            println!(
                "{} unfinished last attempts (their process died) moved to pending/",
                recovered.len()
            );
        }
    }
    if function.is_none() && sink.is_some() {
        return Err(CommandError::Usage("--sink needs --function".into()));
    }
    let keys: Vec<String> = store
        .list_pending()
        .await
        .map_err(|e| CommandError::Failed(e.to_string()))?
        .into_iter()
        .filter(|k| {
            function
                .as_deref()
                .is_none_or(|f| fanout::deadletter::key_belongs_to(k, f, sink.as_deref()))
        })
        .collect();
    if keys.is_empty() {
        println!("nothing to replay in {}", store.location());
        if !dry_run {
            prune_tombstones(store, started).await;
        }
        return Ok(());
    }
    // Feed order: read every record's position first (records are read again one at a time
    // below, so memory holds one record, not the store).
    let mut failed = 0;
    let mut ordered = Vec::with_capacity(keys.len());
    for key in keys {
        match store.get(&key).await {
            Ok(r) => ordered.push((r.feed_position(), key)),
            Err(e) => {
                println!("skip {key}: {e}");
                failed += 1;
            }
        }
    }
    ordered.sort();
    let keys: Vec<String> = ordered.into_iter().map(|(_, k)| k).collect();
    let progress = bar(keys.len(), "records");
    let (mut replayed, mut changes) = (0, 0);
    let mut seen = std::collections::HashSet::new();
    for key in &keys {
        progress.set_message(key.clone());
        let record = match store.get(key).await {
            Ok(r) => r,
            Err(e) => {
                say(&progress, format!("skip {key}: {e}"));
                failed += 1;
                progress.inc(1);
                continue;
            }
        };
        if dry_run {
            say(
                &progress,
                format!(
                    "{key}: {} x {:?}: {}",
                    record.size(),
                    record.kind,
                    record.error
                ),
            );
        } else {
            match pipeline.replay_record(&record, &mut seen).await {
                Ok(detail) => match store.mark_replayed(key, &record).await {
                    Ok(()) => {
                        replayed += 1;
                        changes += record.size();
                        tracing::info!(key, detail, "replayed");
                    }
                    Err(e) => {
                        failed += 1;
                        say(
                            &progress,
                            format!("{key}: delivered, but could not be moved to replayed/: {e}"),
                        );
                    }
                },
                Err(e) => {
                    failed += 1;
                    say(&progress, format!("{key}: still failing: {e}"));
                }
            }
        }
        progress.inc(1);
    }
    progress.finish_with_message("done");
    if dry_run {
        println!("{} records pending in {}", keys.len(), store.location());
        return Ok(());
    }
    println!(
        "replayed {replayed} records ({changes} changes); {failed} still pending in {}",
        store.location()
    );
    prune_tombstones(store, started).await;
    if failed == 0 {
        Ok(())
    } else {
        Err(CommandError::Failed(format!(
            "{failed} records could not be replayed"
        )))
    }
}

async fn prune_tombstones(
    store: &fanout::deadletter::DeadLetterStore,
    written_before: chrono::DateTime<chrono::Utc>,
) {
    match store.prune_tombstones(written_before).await {
        Ok(0) => {}
        Ok(n) => println!("{n} tombstones no longer needed removed"),
        Err(e) => println!("tombstones not pruned (harmless, the next replay tries again): {e}"),
    }
}

/// A file of host request bodies: a JSON array of bodies, or one body per line.
fn split_bodies(text: &str) -> Result<Vec<String>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let values: Vec<serde_json::Value> = serde_json::from_str(trimmed)
            .map_err(|e| format!("not a JSON array of bodies: {e}"))?;
        return Ok(values.iter().map(|v| v.to_string()).collect());
    }
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}
