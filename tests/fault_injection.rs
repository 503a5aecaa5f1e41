//! Fault injection: the zero-loss promise under load, checked end to end.
//!
//! A load generator acts like the Functions host: a stream of host-format batches (updates and
//! soft deletes over many keys) split across leases; each lease delivers its batches one after
//! another (order per partition key), applies the retry policy read from the function's
//! `function.json` with `Metadata.RetryContext` on re-deliveries, and re-delivers a batch when
//! the handler dies under it. Two handler processes (the real binary) share the leases and the
//! same Delta table. Meanwhile faults are injected:
//!
//! - a handler killed with SIGKILL mid-batch and restarted (each instance in turn);
//! - the real redis-server killed and restarted: short blips, and one outage longer than the
//!   whole retry policy, so that the Redis part of some batches is dead-lettered;
//! - the FAKE AI Search endpoint (tests/kit/src/search.rs, checked against Microsoft's OpenAPI
//!   spec) answering bursts of 503 and 429, and 207 with failed items;
//! - the FAKE Event Hubs endpoint (tests/kit/src/fake_event_hubs.rs) dropping every connection;
//! - two writers on one Delta table (commit conflicts), all along;
//! - the dead-letter store failing (its `pending/` and `in-flight/` folders made files) for the
//!   whole long Redis outage, so that the last attempts' records go to the fallback store;
//!   SIGKILLs that land on last attempts leave write-ahead records, which the restarted
//!   handler or the replay recovers;
//! - `fanout replay` run while the load goes on (replayed changes older than live ones);
//! - one batch in twenty re-delivered re-cut (the latest-version feed read again from the
//!   checkpoint: changed documents only at their newer position), all along;
//! - three 1.5 MB documents, which Kafka (tansu) and Event Hubs (1 MB limits) must refuse and
//!   keep at once while the other sinks take them;
//! - the Redis sink panicking on every 97th delivery (`FANOUT_FAILPOINT_PANIC`, a hook
//!   in debug builds and the `failpoints` feature only).
//!
//! At the end it checks and prints: every change is in every sink or in the dead-letter store;
//! then after `fanout replay`, in every sink: every (id, lsn) in the Delta changelog exactly
//! once, every change an event (first occurrences in lsn order per key before the replay),
//! every Redis key at the version of its document's last change (or gone after a delete), the
//! search index equal to the expected final state. Any loss fails the test.
//!
//! CI runs the short version (20k changes, debug build). The long one, on demand:
//! `FANOUT_FAULT_CHANGES=200000 cargo test --release --features failpoints --test fault_injection -- --nocapture`
//! (`FANOUT_FAULT_SEED` replays a given run's data and fault order).

use fanout_test_kit as common;

use common::fake_event_hubs::FakeEventHubs;
use common::fake_identity::FakeIdentity;
use common::kafka::Tansu;
use common::search::SearchFake;
use common::{RedisServer, TestApp, read_table};
use fanout::deadletter::{DeadLetterKind, DeadLetterRecord};
use fanout::hostsim::{EmulatedHost, HostError, cosmos_trigger_body, samples, with_retry_context};
use fanout::sinks::azure_search::{KeyEncoding, decode_key, encode_key};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LEASES: usize = 8;
const SINKS: [&str; 5] = ["changelog", "cache", "events", "stream", "search"];
const MAX_BATCH: usize = 100;

/// splitmix64: reproducible data and fault order from one seed, no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One change as generated: what every sink must end up with.
#[derive(Clone, Debug)]
struct Expected {
    id: String,
    customer: String,
    lsn: i64,
    deleted: bool,
    total: f64,
    /// A 1.5 MB document: more than Kafka's and Event Hubs' 1 MB limit.
    big: bool,
}

struct Plan {
    /// lease -> deliveries (batches of documents), in delivery order, re-cuts included.
    leases: Vec<Vec<Vec<Value>>>,
    changes: Vec<Expected>,
    /// Re-deliveries from an earlier checkpoint, cut differently (see [`re_cut`]).
    re_cuts: usize,
}

