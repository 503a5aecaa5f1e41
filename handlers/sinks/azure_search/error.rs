//! Error classification for the AI Search sink, in one place: the service's HTTP answers to
//! an indexing request, sorted into what the sink does next ([`classify`], pure and
//! table-tested), and the errors of the other calls ([`SearchError`]).

use super::service::Answer;
use crate::entra::EntraError;
use crate::sinks::SinkError;
use std::time::Duration;

/// Why a call other than indexing (reading versions, creating the index) failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search: cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Entra(#[from] EntraError),
    #[error("search: {0}")]
    Request(#[source] reqwest::Error),
    #[error("search: {what}: HTTP {status}: {message}")]
    Status {
        what: &'static str,
        status: u16,
        message: String,
    },
    #[error("search: unreadable {what}: {source}")]
    Unreadable {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl From<SearchError> for SinkError {
    /// Every one of them may pass (network, throttling, a role being granted) except a client
    /// that cannot be built.
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Client(_) => SinkError::permanent_from(e),
            e => SinkError::transient_from(e),
        }
    }
}

/// An indexing request's answer: per-document results, split (413), retry later (throttling,
/// unavailable, auth that may yet be granted), or refused.
pub fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> Answer {
    match status {
        200 | 207 => match serde_json::from_str::<super::service::IndexDocumentsResult>(body) {
            Ok(r) => Answer::Results(r.value),
            Err(e) => Answer::Transient {
                message: format!("search: unreadable {status} answer: {e}"),
                retry_after: None,
            },
        },
        413 => Answer::TooLarge,
        408 | 429 | 500 | 502 | 503 | 504 => Answer::Transient {
            message: format!("search: HTTP {status}: {}", error_message(body)),
            retry_after,
        },
        401 | 403 => Answer::Transient {
            message: format!(
                "search: HTTP {status} (check the identity's Search Index Data Contributor role or the api key): {}",
                error_message(body)
            ),
            retry_after,
        },
        _ => Answer::Permanent {
            message: format!("search: HTTP {status}: {}", error_message(body)),
        },
    }
}

/// The service's `error.message`, or the start of the body when it has none.
pub fn error_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified() {
        let wait = Some(Duration::from_secs(3));
        let err = r#"{"error":{"message":"no such index"}}"#;
        let ok = r#"{"value":[{"key":"a","status":true,"statusCode":201}]}"#;
        // (status, body, what it becomes)
        let cases: [(u16, &str, &str); 9] = [
            (200, ok, "results"),
            (207, ok, "results"),
            (200, "not json", "transient"),
            (413, "", "too large"),
            (429, err, "transient"),
            (503, err, "transient"),
            (403, err, "transient"),
            (400, err, "permanent"),
            (404, err, "permanent"),
        ];
        for (status, body, want) in cases {
            let got = match classify(status, body, wait) {
                Answer::Results(r) => {
                    assert_eq!(r.len(), 1);
                    "results"
                }
                Answer::TooLarge => "too large",
                Answer::Transient {
                    message,
                    retry_after,
                } => {
                    assert!(message.starts_with("search: "), "{message}");
                    if status != 200 {
                        assert_eq!(retry_after, wait, "{status}");
                        assert!(message.contains("no such index"), "{message}");
                    }
                    "transient"
                }
                Answer::Permanent { message } => {
                    assert_eq!(message, format!("search: HTTP {status}: no such index"));
                    "permanent"
                }
            };
            assert_eq!(got, want, "{status}");
        }
    }

    #[test]
    fn only_a_client_that_cannot_be_built_is_permanent() {
        let status = SearchError::Status {
            what: "reading versions",
            status: 503,
            message: "busy".into(),
        };
        let e = SinkError::from(status);
        assert!(!e.is_permanent());
        assert_eq!(e.to_string(), "search: reading versions: HTTP 503: busy");
        assert!(std::error::Error::source(&e).is_some());
    }
}
