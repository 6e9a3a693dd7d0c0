//! Jobs: the shard job (`run`), its output (`manifest`), reading it back
//! (`export`), the report, and the input generator.

pub mod config;
pub mod diff;
pub mod export;
pub mod floor;
pub mod generate;
pub mod manifest;
pub mod report;
pub mod run;

use crate::format::payload::FrameError;

/// Why a job failed. Corruption and misrouting carry the report of the
/// failed run so that the CLI can still write it.
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
    Corrupt(Box<FrameError>, Box<report::Report>),
    #[error(
        "{0} payloads were found under the wrong shard (see the report); nothing was committed"
    )]
    Misrouted(usize, Box<report::Report>),
    #[error("output format: {0}")]
    Tsf(#[from] crate::format::tsf::TsfError),
    #[error("output {0}")]
    Output(String),
    /// The memory limit could not hold what the grouping needed.
    #[error("{0}")]
    MemoryLimit(String, Box<report::Report>),
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

impl JobError {
    /// The report of a failed run, when it got far enough to have one.
    pub fn report(&self) -> Option<&report::Report> {
        match self {
            JobError::Corrupt(_, r) | JobError::Misrouted(_, r) | JobError::MemoryLimit(_, r) => {
                Some(r)
            }
            _ => None,
        }
    }
}
