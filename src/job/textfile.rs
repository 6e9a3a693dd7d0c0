//! The small text files a job is configured by (job file, shard map,
//! migration file): read with a size cap, their TOML errors made short.

use std::path::Path;

use crate::job::error::JobError;

/// Reads a small text file the job is configured by, refusing one bigger
/// than `max` before reading it (a mistyped path to a data file, say).
pub fn read_small(path: &Path, what: &str, max: u64) -> Result<String, JobError> {
    let read = || -> std::io::Result<String> {
        use std::io::Read;
        let f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        if len > max {
            return Err(std::io::Error::other(format!(
                "{len} bytes, over the {max}-byte limit of a {what}"
            )));
        }
        let mut text = String::new();
        f.take(max + 1).read_to_string(&mut text)?;
        Ok(text)
    };
    read().map_err(|e| JobError::Config(format!("reading {what} {}: {e}", path.display())))
}

/// A TOML error in `what` at `path`, short: the line and column and what
/// is wrong (toml's own message quotes the whole line, however long).
pub fn toml_error(what: &str, path: &Path, text: &str, e: &toml::de::Error) -> JobError {
    let at = e.span().map_or(String::new(), |s| {
        let before = &text[..s.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!(", line {line}, column {column}")
    });
    JobError::Config(format!(
        "{what} {}{at}: {}",
        path.display(),
        e.message().trim_end()
    ))
}
