//! The test kit: builders for changes, batch contexts and route contexts, a sink built from a
//! TOML table the way the routing file builds it, and two sinks for pipeline tests - one that
//! answers from a script, one that panics. Compiled for this crate's unit tests and, through
//! the `test-util` feature (enabled for the integration tests and benches by the crate's
//! dev-dependency on itself), for them; never in the shipped binary.

use crate::change::{Change, DeleteKind, Operation, PartitionKey, PartitionKeyPaths};
use crate::sinks::{BatchContext, Delivery, RouteContext, Sink, SinkConfig, SinkError};
use async_trait::async_trait;
use serde_json::{Map, Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A batch context of `function`, first delivery, not a replay.
pub fn batch_context(function: &str) -> BatchContext {
    BatchContext {
        function: function.into(),
        invocation_id: "test-invocation".into(),
        fingerprint: "test-fingerprint".into(),
        received_at: chrono::Utc::now(),
        replay: false,
    }
}

/// The route a sink is built for outside a routing file: function `orders` reading
/// `/cosmosdb/shop/orders`, partitioned by `partition_key`, with no output bindings.
pub fn route_context(app_root: &Path, partition_key: &[&str]) -> RouteContext {
    RouteContext {
        function: "orders".into(),
        app_root: app_root.to_path_buf(),
        partition_key: PartitionKeyPaths::parse(partition_key).expect("valid partition key"),
        event_source: "/cosmosdb/shop/orders".into(),
        output_bindings: Vec::new(),
    }
}

/// A function folder's trigger settings as `config::functions` reads them (latest version,
/// no retry policy, no output bindings).
pub fn function_definition(
    name: &str,
    database: Option<&str>,
    container: Option<&str>,
    connection: Option<&str>,
) -> crate::config::FunctionDefinition {
    crate::config::FunctionDefinition {
        name: name.into(),
        binding: "documents".into(),
        database: database.map(str::to_string),
        container: container.map(str::to_string),
        connection: connection.map(str::to_string),
        retry: crate::config::HostRetryPolicy::NONE,
        outputs: Vec::new(),
        change_feed_mode: Default::default(),
        start_from_beginning: false,
        start_from_time: None,
    }
}

/// A sink from one `[functions.F.sinks.S]` table as TOML (with its `type`), validated and
/// built as the routing file's would be; panics naming the problems.
pub fn sink_from_toml(name: &str, table: &str, ctx: &RouteContext) -> Arc<dyn Sink> {
    let config: SinkConfig = toml::from_str(table).unwrap_or_else(|e| panic!("{table}: {e}"));
    let validated = config
        .validate(ctx)
        .unwrap_or_else(|problems| panic!("{table}: {problems:?}"));
    validated
        .build(name)
        .unwrap_or_else(|e| panic!("{table}: {e}"))
}

/// A change builder: `ChangeBuilder::upsert("a").pk("c1").lsn(3).build()`.
#[derive(Debug, Clone)]
pub struct ChangeBuilder(Change);

impl ChangeBuilder {
    pub fn upsert(id: &str) -> Self {
        Self(Change {
            operation: Operation::Upsert,
            delete_kind: None,
            id: id.into(),
            partition_key: PartitionKey(vec![None]),
            lsn: None,
            ts: None,
            etag: None,
            document: Some(json!({ "id": id }).as_object().cloned().expect("an object")),
        })
    }

    /// A hard delete (no body).
    pub fn delete(id: &str) -> Self {
        let mut b = Self::upsert(id);
        b.0.operation = Operation::Delete;
        b.0.delete_kind = Some(DeleteKind::Hard);
        b.0.document = None;
        b
    }

    /// A single-path partition key value.
    pub fn pk(mut self, value: impl Into<Value>) -> Self {
        self.0.partition_key = PartitionKey(vec![Some(value.into())]);
        self
    }

    /// lsn, and `_ts` derived from it unless set.
    pub fn lsn(mut self, lsn: i64) -> Self {
        self.0.lsn = Some(lsn);
        self.0.ts = self.0.ts.or(Some(1_700_000_000 + lsn));
        self
    }

    pub fn ts(mut self, ts: i64) -> Self {
        self.0.ts = Some(ts);
        self
    }

    /// Sets a field of the document (upserts only).
    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Self {
        if let Some(doc) = &mut self.0.document {
            doc.insert(name.into(), value.into());
        }
        self
    }

    pub fn document(mut self, doc: Map<String, Value>) -> Self {
        self.0.document = Some(doc);
        self
    }

    pub fn build(self) -> Change {
        self.0
    }
}

/// A sink that answers each delivery with the next scripted answer (the last one repeats)
/// and records the ids it was given, delivery by delivery.
pub struct ScriptedSink {
    name: String,
    answers: Mutex<Vec<Result<Delivery, SinkError>>>,
    seen: Mutex<Vec<Vec<String>>>,
}

impl ScriptedSink {
    pub fn new(name: &str, answers: Vec<Result<Delivery, SinkError>>) -> Self {
        assert!(!answers.is_empty(), "a script needs at least one answer");
        Self {
            name: name.into(),
            answers: Mutex::new(answers),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// The ids of every delivery so far, in order.
    pub fn seen(&self) -> Vec<Vec<String>> {
        self.seen.lock().expect("seen").clone()
    }
}

#[async_trait]
impl Sink for ScriptedSink {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "scripted"
    }
    async fn deliver(&self, _: &BatchContext, changes: &[&Change]) -> Result<Delivery, SinkError> {
        self.seen
            .lock()
            .expect("seen")
            .push(changes.iter().map(|c| c.id.clone()).collect());
        let mut answers = self.answers.lock().expect("answers");
        if answers.len() > 1 {
            answers.remove(0)
        } else {
            answers[0].clone()
        }
    }
}

/// A sink with a bug: every delivery panics with `message`.
pub struct PanickingSink {
    pub name: String,
    pub message: &'static str,
}

#[async_trait]
impl Sink for PanickingSink {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "panicking"
    }
    async fn deliver(&self, _: &BatchContext, _: &[&Change]) -> Result<Delivery, SinkError> {
        panic!("{}", self.message)
    }
}
