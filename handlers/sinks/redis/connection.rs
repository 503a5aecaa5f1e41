//! One Redis connection per sink, reused across invocations: a multiplexed connection that
//! reconnects by itself (ConnectionManager), or a cluster connection that routes every command
//! to the node owning its slot. With Entra auth the connection is rebuilt with a fresh token
//! before the current one expires (Azure re-validates tokens on reconnect and at expiry).

use super::config::{RedisAuth, RedisConfig};
use super::error::ConnectError;
use crate::entra::EntraToken;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// The scope of Azure Cache for Redis / Azure Managed Redis data-plane tokens.
pub const REDIS_SCOPE: &str = "https://redis.azure.com/.default";
/// Rebuild an Entra-authenticated connection this long before its token expires.
const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(10 * 60);

#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

pub struct Connector {
    config: RedisConfig,
    token: Option<EntraToken>,
    state: Mutex<Option<(Connection, Option<Instant>)>>,
}

impl Connector {
    pub fn new(config: &RedisConfig) -> Result<Self, ConnectError> {
        let token = match config.auth {
            RedisAuth::Entra => Some(EntraToken::from_env(REDIS_SCOPE)?),
            _ => None,
        };
        Ok(Self {
            config: config.clone(),
            token,
            state: Mutex::new(None),
        })
    }

    /// The shared connection, opened (or renewed, for Entra) when needed.
    pub async fn get(&self) -> Result<Connection, ConnectError> {
        let mut state = self.state.lock().await;
        if let Some((conn, renew_at)) = state.as_ref()
            && renew_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(conn.clone());
        }
        let (password, renew_at) = match (&self.token, self.config.auth) {
            (Some(token), _) => {
                let t = token.token().await?;
                (
                    Some(t.secret),
                    Some(Instant::now() + t.expires_in.saturating_sub(TOKEN_RENEW_MARGIN)),
                )
            }
            (None, RedisAuth::Password) => (self.config.password.clone(), None),
            _ => (None, None),
        };
        let conn = self.connect(password).await?;
        *state = Some((conn.clone(), renew_at));
        Ok(conn)
    }

    /// Drops the shared connection (after an auth failure, say) so the next call reconnects.
    pub async fn reset(&self) {
        *self.state.lock().await = None;
    }

    async fn connect(&self, password: Option<String>) -> Result<Connection, ConnectError> {
        let c = &self.config;
        let connect_timeout = Duration::from_millis(c.connect_timeout_ms);
        let response_timeout = Duration::from_millis(c.response_timeout_ms);
        let root_cert = match &c.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| ConnectError::CaFile {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let describe = |source: redis::RedisError| ConnectError::Redis {
            url: redact(&c.url),
            source,
        };
        if c.cluster {
            let mut builder = redis::cluster::ClusterClientBuilder::new(vec![c.url.as_str()])
                .connection_timeout(connect_timeout)
                .response_timeout(response_timeout);
            if let Some(p) = &password {
                builder = builder.password(p);
            }
            if let Some(u) = &c.username {
                builder = builder.username(u);
            }
            if let Some(root) = root_cert {
                builder = builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                });
            }
            let client = builder.build().map_err(describe)?;
            let conn = client.get_async_connection().await.map_err(describe)?;
            return Ok(Connection::Cluster(conn));
        }
        let mut info = c.url.as_str().into_connection_info().map_err(describe)?;
        let mut settings = info.redis_settings().clone();
        if let Some(p) = &password {
            settings = settings.set_password(p);
        }
        if let Some(u) = &c.username {
            settings = settings.set_username(u);
        }
        info = info.set_redis_settings(settings);
        let client = match root_cert {
            Some(root) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(describe)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(describe)?;
        Ok(Connection::Single(manager))
    }
}

/// The URL without credentials, for messages and logs. Also strips `password=...` from an
/// Azure-style connection string pasted where a URL belongs.
pub fn redact(url: &str) -> String {
    if let Some(pos) = url.to_ascii_lowercase().find("password=") {
        let end = url[pos..].find(',').map(|e| pos + e).unwrap_or(url.len());
        return format!("{}password=***{}", &url[..pos], &url[end..]);
    }
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}