/// `changes` changes over `changes / 20` orders of `changes / 80` customers; a customer (the
/// partition key) belongs to one lease; every tenth change is a soft delete (a later update
/// of the same order brings it back, as in Cosmos); batch sizes 1..=100.
fn plan(changes: usize, rng: &mut Rng) -> Plan {
    let orders = (changes / 20).max(10) as u64;
    let customers = (changes / 80).max(4) as u64;
    let ts0 = 1_760_000_000;
    let mut streams: Vec<Vec<Value>> = vec![Vec::new(); LEASES];
    let mut expected = Vec::with_capacity(changes);
    for n in 0..changes as i64 {
        let order = rng.below(orders);
        let customer_no = order % customers;
        let id = format!("order-{order}");
        let customer = format!("customer-{customer_no}");
        let lsn = n + 1;
        let deleted = rng.below(10) == 0;
        let total = (rng.below(100_000) as f64) / 100.0;
        let mut doc = samples::order(&id, &customer, lsn, ts0 + n / 50, total, deleted);
        // Three 1.5 MB documents per run (Cosmos DB allows 2 MB).
        let big = n as usize % (changes / 3).max(1) == 17;
        if big {
            doc["pad"] = json!("x".repeat(1_500_000));
        }
        streams[customer_no as usize % LEASES].push(doc);
        expected.push(Expected {
            id,
            customer,
            lsn,
            deleted,
            total,
            big,
        });
    }
    let mut re_cuts = 0;
    let leases = streams
        .into_iter()
        .map(|stream| {
            let mut batches = Vec::new();
            let mut rest = stream.as_slice();
            while !rest.is_empty() {
                let n = (1 + rng.below(MAX_BATCH as u64) as usize).min(rest.len());
                batches.push(rest[..n].to_vec());
                rest = &rest[n..];
            }
            // One batch in twenty is re-delivered, re-cut, before the next one.
            let mut deliveries = Vec::with_capacity(batches.len() * 21 / 20);
            for i in 0..batches.len() {
                deliveries.push(batches[i].clone());
                if i + 1 < batches.len() && rng.below(20) == 0 {
                    let take = 1 + rng.below(batches[i + 1].len() as u64) as usize;
                    deliveries.push(re_cut(&batches[i], &batches[i + 1][..take]));
                    re_cuts += 1;
                }
            }
            deliveries
        })
        .collect();
    Plan {
        leases,
        changes: expected,
        re_cuts,
    }
}

/// What the latest-version feed returns when the host reads again from the checkpoint before
/// `delivered` (a lease moved, the host restarted before it checkpointed): the documents of
/// `delivered` not changed since, then the newer changes (`next`, cut at another size). A
/// document changed since is only at its newer position, so the batch starts elsewhere and
/// its first change is not the first change delivered before.
fn re_cut(delivered: &[Value], next: &[Value]) -> Vec<Value> {
    let changed_since: HashSet<&str> = next.iter().map(|d| d["id"].as_str().unwrap()).collect();
    delivered
        .iter()
        .filter(|d| !changed_since.contains(d["id"].as_str().unwrap()))
        .chain(next)
        .cloned()
        .collect()
}

/// The function's retry policy, read from its function.json as the host reads it.
#[derive(Clone, Copy, Debug)]
struct RetryPolicy {
    max_retry_count: i64,
    exponential: bool,
    min: Duration,
    max: Duration,
}

impl RetryPolicy {
    fn read(function_json: &std::path::Path) -> Self {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(function_json).unwrap()).unwrap();
        let r = &v["retry"];
        let span = |k: &str| {
            r[k].as_str()
                .and_then(fanout::config::parse_timespan)
                .unwrap_or_default()
        };
        let exponential = r["strategy"] == "exponentialBackoff";
        RetryPolicy {
            max_retry_count: r["maxRetryCount"].as_i64().unwrap_or(0),
            exponential,
            min: if exponential {
                span("minimumInterval")
            } else {
                span("delayInterval")
            },
            max: if exponential {
                span("maximumInterval")
            } else {
                span("delayInterval")
            },
        }
    }

    /// The delay before retry number `retry` (1-based).
    fn delay(&self, retry: i64) -> Duration {
        if self.exponential {
            (self.min * 2u32.saturating_pow((retry - 1).clamp(0, 16) as u32)).min(self.max)
        } else {
            self.min
        }
    }
}

