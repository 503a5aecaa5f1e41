//! `type = "redis"`: cache invalidation (UNLINK the keys a change affects, optionally publishing
//! an invalidation message) or refresh (write the new projection with a TTL; deletes remove
//! it), version-guarded so that an older change never overwrites a newer one.

mod config;
mod connection;
mod keys;
mod request;

pub use config::{RedisAuth, RedisConfig, RedisMode};
pub use connection::{REDIS_SCOPE, redact};
pub use keys::{KeyTemplate, cluster_slot, version_key};
pub use request::REFRESH_SCRIPT;

use super::{BatchContext, Delivery, Sink, SinkError};
use crate::change::Change;
use async_trait::async_trait;
use connection::Connector;
use request::RequestBuilder;

pub const KIND: &str = "redis";

pub struct RedisSink {
    name: String,
    connector: Connector,
    requests: RequestBuilder,
}

impl RedisSink {
    pub fn new(
        name: &str,
        config: &RedisConfig,
        pk_paths: Vec<Vec<String>>,
    ) -> Result<Self, SinkError> {
        Ok(Self {
            name: name.to_string(),
            connector: Connector::new(config).map_err(SinkError::permanent)?,
            requests: RequestBuilder::new(config, pk_paths).map_err(SinkError::permanent)?,
        })
    }
}

/// Connection, timeout and cluster-topology problems are transient; a command Redis refuses
/// for the data (WRONGTYPE, script errors) is permanent; NOSCRIPT is handled by reloading.
fn classify(e: redis::RedisError) -> SinkError {
    let message = format!("redis: {e}");
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
    {
        return SinkError::transient(message);
    }
    match e.code() {
        Some("WRONGTYPE") | Some("ERR") => SinkError::permanent(message),
        _ => SinkError::transient(message),
    }
}

#[async_trait]
impl Sink for RedisSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    async fn deliver(
        &self,
        _ctx: &BatchContext,
        changes: &[&Change],
    ) -> Result<Delivery, SinkError> {
        let req = self.requests.build(changes);
        let mut conn = self.connector.get().await.map_err(SinkError::transient)?;
        let mut delivery = Delivery {
            rejected: req.rejected,
            ..Delivery::default()
        };
        if req.sent.is_empty() {
            delivery.detail = "nothing to send".into();
            return Ok(delivery);
        }
        match self.requests.mode() {
            RedisMode::Invalidate => {
                let result: Result<(), _> = req.pipeline.query_async(&mut conn).await;
                if let Err(e) = result {
                    if e.is_connection_dropped() || e.is_io_error() {
                        self.connector.reset().await;
                    }
                    return Err(classify(e));
                }
                delivery.detail = format!(
                    "{} keys invalidated for {} changes in 1 pipeline",
                    req.keys_touched,
                    req.sent.len()
                );
            }
            RedisMode::Refresh => {
                let mut result: Result<Vec<i64>, _> = req.pipeline.query_async(&mut conn).await;
                if matches!(&result, Err(e) if e.code() == Some("NOSCRIPT")) {
                    // First use, or the server restarted / failed over: load the script, resend.
                    let load: Result<String, _> = redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(REFRESH_SCRIPT)
                        .query_async(&mut conn)
                        .await;
                    load.map_err(classify)?;
                    result = req.pipeline.query_async(&mut conn).await;
                }
                let applied = match result {
                    Ok(applied) => applied,
                    Err(e) => {
                        if e.is_connection_dropped() || e.is_io_error() {
                            self.connector.reset().await;
                        }
                        return Err(classify(e));
                    }
                };
                let written = applied.iter().filter(|&&a| a == 1).count();
                delivery.detail = format!(
                    "{written} keys written, {} older changes skipped (the key holds a newer one)",
                    applied.len() - written
                );
            }
        }
        Ok(delivery)
    }
}
