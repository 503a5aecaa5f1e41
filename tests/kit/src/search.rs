//! Fakes of the Azure AI Search documents endpoint for the tests — named so, because no real
//! service can run here.
//!
//! - [`SearchFake`]: a stateful fake of `POST /indexes('{index}')/docs/search.index`, shaped from
//!   Microsoft's OpenAPI spec (tests/fixtures/azure-search): every request body is validated
//!   against the spec's `IndexBatch` schema, answers follow `IndexDocumentsResult`, and an
//!   in-memory index applies `mergeOrUpload` / `delete`. Failures are scripted per key or per
//!   request (207 items, 413, 429 / 503 with Retry-After).
//! - [`PrismGate`]: forwards each request to Prism (`@stoplight/prism-cli`, validating against the
//!   spec with `--errors`); a request Prism refuses is recorded as a violation, an accepted one
//!   is answered like the fake (Prism's static example answer names other keys).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as AxPath, State};
use axum::http::Uri;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn spec() -> Value {
    serde_json::from_str(&super::fixture(
        "azure-search/search-documents-2025-09-01.json",
    ))
    .unwrap()
}

/// The spec's `SearchRequest` (an excerpt of Microsoft's `search-2025-09-01.json`: the
/// definitions it reaches), as a validator that also refuses properties it does not define.
pub fn search_request_validator() -> jsonschema::Validator {
    let excerpt: Value = serde_json::from_str(&super::fixture(
        "azure-search/search-request-2025-09-01.json",
    ))
    .unwrap();
    let mut schema = excerpt["definitions"]["SearchRequest"].clone();
    schema["additionalProperties"] = Value::Bool(false);
    schema["definitions"] = excerpt["definitions"].clone();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .unwrap()
}

/// The spec's `IndexBatch` schema with its definitions, as a validator.
pub fn index_batch_validator() -> jsonschema::Validator {
    let spec = spec();
    let mut schema = spec["definitions"]["IndexBatch"].clone();
    schema["definitions"] = spec["definitions"].clone();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .unwrap()
}

#[derive(Default)]
pub struct Script {
    /// key -> statusCode to answer once (then succeed): 409, 422, 503.
    pub fail_once: HashMap<String, u16>,
    /// key -> (statusCode, message) to answer every time: 400, 404.
    pub fail_always: HashMap<String, (u16, String)>,
    /// Answer 413 to requests with more actions than this.
    pub max_actions: Option<usize>,
    /// Whole-request answers to give first: (status, Retry-After seconds).
    pub throttle: VecDeque<(u16, u64)>,
}

#[derive(Default)]
pub struct FakeState {
    pub index: BTreeMap<String, Map<String, Value>>,
    pub script: Script,
    /// (actions in the request, answer status) per request.
    pub requests: Vec<(usize, u16)>,
    pub request_times: Vec<Instant>,
    pub violations: Vec<String>,
    pub api_keys: Vec<String>,
}

pub struct SearchFake {
    pub state: Arc<Mutex<FakeState>>,
    pub port: u16,
    key_field: &'static str,
}

