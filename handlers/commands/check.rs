use super::{CommandError, Context};

/// Validates the config and builds every sink (no network I/O); prints what is routed where.
pub fn run(ctx: &Context) -> Result<(), CommandError> {
    let (config, pipeline) = ctx.pipeline()?;
    println!("{}: ok", config.file.display());
    println!("  app root: {}", config.app_root.display());
    println!(
        "  function timeout: {} s",
        config.function_timeout.as_secs()
    );
    println!("  dead-letter store: {}", pipeline.dead_letter().location());
    if let Some(fallback) = pipeline.dead_letter().fallback_location() {
        println!("  dead-letter fallback: {fallback}");
    }
    for (name, route) in pipeline.routes() {
        let policy = match route.function.retry.max_retry_count {
            -1 => "retry forever (the route blocks; never dead-letters transient failures)"
                .to_string(),
            0 => "no retry policy (dead-letter on the first failure)".to_string(),
            n => format!("{n} retries, then dead-letter"),
        };
        println!(
            "  function {name}: binding `{}`, container {}, {policy}, retry budget {} ms",
            route.function.binding,
            route.function.container.as_deref().unwrap_or("?"),
            route.retry.budget.as_millis()
        );
        if let Some(route_config) = config.routes.get(name) {
            for w in route_config.warnings() {
                println!("    warning: {w}");
            }
        }
        for sink in &route.sinks {
            println!("    sink {} ({})", sink.name(), sink.kind());
            if let Some(cfg) = config
                .routes
                .get(name)
                .and_then(|r| r.sinks.get(sink.name()))
            {
                for w in cfg.warnings() {
                    println!("      warning: {w}");
                }
            }
        }
    }
    Ok(())
}
