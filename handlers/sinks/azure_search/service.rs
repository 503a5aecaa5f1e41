//! The HTTP service: `POST {endpoint}/indexes('{index}')/docs/search.index`, with api-key or
//! Entra auth, and the answers mapped to what the sink does next.

use super::config::{SearchAuth, SearchConfig};
use super::error::{SearchError, classify, error_message};
use crate::entra::EntraToken;
use serde::Deserialize;
use std::time::Duration;

pub const SEARCH_SCOPE: &str = "https://search.azure.com/.default";

/// Per-document result (`IndexingResult` in the spec).
#[derive(Debug, Clone, Deserialize)]
pub struct ItemResult {
    pub key: String,
    #[serde(default)]
    pub status: bool,
    #[serde(rename = "errorMessage", default)]
    pub error_message: Option<String>,
    #[serde(rename = "statusCode", default)]
    pub status_code: u16,
}

#[derive(Deserialize)]
pub(super) struct IndexDocumentsResult {
    pub value: Vec<ItemResult>,
}

/// What a request came back with.
#[derive(Debug)]
pub enum Answer {
    /// 200 or 207: per-document results.
    Results(Vec<ItemResult>),
    /// 413: the request is too large; split it.
    TooLarge,
    /// 429, 503, 5xx, network: retry the whole request later.
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// 400, 404 (no such index), ...: retrying the same request cannot help.
    Permanent { message: String },
}

pub struct SearchClient {
    http: reqwest::Client,
    index_url: String,
    docs_url: String,
    search_url: String,
    auth: Auth,
}

enum Auth {
    ApiKey(String),
    Entra(EntraToken),
}

impl SearchClient {
    pub fn new(config: &SearchConfig) -> Result<Self, SearchError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .user_agent(concat!("fanout/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SearchError::Client)?;
        let endpoint = config.endpoint.trim_end_matches('/');
        let auth = match config.auth {
            SearchAuth::ApiKey => Auth::ApiKey(config.api_key.clone().unwrap_or_default()),
            SearchAuth::Entra => Auth::Entra(EntraToken::from_env(SEARCH_SCOPE)?),
        };
        Ok(Self {
            http,
            index_url: format!(
                "{endpoint}/indexes('{}')?api-version={}",
                config.index, config.api_version
            ),
            docs_url: format!(
                "{endpoint}/indexes('{}')/docs/search.index?api-version={}",
                config.index, config.api_version
            ),
            search_url: format!(
                "{endpoint}/indexes('{}')/docs/search.post.search?api-version={}",
                config.index, config.api_version
            ),
            auth,
        })
    }

    async fn authorize(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, SearchError> {
        Ok(match &self.auth {
            Auth::ApiKey(key) => req.header("api-key", key),
            Auth::Entra(token) => req.bearer_auth(token.token().await?.secret),
        })
    }

    /// Sends one batch of actions.
    pub async fn index(&self, body: Vec<u8>) -> Answer {
        let req = self
            .http
            .post(&self.docs_url)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("x-ms-client-request-id", uuid::Uuid::new_v4().to_string());
        let req = match self.authorize(req).await {
            Ok(r) => r,
            Err(e) => {
                return Answer::Transient {
                    message: e.to_string(),
                    retry_after: None,
                };
            }
        };
        let response = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Answer::Transient {
                    message: SearchError::Request(e).to_string(),
                    retry_after: None,
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        classify(status, &text, retry_after)
    }

    /// The version field of the documents with these keys (keys the index lacks are absent):
    /// one `search.in` filter query per call, keys as the index holds them.
    pub async fn versions(
        &self,
        key_field: &str,
        version_field: &str,
        keys: &[&str],
    ) -> Result<std::collections::HashMap<String, i64>, SearchError> {
        // Encoded keys hold only letters, digits, `_`, `-`, `=`: no quote or comma to escape.
        let body = serde_json::json!({
            "search": "*",
            "filter": format!("search.in({key_field}, '{}', ',')", keys.join(",")),
            "select": format!("{key_field},{version_field}"),
            "top": keys.len(),
        });
        let found = self.search(&body, "reading versions").await?;
        Ok(found["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                Some((
                    d.get(key_field)?.as_str()?.to_string(),
                    d.get(version_field)?.as_i64()?,
                ))
            })
            .collect())
    }

    /// One search request (`POST docs/search.post.search`), its answer parsed.
    pub async fn search(
        &self,
        body: &serde_json::Value,
        what: &'static str,
    ) -> Result<serde_json::Value, SearchError> {
        let req = self
            .http
            .post(&self.search_url)
            .header("content-type", "application/json")
            .header("accept", "application/json");
        let response = self
            .authorize(req)
            .await?
            .json(body)
            .send()
            .await
            .map_err(SearchError::Request)?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        if status != 200 {
            return Err(SearchError::Status {
                what,
                status,
                message: error_message(&text),
            });
        }
        serde_json::from_str(&text).map_err(|source| SearchError::Unreadable {
            what: "search answer",
            source,
        })
    }

    /// Creates or updates the index from its definition (`PUT /indexes('{name}')`).
    pub async fn put_index(&self, definition: &serde_json::Value) -> Result<u16, SearchError> {
        let req = self
            .http
            .put(&self.index_url)
            .header("content-type", "application/json")
            .header("prefer", "return=minimal");
        let response = self
            .authorize(req)
            .await?
            .json(definition)
            .send()
            .await
            .map_err(SearchError::Request)?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            Ok(status)
        } else {
            Err(SearchError::Status {
                what: "creating the index",
                status,
                message: error_message(&response.text().await.unwrap_or_default()),
            })
        }
    }
}

/// `retry-after-ms` / `x-ms-retry-after-ms` (milliseconds) or `Retry-After` (seconds).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms")
        .or_else(|| get("x-ms-retry-after-ms"))
        .and_then(|v| v.parse::<u64>().ok())
    {
        return Some(Duration::from_millis(ms));
    }
    get("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
}
