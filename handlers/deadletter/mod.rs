//! The dead-letter store: where a change goes when a sink cannot take it, so nothing is lost
//! silently. One JSON record per (batch, sink) on object storage (a local folder by default,
//! Azure Blob / ADLS in production). `fanout replay` re-drives the records.
//!
//! Layout under the configured root:
//! `pending/{function}/{sink}/{fingerprint}-{kind}.json` - waiting for replay;
//! `replayed/{function}/{sink}/{fingerprint}-{kind}.json` - delivered by a replay (kept for audit);
//! `in-flight/{function}/_input/{fingerprint}-in_flight.json` - a last attempt being delivered
//! (the write-ahead record: settled when the outcome is known; one left behind by a process
//! that died is moved to `pending/` by [`DeadLetterStore::recover_in_flight`]).
//! `tombstones/{function}/{sink}/{digest}.json` - a delete kept while older changes of its
//! document wait for replay (see [`tombstone`]).
//! The key is deterministic, so a re-delivered batch overwrites its own record instead of adding one.
//!
//! Two tiers: the configured store and an optional fallback (`[dead_letter.fallback]`: another
//! container or account, or a local folder). Every write is bounded by a deadline; the primary
//! gets half of the time left when there is a fallback, the fallback the rest. A write fails only
//! when both tiers failed. Keys of records in the fallback carry the `fallback:` prefix, so a key
//! names its tier wherever it is printed or passed back.

mod location;
mod tombstone;

pub use tombstone::{TOMBSTONES, Tombstone};

use crate::change::Change;
use crate::storage::Location as StoreLocation;
use chrono::{DateTime, Utc};
use location::Location;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

pub const PENDING: &str = "pending";
pub const REPLAYED: &str = "replayed";
pub const IN_FLIGHT: &str = "in-flight";
/// The prefix of keys that live in the fallback tier.
pub const FALLBACK_PREFIX: &str = "fallback:";
/// The pseudo-sink name for items or batches that failed before reaching any sink.
pub const INPUT_SINK: &str = "_input";

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter store `{location}`: {message}")]
    Config { location: String, message: String },
    #[error("dead-letter store: {0}")]
    Store(#[from] object_store::Error),
    #[error("dead-letter record {key} is not valid: {source}")]
    Record {
        key: String,
        source: serde_json::Error,
    },
    #[error("`{location}`: {source}")]
    At {
        location: String,
        source: Box<DeadLetterError>,
    },
    #[error("dead-letter store `{location}`: request body broke off: {source}")]
    BodyBrokeOff {
        location: String,
        source: std::io::Error,
    },
    #[error("dead-letter store `{location}`: no answer within {} ms", .after.as_millis())]
    TimedOut { location: String, after: Duration },
    /// Every tier failed; each tier's error, in order.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; then "))]
    Unavailable(Vec<DeadLetterError>),
}

/// Why the record exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    /// A sink kept failing (or failed permanently) for these changes.
    SinkFailure,
    /// A sink refused these particular changes for good (e.g. a value it cannot index).
    RejectedChanges,
    /// Feed items that could not be normalized (no id, wrong types, ...): kept raw.
    MalformedItems,
    /// The request body itself could not be decoded (or never reached the pipeline: no route,
    /// a handler panic, a body that broke off): kept raw.
    MalformedBatch,
    /// A last attempt whose outcome was never settled: the process died while delivering it.
    /// Kept raw; replay delivers it to every sink of the route.
    InFlight,
}

impl DeadLetterKind {
    fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::SinkFailure => "sink_failure",
            DeadLetterKind::RejectedChanges => "rejected_changes",
            DeadLetterKind::MalformedItems => "malformed_items",
            DeadLetterKind::MalformedBatch => "malformed_batch",
            DeadLetterKind::InFlight => "in_flight",
        }
    }
}

