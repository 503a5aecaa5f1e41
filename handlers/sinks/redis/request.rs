//! Request building: one pipeline per batch (one round trip on a single node; one per node in
//! a cluster), in feed order.

use super::config::{RedisMode, ValidatedRedis};
use super::keys::{KeyTemplate, version_key};
use crate::change::Change;
use crate::change::projection::FieldSelection;
use crate::sinks::Rejected;
use serde_json::Value;

/// Atomic, version-guarded write for refresh mode. KEYS: data key, version key. ARGV: op
/// (`set`/`del`), lsn, ts, value, ttl, version ttl. Returns 1 when applied, 0 when the key
/// already holds a newer change (compared by lsn, then `_ts`). An equal version is re-applied:
/// re-deliveries are idempotent.
pub const REFRESH_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[2])
local lsn = tonumber(ARGV[2])
local ts = tonumber(ARGV[3])
if cur then
  local sep = string.find(cur, ':', 1, true)
  local clsn = tonumber(string.sub(cur, 1, sep - 1))
  local cts = tonumber(string.sub(cur, sep + 1))
  if lsn < clsn or (lsn == clsn and ts < cts) then
    return 0
  end
end
if ARGV[1] == 'set' then
  if tonumber(ARGV[5]) > 0 then
    redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[5])
  else
    redis.call('SET', KEYS[1], ARGV[4])
  end
else
  redis.call('DEL', KEYS[1])
end
local vttl = tonumber(ARGV[6])
if vttl > 0 then
  redis.call('SET', KEYS[2], ARGV[2] .. ':' .. ARGV[3], 'EX', vttl)
else
  redis.call('SET', KEYS[2], ARGV[2] .. ':' .. ARGV[3])
end
return 1
"#;

/// What one batch turns into.
pub struct BatchRequest {
    /// The commands, in feed order; `true` marks a command whose integer result counts
    /// (refresh: 1 written, 0 skipped as older).
    pub commands: Vec<(redis::Cmd, bool)>,
    /// Indices (into the batch) of the changes that have a command.
    pub sent: Vec<usize>,
    pub rejected: Vec<Rejected>,
    pub keys_touched: usize,
}

pub struct RequestBuilder {
    mode: RedisMode,
    templates: Vec<KeyTemplate>,
    fields: FieldSelection,
    ttl_seconds: u64,
    tombstone_ttl_seconds: u64,
    channel: Option<String>,
    pk_paths: Vec<Vec<String>>,
    script_sha: String,
}

impl RequestBuilder {
    pub fn new(v: &ValidatedRedis) -> Self {
        let config = &v.config;
        Self {
            mode: config.mode,
            templates: v.templates.clone(),
            fields: v.fields.clone(),
            ttl_seconds: config.ttl_seconds,
            tombstone_ttl_seconds: config.tombstone_ttl_seconds,
            channel: config.channel.clone(),
            pk_paths: v.partition_key.clone(),
            script_sha: redis::Script::new(REFRESH_SCRIPT).get_hash().to_string(),
        }
    }

    pub fn mode(&self) -> RedisMode {
        self.mode
    }

    /// Refresh mode: the key a change writes (the first template's).
    pub fn data_key(&self, change: &Change) -> Result<String, String> {
        let template = self.templates.first().ok_or("no key template")?;
        let key = template
            .render(change, &self.pk_paths)
            .map_err(|e| e.to_string())?;
        version_key(&key).map_err(|e| e.to_string())?;
        Ok(key)
    }

    /// Refresh mode: the (partition key as rendered, id) a data key was made from, when the
    /// template says unambiguously.
    pub fn parse_key(&self, key: &str) -> Option<(Option<String>, Option<String>)> {
        self.templates.first()?.parse_back(key)
    }