impl SearchFake {
    pub async fn start(key_field: &'static str) -> Self {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/{path}/docs/search.index", axum::routing::post(fake_index))
            .route(
                "/{path}/docs/search.post.search",
                axum::routing::post(fake_search),
            )
            .with_state((state.clone(), key_field, Arc::new(index_batch_validator())));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            state,
            port,
            key_field,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn key_field(&self) -> &str {
        self.key_field
    }
}

/// `search.post.search` with the two queries fanout sends: the sink's version lookup
/// (`search.in(key, 'a,b', ',')`) and verify's listing (`orderby` the key, `key gt 'last'`,
/// `top`), answering the selected fields (all without `select`) of the documents the fake
/// holds, in key order.
async fn fake_search(State((state, key_field, _)): State<FakeCtx>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    static VALIDATOR: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let validator = VALIDATOR.get_or_init(search_request_validator);
    let errors: Vec<String> = validator
        .iter_errors(&request)
        .map(|e| format!("search request {request}: {e}"))
        .collect();
    if !errors.is_empty() {
        state.lock().unwrap().violations.extend(errors);
        return (StatusCode::BAD_REQUEST, "not a SearchRequest").into_response();
    }
    let filter = request["filter"].as_str().unwrap_or_default();
    let in_prefix = format!("search.in({key_field}, '");
    let gt_prefix = format!("{key_field} gt '");
    let s = state.lock().unwrap();
    let docs: Vec<&Map<String, Value>> = if let Some(keys) = filter
        .strip_prefix(&in_prefix)
        .and_then(|rest| rest.strip_suffix("', ',')"))
    {
        keys.split(',').filter_map(|k| s.index.get(k)).collect()
    } else if request["orderby"].as_str() == Some(&format!("{key_field} asc")) {
        let after = match filter
            .strip_prefix(&gt_prefix)
            .and_then(|r| r.strip_suffix('\''))
        {
            Some(last) => Some(last.replace("''", "'")),
            None if filter.is_empty() => None,
            None => {
                drop(s);
                return bad_filter(&state, filter);
            }
        };
        let top = request["top"].as_u64().unwrap_or(50) as usize;
        s.index
            .iter()
            .filter(|(k, _)| after.as_ref().is_none_or(|a| k.as_str() > a.as_str()))
            .take(top)
            .map(|(_, d)| d)
            .collect()
    } else {
        drop(s);
        return bad_filter(&state, filter);
    };
    let select: Option<Vec<&str>> = request["select"].as_str().map(|s| s.split(',').collect());
    let value: Vec<Value> = docs
        .into_iter()
        .map(|doc| {
            Value::Object(
                doc.iter()
                    .filter(|(f, _)| select.as_ref().is_none_or(|s| s.contains(&f.as_str())))
                    .map(|(f, v)| (f.clone(), v.clone()))
                    .collect(),
            )
        })
        .collect();
    axum::Json(serde_json::json!({ "value": value })).into_response()
}

fn bad_filter(state: &Mutex<FakeState>, filter: &str) -> Response {
    state
        .lock()
        .unwrap()
        .violations
        .push(format!("unexpected filter {filter}"));
    (StatusCode::BAD_REQUEST, "bad filter").into_response()
}

type FakeCtx = (
    Arc<Mutex<FakeState>>,
    &'static str,
    Arc<jsonschema::Validator>,
);

async fn fake_index(
    State((state, key_field, validator)): State<FakeCtx>,
    AxPath(path): AxPath<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let q: HashMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut s = state.lock().unwrap();
    s.request_times.push(Instant::now());
    if !path.starts_with("indexes('")
        || q.get("api-version").map(String::as_str) != Some("2025-09-01")
    {
        s.violations
            .push(format!("bad path or api-version: {path} {q:?}"));
        return (StatusCode::BAD_REQUEST, "bad path").into_response();
    }
    if let Some(k) = headers.get("api-key").and_then(|v| v.to_str().ok()) {
        s.api_keys.push(k.to_string());
    }
    let batch: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            s.violations.push(format!("body is not JSON: {e}"));
            return (StatusCode::BAD_REQUEST, "not json").into_response();
        }
    };
    let errors: Vec<String> = validator
        .iter_errors(&batch)
        .map(|e| e.to_string())
        .collect();
    if !errors.is_empty() {
        s.violations
            .push(format!("IndexBatch schema: {}", errors.join("; ")));
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": errors.join("; ")}})),
        )
            .into_response();
    }
    let actions = batch["value"].as_array().cloned().unwrap_or_default();
    if let Some((status, after)) = s.script.throttle.pop_front() {
        s.requests.push((actions.len(), status));
        return (
            StatusCode::from_u16(status).unwrap(),
            [("retry-after", after.to_string())],
            Json(json!({"error": {"message": "throttled"}})),
        )
            .into_response();
    }
    if s.script.max_actions.is_some_and(|m| actions.len() > m) {
        s.requests.push((actions.len(), 413));
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({"error": {"message": "request too large"}})),
        )
            .into_response();
    }
    let mut results = Vec::new();
    let mut all_ok = true;
    for a in actions {
        let mut a = a.as_object().cloned().unwrap_or_default();
        let action = a
            .remove("@search.action")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "upload".into());
        let key = a
            .get(key_field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(code) = s.script.fail_once.remove(&key) {
            all_ok = false;
            results.push(json!({"key": key, "status": false, "errorMessage": "transient item failure", "statusCode": code}));
            continue;
        }
        if let Some((code, msg)) = s.script.fail_always.get(&key).cloned() {
            all_ok = false;
            results.push(
                json!({"key": key, "status": false, "errorMessage": msg, "statusCode": code}),
            );
            continue;
        }
        match action.as_str() {
            "delete" => {
                s.index.remove(&key);
            }
            "mergeOrUpload" => {
                let entry = s.index.entry(key.clone()).or_default();
                entry.extend(a);
            }
            other => s.violations.push(format!("unexpected action {other}")),
        }
        results.push(json!({"key": key, "status": true, "errorMessage": null, "statusCode": 200}));
    }
    let status = if all_ok { 200 } else { 207 };
    s.requests.push((results.len(), status));
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({ "value": results })),
    )
        .into_response()
}