/// One dead-lettered (batch, sink).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    pub kind: DeadLetterKind,
    pub function: String,
    /// The sink that failed, or [`INPUT_SINK`] for input that never reached a sink.
    pub sink: String,
    pub invocation_id: String,
    pub batch_fingerprint: String,
    /// The last error, as the sink or decoder reported it.
    pub error: String,
    /// Delivery attempts made by the handler in the last invocation.
    pub attempts: u32,
    /// The host's RetryContext.RetryCount of the invocation that dead-lettered.
    pub host_retry_count: i64,
    pub dead_lettered_at: DateTime<Utc>,
    /// SinkFailure / RejectedChanges: the changes, normalized.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// RejectedChanges / MalformedItems: one reason per change or item.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// MalformedItems: the raw feed items.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Value>,
    /// MalformedBatch: the request body (lossy UTF-8 if it was not valid UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_body: Option<String>,
    /// MalformedBatch too large to hold: the body, byte for byte, in this object (a key under
    /// `pending/`, beside the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_body_object: Option<String>,
    /// InFlight: the process delivering it ([`process_owner`]), so that one on the same
    /// machine can tell at once that it died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl DeadLetterRecord {
    /// A record with no payload yet, one attempt, the first delivery, dead-lettered now; the
    /// caller fills in what it has (changes, items, body, attempts, retry count).
    pub fn new(
        kind: DeadLetterKind,
        function: &str,
        sink: &str,
        invocation_id: String,
        batch_fingerprint: String,
        error: String,
    ) -> Self {
        Self {
            kind,
            function: function.to_string(),
            sink: sink.to_string(),
            invocation_id,
            batch_fingerprint,
            error,
            attempts: 1,
            host_retry_count: 0,
            dead_lettered_at: Utc::now(),
            changes: Vec::new(),
            reasons: Vec::new(),
            items: Vec::new(),
            raw_body: None,
            raw_body_object: None,
            owner: None,
        }
    }

    /// A record that keeps a request body as it arrived (lossy UTF-8 if it is not valid
    /// UTF-8), for input no sink took: a batch that does not decode, and write-ahead records.
    pub fn raw(
        kind: DeadLetterKind,
        function: &str,
        invocation_id: String,
        batch_fingerprint: String,
        error: String,
        body: &[u8],
    ) -> Self {
        Self {
            raw_body: Some(String::from_utf8_lossy(body).into_owned()),
            ..Self::new(
                kind,
                function,
                INPUT_SINK,
                invocation_id,
                batch_fingerprint,
                error,
            )
        }
    }

    /// The record's key relative to `pending/` or `replayed/`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}-{}.json",
            sanitize(&self.function),
            sanitize(&self.sink),
            self.batch_fingerprint,
            self.kind.as_str()
        )
    }

    /// Where the record stands in feed order: its oldest change's `(_ts, lsn)`, then when it
    /// was dead-lettered. A record that holds a raw body (its changes unread) stands at the
    /// time it was dead-lettered, which is no earlier than its changes. Replay sorts by this,
    /// so that an older change is not replayed over a newer one.
    pub fn feed_position(&self) -> (i64, i64, DateTime<Utc>) {
        let oldest = self
            .changes
            .iter()
            .map(|c| (c.ts.unwrap_or(i64::MAX), c.lsn.unwrap_or(i64::MAX)))
            .min();
        let (ts, lsn) = oldest.unwrap_or((self.dead_lettered_at.timestamp(), i64::MAX));
        (ts, lsn, self.dead_lettered_at)
    }

    /// How many changes (or raw items) the record holds.
    pub fn size(&self) -> usize {
        match self.kind {
            DeadLetterKind::MalformedBatch | DeadLetterKind::InFlight => 1,
            DeadLetterKind::MalformedItems => self.items.len(),
            _ => self.changes.len(),
        }
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where the dead-letter store is: the configured location and an optional fallback.
#[derive(Debug, Clone)]
pub struct DeadLetterConfig {
    pub primary: StoreLocation,
    /// Tried when the primary fails or does not answer in time: another container or
    /// account, or a local folder.
    pub fallback: Option<StoreLocation>,
}

/// Where a record was written: its key (tier-prefixed) and a readable location for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    /// `{store url}/{area}/{key}`, e.g. `.fanout/dead-letter/pending/orders/changelog/ab-sink_failure.json`.
    pub path: String,
    pub in_fallback: bool,
}

/// The dead-letter store: the configured location and an optional fallback.
#[derive(Clone)]
pub struct DeadLetterStore {
    primary: Location,
    fallback: Option<Location>,
}

impl std::fmt::Debug for DeadLetterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeadLetterStore({})", self.location())
    }
}

impl DeadLetterStore {
    /// Opens the configured store and its fallback (no I/O but creating local folders).
    pub fn open(config: &DeadLetterConfig) -> Result<Self, DeadLetterError> {
        Ok(Self {
            primary: Location::open(&config.primary)?,
            fallback: config.fallback.as_ref().map(Location::open).transpose()?,
        })
    }

