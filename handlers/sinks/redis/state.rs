//! Refresh mode's keys, for `verify`: each data key's version (its version key, `lsn:ts`) and
//! value (the projection it was written with). On one node every key the template can render
//! is listed with `SCAN MATCH`, so keys whose documents are gone are found; a cluster is read
//! for the container's keys only (scanning every primary is not done), and the report says so.

use super::RedisSink;
use super::config::RedisMode;
use super::connection::Connection;
use super::error::classify;
use super::keys::version_key;
use crate::change::Change;
use crate::sinks::SinkError;
use crate::sinks::state::{Expected, FieldsOf, Held, Listing, Origin, SinkState};
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Compare-and-delete for `verify --repair`. KEYS: data key, version key. ARGV: the version
/// verify saw (`lsn:ts`), the delete's version, the version key's ttl. Deletes the data key
/// and records the delete's version only while the version key still holds what verify saw:
/// a write since then (a live change) wins. Returns 1 when removed.
const REMOVE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
else
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"#;

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
                // A key without a version key is not one fanout wrote (another writer's key
                // that matches the template's pattern): not the sink's, not compared.
                let (Some(value), Some(version)) =
                    (&pair[0], pair[1].as_deref().and_then(parse_version))
                else {
                    continue;
                };
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
        held: (i64, i64),
    ) -> Result<bool, SinkError> {
        let vkey = version_key(key).map_err(SinkError::permanent_from)?;
        let mut conn = self
            .connector
            .get()
            .await
            .map_err(SinkError::transient_from)?;
        let removed: i64 = redis::Script::new(REMOVE_SCRIPT)
            .key(key)
            .key(vkey)
            .arg(format!("{}:{}", held.0, held.1))
            .arg(format!("{}:{}", held.0 + 1, held.1))
            .arg(self.requests.tombstone_ttl_seconds())
            .invoke_async(&mut conn)
            .await
            .map_err(classify)?;
        Ok(removed == 1)
    }

    fn traces_keys(&self) -> bool {
        self.requests.parse_key_possible()
    }

    fn document_of(&self, key: &str) -> Option<Origin> {
        match self.requests.parse_key(key)? {
            (Some(pk), Some(id)) => {
                // As rendered: a single string component as is, anything else in wire form.
                let wire = match crate::change::PartitionKey::from_wire(&pk) {
                    Some(_) if pk.starts_with('[') => pk,
                    _ => Value::Array(vec![Value::String(pk)]).to_string(),
                };
                Some(Origin::Document(wire, id))
            }
            (None, Some(id)) => Some(Origin::Id(id)),
            _ => None,
        }
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