/// One handler process the leases talk to; the chaos task kills it and starts a new one.
struct Instance {
    host: Mutex<Arc<EmulatedHost>>,
    /// Bumped by every restart: an invocation that failed because the process died waits for
    /// the next generation, as the host waits for its restarted worker.
    generation: AtomicUsize,
    app: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl Instance {
    async fn start(app: &std::path::Path, env: Vec<(String, String)>) -> Arc<Self> {
        let host = Self::spawn(app, &env).await;
        Arc::new(Self {
            host: Mutex::new(Arc::new(host)),
            generation: AtomicUsize::new(0),
            app: app.to_path_buf(),
            env,
        })
    }

    async fn spawn(app: &std::path::Path, env: &[(String, String)]) -> EmulatedHost {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        EmulatedHost::start(&common::binary(), app, &env)
            .await
            .expect("handler starts")
    }

    fn current(&self) -> Arc<EmulatedHost> {
        self.host.lock().unwrap().clone()
    }

    /// SIGKILL the running process (whatever it is doing), then start a new one.
    async fn crash_and_restart(&self) {
        if let Some(pid) = self.current().pid() {
            // SAFETY: kill(2) on a child we started, with a valid signal.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        let fresh = Self::spawn(&self.app, &self.env).await;
        *self.host.lock().unwrap() = Arc::new(fresh);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// After a connection failure on generation `seen`: wait (up to 60 s) for the restart.
    async fn wait_for_restart(&self, seen: usize) {
        let started = Instant::now();
        while self.generation.load(Ordering::SeqCst) == seen
            && started.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[derive(Default)]
struct Stats {
    delivered: AtomicUsize,
    invocations: AtomicUsize,
    retries: AtomicUsize,
    connection_failures: AtomicUsize,
    /// Batches whose last attempt was not answered 2xx: the host checkpoints them anyway.
    lost_batches: Mutex<Vec<String>>,
    latency_max_ms: AtomicU64,
}

/// One lease: its batches strictly one after another, each retried under the policy.
async fn run_lease(
    batches: Vec<Vec<Value>>,
    instance: Arc<Instance>,
    policy: RetryPolicy,
    stats: Arc<Stats>,
) {
    for docs in batches {
        let body = cosmos_trigger_body("documents", "orders", &docs, None);
        let mut retry = 0i64;
        loop {
            let attempt = if retry == 0 {
                body.clone()
            } else {
                with_retry_context(&body, retry, policy.max_retry_count)
            };
            stats.invocations.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let generation = instance.generation.load(Ordering::SeqCst);
            let answer = instance.current().invoke("orders", &attempt).await;
            stats
                .latency_max_ms
                .fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            let failure = match answer {
                Ok(call) if call.is_success() => {
                    stats.delivered.fetch_add(docs.len(), Ordering::Relaxed);
                    break;
                }
                Ok(call) => format!("answered {}: {:?}", call.status, call.logs().first()),
                Err(HostError::Http(e)) => {
                    // The process died under the invocation (or is being restarted): the host
                    // counts a failed execution and re-delivers under the policy.
                    stats.connection_failures.fetch_add(1, Ordering::Relaxed);
                    instance.wait_for_restart(generation).await;
                    format!("connection failed: {e}")
                }
                Err(e) => format!("{e}"),
            };
            if policy.max_retry_count >= 0 && retry >= policy.max_retry_count {
                stats.lost_batches.lock().unwrap().push(format!(
                    "batch of {} (lsn {}..): last attempt {failure}",
                    docs.len(),
                    docs[0]["_lsn"]
                ));
                break;
            }
            retry += 1;
            stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(policy.delay(retry)).await;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillHandler(usize),
    RedisBlip,
    RedisLongOutage,
    SearchThrottle,
    SearchItemFailures,
    EventHubsDrop,
    ReplayDuringLoad,
}

const SCHEDULE: [Fault; 9] = [
    Fault::KillHandler(0),
    Fault::RedisBlip,
    Fault::SearchThrottle,
    Fault::EventHubsDrop,
    Fault::KillHandler(1),
    Fault::RedisLongOutage,
    Fault::SearchItemFailures,
    Fault::ReplayDuringLoad,
    Fault::EventHubsDrop,
];

fn config(redis: &str, search: &str, hub: &str, brokers: &str) -> String {
    format!(
        r#"
[dead_letter]
url = ".fanout/dead-letter"
[dead_letter.fallback]
url = "fallback-dead-letter"

[retry]
initial_backoff_ms = 20
max_backoff_ms = 200
budget_ms = 1000

[functions.orders]
partition_key = "/customerId"
soft_delete = {{ field = "/deleted", equals = true }}

[functions.orders.sinks.changelog]
type = "delta"
table = "tables/orders"

[functions.orders.sinks.cache]
type = "redis"
url = "{redis}"
mode = "refresh"
key = "order:{{id}}"
fields = ["id", "status", "total"]
connect_timeout_ms = 300
response_timeout_ms = 300

[functions.orders.sinks.events]
type = "event_hubs"
namespace = "fake.servicebus.windows.net"
event_hub = "orders"
endpoint = "{hub}"
partitioning = "hash"
send_timeout_ms = 1000

[functions.orders.sinks.stream]
type = "kafka"
brokers = "{brokers}"
topic = "orders"
message_timeout_ms = 2000

[functions.orders.sinks.search]
type = "azure_search"
endpoint = "{search}"
index = "orders"
auth = "api_key"
api_key = "test-admin-key"
index_definition = "infra/search/orders.json"
key = "id"
version_field = "cosmosVersion"

[functions.orders.sinks.search.fields]
id = "/id"
customerId = "/customerId"
status = "/status"
total = "/total"
"#
    )
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_is_lost_under_faults() {
    let total = env_number("FANOUT_FAULT_CHANGES", 20_000) as usize;
    let seed = env_number(
        "FANOUT_FAULT_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    println!("fault injection: {total} changes, seed {seed} (FANOUT_FAULT_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let plan = plan(total, &mut rng);

    // Services: a real Redis, the FAKE search endpoint, the FAKE Event Hubs endpoint with a
    // FAKE managed-identity endpoint in front of it.
    let mut redis = RedisServer::start();
    let search = SearchFake::start("key").await;
    let identity = FakeIdentity::start().await;
    let hub = FakeEventHubs::new("orders", 4, 1024 * 1024);
    let hub_endpoint = hub.start(0).await.unwrap();
    let broker = Tansu::start();
    broker.create_topic("orders", 4).await;

    let app = TestApp::new();
    std::fs::create_dir_all(app.path().join("infra/search")).unwrap();
    std::fs::copy(
        common::repo_root().join("infra/search/orders.json"),
        app.path().join("infra/search/orders.json"),
    )
    .unwrap();
    std::fs::create_dir_all(app.path().join("orders")).unwrap();
    std::fs::write(
        app.path().join("orders/function.json"),
        json!({
            "bindings": [{"type": "cosmosDBTrigger", "name": "documents", "direction": "in",
                          "connection": "CosmosDBConnection", "databaseName": "shop",
                          "containerName": "orders", "leaseContainerName": "leases",
                          "leaseContainerPrefix": "orders-", "maxItemsPerInvocation": MAX_BATCH}],
            "retry": {"strategy": "exponentialBackoff", "maxRetryCount": 5,
                      "minimumInterval": "00:00:00.100", "maximumInterval": "00:00:01"}
        })
        .to_string(),
    )
    .unwrap();
    app.config(&config(
        &redis.url(),
        &search.endpoint(),
        &hub_endpoint,
        &broker.brokers(),
    ));
    let policy = RetryPolicy::read(&app.path().join("orders/function.json"));
    let mut env: Vec<(String, String)> = identity
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.push(("FANOUT_LOG".into(), "error".into()));
    // The handlers' Redis sink panics on every 97th delivery (a bug in a sink); `fanout
    // replay`, run with the bug fixed, has no such hook.
    let mut handler_env = env.clone();
    // (Not the search sink: its replays race live writes to the same documents, which the
    // service's unconditional writes cannot rule out - the known window in docs/search.md.)
    handler_env.push(("FANOUT_FAILPOINT_PANIC".into(), "cache:97".into()));

    let instances = [
        Instance::start(app.path(), handler_env.clone()).await,
        Instance::start(app.path(), handler_env.clone()).await,
    ];
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let leases: Vec<_> = plan
        .leases
        .iter()
        .enumerate()
        .map(|(lease, batches)| {
            tokio::spawn(run_lease(
                batches.clone(),
                instances[lease % instances.len()].clone(),
                policy,
                stats.clone(),
            ))
        })
        .collect();

    // The chaos task: the next fault every tenth of the stream (by changes answered), the
    // long Redis outage once.
    let done = Arc::new(AtomicBool::new(false));
    let chaos = {
        let done = done.clone();
        let stats = stats.clone();
        let instances = instances.clone();
        let search_state = search.state.clone();
        let hub = hub.clone();
        let ids: Vec<String> = plan.changes.iter().map(|c| c.id.clone()).collect();
        let app_root = app.path().to_path_buf();
        let replay_env = env.clone();
        let mut rng = Rng(seed ^ 0xfa17);
        tokio::spawn(async move {
            let mut log: Vec<String> = Vec::new();
            let mut next = 0usize;
            let mut long_outage_done = false;
            let step = (total / 10).max(1);
            while !done.load(Ordering::Relaxed) {
                if stats.delivered.load(Ordering::Relaxed) < step * (next + 1) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let fault = SCHEDULE[next % SCHEDULE.len()];
                next += 1;
                let at = format!("{:>6.1}s", started.elapsed().as_secs_f64());
                match fault {
                    Fault::KillHandler(i) => {
                        instances[i].crash_and_restart().await;
                        log.push(format!("{at} SIGKILL handler {i}, restarted"));
                    }
                    Fault::RedisBlip => {
                        redis.kill();
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        redis.restart();
                        log.push(format!("{at} redis-server killed for 0.5 s"));
                    }
                    Fault::RedisLongOutage if !long_outage_done => {
                        long_outage_done = true;
                        redis.kill();
                        // The primary dead-letter store fails too: the last attempts'
                        // records must reach the fallback.
                        primary_store(&app_root, false);
                        // Longer than the policy's 6 attempts (1 s budget each + backoff):
                        // batches reach their last attempt and dead-letter the Redis part.
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        primary_store(&app_root, true);
                        redis.restart();
                        log.push(format!(
                            "{at} redis-server killed and the primary dead-letter store failing for 10 s (past the retry policy)"
                        ));
                    }
                    Fault::RedisLongOutage => {}
                    Fault::SearchThrottle => {
                        let mut s = search_state.lock().unwrap();
                        for _ in 0..6 {
                            s.script.throttle.push_back((503, 0));
                        }
                        for _ in 0..6 {
                            s.script.throttle.push_back((429, 1));
                        }
                        log.push(format!("{at} search: 6 x 503 then 6 x 429 (Retry-After 1)"));
                    }
                    Fault::SearchItemFailures => {
                        let mut s = search_state.lock().unwrap();
                        for _ in 0..50 {
                            let id = &ids[rng.below(ids.len() as u64) as usize];
                            let key = encode_key(id, KeyEncoding::Base64url).unwrap();
                            s.script.fail_once.insert(key, 503);
                        }
                        log.push(format!("{at} search: 207 with 50 items failing once (503)"));
                    }
                    Fault::EventHubsDrop => {
                        hub.drop_connections();
                        log.push(format!("{at} event hubs: every connection dropped"));
                    }
                    Fault::ReplayDuringLoad => {
                        // `fanout replay` racing live traffic: what it re-drives is older
                        // than what the leases deliver meanwhile.
                        let (dir, env) = (app_root.clone(), replay_env.clone());
                        let out = tokio::task::spawn_blocking(move || {
                            std::process::Command::new(common::binary())
                                .current_dir(dir)
                                .arg("replay")
                                .envs(env)
                                .output()
                                .unwrap()
                        })
                        .await
                        .unwrap();
                        log.push(format!(
                            "{at} fanout replay during the load: {}",
                            common::stdout(&out).lines().last().unwrap_or_default()
                        ));
                    }
                }
            }
            (redis, log)
        })
    };

    let load = async {
        for lease in leases {
            lease.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(1800), load)
        .await
        .expect("the load finished within 30 minutes (a stuck lease is a defect)");
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let (redis, faults) = chaos.await.unwrap();
    for instance in &instances {
        if let Some(pid) = instance.current().pid() {
            // SAFETY: as above; SIGTERM lets the handler finish in-flight work.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }

    // Leftover scripted failures must not leak into the replay's check.
    {
        let mut s = search.state.lock().unwrap();
        s.script.throttle.clear();
        s.script.fail_once.clear();
    }

    let mut problems: Vec<String> = Vec::new();
    let lost = stats.lost_batches.lock().unwrap().clone();
    for l in &lost {
        problems.push(format!("LOST: the host gave up on a {l}"));
    }

    // What the dead-letter store holds, per sink.
    let dead_letters = read_dead_letters(app.path());
    let mut dead: HashMap<String, HashSet<(String, i64)>> = HashMap::new();
    for r in &dead_letters {
        if r.kind == DeadLetterKind::InFlight {
            // A last attempt whose handler was killed: the whole batch, for every sink.
            for (id, lsn) in body_changes(r.raw_body.as_deref().unwrap_or_default()) {
                for sink in SINKS {
                    dead.entry(sink.into())
                        .or_default()
                        .insert((id.clone(), lsn));
                }
            }
            continue;
        }
        assert!(
            r.items.is_empty() && r.raw_body.is_none(),
            "generated input is well-formed, yet dead-lettered as malformed: {}",
            r.error
        );
        let set = dead.entry(r.sink.clone()).or_default();
        for c in &r.changes {
            set.insert((c.id.clone(), c.lsn.unwrap_or(-1)));
        }
    }
    let in_fallback = read_dead_letters_in(&app.path().join("fallback-dead-letter/pending")).len();
    let in_flight_recovered = dead_letters
        .iter()
        .filter(|r| r.kind == DeadLetterKind::InFlight)
        .count();
    let mut reasons: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in &dead_letters {
        let reason: String = r.error.chars().take(160).collect();
        *reasons.entry((r.sink.clone(), reason)).or_default() += r.changes.len();
    }
    let dead_count = |sink: &str| dead.get(sink).map_or(0, HashSet::len);
    let in_dead = |sink: &str, id: &str, lsn: i64| {
        dead.get(sink)
            .is_some_and(|s| s.contains(&(id.to_string(), lsn)))
    };

    // Before the replay: every change is in every sink or in the dead-letter store.
    let latest = latest_per_id(&plan.changes);
    let rows = read_table(&app.table("tables/orders")).await.rows;
    let row_keys: HashSet<(String, i64)> = rows
        .iter()
        .map(|r| (r.id.clone(), r.lsn.unwrap_or(-1)))
        .collect();
    let events_before = hub.events().len();
    let events_seen = event_keys(&hub);
    let mut missing = BTreeMap::<&str, usize>::new();
    for c in &plan.changes {
        if !row_keys.contains(&(c.id.clone(), c.lsn)) && !in_dead("changelog", &c.id, c.lsn) {
            *missing.entry("changelog").or_default() += 1;
        }
        if !events_seen.contains(&(c.id.clone(), c.lsn)) && !in_dead("events", &c.id, c.lsn) {
            *missing.entry("events").or_default() += 1;
        }
    }
    let redis_stale_before = redis_mismatches(&redis, &latest)
        .into_iter()
        .filter(|id| {
            !plan
                .changes
                .iter()
                .any(|c| &c.id == id && in_dead("cache", id, c.lsn))
        })
        .count();
    if redis_stale_before > 0 {
        missing.insert("cache", redis_stale_before);
    }
    let search_wrong_before: Vec<String> = search_mismatches(&search, &latest)
        .into_iter()
        .filter(|id| {
            !plan
                .changes
                .iter()
                .any(|c| &c.id == id && in_dead("search", id, c.lsn))
        })
        .collect();
    if !search_wrong_before.is_empty() {
        missing.insert("search", search_wrong_before.len());
        let s = search.state.lock().unwrap();
        for id in search_wrong_before.iter().take(5) {
            let held = latest.get(id).and_then(|_| {
                s.index
                    .get(&encode_key(id, KeyEncoding::Base64url).unwrap())
                    .cloned()
            });
            let history: Vec<(i64, bool)> = plan
                .changes
                .iter()
                .filter(|c| &c.id == id)
                .map(|c| (c.lsn, c.deleted))
                .collect();
            problems.push(format!(
                "search `{id}` before replay: index holds {held:?}; its changes (lsn, deleted): {history:?}"
            ));
        }
    }
    for (sink, n) in &missing {
        problems.push(format!(
            "LOST before replay: {n} changes neither in sink `{sink}` nor in the dead-letter store"
        ));
    }

    // Replay the dead-letter store with every service up, then check every sink strictly.
    let replay_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let replay = app.run(&["replay"], &replay_env);
    let replay_out = format!("{}{}", common::stdout(&replay), common::stderr(&replay));
    if !replay.status.success()
        && replay_out.lines().any(|l| {
            l.contains("still failing") && !l.contains("too large") && !l.contains("refused")
        })
    {
        problems.push(format!("fanout replay failed: {replay_out}"));
    }
    // What stays pending: only the 1.5 MB changes the event streams refuse (1 MB limit),
    // kept with their reason - a replay cannot make them fit.
    let big: HashSet<(String, i64)> = plan
        .changes
        .iter()
        .filter(|c| c.big)
        .map(|c| (c.id.clone(), c.lsn))
        .collect();
    let still_pending = read_dead_letters(app.path());
    let mut refused_big: HashMap<String, HashSet<(String, i64)>> = HashMap::new();
    for r in &still_pending {
        let all_big = !r.changes.is_empty()
            && r.changes
                .iter()
                .all(|c| big.contains(&(c.id.clone(), c.lsn.unwrap_or(-1))));
        if r.kind == DeadLetterKind::RejectedChanges
            && ["events", "stream"].contains(&r.sink.as_str())
            && all_big
        {
            let set = refused_big.entry(r.sink.clone()).or_default();
            set.extend(
                r.changes
                    .iter()
                    .map(|c| (c.id.clone(), c.lsn.unwrap_or(-1))),
            );
        } else {
            problems.push(format!(
                "still pending after replay: {:?} of `{}`: {}",
                r.kind, r.sink, r.error
            ));
        }
    }
    for sink in ["events", "stream"] {
        let kept = refused_big.get(sink).map_or(0, HashSet::len);
        if kept != big.len() {
            problems.push(format!(
                "`{sink}`: {kept} of the {} oversized changes kept in the dead-letter store",
                big.len()
            ));
        }
    }
    if !replay.status.success() && refused_big.is_empty() {
        problems.push("fanout replay failed with nothing left pending".into());
    }

    let rows = read_table(&app.table("tables/orders")).await.rows;
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for r in &rows {
        if !seen.insert((r.id.clone(), r.lsn.unwrap_or(-1))) {
            duplicates += 1;
        }
    }
    let delta_missing = plan
        .changes
        .iter()
        .filter(|c| !seen.contains(&(c.id.clone(), c.lsn)))
        .count();
    let events_seen = event_keys(&hub);
    let events_missing = plan
        .changes
        .iter()
        .filter(|c| !c.big && !events_seen.contains(&(c.id.clone(), c.lsn)))
        .count();
    let kafka_records = broker.consume_all("orders", 4);
    let kafka_seen: HashSet<(String, i64)> = kafka_records
        .iter()
        .map(|r| {
            let ce: Value = serde_json::from_slice(&r.value).expect("a record is a CloudEvent");
            (ce["subject"].as_str().unwrap().to_string(), lsn_of(&ce))
        })
        .collect();
    let kafka_missing = plan
        .changes
        .iter()
        .filter(|c| !c.big && !kafka_seen.contains(&(c.id.clone(), c.lsn)))
        .count();
    // Records the replay during the load delivered are under `replayed/` by now: count them too.
    let replayed = [
        ".fanout/dead-letter/replayed",
        "fallback-dead-letter/replayed",
    ]
    .iter()
    .flat_map(|root| read_dead_letters_in(&app.path().join(root)))
    .collect::<Vec<_>>();
    let panics: usize = dead_letters
        .iter()
        .chain(&replayed)
        .filter(|r| r.error.contains("the sink panicked"))
        .count();
    if panics == 0 {
        problems.push("no Redis delivery panicked: run a build with fault hooks (debug, or `--features failpoints`)".into());
    }
    let order_breaks = event_order_breaks(&hub, events_before);
    let redis_stale = redis_mismatches(&redis, &latest);
    let search_wrong = search_mismatches(&search, &latest);
    if delta_missing > 0 {
        problems.push(format!(
            "LOST: {delta_missing} changes missing from the Delta changelog"
        ));
    }
    if duplicates > 0 {
        problems.push(format!(
            "{duplicates} duplicate (id, lsn) rows in the Delta changelog"
        ));
    }
    if events_missing > 0 {
        problems.push(format!("LOST: {events_missing} changes without an event"));
    }
    if kafka_missing > 0 {
        problems.push(format!(
            "LOST: {kafka_missing} changes without a Kafka record"
        ));
    }
    if order_breaks > 0 {
        problems.push(format!(
            "{order_breaks} events out of lsn order for their key"
        ));
    }
    if !redis_stale.is_empty() {
        problems.push(format!(
            "{} Redis keys not at their last change, e.g. {:?}",
            redis_stale.len(),
            &redis_stale[..redis_stale.len().min(5)]
        ));
    }
    if !search_wrong.is_empty() {
        problems.push(format!(
            "{} search documents not in their expected final state, e.g. {:?}",
            search_wrong.len(),
            &search_wrong[..search_wrong.len().min(5)]
        ));
    }

    let deletes = plan.changes.iter().filter(|c| c.deleted).count();
    let batches: usize = plan.leases.iter().map(Vec::len).sum();
    println!("faults injected:");
    for f in &faults {
        println!("  {f}");
    }
    if !reasons.is_empty() {
        println!("dead-letter reasons (sink: error -> changes):");
        for ((sink, reason), n) in &reasons {
            println!("  {sink}: {reason} -> {n}");
        }
    }
    println!("| measure | value |");
    println!("|---|---|");
    println!("| changes (deletes) | {} ({deletes}) |", plan.changes.len());
    println!(
        "| documents / partition keys / leases | {} / {} / {LEASES} |",
        latest.len(),
        plan.changes
            .iter()
            .map(|c| &c.customer)
            .collect::<HashSet<_>>()
            .len()
    );
    println!(
        "| batches / invocations / host retries / connection failures | {batches} / {} / {} / {} |",
        stats.invocations.load(Ordering::Relaxed),
        stats.retries.load(Ordering::Relaxed),
        stats.connection_failures.load(Ordering::Relaxed)
    );
    println!(
        "| load time / slowest invocation | {:.1} s / {} ms |",
        elapsed.as_secs_f64(),
        stats.latency_max_ms.load(Ordering::Relaxed)
    );
    println!(
        "| dead-lettered changes per sink | changelog {}, cache {}, events {}, search {} |",
        dead_count("changelog"),
        dead_count("cache"),
        dead_count("events"),
        dead_count("search")
    );
    println!(
        "| dead-letter records in the fallback store / write-ahead records recovered | {in_fallback} / {in_flight_recovered} |"
    );
    println!(
        "| replay | {} records, {} |",
        dead_letters.len(),
        match (replay.status.success(), still_pending.len()) {
            (true, _) => "ok".to_string(),
            (false, n) =>
                format!("{n} still pending (the oversized changes the event streams refuse)"),
        }
    );
    println!(
        "| Delta rows / unique (id, lsn) / duplicates | {} / {} / {duplicates} |",
        rows.len(),
        seen.len()
    );
    println!(
        "| events received / unique changes | {} / {} |",
        hub.events().len(),
        events_seen.len()
    );
    println!(
        "| Kafka records / unique changes | {} / {} |",
        kafka_records.len(),
        kafka_seen.len()
    );
    println!(
        "| re-cut re-deliveries / sink panics / 1.5 MB changes kept by events, stream | {} / {panics} / {}, {} |",
        plan.re_cuts,
        refused_big.get("events").map_or(0, HashSet::len),
        refused_big.get("stream").map_or(0, HashSet::len)
    );
    println!(
        "| Redis keys / search documents checked | {} / {} |",
        latest.len(),
        latest.len()
    );
    println!(
        "| lost (host gave up) / missing before replay / problems | {} / {} / {} |",
        lost.len(),
        missing.values().sum::<usize>(),
        problems.len()
    );
    assert!(
        problems.is_empty(),
        "zero-loss check failed:\n{}",
        problems.join("\n")
    );
}

/// Makes the primary dead-letter store fail (its areas become files) or work again.
fn primary_store(app: &std::path::Path, working: bool) {
    let root = app.join(".fanout/dead-letter");
    for area in ["pending", "in-flight"] {
        let (live, aside) = (root.join(area), root.join(format!("{area}.aside")));
        if working {
            let _ = std::fs::remove_file(&live);
            if aside.exists() {
                std::fs::rename(&aside, &live).unwrap();
            }
        } else {
            if live.exists() {
                std::fs::rename(&live, &aside).unwrap();
            }
            std::fs::write(&live, b"failing").unwrap();
        }
    }
}

/// `(id, lsn)` of the documents in a host request body.
fn body_changes(body: &str) -> Vec<(String, i64)> {
    let request = fanout::host::HostRequest::decode(body.as_bytes(), "documents").unwrap();
    request
        .items
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["_lsn"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Pending records in both tiers, the in-flight records of dead handlers included (a replay
/// moves those to pending first).
fn read_dead_letters(app: &std::path::Path) -> Vec<DeadLetterRecord> {
    let mut out = Vec::new();
    for root in [
        ".fanout/dead-letter/pending",
        ".fanout/dead-letter/in-flight",
        "fallback-dead-letter/pending",
        "fallback-dead-letter/in-flight",
    ] {
        out.extend(read_dead_letters_in(&app.join(root)));
    }
    out
}

fn read_dead_letters_in(root: &std::path::Path) -> Vec<DeadLetterRecord> {
    let root = root.to_path_buf();
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&p).unwrap();
                out.push(
                    serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("{}: not a dead-letter record: {e}", p.display())
                    }),
                );
            }
        }
    }
    out
}

/// The last change of every document.
fn latest_per_id(changes: &[Expected]) -> BTreeMap<String, Expected> {
    let mut latest = BTreeMap::new();
    for c in changes {
        latest.insert(c.id.clone(), c.clone());
    }
    latest
}

/// The `cosmoslsn` extension (a string: CloudEvents extension values are strings or integers,
/// and an lsn can exceed what every consumer's integer holds).
fn lsn_of(ce: &Value) -> i64 {
    match &ce["cosmoslsn"] {
        Value::String(s) => s.parse().expect("cosmoslsn is a number"),
        v => v.as_i64().expect("every event carries cosmoslsn"),
    }
}

/// (id, lsn) of every event the hub received (structured CloudEvents: subject = id).
fn event_keys(hub: &FakeEventHubs) -> HashSet<(String, i64)> {
    hub.events()
        .iter()
        .map(|e| {
            let ce: Value = serde_json::from_slice(&e.body).expect("event body is a CloudEvent");
            (ce["subject"].as_str().unwrap().to_string(), lsn_of(&ce))
        })
        .collect()
}

/// Among the first `n` events (before the replay), first occurrences per key that come after
/// a higher lsn of the same key. Re-sends after a lost acknowledgement repeat earlier events;
/// only a first occurrence out of order breaks the promise.
fn event_order_breaks(hub: &FakeEventHubs, n: usize) -> usize {
    let mut seen = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut breaks = 0;
    for e in hub.events().iter().take(n) {
        let ce: Value = serde_json::from_slice(&e.body).unwrap();
        let lsn = lsn_of(&ce);
        if !seen.insert(ce["id"].as_str().unwrap().to_string()) {
            continue;
        }
        let key = ce["partitionkey"].to_string();
        let prev = last.entry(key).or_insert(i64::MIN);
        if lsn < *prev {
            breaks += 1;
        }
        *prev = (*prev).max(lsn);
    }
    breaks
}

/// Ids whose Redis state is not their last change: the version key must hold its lsn, the
/// data key must hold its total (or be gone after a delete).
fn redis_mismatches(redis: &RedisServer, latest: &BTreeMap<String, Expected>) -> Vec<String> {
    let mut conn = redis.client();
    let mut wrong = Vec::new();
    let ids: Vec<&String> = latest.keys().collect();
    for chunk in ids.chunks(500) {
        let data: Vec<Option<String>> = redis::cmd("MGET")
            .arg(
                chunk
                    .iter()
                    .map(|id| format!("order:{id}"))
                    .collect::<Vec<_>>(),
            )
            .query(&mut conn)
            .unwrap();
        let versions: Vec<Option<String>> = redis::cmd("MGET")
            .arg(
                chunk
                    .iter()
                    .map(|id| fanout::sinks::redis::version_key(&format!("order:{id}")).unwrap())
                    .collect::<Vec<_>>(),
            )
            .query(&mut conn)
            .unwrap();
        for ((id, value), version) in chunk.iter().zip(data).zip(versions) {
            let want = &latest[*id];
            let version_ok = version
                .as_deref()
                .and_then(|v| v.split(':').next())
                .and_then(|lsn| lsn.parse::<i64>().ok())
                == Some(want.lsn);
            let value_ok = match (&value, want.deleted) {
                (None, true) => true,
                (Some(v), false) => {
                    let v: Value = serde_json::from_str(v).unwrap_or_default();
                    v["total"].as_f64() == Some(want.total)
                }
                _ => false,
            };
            if !version_ok || !value_ok {
                wrong.push((*id).clone());
            }
        }
    }
    wrong
}

/// Ids whose search document is not the projection of their last change (or present after a
/// delete).
fn search_mismatches(search: &SearchFake, latest: &BTreeMap<String, Expected>) -> Vec<String> {
    let s = search.state.lock().unwrap();
    let mut wrong = Vec::new();
    for (id, want) in latest {
        let key = encode_key(id, KeyEncoding::Base64url).unwrap();
        let ok = match (s.index.get(&key), want.deleted) {
            (None, true) => true,
            (Some(doc), false) => {
                doc.get("total").and_then(Value::as_f64) == Some(want.total)
                    && doc.get("customerId").and_then(Value::as_str) == Some(want.customer.as_str())
            }
            _ => false,
        };
        if !ok {
            wrong.push(id.clone());
        }
    }
    // Documents the stream never had (a wrong key, a resurrected id): by id, so that the
    // check before the replay can tell them from documents a pending record still fixes.
    for key in s.index.keys() {
        match decode_key(key, KeyEncoding::Base64url) {
            Some(id) if latest.contains_key(&id) => {}
            Some(id) => wrong.push(format!("{id} (never in the stream)")),
            None => wrong.push(format!("key {key} (not an encoded id)")),
        }
    }
    wrong
}
