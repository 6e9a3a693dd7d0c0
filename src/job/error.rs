//! Why a job failed: one error type for every step of `job/`, each variant
//! in one class of the exit-code contract (see [`JobError::class`]). Every
//! error says what it concerns: the object, file or directory and the
//! operation. A failed run's report does not travel inside the error: `run`
//! returns what the run did beside its result.

use std::fmt::Display;

use crate::datasource::error::StoreOpError;
use crate::format::payload::FrameError;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A setting is invalid (exit 64).
    #[error("{0}")]
    Config(String),
    /// An input or output URL is invalid (exit 64).
    #[error(transparent)]
    Store(#[from] crate::datasource::store::StoreError),
    /// An object-store call failed after its retries (exit 74).
    #[error(transparent)]
    ObjectStore(#[from] StoreOpError),
    /// A local file or directory could not be read or written (exit 74).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", datafusion_message(.0))]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// A corrupt frame in the input (exit 65).
    #[error("{0}")]
    Corrupt(Box<FrameError>),
    #[error(
        "{0} misrouted payloads (--fail-on-misrouted): found under the wrong shard (see the report); nothing was committed"
    )]
    Misrouted(usize),
    /// A committed output that fails its checks: a manifest that does not
    /// add up, a data file that differs from it or does not decode
    /// (exit 65).
    #[error("{0}")]
    BadOutput(String),
    /// The memory limit could not hold what the grouping needed (exit 64).
    #[error("{0}")]
    MemoryLimit(String),
    /// Another run of the same shard window committed first (exit 75).
    #[error("{0}")]
    LostRace(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What an error means to the scheduler that started the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad usage or configuration: fix the command (64).
    Usage,
    /// Bad input data (or a bad committed output): fix or skip the data (65).
    Data,
    /// A failure of the tool itself (70).
    Internal,
    /// I/O or object store: a retry may help (74).
    Io,
    /// Another run of the window committed first (75).
    LostRace,
}

impl JobError {
    /// The error's class (the CLI turns it into an exit code).
    pub fn class(&self) -> ErrorClass {
        use datafusion::error::DataFusionError as D;
        match self {
            JobError::Config(_) | JobError::Store(_) | JobError::MemoryLimit(_) => {
                ErrorClass::Usage
            }
            JobError::Corrupt(_) | JobError::Misrouted(_) | JobError::BadOutput(_) => {
                ErrorClass::Data
            }
            // A key object_store cannot take for a path (`..`, an empty
            // segment, bytes that are not UTF-8) is in the data: retrying
            // lists it again.
            JobError::ObjectStore(e)
                if matches!(e.source, object_store::Error::InvalidPath { .. }) =>
            {
                ErrorClass::Data
            }
            JobError::ObjectStore(_) | JobError::Io { .. } => ErrorClass::Io,
            JobError::LostRace(_) => ErrorClass::LostRace,
            JobError::Internal(_) => ErrorClass::Internal,
            JobError::DataFusion(d) if crate::datasource::source::frame_error(d).is_some() => {
                ErrorClass::Data
            }
            JobError::DataFusion(d) => match d.find_root() {
                D::External(e) => {
                    if let Some(j) = e.downcast_ref::<JobError>() {
                        j.class()
                    } else if e.is::<FrameError>() {
                        ErrorClass::Data
                    } else if e.is::<StoreOpError>()
                        || e.is::<object_store::Error>()
                        || e.is::<std::io::Error>()
                    {
                        ErrorClass::Io
                    } else {
                        ErrorClass::Internal
                    }
                }
                D::ObjectStore(_) | D::IoError(_) => ErrorClass::Io,
                D::ArrowError(a, _)
                    if matches!(
                        a.as_ref(),
                        datafusion::arrow::error::ArrowError::IoError(..)
                    ) =>
                {
                    ErrorClass::Io
                }
                D::ResourcesExhausted(_) => ErrorClass::Usage,
                _ => ErrorClass::Internal,
            },
        }
    }

    /// An I/O error about `what` (a file or directory and what was being
    /// done to it).
    pub fn io(what: impl Display, source: std::io::Error) -> Self {
        JobError::Io {
            what: what.to_string(),
            source,
        }
    }
}

/// Adds what a failed local I/O call concerned.
pub trait IoContext<T> {
    /// `what`: the operation and the path, as "writing <path>".
    fn at(self, what: impl Display) -> Result<T, JobError>;
}

impl<T> IoContext<T> for Result<T, std::io::Error> {
    fn at(self, what: impl Display) -> Result<T, JobError> {
        self.map_err(|e| JobError::io(what, e))
    }
}

/// Adds the operation and the object a failed object-store call concerned.
pub trait StoreContext<T> {
    fn op(self, op: &'static str, target: impl Display) -> Result<T, JobError>;
}

impl<T> StoreContext<T> for Result<T, object_store::Error> {
    fn op(self, op: &'static str, target: impl Display) -> Result<T, JobError> {
        self.map_err(|source| {
            JobError::ObjectStore(StoreOpError {
                op,
                target: target.to_string(),
                source,
            })
        })
    }
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
