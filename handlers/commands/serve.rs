use super::{CommandError, Context};
use fanout::host::PORT_ENV;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

pub async fn run(ctx: &Context, port: Option<u16>) -> Result<(), CommandError> {
    // Started with no arguments (as the host does), clap has not read the environment.
    let from_env =
        match std::env::var(PORT_ENV) {
            Ok(v) => Some(v.trim().parse::<u16>().map_err(|_| {
                CommandError::Usage(format!("{PORT_ENV}=`{v}` is not a port number"))
            })?),
            Err(_) => None,
        };
    let port = port.or(from_env).ok_or_else(|| {
        CommandError::Usage(format!(
            "{PORT_ENV} is not set. The Functions host sets it when it starts the handler; to run it by hand use `fanout serve --port 7071`, or `fanout demo` for the quickstart"
        ))
    })?;
    let (config, pipeline) = ctx.pipeline()?;
    for (function, route) in &config.routes {
        for warning in route.warnings() {
            tracing::warn!(function, "{warning}");
        }
    }
    // The host always calls 127.0.0.1: listen there only.
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    fanout::server::serve(Arc::new(pipeline), addr, config.max_body_bytes)
        .await
        .map_err(|e| CommandError::Failed(format!("cannot serve on {addr}: {e}")))
}
