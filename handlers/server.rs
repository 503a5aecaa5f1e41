//! The HTTP face the Functions host talks to: readiness on `/`, `POST /{function}` per
//! invocation, a request-size limit, and graceful shutdown on SIGTERM (the in-flight batch
//! finishes before the process exits).

use crate::host::{INVOCATION_ID_HEADER, InvocationResponse};
use crate::pipeline::{Answer, Origin, Pipeline};
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
    Broken(String),
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
            Err(e) => return ReadBody::Broken(e.to_string()),
        }
    }
    if chunks.len() == 1 {
        return ReadBody::Whole(chunks.pop().expect("one chunk"));
    }
    let mut whole = BytesMut::with_capacity(size);
    for c in chunks {
        whole.extend_from_slice(&c);
    }
    ReadBody::Whole(whole.freeze())
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
    // Run the batch on its own task: if the host drops the connection (timeout), the batch
    // still finishes and its outcome (delivery or dead-letter) is not cut off half-way.
    let task = tokio::spawn(async move {
        match read_body(body, state.max_body_bytes).await {
            ReadBody::Whole(body) => {
                pipeline
                    .handle(&function, invocation_id, &body, Origin::Host)
                    .await
            }
            ReadBody::TooLarge { head, rest } => {
                if !pipeline.routes().contains_key(&function) {
                    return pipeline
                        .handle(&function, invocation_id, &[], Origin::Host)
                        .await;
                }
                let rest = rest.map(|r| r.map_err(|e| e.to_string()));
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
            ReadBody::Broken(e) => {
                // The host's request broke off: nothing to decode; it will retry.
                tracing::warn!(function, error = %e, "request body broke off");
                Answer {
                    status: 400,
                    response: InvocationResponse::with_logs(vec![format!(
                        "fanout {function}: the request body broke off: {e}"
                    )]),
                    dead_lettered: 0,
                }
            }
        }
    });
    match task.await {
        Ok(answer) => {
            let status =
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(answer.response)).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "invocation task failed");
            let response =
                InvocationResponse::with_logs(vec![format!("fanout: internal error: {e}")]);
            (StatusCode::INTERNAL_SERVER_ERROR, Json(response)).into_response()
        }
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
    axum::serve(listener, router(pipeline, max_body_bytes))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
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

/// Any answer on `/` means ready to the host. The process id in it lets a launcher tell its
/// own handler from another process that holds the same port.
async fn readiness() -> String {
    format!("fanout ready, pid {}", std::process::id())
}