use axum::Json;

/// Prism validating requests against the spec, in front of an answering fake.
pub struct PrismGate {
    child: Child,
    pub prism_port: u16,
    pub port: u16,
    pub state: Arc<Mutex<GateState>>,
}

#[derive(Default)]
pub struct GateState {
    pub accepted: usize,
    pub violations: Vec<String>,
}

impl PrismGate {
    pub async fn start(key_field: &'static str) -> Self {
        let bin = super::repo_root().join("tests/.tools/node_modules/.bin/prism");
        assert!(bin.exists(), "Prism is not installed: run tests/setup.sh");
        let prism_port = fanout::hostsim::free_port().unwrap();
        let child = Command::new(bin)
            .args([
                "mock",
                "--errors",
                "-h",
                "127.0.0.1",
                "-p",
                &prism_port.to_string(),
            ])
            .arg(
                super::repo_root()
                    .join("tests/fixtures/azure-search/search-documents-2025-09-01.json"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", prism_port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "Prism did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let state = Arc::new(Mutex::new(GateState::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .fallback(gate)
            .with_state((state.clone(), prism_port, key_field));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            child,
            prism_port,
            port,
            state,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrismGate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn gate(
    State((state, prism_port, key_field)): State<(Arc<Mutex<GateState>>, u16, &'static str)>,
    req: axum::extract::Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let url = format!(
        "http://127.0.0.1:{prism_port}{}",
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut forward = reqwest::Client::new().request(parts.method.clone(), &url);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            forward = forward.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = forward.body(body.to_vec()).send().await.unwrap();
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap_or_default();
    let mut s = state.lock().unwrap();
    if !(200..300).contains(&status) {
        s.violations.push(format!(
            "Prism refused {} {}: {status} {text}",
            parts.method, parts.uri
        ));
        return (StatusCode::from_u16(status).unwrap(), text).into_response();
    }
    s.accepted += 1;
    // Prism accepted the request: answer for the keys it carried.
    let batch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let results: Vec<Value> = batch["value"]
        .as_array()
        .map(|a| a.iter().map(|x| json!({"key": x[key_field], "status": true, "errorMessage": null, "statusCode": 200})).collect())
        .unwrap_or_default();
    Json(json!({ "value": results })).into_response()
}

/// `[functions.orders.sinks.{name}]`: the `orders` index at `endpoint` (api key
/// `test-admin-key`), version-guarded, projecting id, customerId, status and total; with
/// [`install_index_definition`] in the app.
pub fn orders_sink_toml(name: &str, endpoint: &str) -> String {
    format!(
        r#"
[functions.orders.sinks.{name}]
type = "azure_search"
endpoint = "{endpoint}"
index = "orders"
auth = "api_key"
api_key = "test-admin-key"
index_definition = "infra/search/orders.json"
key = "id"
version_field = "cosmosVersion"

[functions.orders.sinks.{name}.fields]
id = "/id"
customerId = "/customerId"
status = "/status"
total = "/total"
"#
    )
}

/// Copies the repository's `infra/search/orders.json` into the app.
pub fn install_index_definition(app_root: &std::path::Path) {
    std::fs::create_dir_all(app_root.join("infra/search")).unwrap();
    std::fs::copy(
        crate::repo_root().join("infra/search/orders.json"),
        app_root.join("infra/search/orders.json"),
    )
    .unwrap();
}
