//! Error classification for the Delta sink, in one place: settings or data the table cannot
//! take are permanent; storage, network and commit conflicts are transient. The errors are
//! the shared [`SinkError`] (cloneable: one failed group commit answers every invocation in
//! the group), with delta-rs's error as the source.

use crate::sinks::SinkError;
use deltalake::DeltaTableError;

/// A problem with the table that retrying cannot fix.
pub fn permanent(message: impl std::fmt::Display) -> SinkError {
    SinkError::permanent(format!("delta: {message}"))
}

/// A problem with the table that may go away (storage, the committer restarting).
pub fn transient(message: impl std::fmt::Display) -> SinkError {
    SinkError::transient(format!("delta: {message}"))
}

/// delta-rs's errors, classified. The source is the error the message was made from, so
/// that [`SinkError::detail`] does not repeat it.
pub fn classify(e: DeltaTableError) -> SinkError {
    match e {
        // delta-rs words every I/O error as "Failed to read line from log record": say what
        // it is, and keep the I/O error itself as the source.
        DeltaTableError::Io { source } => {
            transient(format!("I/O error: {source}")).with_source(source)
        }
        e @ (DeltaTableError::SchemaMismatch { .. }
        | DeltaTableError::InvalidTableLocation(_)
        | DeltaTableError::Arrow { .. }
        | DeltaTableError::InvalidJsonLog { .. }) => permanent(e.to_string()).with_source(e),
        e => transient(e.to_string()).with_source(e),
    }
}

impl From<DeltaTableError> for SinkError {
    fn from(e: DeltaTableError) -> Self {
        classify(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_errors_are_classified_and_said_once() {
        let io = classify(DeltaTableError::Io {
            source: std::io::Error::other("disk full"),
        });
        assert!(!io.is_permanent());
        assert_eq!(io.detail(), "delta: I/O error: disk full");
        let location = classify(DeltaTableError::InvalidTableLocation("t".into()));
        assert!(location.is_permanent());
        assert_eq!(location.detail(), location.to_string());
        assert!(location.to_string().starts_with("delta: "));
        assert!(std::error::Error::source(&location).is_some());
    }
}
