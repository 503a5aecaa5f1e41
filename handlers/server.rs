//! The HTTP face the Functions host talks to: readiness on `/`, `POST /{function}` per
//! invocation, a request-size limit, and graceful shutdown on SIGTERM (the in-flight batch
//! finishes before the process exits).

use crate::host::INVOCATION_ID_HEADER;
use crate::pipeline::{Answer, Deadlines, Origin, Pipeline};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{any, post};
use bytes::BytesMut;
use futures::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;

pub fn router(pipeline: Arc<Pipeline>, max_body_bytes: usize) -> Router {
    Router::new()
        // The host polls `/` until anything answers: answer at once, whatever the method.
        .route("/", any(readiness))
        .route("/{function}", post(invoke))
        // The limit is enforced while streaming (see `read_body`), so that an oversized body
        // can go to the dead-letter store instead of being refused.
        .layer(DefaultBodyLimit::disable())
        .with_state(AppState {
            pipeline,
            max_body_bytes,
        })
}

#[derive(Clone)]
struct AppState {
    pipeline: Arc<Pipeline>,
    max_body_bytes: usize,
}

/// The body, or (over the limit) what was read so far and the rest of the stream.
enum ReadBody {
    Whole(Bytes),
    TooLarge {
        head: Vec<Bytes>,
        rest: axum::body::BodyDataStream,
    },
    /// The stream failed: what arrived before it broke off, and why.
    Broken {
        head: Bytes,
        error: String,
    },
}

async fn read_body(body: Body, limit: usize) -> ReadBody {
    let mut stream = body.into_data_stream();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                size += c.len();
                chunks.push(c);
                if size > limit {
                    return ReadBody::TooLarge {
                        head: chunks,
                        rest: stream,
                    };
                }
            }
            Err(e) => {
                return ReadBody::Broken {
                    head: concat(chunks, size),
                    error: e.to_string(),
                };
            }
        }
    }
    ReadBody::Whole(concat(chunks, size))
}

fn concat(mut chunks: Vec<Bytes>, size: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().expect("one chunk");
    }
    let mut whole = BytesMut::with_capacity(size);
    for c in chunks {
        whole.extend_from_slice(&c);
    }
    whole.freeze()
}

async fn invoke(
    State(state): State<AppState>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let invocation_id = headers
        .get(INVOCATION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let pipeline = state.pipeline.clone();
    let state_pipeline = state.pipeline.clone();
    // The body as read, kept (a cheap reference-counted handle) so that a panic on it can
    // still put it in the dead-letter store.
    let (body_tx, body_rx) = tokio::sync::oneshot::channel::<Bytes>();
    let task_function = function.clone();
    let task_invocation_id = invocation_id.clone();
    // Run the batch on its own task: if the host drops the connection (timeout), the batch
    // still finishes and its outcome (delivery or dead-letter) is not cut off half-way.
    let task = tokio::spawn(async move {
        let (function, invocation_id) = (task_function, task_invocation_id);
        match read_body(body, state.max_body_bytes).await {
            ReadBody::Whole(body) => {
                let _ = body_tx.send(body.clone());
                crate::failpoint::hit(crate::failpoint::INVOCATION);
                pipeline
                    .handle(&function, invocation_id, &body, Origin::Host)
                    .await
            }
            ReadBody::TooLarge { head, rest } => {
                let rest = rest.map(|r| r.map_err(std::io::Error::other));
                pipeline
                    .dead_letter_oversized(
                        &function,
                        invocation_id,
                        head,
                        rest,
                        state.max_body_bytes,
                    )
                    .await
            }
            ReadBody::Broken { head, error } => {
                // The host's request broke off: what arrived is kept with the reason (the
                // host may not retry it: this may have been its last attempt).
                tracing::warn!(
                    function,
                    error,
                    received = head.len(),
                    "request body broke off"
                );
                let reason = format!(
                    "the request body broke off after {} bytes: {error}",
                    head.len()
                );
                let deadlines =
                    Deadlines::new(std::time::Instant::now(), pipeline.function_timeout());
                let mut answer = pipeline
                    .dead_letter_raw(&function, invocation_id, &head, reason, &deadlines)
                    .await;
                // Never 2xx: the host must not take a broken request for a delivered batch.
                answer.status = 400;
                answer
            }
        }
    });
    let answer = match task.await {
        Ok(answer) => answer,
        Err(e) => {
            // A panic: the batch is kept raw, like input no sink could take.
            let what = panic_message(e);
            tracing::error!(function, error = %what, "invocation task panicked");
            let reason = format!("fanout panicked while handling this batch: {what}");
            let deadlines =
                Deadlines::new(std::time::Instant::now(), state_pipeline.function_timeout());
            match body_rx.await {
                Ok(body) => {
                    state_pipeline
                        .dead_letter_raw(&function, invocation_id, &body, reason, &deadlines)
                        .await
                }
                Err(_) => {
                    // It panicked before the body was read: nothing to keep.
                    let mut answer =
                        Answer::logged(500, format!("fanout: internal error: {reason}"));
                    answer.response.logs.push(crate::pipeline::report_lost(
                        &crate::pipeline::Lost {
                            function: function.clone(),
                            invocation_id: invocation_id.unwrap_or_default(),
                            count: 1,
                            first: None,
                            last: None,
                            certain: false,
                            reason,
                        },
                    ));
                    answer
                }
            }
        }
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(answer.response)).into_response()
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(panic) => crate::panic_message(panic.as_ref()),
        Err(e) => e.to_string(),
    }
}