    /// The configured location (the fallback's is [`Self::fallback_location`]).
    pub fn location(&self) -> &str {
        &self.primary.url
    }

    pub fn fallback_location(&self) -> Option<&str> {
        self.fallback.as_ref().map(|f| f.url.as_str())
    }

    fn tiers(&self) -> impl Iterator<Item = (bool, &Location)> {
        std::iter::once((false, &self.primary)).chain(self.fallback.iter().map(|f| (true, f)))
    }

    /// The tier a key names, and the key within it.
    fn resolve<'k>(&self, key: &'k str) -> Result<(&Location, &'k str), DeadLetterError> {
        match key.strip_prefix(FALLBACK_PREFIX) {
            None => Ok((&self.primary, key)),
            Some(rest) => match &self.fallback {
                Some(f) => Ok((f, rest)),
                None => Err(DeadLetterError::Config {
                    location: self.primary.url.clone(),
                    message: format!(
                        "`{key}` is in the fallback store, and this config names none: add `[dead_letter.fallback]` back"
                    ),
                }),
            },
        }
    }

    /// Writes `body` under `area/key` in the first tier that takes it before `deadline`: the
    /// primary gets half of the time left when there is a fallback.
    async fn put_tiered(
        &self,
        area: &str,
        key: &str,
        body: Vec<u8>,
        deadline: Instant,
    ) -> Result<Stored, DeadLetterError> {
        let mut errors = Vec::new();
        let mut tiers = self.tiers().peekable();
        while let Some((in_fallback, tier)) = tiers.next() {
            let left = deadline.saturating_duration_since(Instant::now());
            let share = if tiers.peek().is_some() {
                left / 2
            } else {
                left
            };
            let share = share.max(Duration::from_millis(1));
            match tokio::time::timeout(share, tier.put(area, key, body.clone())).await {
                Ok(Ok(())) => {
                    if !errors.is_empty() {
                        tracing::warn!(key, primary_error = %DeadLetterError::Unavailable(errors), "dead-letter record written to the fallback store");
                    }
                    return Ok(Stored {
                        key: if in_fallback {
                            format!("{FALLBACK_PREFIX}{key}")
                        } else {
                            key.to_string()
                        },
                        path: format!("{}/{area}/{key}", tier.url),
                        in_fallback,
                    });
                }
                Ok(Err(e)) => errors.push(DeadLetterError::At {
                    location: tier.url.clone(),
                    source: Box::new(e),
                }),
                Err(_) => errors.push(DeadLetterError::TimedOut {
                    location: tier.url.clone(),
                    after: share,
                }),
            }
        }
        Err(DeadLetterError::Unavailable(errors))
    }

    /// Writes (or overwrites) the record under `pending/`, before `deadline`.
    pub async fn put(
        &self,
        record: &DeadLetterRecord,
        deadline: Instant,
    ) -> Result<Stored, DeadLetterError> {
        let body = serde_json::to_vec_pretty(record).expect("records serialize");
        self.put_tiered(PENDING, &record.key(), body, deadline)
            .await
    }

    /// The write-ahead record of a last attempt (kind [`DeadLetterKind::InFlight`], the raw
    /// body), under `in-flight/`.
    pub async fn put_in_flight(
        &self,
        record: &DeadLetterRecord,
        deadline: Instant,
    ) -> Result<Stored, DeadLetterError> {
        let body = serde_json::to_vec(record).expect("records serialize");
        self.put_tiered(IN_FLIGHT, &record.key(), body, deadline)
            .await
    }

    /// Removes a write-ahead record once the attempt's outcome is known.
    pub async fn settle_in_flight(
        &self,
        stored: &Stored,
        deadline: Instant,
    ) -> Result<(), DeadLetterError> {
        let (tier, key) = self.resolve(&stored.key)?;
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, tier.delete(IN_FLIGHT, key))
            .await
            .map_err(|_| DeadLetterError::TimedOut {
                location: tier.url.clone(),
                after: left,
            })?
    }

    /// Moves the write-ahead records of processes that are gone to `pending/`, where replay
    /// finds them: records older than `older_than` (no attempt outlives the function timeout),
    /// and younger ones whose owner ran on this machine and is no longer running. Returns
    /// their keys.
    pub async fn recover_in_flight(
        &self,
        older_than: Duration,
    ) -> Result<Vec<String>, DeadLetterError> {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let mut moved = Vec::new();
        for (in_fallback, tier) in self.tiers() {
            for listed in tier.list(IN_FLIGHT).await? {
                if !listed.key.ends_with(".json") {
                    continue;
                }
                if listed.last_modified > cutoff {
                    let owner = match tier.get(IN_FLIGHT, &listed.key).await {
                        Ok(bytes) => serde_json::from_slice::<DeadLetterRecord>(&bytes)
                            .ok()
                            .and_then(|r| r.owner),
                        // Settled meanwhile.
                        Err(_) => continue,
                    };
                    if owner.as_deref().and_then(owner_is_gone) != Some(true) {
                        continue;
                    }
                }
                tier.rename(&listed.key, IN_FLIGHT, PENDING).await?;
                moved.push(if in_fallback {
                    format!("{FALLBACK_PREFIX}{}", listed.key)
                } else {
                    listed.key
                });
            }
        }
        Ok(moved)
    }

    /// Keys of what waits for replay, in both tiers, sorted: the records, and request bodies
    /// whose record could not be written (an orphaned `.body` is listed as its own record).
    pub async fn list_pending(&self) -> Result<Vec<String>, DeadLetterError> {
        let mut records = Vec::new();
        let mut bodies = Vec::new();
        for (in_fallback, tier) in self.tiers() {
            let prefix = if in_fallback { FALLBACK_PREFIX } else { "" };
            for listed in tier.list(PENDING).await? {
                if listed.key.ends_with(".json") {
                    records.push(format!("{prefix}{}", listed.key));
                } else if listed.key.ends_with(BODY_SUFFIX) {
                    bodies.push(format!("{prefix}{}", listed.key));
                }
            }
        }
        // A body's record may be in either tier.
        let bare: std::collections::HashSet<&str> = records
            .iter()
            .map(|k| k.strip_prefix(FALLBACK_PREFIX).unwrap_or(k))
            .collect();
        let orphans: Vec<String> = bodies
            .into_iter()
            .filter(|b| {
                let bare_body = b.strip_prefix(FALLBACK_PREFIX).unwrap_or(b);
                !bare.contains(body_record_key(bare_body).as_str())
            })
            .collect();
        records.extend(orphans);
        records.sort();
        Ok(records)
    }

    /// Reads a pending record. For an orphaned request body (a key ending in `.body`), a
    /// `malformed_batch` record pointing at it.
    pub async fn get(&self, key: &str) -> Result<DeadLetterRecord, DeadLetterError> {
        let (tier, bare) = self.resolve(key)?;
        if bare.ends_with(BODY_SUFFIX) {
            let function = bare.split('/').next().unwrap_or_default();
            let fingerprint = bare
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(BODY_SUFFIX);
            return Ok(DeadLetterRecord {
                raw_body_object: Some(key.to_string()),
                ..DeadLetterRecord::new(
                    DeadLetterKind::MalformedBatch,
                    function,
                    INPUT_SINK,
                    String::new(),
                    fingerprint.to_string(),
                    "a stored request body whose record could not be written".into(),
                )
            });
        }
        let bytes = tier.get(PENDING, bare).await?;
        serde_json::from_slice(&bytes).map_err(|source| DeadLetterError::Record {
            key: key.to_string(),
            source,
        })
    }

    /// Streams a request body into `pending/{key}` of the primary tier without holding it in
    /// memory (a stream cannot be re-sent to a fallback); returns its size.
    pub async fn put_body_stream<S>(
        &self,
        key: &str,
        head: Vec<bytes::Bytes>,
        rest: S,
    ) -> Result<u64, DeadLetterError>
    where
        S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
    {
        self.primary.put_stream(PENDING, key, head, rest).await
    }

    /// Reads an object under `pending/` (a stored request body).
    pub async fn get_raw(&self, key: &str) -> Result<bytes::Bytes, DeadLetterError> {
        let (tier, bare) = self.resolve(key)?;
        tier.get(PENDING, bare).await
    }

    /// Moves a record (and the request body it points at) from `pending/` to `replayed/` once
    /// a replay delivered it.
    pub async fn mark_replayed(
        &self,
        key: &str,
        record: &DeadLetterRecord,
    ) -> Result<(), DeadLetterError> {
        if let Some(body) = record.raw_body_object.as_deref().filter(|b| *b != key) {
            let (tier, bare) = self.resolve(body)?;
            tier.rename(bare, PENDING, REPLAYED).await?;
        }
        let (tier, bare) = self.resolve(key)?;
        tier.rename(bare, PENDING, REPLAYED).await
    }
}

