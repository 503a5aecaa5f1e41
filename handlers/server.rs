//! The HTTP face the Functions host talks to: readiness on `/`, `POST /{function}` per
//! invocation, a request-size limit, and graceful shutdown on SIGTERM (the in-flight batch
//! finishes before the process exits).

use crate::host::{INVOCATION_ID_HEADER, InvocationResponse};
use crate::pipeline::{Origin, Pipeline};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{any, post};
use std::net::SocketAddr;
use std::sync::Arc;

pub fn router(pipeline: Arc<Pipeline>, max_body_bytes: usize) -> Router {
    Router::new()
        // The host polls `/` until anything answers: answer at once, whatever the method.
        .route("/", any(|| async { "fanout ready" }))
        .route("/{function}", post(invoke))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(pipeline)
}

async fn invoke(
    State(pipeline): State<Arc<Pipeline>>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let invocation_id = headers
        .get(INVOCATION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            // Too large (or unreadable): nothing we can store. Fail loudly, in the host log too.
            let message = format!(
                "fanout {function}: request body refused ({}); raise `server.max_body_bytes` in fanout.toml or lower `maxItemsPerInvocation`",
                rejection.body_text()
            );
            tracing::error!(function, invocation_id, "{message}");
            let response = InvocationResponse::with_logs(vec![message]);
            return (rejection.status(), Json(response)).into_response();
        }
    };
    // Run the batch on its own task: if the host drops the connection (timeout), the batch
    // still finishes and its outcome (delivery or dead-letter) is not cut off half-way.
    let task = tokio::spawn(async move {
        pipeline
            .handle(&function, invocation_id, &body, Origin::Host)
            .await
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
