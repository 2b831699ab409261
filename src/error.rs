//! Error kinds that decide the exit status; everything else is a runtime failure.

use std::path::Path;

/// Bad input from the user: a flag, an env var or a file it names. Exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(message: impl Into<String>) -> UsageError {
        UsageError(message.into())
    }

    /// A file named by `setting` (a flag and its env var) could not be read.
    pub fn unreadable(setting: &str, path: &Path, error: &std::io::Error) -> UsageError {
        let message = format!("{setting}: cannot read '{}': {error}", path.display());
        UsageError(one_line(&message))
    }
}

/// A user's error must reach the terminal as one line, but a value quoted in it (a path,
/// a TOML string) can hold line breaks; escaping them keeps the line and still shows
/// what was written.
pub fn one_line(text: &str) -> String {
    text.trim()
        .chars()
        .map(|c| match c {
            c if c.is_control() => c.escape_debug().to_string(),
            c => c.to_string(),
        })
        .collect()
}
