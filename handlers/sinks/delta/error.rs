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

/// delta-rs's errors, classified.
pub fn classify(e: DeltaTableError) -> SinkError {
    let message = match &e {
        // delta-rs words every I/O error as "Failed to read line from log record".
        DeltaTableError::Io { source } => format!("I/O error: {source}"),
        other => other.to_string(),
    };
    let error = match e {
        DeltaTableError::SchemaMismatch { .. }
        | DeltaTableError::InvalidTableLocation(_)
        | DeltaTableError::Arrow { .. }
        | DeltaTableError::InvalidJsonLog { .. } => permanent(message),
        _ => transient(message),
    };
    error.with_source(e)
}

impl From<DeltaTableError> for SinkError {
    fn from(e: DeltaTableError) -> Self {
        classify(e)
    }
}
