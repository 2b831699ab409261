//! Error kinds that decide the exit status; everything else is a runtime failure.

/// Bad input from the user: a flag, an env var or a file it names. Exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(message: impl Into<String>) -> UsageError {
        UsageError(message.into())
    }
}
