//! One error type for the table's operations, classified where it happens: settings or data
//! the table cannot take are permanent; storage, network and commit conflicts are transient.
//! Cloneable, because one failed group commit answers every invocation in the group.

use deltalake::DeltaTableError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangelogError {
    #[error("delta: {0}")]
    Transient(String),
    #[error("delta: {0}")]
    Permanent(String),
}

impl ChangelogError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, ChangelogError::Permanent(_))
    }
}

impl From<DeltaTableError> for ChangelogError {
    fn from(e: DeltaTableError) -> Self {
        let message = match &e {
            // delta-rs words every I/O error as "Failed to read line from log record".
            DeltaTableError::Io { source } => format!("I/O error: {source}"),
            other => other.to_string(),
        };
        match e {
            DeltaTableError::SchemaMismatch { .. }
            | DeltaTableError::InvalidTableLocation(_)
            | DeltaTableError::Arrow { .. }
            | DeltaTableError::InvalidJsonLog { .. } => ChangelogError::Permanent(message),
            _ => ChangelogError::Transient(message),
        }
    }
}