/// Serves until SIGTERM or Ctrl-C, then lets in-flight invocations finish.
pub async fn serve(
    pipeline: Arc<Pipeline>,
    addr: SocketAddr,
    max_body_bytes: usize,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, routes = ?pipeline.routes().keys().collect::<Vec<_>>(), "listening");
    tokio::spawn(sweep_in_flight(pipeline.clone()));
    // In-flight invocations finish after SIGTERM, within their own deadlines; the drain as a
    // whole is bounded by the function timeout too, so a stop never hangs.
    let drain = pipeline.function_timeout();
    let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
    let signalled = stopping.clone();
    let server = axum::serve(listener, router(pipeline, max_body_bytes)).with_graceful_shutdown(
        async move {
            shutdown_signal().await;
            signalled.notify_one();
        },
    );
    tokio::select! {
        served = server => served?,
        _ = async {
            stopping.notified().await;
            tokio::time::sleep(drain).await;
        } => {
            tracing::error!(drain_s = drain.as_secs(), "in-flight invocations did not finish within the function timeout after SIGTERM; stopping anyway (their last attempts are in the write-ahead records)");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight invocations");
}

/// Every function timeout (and once at start-up, in the background), moves the write-ahead
/// records of last attempts whose process died to `pending/`, so replay and the pending-record
/// count see them.
async fn sweep_in_flight(pipeline: Arc<Pipeline>) {
    let every = pipeline
        .function_timeout()
        .max(std::time::Duration::from_secs(30));
    loop {
        if let Err(e) = pipeline.recover_in_flight().await {
            tracing::warn!(error = %e, "could not look for unfinished last attempts");
        }
        tokio::time::sleep(every).await;
    }
}

/// Any answer on `/` means ready to the host. The process id in it lets a launcher tell its
/// own handler from another process that holds the same port.
async fn readiness() -> String {
    format!("fanout ready, pid {}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AppConfig;
    use axum::http::Request;
    use tower::ServiceExt;

    /// A Function App with one routed function (`orders`, changelog in a local table).
    fn app(dir: &std::path::Path) -> Arc<Pipeline> {
        std::fs::create_dir_all(dir.join("orders")).unwrap();
        std::fs::write(
            dir.join("orders/function.json"),
            r#"{"bindings": [{"type": "cosmosDBTrigger", "name": "documents", "direction": "in", "connection": "C", "databaseName": "shop", "containerName": "orders"}]}"#,
        )
        .unwrap();
        let toml = "[functions.orders]\npartition_key = \"/customerId\"\n[functions.orders.sinks.changelog]\ntype = \"delta\"\ntable = \"tables/orders\"\n";
        let config = AppConfig::from_toml(dir, &dir.join("fanout.toml"), toml, &|_| None).unwrap();
        Arc::new(Pipeline::build(&config).unwrap())
    }

    fn pending(dir: &std::path::Path) -> Vec<String> {
        let root = dir.join(".fanout/dead-letter/pending");
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn every_request_the_host_can_send_gets_the_answer_that_loses_nothing() {
        let valid = crate::hostsim::cosmos_trigger_body(
            "documents",
            "orders",
            &[serde_json::json!({"id": "a", "customerId": "c1", "_lsn": 1, "_ts": 1_700_000_000})],
            None,
        );
        // (method, path, body, body limit) -> (status, what the store keeps)
        type Case<'a> = (&'a str, &'a str, String, usize, u16, &'a [&'a str]);
        let cases: [Case; 5] = [
            ("GET", "/", String::new(), 1 << 20, 200, &[]),
            ("POST", "/orders", valid.clone(), 1 << 20, 200, &[]),
            (
                "POST",
                "/orders",
                "{not json".into(),
                1 << 20,
                200,
                &["malformed_batch"],
            ),
            // No route for the function: kept, not refused (replay delivers it once routed).
            (
                "POST",
                "/invoices",
                valid.clone(),
                1 << 20,
                200,
                &["malformed_batch"],
            ),
            // Over the body limit: streamed to the store, answered 2xx.
            (
                "POST",
                "/orders",
                valid.clone(),
                16,
                200,
                &["malformed_batch", ".body"],
            ),
        ];
        for (method, path, body, limit, status, kept) in cases {
            let dir = tempfile::tempdir().unwrap();
            let router = router(app(dir.path()), limit);
            let answer = router
                .oneshot(
                    Request::builder()
                        .method(method)
                        .uri(path)
                        .body(Body::from(body))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(answer.status().as_u16(), status, "{method} {path}");
            let stored = pending(dir.path());
            assert_eq!(
                stored.len(),
                kept.len(),
                "{method} {path} (limit {limit}): {stored:?}"
            );
            for (file, kind) in stored.iter().zip(kept) {
                assert!(file.contains(kind), "{method} {path}: {file} is not {kind}");
            }
        }
    }
}