/// Who this process is: `{host name}:{pid}:{start time in clock ticks since boot}`. The start
/// time tells a live process from a later one that reused the pid.
pub fn process_owner() -> String {
    static OWNER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OWNER
        .get_or_init(|| {
            let pid = std::process::id();
            format!(
                "{}:{pid}:{}",
                host_name(),
                process_start(pid).unwrap_or_default()
            )
        })
        .clone()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("COMPUTERNAME"))
        .unwrap_or_default()
}

/// Field 22 of `/proc/{pid}/stat` (after the parenthesized command name, which may hold spaces).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Some(true) when `owner` ran on this machine and is gone; None when that cannot be told
/// (another machine, or no /proc).
fn owner_is_gone(owner: &str) -> Option<bool> {
    let mut parts = owner.rsplitn(3, ':');
    let (start, pid, host) = (parts.next()?, parts.next()?, parts.next()?);
    if host != host_name() || host.is_empty() || !Path::new("/proc/self/stat").exists() {
        return None;
    }
    let pid: u32 = pid.parse().ok()?;
    Some(process_start(pid).map(|s| s.to_string()) != Some(start.to_string()))
}

/// Whether a pending key (either tier) holds records of `function` (and `sink`, when given),
/// as `fanout replay --function F [--sink S]` selects them.
pub fn key_belongs_to(key: &str, function: &str, sink: Option<&str>) -> bool {
    let key = key.strip_prefix(FALLBACK_PREFIX).unwrap_or(key);
    let mut parts = key.split('/');
    parts.next() == Some(sanitize(function).as_str())
        && sink.is_none_or(|s| parts.next() == Some(sanitize(s).as_str()))
}

