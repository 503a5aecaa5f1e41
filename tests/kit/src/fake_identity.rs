//! A FAKE managed-identity endpoint: the App Service / Functions protocol that
//! `azure_identity`'s ManagedIdentityCredential speaks when `IDENTITY_ENDPOINT` and
//! `IDENTITY_HEADER` are set (GET ?api-version=2019-08-01&resource=..., header
//! `X-IDENTITY-HEADER`; answer `{access_token, expires_on (epoch seconds, a string),
//! resource, token_type}`). The token it hands out names the resource it was asked for, so a
//! test can check the right audience reached the service.
#![allow(dead_code)]

use axum::extract::RawQuery;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub const HEADER_SECRET: &str = "fake-identity-header";

pub struct FakeIdentity {
    pub endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeIdentity {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The token the fake issues for `resource`.
pub fn token_for(resource: &str) -> String {
    format!("fake-entra-token:{resource}")
}

async fn issue(headers: HeaderMap, RawQuery(query): RawQuery) -> Result<Json<Value>, StatusCode> {
    let query = query.unwrap_or_default();
    let resource = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "resource")
        .map(|(_, v)| v.into_owned());
    if headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        != Some(HEADER_SECRET)
    {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let resource = resource.ok_or(StatusCode::BAD_REQUEST)?;
    let expires_on = chrono::Utc::now().timestamp() + 3600;
    Ok(Json(json!({
        "access_token": token_for(&resource),
        "expires_on": expires_on.to_string(),
        "resource": resource,
        "token_type": "Bearer",
    })))
}

impl FakeIdentity {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/msi/token", get(issue));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            endpoint: format!("http://{addr}/msi/token"),
            task,
        }
    }

    /// The environment a Function App with a managed identity has.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("IDENTITY_ENDPOINT", self.endpoint.clone()),
            ("IDENTITY_HEADER", HEADER_SECRET.to_string()),
        ]
    }
}
