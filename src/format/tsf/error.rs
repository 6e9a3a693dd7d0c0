//! The error type of the TSF module.

use super::{MAX_KIND, VERSION};

/// All errors of this module. Offsets are file offsets: from the start of
/// the bytes the reading function was given, which for every reader of a
/// whole file ([`FileReader`](super::FileReader), and
/// [`parse_trailer`](super::parse_trailer) given the file) is the file.
#[derive(Debug, thiserror::Error)]
pub enum TsfError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad magic at offset {offset}: found {found:02x?}")]
    BadMagic { offset: u64, found: [u8; 8] },
    #[error("unsupported format version {found} at offset {offset} (supported: {VERSION})")]
    UnsupportedVersion { offset: u64, found: u16 },
    #[error("unsupported flags {found:#06x} at offset {offset}")]
    UnsupportedFlags { offset: u64, found: u16 },
    #[error(
        "{what} checksum mismatch at offset {offset}: expected {expected:#010x}, actual {actual:#010x}"
    )]
    ChecksumMismatch {
        what: &'static str,
        offset: u64,
        expected: u32,
        actual: u32,
    },
    #[error("truncated at offset {offset}: needed {needed} bytes, {available} available")]
    Truncated {
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("unknown codec {codec:#04x} at offset {offset}")]
    UnknownCodec { offset: u64, codec: u8 },
    #[error(
        "block codec {found:#04x} at offset {offset} differs from footer codec {expected:#04x}"
    )]
    CodecMismatch {
        offset: u64,
        expected: u8,
        found: u8,
    },
    #[error("{field} = {found} at offset {offset} is out of range (max {max})")]
    ValueOutOfRange {
        offset: u64,
        field: &'static str,
        found: u64,
        max: u64,
    },
    #[error("{what} mismatch at offset {offset}: expected {expected}, found {found}")]
    CountMismatch {
        offset: u64,
        what: &'static str,
        expected: u64,
        found: u64,
    },
    #[error("corrupt data at offset {offset}: {reason}")]
    Corrupt { offset: u64, reason: &'static str },
    #[error("invalid UTF-8 in metadata at offset {offset}")]
    InvalidUtf8 { offset: u64 },
    #[error("series ({org_id}, {metric_id}) is not after ({prev_org_id}, {prev_metric_id})")]
    OutOfOrderSeries {
        prev_org_id: u64,
        prev_metric_id: u64,
        org_id: u64,
        metric_id: u64,
    },
    #[error("timestamp {found} at index {index} is not greater than previous {prev}")]
    NonIncreasingTimestamp { index: usize, prev: i64, found: i64 },
    #[error("{timestamps} timestamps but {values} values")]
    LengthMismatch { timestamps: usize, values: usize },
    #[error("series ({org_id}, {metric_id}) has no points")]
    EmptySeries { org_id: u64, metric_id: u64 },
    #[error("invalid kind {found} (max {MAX_KIND})")]
    InvalidKind { found: u8 },
    #[error("metadata is {len} bytes (max {max})")]
    MetadataTooLong { len: usize, max: usize },
    #[error("invalid writer options: {reason}")]
    InvalidOptions { reason: &'static str },
    #[error("writer failed earlier and cannot be used")]
    WriterPoisoned,
}

pub(super) type Result<T> = std::result::Result<T, TsfError>;

pub(super) fn corrupt(offset: u64, reason: &'static str) -> TsfError {
    TsfError::Corrupt { offset, reason }
}