/// Stored request bodies end so.
pub const BODY_SUFFIX: &str = ".body";

/// The key of an oversized request body's object (beside its record).
pub fn body_key(function: &str, fingerprint: &str) -> String {
    format!(
        "{}/{INPUT_SINK}/{fingerprint}{BODY_SUFFIX}",
        sanitize(function)
    )
}

/// The record key that belongs to a stored body (`X.body` -> `X-malformed_batch.json`).
fn body_record_key(body: &str) -> String {
    format!(
        "{}-{}.json",
        body.trim_end_matches(BODY_SUFFIX),
        DeadLetterKind::MalformedBatch.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    fn local(dir: &Path, name: &str) -> StoreLocation {
        StoreLocation::parse(
            &dir.join(name).display().to_string(),
            Default::default(),
            dir,
        )
        .unwrap()
    }

    fn record(fp: &str) -> DeadLetterRecord {
        DeadLetterRecord::new(
            DeadLetterKind::SinkFailure,
            "orders",
            "cache",
            "inv".into(),
            fp.into(),
            "down".into(),
        )
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_failing_primary_falls_back_and_keys_name_the_tier() {
        let dir = tempfile::tempdir().unwrap();
        let primary = local(dir.path(), "ok");
        let store = DeadLetterStore::open(&DeadLetterConfig {
            primary,
            fallback: Some(local(dir.path(), "fallback")),
        })
        .unwrap();
        let first = store.put(&record("a"), soon()).await.unwrap();
        assert!(!first.in_fallback);
        // Break the primary: its pending/ folder becomes a file.
        std::fs::remove_dir_all(dir.path().join("ok/pending")).unwrap();
        std::fs::write(dir.path().join("ok/pending"), b"").unwrap();
        let second = store.put(&record("b"), soon()).await.unwrap();
        assert!(second.in_fallback, "{second:?}");
        assert_eq!(second.key, "fallback:orders/cache/b-sink_failure.json");
        assert_eq!(store.get(&second.key).await.unwrap().batch_fingerprint, "b");
        std::fs::remove_file(dir.path().join("ok/pending")).unwrap();
        std::fs::create_dir(dir.path().join("ok/pending")).unwrap();
        assert_eq!(
            store.list_pending().await.unwrap(),
            vec!["fallback:orders/cache/b-sink_failure.json".to_string()]
        );
        let r = store.get(&second.key).await.unwrap();
        store.mark_replayed(&second.key, &r).await.unwrap();
        assert!(store.list_pending().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn both_tiers_failing_is_an_error_naming_both_and_the_deadline_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(&DeadLetterConfig {
            primary: local(dir.path(), "a"),
            fallback: Some(local(dir.path(), "b")),
        })
        .unwrap();
        for t in ["a", "b"] {
            std::fs::write(dir.path().join(t).join("pending"), b"").unwrap();
        }
        let e = store.put(&record("x"), soon()).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/a`") && text.contains("/b`"), "{text}");
        // An expired deadline is an error too, not a hang.
        let e = store.put(&record("y"), Instant::now()).await.unwrap_err();
        assert!(matches!(e, DeadLetterError::Unavailable(_)), "{e}");
    }

    #[tokio::test]
    async fn in_flight_records_are_settled_or_recovered_when_old() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(&DeadLetterConfig {
            primary: local(dir.path(), "dl"),
            fallback: None,
        })
        .unwrap();
        let mut r = record("f");
        r.kind = DeadLetterKind::InFlight;
        r.sink = INPUT_SINK.into();
        r.raw_body = Some("{}".into());
        let stored = store.put_in_flight(&r, soon()).await.unwrap();
        // Young: a live process may still be delivering it.
        assert!(
            store
                .recover_in_flight(Duration::from_secs(60))
                .await
                .unwrap()
                .is_empty()
        );
        store.settle_in_flight(&stored, soon()).await.unwrap();
        assert!(
            store
                .recover_in_flight(Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
        // Left behind: recovered into pending/.
        store.put_in_flight(&r, soon()).await.unwrap();
        let moved = store.recover_in_flight(Duration::ZERO).await.unwrap();
        assert_eq!(moved, vec!["orders/_input/f-in_flight.json".to_string()]);
        assert_eq!(store.list_pending().await.unwrap(), moved);
        assert_eq!(
            store.get(&moved[0]).await.unwrap().kind,
            DeadLetterKind::InFlight
        );
    }

    #[test]
    fn replay_selects_keys_of_a_function_and_sink_in_both_tiers() {
        let key = "orders/cache/ab-sink_failure.json";
        let fallback = format!("{FALLBACK_PREFIX}{key}");
        for k in [key, fallback.as_str()] {
            assert!(key_belongs_to(k, "orders", None));
            assert!(key_belongs_to(k, "orders", Some("cache")));
            assert!(!key_belongs_to(k, "orders", Some("changelog")));
            assert!(
                !key_belongs_to(k, "order", None),
                "a prefix of the name is not the name"
            );
        }
    }

    #[test]
    fn a_live_owner_is_not_gone_and_a_dead_one_is() {
        assert_eq!(owner_is_gone(&process_owner()), Some(false));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(
            owner_is_gone(&format!("{}:{pid}:1", host_name())),
            Some(true)
        );
        assert_eq!(owner_is_gone("another-machine:1:1"), None);
    }

    #[tokio::test]
    async fn an_orphaned_body_is_listed_as_its_own_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(&DeadLetterConfig {
            primary: local(dir.path(), "dl"),
            fallback: None,
        })
        .unwrap();
        let key = body_key("orders", "abc-oversized");
        store
            .put_body_stream(
                &key,
                vec![bytes::Bytes::from_static(b"{}")],
                futures::stream::empty(),
            )
            .await
            .unwrap();
        assert_eq!(store.list_pending().await.unwrap(), vec![key.clone()]);
        let r = store.get(&key).await.unwrap();
        assert_eq!(r.kind, DeadLetterKind::MalformedBatch);
        assert_eq!(r.raw_body_object.as_deref(), Some(key.as_str()));
        assert_eq!(store.get_raw(&key).await.unwrap().as_ref(), b"{}");
        // With its record beside it, only the record is listed.
        let mut rec = DeadLetterRecord::new(
            DeadLetterKind::MalformedBatch,
            "orders",
            INPUT_SINK,
            "i".into(),
            "abc-oversized".into(),
            "too big".into(),
        );
        rec.raw_body_object = Some(key.clone());
        let stored = store.put(&rec, soon()).await.unwrap();
        assert_eq!(
            store.list_pending().await.unwrap(),
            vec![stored.key.clone()]
        );
        store.mark_replayed(&stored.key, &rec).await.unwrap();
        assert!(store.list_pending().await.unwrap().is_empty());
    }
}
