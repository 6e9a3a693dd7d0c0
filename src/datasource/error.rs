//! Errors of object-store calls, with what they concern: the operation
//! (`LIST`, `GET`, `PUT`, ...) and the object or prefix. Failing to read or
//! write bytes is never corruption: these errors mean "a retry may help"
//! (exit 74), whatever policy the scan has for corrupt frames.

/// An object-store call that failed (after object_store's own retries).
#[derive(Debug, thiserror::Error)]
#[error("{op} {target}: {source}")]
pub struct StoreOpError {
    /// `LIST`, `GET`, `HEAD`, `PUT`, `PUT (multipart)`, `DELETE`, ...
    pub op: &'static str,
    /// The object (and byte range) or prefix.
    pub target: String,
    #[source]
    pub source: object_store::Error,
}
