//! `type = "redis"`: cache invalidation (UNLINK the keys a change affects, optionally publishing
//! an invalidation message) or refresh (write the new projection with a TTL; deletes remove
//! it), version-guarded so that an older change never overwrites a newer one.

mod config;
mod connection;
mod error;
mod keys;
mod request;
mod state;

pub use config::{RedisAuth, RedisConfig, RedisMode, ValidatedRedis};
pub use connection::{REDIS_SCOPE, redact};
pub use keys::{KeyError, KeyTemplate, KeyTemplateError, cluster_slot, version_key};
pub use request::REFRESH_SCRIPT;

use super::{BatchContext, Delivery, Sink, SinkError};
use crate::change::Change;
use async_trait::async_trait;
use connection::{Connection, Connector};
use error::classify;
use request::RequestBuilder;

pub const KIND: &str = "redis";

pub struct RedisSink {
    name: String,
    connector: Connector,
    requests: RequestBuilder,
}

impl RedisSink {
    pub fn new(name: &str, v: &ValidatedRedis) -> Result<Self, SinkError> {
        Ok(Self {
            name: name.to_string(),
            connector: Connector::new(&v.config).map_err(SinkError::permanent_from)?,
            requests: RequestBuilder::new(v),
        })
    }
}

impl RedisSink {
    /// Sends the batch's commands; returns the results of the counting ones, in order. One node:
    /// one pipeline, one round trip. A cluster cannot take a pipeline across slots, so there the
    /// commands go out concurrently and the multiplexed cluster connection pipelines them per
    /// node; order between them does not matter (UNLINK is idempotent, refresh compares versions).
    async fn execute(
        &self,
        conn: &mut Connection,
        commands: &[(redis::Cmd, bool)],
    ) -> redis::RedisResult<Vec<i64>> {
        match conn {
            Connection::Single(_) => {
                let mut pipe = redis::pipe();
                for (cmd, counts) in commands {
                    pipe.add_command(cmd.clone());
                    if !counts {
                        pipe.ignore();
                    }
                }
                pipe.query_async(conn).await
            }
            Connection::Cluster(cluster) => {
                let sends = commands.iter().map(|(cmd, counts)| {
                    let mut c = cluster.clone();
                    async move {
                        let v: redis::Value = cmd.query_async(&mut c).await?;
                        Ok::<_, redis::RedisError>(
                            counts.then(|| if let redis::Value::Int(n) = v { n } else { 0 }),
                        )
                    }
                });
                let results = futures::future::join_all(sends).await;
                results.into_iter().filter_map(|r| r.transpose()).collect()
            }
        }
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

    fn state(&self) -> Option<&dyn super::state::SinkState> {
        self.holds_state()
            .then_some(self as &dyn super::state::SinkState)
    }

    async fn deliver(
        &self,
        _ctx: &BatchContext,
        changes: &[&Change],
    ) -> Result<Delivery, SinkError> {
        let req = self.requests.build(changes);
        let mut conn = self
            .connector
            .get()
            .await
            .map_err(SinkError::transient_from)?;
        let mut delivery = Delivery {
            rejected: req.rejected,
            ..Delivery::default()
        };
        if req.sent.is_empty() {
            delivery.detail = "nothing to send".into();
            return Ok(delivery);
        }
        let mut result = self.execute(&mut conn, &req.commands).await;
        if matches!(&result, Err(e) if e.code() == Some("NOSCRIPT") || e.to_string().to_ascii_uppercase().contains("NOSCRIPT"))
        {
            // First use, or the server restarted / failed over: load the script (on every
            // primary, in a cluster) and resend. Every command is idempotent.
            let load: Result<String, _> = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(REFRESH_SCRIPT)
                .query_async(&mut conn)
                .await;
            load.map_err(classify)?;
            result = self.execute(&mut conn, &req.commands).await;
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
        let round = if matches!(conn, Connection::Cluster(_)) {
            "pipelined per node"
        } else {
            "in 1 pipeline"
        };
        delivery.detail = match self.requests.mode() {
            RedisMode::Invalidate => format!(
                "{} keys invalidated for {} changes {round}",
                req.keys_touched,
                req.sent.len()
            ),
            RedisMode::Refresh => {
                let written = applied.iter().filter(|&&a| a == 1).count();
                format!(
                    "{written} keys written, {} older changes skipped (the key holds a newer one)",
                    applied.len() - written
                )
            }
        };
        Ok(delivery)
    }
}