    /// Whether data keys can be read back at all (the template holds `{id}` and only
    /// `{pk}` / `{id}` placeholders). A key of such a template that does not read back
    /// (ambiguous) is judged by time.
    pub fn parse_key_possible(&self) -> bool {
        self.templates.first().is_some_and(|t| t.reads_back())
    }

    /// Refresh mode: the pattern every data key matches.
    pub fn data_key_glob(&self) -> Option<String> {
        self.templates.first().map(KeyTemplate::glob)
    }

    /// Refresh mode: the value written for a document.
    pub fn projection(
        &self,
        doc: &serde_json::Map<String, Value>,
    ) -> serde_json::Map<String, Value> {
        self.fields.project(doc)
    }

    /// How long a delete's version is kept.
    pub fn tombstone_ttl_seconds(&self) -> u64 {
        self.tombstone_ttl_seconds
    }

    /// Whether written keys expire (then a key that is gone is not drift: the cache let it go).
    pub fn expires(&self) -> bool {
        self.ttl_seconds > 0
    }

    pub fn build(&self, changes: &[&Change]) -> BatchRequest {
        let mut req = BatchRequest {
            commands: Vec::new(),
            sent: Vec::new(),
            rejected: Vec::new(),
            keys_touched: 0,
        };
        for (index, change) in changes.iter().enumerate() {
            // Render every template; keys that render are used even when another does not
            // (invalidating what we can beats invalidating nothing), and the change is then
            // also dead-lettered with the reason.
            let mut keys = Vec::with_capacity(self.templates.len());
            let mut failures = Vec::new();
            for template in &self.templates {
                match template.render(change, &self.pk_paths) {
                    Ok(key) => keys.push(key),
                    Err(reason) => failures.push(reason.to_string()),
                }
            }
            if !failures.is_empty() {
                req.rejected.push(Rejected {
                    index,
                    reason: failures.join("; "),
                });
                if keys.is_empty() || self.mode == RedisMode::Refresh {
                    continue;
                }
            }
            match self.mode {
                RedisMode::Invalidate => {
                    // One UNLINK per key: keys of one change may live in different cluster slots.
                    for key in &keys {
                        req.commands
                            .push((redis::cmd("UNLINK").arg(key).clone(), false));
                        req.keys_touched += 1;
                    }
                }
                RedisMode::Refresh => {
                    let key = &keys[0];
                    let vkey = match version_key(key) {
                        Ok(v) => v,
                        Err(reason) => {
                            req.rejected.push(Rejected {
                                index,
                                reason: reason.to_string(),
                            });
                            continue;
                        }
                    };
                    let (op, value, ttl) = if change.operation.is_delete() {
                        ("del", String::new(), self.tombstone_ttl_seconds)
                    } else {
                        let doc = change
                            .document
                            .as_ref()
                            .map(|d| self.fields.project(d))
                            .unwrap_or_default();
                        let ttl = if self.ttl_seconds == 0 {
                            0
                        } else {
                            self.ttl_seconds.max(self.tombstone_ttl_seconds)
                        };
                        ("set", Value::Object(doc).to_string(), ttl)
                    };
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(&self.script_sha)
                        .arg(2)
                        .arg(key)
                        .arg(&vkey)
                        .arg(op)
                        .arg(change.lsn.unwrap_or(-1))
                        .arg(change.ts.unwrap_or(-1))
                        .arg(value)
                        .arg(if op == "set" { self.ttl_seconds } else { 0 })
                        .arg(ttl);
                    req.commands.push((cmd, true));
                    req.keys_touched += 1;
                }
            }
            if let Some(channel) = &self.channel {
                let message = serde_json::json!({
                    "id": change.id,
                    "partitionKey": change.partition_key.as_key_string(),
                    "operation": change.operation.as_str(),
                    "lsn": change.lsn,
                    "ts": change.ts,
                    "keys": keys,
                });
                req.commands.push((
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(message.to_string())
                        .clone(),
                    false,
                ));
            }
            req.sent.push(index);
        }
        req
    }
}
