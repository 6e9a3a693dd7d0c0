//! TSF ("timeseries shard file"), format version 1.
//!
//! One TSF file stores many series, each identified by `(org_id, metric_id)`
//! and written in strictly increasing key order. Every series is split into
//! blocks of at most [`WriterOptions::block_points`] points; each block is
//! compressed with the smallest of several lossless codecs (delta-of-delta /
//! median-delta / grid timestamps, Gorilla XOR / byte-shuffled XOR or delta /
//! decimal-integer values, each stream optionally zstd-compressed) and is
//! protected by a CRC32C. A footer index (CRC32C-protected) followed by a
//! fixed-size [`TRAILER_LEN`]-byte trailer lets a reader fetch the trailer, then
//! the footer, binary-search one series and read only that series' blocks.
//!
//! The byte-level specification lives in `docs/output-format.md`; this module
//! is the reference implementation of that document.
//!
//! Reading is done with pure functions over byte slices ([`parse_header`],
//! [`parse_trailer`], [`Footer::parse`], [`decode_block`]) so callers can
//! fetch only the byte ranges they need (e.g. from object storage);
//! [`FileReader`] is a convenience over a whole file held in memory.
//!
//! Decoding the 52-byte trailer of a 101-byte file that holds one series of
//! 3 points (the complete file is dissected in `docs/output-format.md`):
//!
//! ```
//! use tailor::format::tsf::{parse_trailer, TRAILER_LEN, VERSION};
//! let trailer: [u8; TRAILER_LEN] = [
//!     26, 0, 0, 0, 0, 0, 0, 0, // footer_offset = 26
//!     23, 0, 0, 0, 0, 0, 0, 0, // footer_len = 23
//!     1, 0, 0, 0, 0, 0, 0, 0, // series_count = 1
//!     3, 0, 0, 0, 0, 0, 0, 0, // point_count = 3
//!     0xa1, 0x3d, 0xd2, 0x97, // footer_crc32c
//!     1, 0, // version = 1
//!     0, 0, // flags = 0
//!     0x9e, 0xb4, 0x37, 0xf6, // trailer_crc32c over the 40 bytes above
//!     0x89, b'T', b'S', b'F', b'\r', b'\n', 0x1a, b'\n', // magic
//! ];
//! let t = parse_trailer(&trailer).unwrap();
//! assert_eq!((t.footer_offset, t.footer_len), (26, 23));
//! assert_eq!((t.series_count, t.point_count), (1, 3));
//! assert_eq!(t.version, VERSION);
//! ```

mod bits;
mod block;
mod error;
mod layout;
mod reader;
#[cfg(test)]
pub(crate) mod test_util;
mod timestamps;
mod values;
mod writer;

pub use block::{BlockEntry, block_bytes, block_sections, decode_block};
pub use error::TsfError;
pub use layout::{Footer, Header, SeriesEntry, Trailer, parse_header, parse_trailer};
pub use reader::FileReader;
pub use writer::{
    EncodedBlock, EncodedSeries, FileSummary, FileWriter, SeriesHeader, WriterOptions,
    encode_series,
};

/// File magic, at offset 0 of the header and in the last 8 bytes of the trailer.
pub const MAGIC: &[u8; 8] = b"\x89TSF\r\n\x1a\n";
/// Format version written by this implementation (header and trailer).
pub const VERSION: u16 = 1;
/// Size of the fixed file header.
pub const HEADER_LEN: usize = 16;
/// Size of the fixed trailer at the end of the file.
pub const TRAILER_LEN: usize = 52;
/// Maximum metadata length in bytes.
pub const MAX_METADATA_LEN: usize = 65_536;
/// Maximum number of points in one block (writer option and reader limit).
pub const MAX_BLOCK_POINTS: usize = 65_536;
/// Default number of points per block.
pub const DEFAULT_BLOCK_POINTS: usize = 4096;
/// Default zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Valid zstd levels (writer option [`WriterOptions::zstd_level`]).
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=22;
/// Series kinds.
pub const KIND_GAUGE: u8 = 0;
pub const KIND_COUNT: u8 = 1;
pub const KIND_RATE: u8 = 2;
const MAX_KIND: u8 = 2;

/// Codec byte: bits 0..=2 timestamp encoding, bit 3 timestamp zstd,
/// bits 4..=6 value encoding, bit 7 value zstd.
pub mod codec {
    pub const TS_RAW: u8 = 0;
    pub const TS_DOD_BITS: u8 = 1;
    pub const TS_DOD_VARINT: u8 = 2;
    pub const TS_DELTA_BITS: u8 = 3;
    pub const TS_DELTA_VARINT: u8 = 4;
    pub const TS_GRID_BITS: u8 = 5;
    pub const TS_GRID_VARINT: u8 = 6;
    pub const TS_ZSTD: u8 = 0x08;
    pub const VAL_RAW: u8 = 0x00;
    pub const VAL_GORILLA: u8 = 0x10;
    pub const VAL_XOR_SHUFFLE: u8 = 0x20;
    pub const VAL_DECIMAL: u8 = 0x30;
    pub const VAL_DELTA_SHUFFLE: u8 = 0x40;
    pub const VAL_ZSTD: u8 = 0x80;
    /// Codec (a): delta-of-delta timestamps + Gorilla XOR values, bit-packed.
    pub const DOD_GORILLA: u8 = TS_DOD_BITS | VAL_GORILLA;
    /// Codec (b): the same streams, each zstd-compressed.
    pub const DOD_GORILLA_ZSTD: u8 = DOD_GORILLA | TS_ZSTD | VAL_ZSTD;
    /// Codec (c): raw little-endian.
    pub const RAW: u8 = TS_RAW | VAL_RAW;

    /// The timestamp encoding of a codec byte, for people.
    pub fn ts_name(c: u8) -> String {
        let enc = [
            "raw",
            "dod-bits",
            "dod-varint",
            "median-bits",
            "median-varint",
            "grid-bits",
            "grid-varint",
            "reserved",
        ][usize::from(c & 0x07)];
        if c & TS_ZSTD != 0 {
            format!("{enc}+zstd")
        } else {
            enc.to_string()
        }
    }

    /// The value encoding of a codec byte, for people.
    pub fn value_name(c: u8) -> String {
        let enc = [
            "raw",
            "gorilla",
            "xor-shuffle",
            "decimal",
            "delta-shuffle",
            "reserved",
            "reserved",
            "reserved",
        ][usize::from((c >> 4) & 0x07)];
        if c & VAL_ZSTD != 0 {
            format!("{enc}+zstd")
        } else {
            enc.to_string()
        }
    }

    /// Whether a codec byte is defined in format version 1.
    pub fn is_known(c: u8) -> bool {
        (c & 0x07) <= TS_GRID_VARINT && (c & 0x70) <= VAL_DELTA_SHUFFLE
    }
}
