//! Why a job failed: one error type for every step of `job/`, each variant
//! mapped to an exit code by the CLI. A failed run's report does not travel
//! inside the error: `run` returns what the run did beside its result.

use crate::format::payload::FrameError;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] crate::datasource::store::StoreError),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("{}", datafusion_message(.0))]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Corrupt(Box<FrameError>),
    #[error(
        "{0} misrouted payloads (--fail-on-misrouted): found under the wrong shard (see the report); nothing was committed"
    )]
    Misrouted(usize),
    #[error("output format: {0}")]
    Tsf(#[from] crate::format::tsf::TsfError),
    #[error("output {0}")]
    Output(String),
    /// The memory limit could not hold what the grouping needed.
    #[error("{0}")]
    MemoryLimit(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// DataFusion's message, without the "External error: " it puts before an
/// error of ours (a corrupt frame, an output error) that went through it.
fn datafusion_message(e: &datafusion::error::DataFusionError) -> String {
    without_external(&e.to_string())
}

/// An error text without DataFusion's "External error: " prefixes.
pub fn without_external(text: &str) -> String {
    text.replace("External error: ", "")
}
