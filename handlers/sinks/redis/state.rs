//! Refresh mode's keys, for `verify`: each data key's version (its version key, `lsn:ts`) and
//! value (the projection it was written with). On one node every key the template can render
//! is listed with `SCAN MATCH`, so keys whose documents are gone are found; a cluster is read
//! for the container's keys only (scanning every primary is not done), and the report says so.

use super::RedisSink;
use super::config::RedisMode;
use super::connection::Connection;
use super::error::classify;
use super::keys::version_key;
use super::request::REFRESH_SCRIPT;
use crate::change::Change;
use crate::sinks::SinkError;
use crate::sinks::state::{Expected, FieldsOf, Held, Listing, SinkState};
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Keys read per round trip.
const CHUNK: usize = 500;

/// A version key's `lsn:ts`.
fn parse_version(text: &str) -> Option<(i64, i64)> {
    let (lsn, ts) = text.split_once(':')?;
    Some((lsn.parse().ok()?, ts.parse().ok()?))
}

impl RedisSink {
    pub(super) fn holds_state(&self) -> bool {
        self.requests.mode() == RedisMode::Refresh
    }

    /// Every key matching `glob` (one node), version keys left out.
    async fn scan(&self, conn: &mut Connection, glob: &str) -> Result<Vec<String>, SinkError> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(glob)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await
                .map_err(classify)?;
            keys.extend(batch.into_iter().filter(|k| !k.starts_with("fanout:v:")));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// (version, value) of each key; absent when the key holds no value.
    async fn read(
        &self,
        conn: &mut Connection,
        keys: &[String],
        fields_of: FieldsOf<'_>,
    ) -> Result<BTreeMap<String, Held>, SinkError> {
        let mut held = BTreeMap::new();
        for chunk in keys.chunks(CHUNK) {
            let mut commands = Vec::with_capacity(chunk.len() * 2);
            for key in chunk {
                commands.push(redis::cmd("GET").arg(key).clone());
                let vkey = version_key(key).map_err(SinkError::permanent_from)?;
                commands.push(redis::cmd("GET").arg(vkey).clone());
            }
            let values = self.get_all(conn, commands).await?;
            for (key, pair) in chunk.iter().zip(values.chunks(2)) {
                let (Some(value), version) = (&pair[0], &pair[1]) else {
                    continue;
                };
                let version = version
                    .as_deref()
                    .and_then(parse_version)
                    .unwrap_or((-1, -1));
                let fields = fields_of(key)
                    .then(|| serde_json::from_str::<Map<String, Value>>(value).unwrap_or_default());
                held.insert(key.clone(), Held { version, fields });
            }
        }
        Ok(held)
    }

    /// The answers to GETs, in order: one pipeline on one node; concurrently on a cluster
    /// (the keys live in different slots).
    async fn get_all(
        &self,
        conn: &mut Connection,
        commands: Vec<redis::Cmd>,
    ) -> Result<Vec<Option<String>>, SinkError> {
        match conn {
            Connection::Single(_) => {
                let mut pipe = redis::pipe();
                for cmd in commands {
                    pipe.add_command(cmd);
                }
                pipe.query_async(conn).await.map_err(classify)
            }
            Connection::Cluster(cluster) => {
                let gets = commands.into_iter().map(|cmd| {
                    let mut c = cluster.clone();
                    async move { cmd.query_async::<Option<String>>(&mut c).await }
                });
                futures::future::join_all(gets)
                    .await
                    .into_iter()
                    .map(|r| r.map_err(classify))
                    .collect()
            }
        }
    }
}

#[async_trait]
impl SinkState for RedisSink {
    fn expect(&self, change: &Change) -> Result<Expected, String> {
        Ok(Expected {
            key: self.requests.data_key(change)?,
            version: change.version_key(),
            fields: change
                .document
                .as_ref()
                .map(|d| self.requests.projection(d))
                .unwrap_or_default(),
        })
    }

    async fn list(&self, expected: &[&str], fields_of: FieldsOf<'_>) -> Result<Listing, SinkError> {
        let mut conn = self
            .connector
            .get()
            .await
            .map_err(SinkError::transient_from)?;
        let (keys, extras_unchecked) = match (&conn, self.requests.data_key_glob()) {
            (Connection::Single(_), Some(glob)) => {
                let mut keys = self.scan(&mut conn, &glob).await?;
                // A key written after the scan passed its slot is still read.
                keys.extend(expected.iter().map(|k| k.to_string()));
                keys.sort();
                keys.dedup();
                (keys, None)
            }
            _ => (
                expected.iter().map(|k| k.to_string()).collect(),
                Some(
                    "a Redis cluster is read for the container's keys only: keys of deleted documents are not looked for"
                        .to_string(),
                ),
            ),
        };
        let held = self.read(&mut conn, &keys, fields_of).await?;
        Ok(Listing {
            held,
            extras_unchecked,
        })
    }

    async fn remove(
        &self,
        _function: &str,
        key: &str,
        version: (i64, i64),
    ) -> Result<(), SinkError> {
        let vkey = version_key(key).map_err(SinkError::permanent_from)?;
        let mut conn = self
            .connector
            .get()
            .await
            .map_err(SinkError::transient_from)?;
        let _applied: i64 = redis::Script::new(REFRESH_SCRIPT)
            .key(key)
            .key(vkey)
            .arg("del")
            .arg(version.0)
            .arg(version.1)
            .arg("")
            .arg(0)
            .arg(self.requests.tombstone_ttl_seconds())
            .invoke_async(&mut conn)
            .await
            .map_err(classify)?;
        Ok(())
    }

    fn missing_is_drift(&self) -> bool {
        !self.requests.expires()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn version_keys_read_back() {
        assert_eq!(parse_version("12:1700000000"), Some((12, 1700000000)));
        assert_eq!(parse_version("-1:5"), Some((-1, 5)));
        assert_eq!(parse_version("12"), None);
        assert_eq!(parse_version("a:b"), None);
    }
}
