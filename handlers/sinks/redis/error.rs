//! Error classification for the Redis sink, in one place: what goes wrong opening a
//! connection, and how Redis's own errors split into transient and permanent.

use crate::entra::EntraError;
use crate::sinks::SinkError;

/// Why no connection could be opened (the URL in it is redacted).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Entra(#[from] EntraError),
    #[error("cannot read ca_file {path}: {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("redis {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}

/// Connection, timeout and cluster-topology problems are transient; a command Redis refuses
/// for the data (WRONGTYPE, script errors) is permanent; NOSCRIPT is handled by reloading.
pub fn classify(e: redis::RedisError) -> SinkError {
    let message = format!("redis: {e}");
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
    {
        return SinkError::transient(message);
    }
    // Server errors: the ones a retry can cure (a server loading, failing over, busy, or a
    // token that expired) are transient; anything else the server refused for the data or the
    // command (WRONGTYPE, OOM, CROSSSLOT, script errors, ...) is permanent. Codes of errors
    // inside a pipeline are not always exposed by `code()`, so read them from the message.
    const TRANSIENT: [&str; 10] = [
        "LOADING",
        "BUSY",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MASTERDOWN",
        "READONLY",
        "NOAUTH",
        "WRONGPASS",
        "MOVED",
        "ASK",
    ];
    let text = e.to_string();
    let code = e.code().map(str::to_string).unwrap_or_default();
    if TRANSIENT.iter().any(|t| {
        code == *t
            || text
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|w| w == *t)
    }) {
        SinkError::transient(message)
    } else {
        SinkError::permanent(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_errors_are_classified() {
        let cases: [(redis::RedisError, bool); 4] = [
            (std::io::Error::other("reset").into(), false),
            (
                (redis::ErrorKind::Client, "LOADING", "dataset".to_string()).into(),
                false,
            ),
            (
                (
                    redis::ErrorKind::Client,
                    "WRONGTYPE",
                    "against a key".to_string(),
                )
                    .into(),
                true,
            ),
            (
                (
                    redis::ErrorKind::Client,
                    "ERR",
                    "MOVED 3999 127.0.0.1:6381".to_string(),
                )
                    .into(),
                false,
            ),
        ];
        for (e, permanent) in cases {
            let text = e.to_string();
            let classified = classify(e);
            assert_eq!(classified.is_permanent(), permanent, "{text}");
            assert!(
                classified.to_string().starts_with("redis: "),
                "{classified}"
            );
        }
    }
}
