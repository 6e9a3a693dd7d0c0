//! The input contract, on bytes: payload files, frames and payloads.
//!
//! This module implements `shared/spec/payload-files.md` (sections 2 and 3) as
//! pure functions over `&[u8]`: no I/O, no DataFusion, no async. Everything a
//! reader needs to turn the bytes of an object (or of a byte range of it) into
//! payloads lives here:
//!
//! ```text
//! file    := frame*
//! frame   := body_len:u32le | body:[u8; body_len]      9 <= body_len <= 64 MiB
//! body    := one zstd frame (RFC 8878) with the decompressed content size in its header
//! payload := header (32 bytes v1, 40 bytes v2) | timestamps i64[n] | values f64[n]
//!            | metadata (UTF-8, meta_len bytes) | zero padding to a multiple of 8
//! ```
//!
//! * [`parse_frame_prefix`] checks a frame's length prefix and the zstd magic.
//! * [`find_frame_start`] implements the spec's resynchronisation rule: the
//!   first offset at or after a position whose bytes look like a frame *and*
//!   whose successor chains (is the end of the object or another frame), and
//!   whose body is one well-formed zstd frame.
//! * [`check_body`] validates a body's zstd frame header (content size present,
//!   within the spec's maximum, exactly one zstd frame) before anything is
//!   allocated; [`Decoder`] decompresses into caller-provided, 8-byte-aligned
//!   memory and [`parse_payload`] validates the result in place.
//! * [`PayloadWriter`] is the writer side, used by tests and `tailor generate`.
//!
//! Every error is a [`FormatError`] with a [`ErrorKind`] that says what was
//! expected and what was found; the datasource layer adds the object key and
//! the frame offset ([`FrameError`]).

use std::fmt;

/// The zstd frame magic number, as it appears in the file (`28 B5 2F FD`).
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// The smallest valid `body_len`.
pub const MIN_BODY_LEN: u32 = 9;
/// The largest valid `body_len` (64 MiB).
pub const MAX_BODY_LEN: u32 = 64 << 20;
/// Bytes of a frame before its body (the `body_len` prefix).
pub const PREFIX_LEN: usize = 4;
/// Bytes needed to recognise a frame start: the prefix and the zstd magic.
pub const FRAME_PROBE_LEN: usize = PREFIX_LEN + ZSTD_MAGIC.len();
/// Payload magic, ASCII `TSPL`.
pub const PAYLOAD_MAGIC: [u8; 4] = *b"TSPL";
/// Header size of a version-1 payload.
pub const V1_HEADER_LEN: usize = 32;
/// Header size of a version-2 payload.
pub const V2_HEADER_LEN: usize = 40;
/// Largest `n_points` of a payload.
pub const MAX_POINTS: u32 = 1 << 20;
/// Largest `meta_len` of a payload.
pub const MAX_META_LEN: u32 = 1 << 16;
/// Largest decompressed payload the spec allows: a v2 header, the largest
/// arrays and the largest metadata, rounded up to a multiple of 8.
pub const MAX_PAYLOAD_LEN: usize =
    (V2_HEADER_LEN + 16 * MAX_POINTS as usize + MAX_META_LEN as usize).div_ceil(8) * 8;

#[cfg(not(target_endian = "little"))]
compile_error!("tailor reads payload arrays in place and needs a little-endian target");

/// A series' kind (payload v2 byte 32; v1 payloads are gauges).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Kind {
    Gauge = 0,
    Count = 1,
    Rate = 2,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Kind::Gauge),
            1 => Some(Kind::Count),
            2 => Some(Kind::Rate),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Count => "count",
            Kind::Rate => "rate",
        }
    }
}

/// What was wrong with the bytes. Every variant says what was expected and
/// what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    #[error("frame body_len {found} is outside the allowed {MIN_BODY_LEN}..={MAX_BODY_LEN}")]
    BodyLenOutOfRange { found: u32 },
    #[error("frame needs {needed} bytes but only {available} remain in the object (truncated)")]
    Truncated { needed: u64, available: u64 },
    #[error("frame body does not start with the zstd magic 28 B5 2F FD (found {found:02X?})")]
    NotZstd { found: [u8; 4] },
    #[error("zstd frame is malformed (header or block structure): {reason}")]
    BadZstdHeader { reason: String },
    #[error("zstd frame header does not carry the decompressed content size")]
    NoContentSize,
    #[error(
        "zstd frame declares {found} decompressed bytes; a payload is between {min} and {max} bytes"
    )]
    ContentSizeOutOfRange { found: u64, min: u64, max: u64 },
    #[error(
        "body holds {found} bytes but its zstd frame ends after {expected}: exactly one zstd frame expected"
    )]
    BodyNotOneFrame { expected: u64, found: u64 },
    #[error("zstd decompression failed: {reason}{}", zstd_meaning(reason))]
    Decompress { reason: String },
    #[error("zstd produced {found} bytes but the frame header declared {expected}")]
    DecompressedSize { expected: u64, found: u64 },
    #[error("payload magic is {found:02X?}, expected \"TSPL\" (54 53 50 4C)")]
    BadPayloadMagic { found: [u8; 4] },
    #[error("payload version {found} is not supported (expected 1 or 2)")]
    UnsupportedVersion { found: u16 },
    #[error("payload flags are {found:#06x}, expected 0")]
    NonZeroFlags { found: u16 },
    #[error("payload n_points is {found}, expected 1..={MAX_POINTS}")]
    PointCountOutOfRange { found: u32 },
    #[error("payload meta_len is {found}, expected 0..={MAX_META_LEN}")]
    MetaLenOutOfRange { found: u32 },
    #[error("payload kind is {found}, expected 0 (gauge), 1 (count) or 2 (rate)")]
    BadKind { found: u8 },
    #[error("payload reserved bytes are {found:02X?}, expected zero")]
    NonZeroReserved { found: [u8; 3] },
    #[error(
        "payload is {found} bytes, expected {expected} (header + 16*n_points + meta_len, rounded up to 8)"
    )]
    PayloadSize { expected: u64, found: u64 },
    #[error("payload metadata is not valid UTF-8 (invalid byte at metadata offset {valid_up_to})")]
    MetadataNotUtf8 { valid_up_to: usize },
    #[error("payload padding holds non-zero bytes {found:02X?}")]
    NonZeroPadding { found: Vec<u8> },
    #[error(
        "{found} trailing bytes after the last frame do not form a frame header (truncated upload)"
    )]
    TrailingBytes { found: u64 },
    #[error(
        "the bytes up to offset {next} hold no readable frame (found by checking that the byte ranges tile the object)"
    )]
    Unreadable { next: u64 },
    #[error(
        "the object is {found} bytes long but was listed with {listed} (truncated after listing)"
    )]
    ObjectShorter { listed: u64, found: u64 },
    #[error(
        "two byte ranges both read frames up to offset {next}: a range took a false frame boundary"
    )]
    RangesOverlap { next: u64 },
}

/// A format error at a known frame offset inside one object. The datasource
/// layer wraps it with the object key ([`FrameError`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FormatError {
    /// Byte offset of the frame's length prefix in the object.
    pub offset: u64,
    pub kind: ErrorKind,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "frame at byte offset {}: {}", self.offset, self.kind)
    }
}

impl std::error::Error for FormatError {}

/// A [`FormatError`] located in an object: the error every bad input turns into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("corrupt payload file {key:?}: {error}")]
pub struct FrameError {
    pub key: String,
    #[source]
    pub error: FormatError,
}

impl FrameError {
    pub fn new(key: impl Into<String>, error: FormatError) -> Self {
        Self {
            key: key.into(),
            error,
        }
    }
    pub fn offset(&self) -> u64 {
        self.error.offset
    }
    pub fn kind(&self) -> &ErrorKind {
        &self.error.kind
    }
}

fn err(offset: u64, kind: ErrorKind) -> FormatError {
    FormatError { offset, kind }
}

/// Checks the 8 bytes at a frame start (length prefix + first 4 body bytes)
/// and returns `body_len`. `remaining` is the number of bytes of the object
/// from the frame start to its end; the whole frame must fit in it.
pub fn parse_frame_prefix(probe: &[u8], offset: u64, remaining: u64) -> Result<u32, FormatError> {
    if remaining < PREFIX_LEN as u64 || (probe.len() < PREFIX_LEN) {
        return Err(err(offset, ErrorKind::TrailingBytes { found: remaining }));
    }
    let body_len = u32::from_le_bytes(probe[..4].try_into().unwrap());
    if !(MIN_BODY_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Err(err(
            offset,
            ErrorKind::BodyLenOutOfRange { found: body_len },
        ));
    }
    let needed = PREFIX_LEN as u64 + body_len as u64;
    if needed > remaining {
        return Err(err(
            offset,
            ErrorKind::Truncated {
                needed,
                available: remaining,
            },
        ));
    }
    if probe.len() < FRAME_PROBE_LEN {
        // The caller must hand in the magic too when the frame fits.
        return Err(err(
            offset,
            ErrorKind::Truncated {
                needed: FRAME_PROBE_LEN as u64,
                available: probe.len() as u64,
            },
        ));
    }
    let magic: [u8; 4] = probe[4..8].try_into().unwrap();
    if magic != ZSTD_MAGIC {
        return Err(err(offset, ErrorKind::NotZstd { found: magic }));
    }
    Ok(body_len)
}

/// Whether the 8 bytes at `probe` look like a frame start: a `body_len` in
/// range that fits in `remaining`, followed by the zstd magic.
pub fn looks_like_frame(probe: &[u8], remaining: u64) -> Option<u32> {
    parse_frame_prefix(probe, 0, remaining).ok()
}

/// Result of [`find_frame_start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// A frame starts at this absolute offset, chains and has a well-formed body.
    Found(u64),
    /// No frame starts in the searched window.
    None,
    /// The window ends before `need_end` (absolute, exclusive): the search
    /// resumes at `candidate` once the window reaches that far.
    NeedMore { candidate: u64, need_end: u64 },
    /// The 8 bytes at `candidate` look like a frame start, but its frame
    /// ends after the window. The caller checks the chain first, with a
    /// small read at `next` (`candidate + 4 + body_len`): when it does not
    /// chain, the search resumes at `candidate + 1`; when it does, the
    /// caller extends the window to `next + 8` (or the object's end) and
    /// searches again from `candidate`. So a candidate's body is fetched
    /// only once its chain has checked out.
    Candidate { candidate: u64, next: u64 },
}

/// A candidate that looked like a frame and chained, but whose body is not
/// one well-formed zstd frame: [`find_frame_start`] does not take it. It is
/// either a real frame with a corrupt body or a planted pattern; a reader
/// that knows the chain reaches `offset` uses `error` to report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rejected {
    pub offset: u64,
    /// `offset + 4 + body_len`.
    pub next: u64,
    pub error: FormatError,
}

/// Whether the frame chain continues at `next`: `next` is the object's end or
/// the (up to 8) bytes at `next` look like a frame start. `probe` holds the
/// bytes at `next` (at most 8 are used).
pub fn chains_at(probe: &[u8], next: u64, object_len: u64) -> bool {
    next == object_len || looks_like_frame(probe, object_len.saturating_sub(next)).is_some()
}

/// Finds the first frame start `p` with `from <= p < until` using the spec's
/// rule: the 8 bytes at `p` look like a frame (valid `body_len` that fits
/// in the object, zstd magic) and the frame chains: `p + 4 + body_len` is
/// either `object_len` or the start of something that looks like a frame
/// too. A candidate that does not chain is never taken. In addition the body
/// must pass [`check_body`] (one well-formed zstd frame filling exactly
/// `body_len`, its block headers walked, nothing decompressed): a planted
/// magic + length that happens to chain practically never is. Candidates
/// that chain but fail [`check_body`] are passed to `rejected`.
///
/// `window` holds the object's bytes from absolute offset `window_start`; it
/// must start at or before `from`. The answer depends only on the object's
/// bytes, never on the window: when the window is too short to decide, the
/// result says what is needed ([`Sync::NeedMore`], [`Sync::Candidate`]).
pub fn find_frame_start_with(
    window: &[u8],
    window_start: u64,
    from: u64,
    until: u64,
    object_len: u64,
    rejected: &mut dyn FnMut(Rejected),
) -> Sync {
    debug_assert!(window_start <= from);
    let window_end = window_start + window.len() as u64;
    let until = until.min(object_len);
    if from >= until {
        return Sync::None;
    }
    // A frame needs at least FRAME_PROBE_LEN bytes.
    if object_len - from < FRAME_PROBE_LEN as u64 {
        return Sync::None;
    }
    if window_end < from + FRAME_PROBE_LEN as u64 {
        return Sync::NeedMore {
            candidate: from,
            need_end: from + FRAME_PROBE_LEN as u64,
        };
    }
    // Search for the magic at p + 4 for p in [from, until).
    let search_start = (from - window_start) as usize + PREFIX_LEN;
    let search_end =
        ((until - window_start) as usize + PREFIX_LEN + ZSTD_MAGIC.len() - 1).min(window.len());
    let haystack = &window[search_start..search_end];
    for hit in memchr::memmem::find_iter(haystack, &ZSTD_MAGIC) {
        let p_rel = search_start + hit - PREFIX_LEN;
        let p = window_start + p_rel as u64;
        debug_assert!(p >= from && p < until);
        let Some(body_len) = looks_like_frame(&window[p_rel..], object_len - p) else {
            continue;
        };
        let next = p + PREFIX_LEN as u64 + body_len as u64;
        let next_probe_end = (next + FRAME_PROBE_LEN as u64).min(object_len);
        if next_probe_end > window_end {
            return Sync::Candidate { candidate: p, next };
        }
        let next_rel = (next - window_start) as usize;
        let probe = &window[next_rel..(next_probe_end - window_start) as usize];
        if !chains_at(probe, next, object_len) {
            continue;
        }
        let body = &window[p_rel + PREFIX_LEN..next_rel];
        match check_body(body, p) {
            Ok(_) => return Sync::Found(p),
            Err(error) => rejected(Rejected {
                offset: p,
                next,
                error,
            }),
        }
    }
    // The window may end before `until + 7`: a magic straddling its end was
    // not searchable yet.
    let wanted = until
        .saturating_add(FRAME_PROBE_LEN as u64 - 1)
        .min(object_len);
    if window_end < wanted {
        // Resume where a straddling magic could start; ask for a little more.
        let resume = window_end
            .saturating_sub(FRAME_PROBE_LEN as u64 - 1)
            .max(from);
        return Sync::NeedMore {
            candidate: resume,
            need_end: (window_end + FRAME_PROBE_LEN as u64).min(wanted),
        };
    }
    Sync::None
}

/// [`find_frame_start_with`], ignoring rejected candidates.
pub fn find_frame_start(
    window: &[u8],
    window_start: u64,
    from: u64,
    until: u64,
    object_len: u64,
) -> Sync {
    find_frame_start_with(window, window_start, from, until, object_len, &mut |_| {})
}

/// What [`check_body`] learned from a body's zstd frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyInfo {
    /// Decompressed size declared by the zstd frame header (in range, not
    /// necessarily a multiple of 8).
    pub content_size: usize,
}

/// Validates a frame body before anything is allocated for it: zstd magic,
/// a frame header that carries the content size, a content size within the
/// spec's payload limits, and exactly one zstd frame filling the body.
///
/// A content size that is in range but not a multiple of 8 is let through:
/// no header + arrays + metadata + padding adds up to it, and
/// [`parse_header`] reports it as [`ErrorKind::PayloadSize`] with the size
/// the header implies, which says more than a range error.
pub fn check_body(body: &[u8], offset: u64) -> Result<BodyInfo, FormatError> {
    if body.len() < 4 || body[..4] != ZSTD_MAGIC {
        let mut found = [0u8; 4];
        let n = body.len().min(4);
        found[..n].copy_from_slice(&body[..n]);
        return Err(err(offset, ErrorKind::NotZstd { found }));
    }
    let content_size = match zstd_safe::get_frame_content_size(body) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(err(offset, ErrorKind::NoContentSize)),
        Err(e) => {
            return Err(err(
                offset,
                ErrorKind::BadZstdHeader {
                    reason: format!("{e:?}"),
                },
            ));
        }
    };
    let min = (V1_HEADER_LEN + 16) as u64;
    if content_size < min || content_size > MAX_PAYLOAD_LEN as u64 {
        return Err(err(
            offset,
            ErrorKind::ContentSizeOutOfRange {
                found: content_size,
                min,
                max: MAX_PAYLOAD_LEN as u64,
            },
        ));
    }
    match zstd_safe::find_frame_compressed_size(body) {
        Ok(n) if n == body.len() => {}
        Ok(n) => {
            return Err(err(
                offset,
                ErrorKind::BodyNotOneFrame {
                    expected: n as u64,
                    found: body.len() as u64,
                },
            ));
        }
        Err(code) => {
            return Err(err(
                offset,
                ErrorKind::BadZstdHeader {
                    reason: zstd_safe::get_error_name(code).to_string(),
                },
            ));
        }
    }
    Ok(BodyInfo {
        content_size: content_size as usize,
    })
}

/// A reusable zstd decompression context. One per reader thread; it never
/// allocates per payload once warm.
pub struct Decoder {
    dctx: zstd_safe::DCtx<'static>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            dctx: zstd_safe::DCtx::create(),
        }
    }

    /// Decompresses a body that [`check_body`] accepted into `dst`, which must
    /// be exactly `info.content_size` bytes long (callers decompress into
    /// 8-byte-aligned memory of `info.content_size` rounded up to 8 and hand
    /// in its first `content_size` bytes).
    pub fn decompress_into(
        &mut self,
        body: &[u8],
        info: BodyInfo,
        dst: &mut [u8],
        offset: u64,
    ) -> Result<(), FormatError> {
        debug_assert_eq!(dst.len(), info.content_size);
        match self.dctx.decompress(dst, body) {
            Ok(n) if n == info.content_size => Ok(()),
            Ok(n) => Err(err(
                offset,
                ErrorKind::DecompressedSize {
                    expected: info.content_size as u64,
                    found: n as u64,
                },
            )),
            Err(code) => Err(err(
                offset,
                ErrorKind::Decompress {
                    reason: zstd_safe::get_error_name(code).to_string(),
                },
            )),
        }
    }
}

/// What a zstd error name means for a frame body, for the error message.
fn zstd_meaning(name: &str) -> &'static str {
    match name {
        "Destination buffer is too small" => {
            " (the body decompresses to more than the content size its header declares)"
        }
        "Src size is incorrect" => " (the compressed data ends before its last block)",
        "Data corruption detected" | "Dictionary is corrupted" | "Corrupted block detected" => {
            " (the compressed data itself is damaged)"
        }
        _ => "",
    }
}

/// A validated payload header. Array positions are byte offsets from the
/// start of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHeader {
    pub version: u16,
    pub org_id: u64,
    pub metric_id: u64,
    pub n_points: u32,
    pub meta_len: u32,
    pub kind: Kind,
    pub interval_s: u32,
}

impl PayloadHeader {
    pub fn header_len(&self) -> usize {
        if self.version == 1 {
            V1_HEADER_LEN
        } else {
            V2_HEADER_LEN
        }
    }
    /// Byte offset of the timestamps array.
    pub fn ts_offset(&self) -> usize {
        self.header_len()
    }
    /// Byte offset of the values array.
    pub fn values_offset(&self) -> usize {
        self.header_len() + 8 * self.n_points as usize
    }
    /// Byte offset of the metadata.
    pub fn meta_offset(&self) -> usize {
        self.header_len() + 16 * self.n_points as usize
    }
    /// The payload's exact size, padding included.
    pub fn payload_len(&self) -> usize {
        (self.meta_offset() + self.meta_len as usize).div_ceil(8) * 8
    }
}

/// A payload decoded in place: the arrays borrow the decompressed bytes.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    pub header: PayloadHeader,
    pub timestamps: &'a [i64],
    /// Values as raw IEEE 754 bits.
    pub values: &'a [u64],
    pub metadata: &'a str,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Validates a decompressed payload's header and size (every rule of the
/// spec's section 3) without touching the arrays.
pub fn parse_header(bytes: &[u8], offset: u64) -> Result<PayloadHeader, FormatError> {
    let e = |kind| err(offset, kind);
    if bytes.len() < V1_HEADER_LEN {
        return Err(e(ErrorKind::PayloadSize {
            expected: V1_HEADER_LEN as u64,
            found: bytes.len() as u64,
        }));
    }
    let magic: [u8; 4] = bytes[..4].try_into().unwrap();
    if magic != PAYLOAD_MAGIC {
        return Err(e(ErrorKind::BadPayloadMagic { found: magic }));
    }
    let version = u16_at(bytes, 4);
    if version != 1 && version != 2 {
        return Err(e(ErrorKind::UnsupportedVersion { found: version }));
    }
    let flags = u16_at(bytes, 6);
    if flags != 0 {
        return Err(e(ErrorKind::NonZeroFlags { found: flags }));
    }
    let n_points = u32_at(bytes, 24);
    if !(1..=MAX_POINTS).contains(&n_points) {
        return Err(e(ErrorKind::PointCountOutOfRange { found: n_points }));
    }
    let meta_len = u32_at(bytes, 28);
    if meta_len > MAX_META_LEN {
        return Err(e(ErrorKind::MetaLenOutOfRange { found: meta_len }));
    }
    let (kind, interval_s) = if version == 2 {
        if bytes.len() < V2_HEADER_LEN {
            return Err(e(ErrorKind::PayloadSize {
                expected: V2_HEADER_LEN as u64,
                found: bytes.len() as u64,
            }));
        }
        let kind = Kind::from_u8(bytes[32]).ok_or(e(ErrorKind::BadKind { found: bytes[32] }))?;
        let reserved: [u8; 3] = bytes[33..36].try_into().unwrap();
        if reserved != [0; 3] {
            return Err(e(ErrorKind::NonZeroReserved { found: reserved }));
        }
        (kind, u32_at(bytes, 36))
    } else {
        (Kind::Gauge, 0)
    };
    let header = PayloadHeader {
        version,
        org_id: u64_at(bytes, 8),
        metric_id: u64_at(bytes, 16),
        n_points,
        meta_len,
        kind,
        interval_s,
    };
    let expected = header.payload_len();
    if bytes.len() != expected {
        return Err(e(ErrorKind::PayloadSize {
            expected: expected as u64,
            found: bytes.len() as u64,
        }));
    }
    Ok(header)
}

/// Validates a decompressed payload and borrows its arrays in place. `bytes`
/// must start at an 8-byte-aligned address (the decode buffers are `u64`s).
pub fn parse_payload(bytes: &[u8], offset: u64) -> Result<Payload<'_>, FormatError> {
    assert_eq!(
        bytes.as_ptr() as usize % 8,
        0,
        "payload buffers must be 8-byte aligned"
    );
    let header = parse_header(bytes, offset)?;
    let meta_start = header.meta_offset();
    let meta_end = meta_start + header.meta_len as usize;
    let metadata = std::str::from_utf8(&bytes[meta_start..meta_end]).map_err(|u| {
        err(
            offset,
            ErrorKind::MetadataNotUtf8 {
                valid_up_to: u.valid_up_to(),
            },
        )
    })?;
    let padding = &bytes[meta_end..];
    if padding.iter().any(|&b| b != 0) {
        return Err(err(
            offset,
            ErrorKind::NonZeroPadding {
                found: padding.to_vec(),
            },
        ));
    }
    let n = header.n_points as usize;
    let words = as_words(bytes);
    let ts_w = header.ts_offset() / 8;
    let val_w = header.values_offset() / 8;
    let values = &words[val_w..val_w + n];
    // SAFETY: i64 and u64 have the same size and alignment, every bit pattern is valid.
    let timestamps: &[i64] =
        unsafe { std::slice::from_raw_parts(words[ts_w..].as_ptr() as *const i64, n) };
    Ok(Payload {
        header,
        timestamps,
        values,
        metadata,
    })
}

/// Reinterprets an 8-aligned byte slice whose length is a multiple of 8 as `u64`s.
fn as_words(bytes: &[u8]) -> &[u64] {
    debug_assert_eq!(bytes.len() % 8, 0);
    debug_assert_eq!(bytes.as_ptr() as usize % 8, 0);
    // SAFETY: alignment and length checked above (parse_payload asserts the
    // alignment; payload_len is a multiple of 8); u64 has no invalid bit patterns.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const u64, bytes.len() / 8) }
}

/// One payload to write.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadSpec<'a> {
    /// 1 or 2.
    pub version: u16,
    pub org_id: u64,
    pub metric_id: u64,
    /// Ignored (gauge) for version 1.
    pub kind: Kind,
    /// Ignored (0) for version 1.
    pub interval_s: u32,
    pub timestamps: &'a [i64],
    /// Raw value bits.
    pub values: &'a [u64],
    pub metadata: &'a str,
}

/// Serialises a payload (uncompressed) into `out`, replacing its contents.
/// Panics if the spec's limits are broken (this is the writer used by tests
/// and the generator, whose inputs are trusted).
pub fn encode_payload(p: &PayloadSpec<'_>, out: &mut Vec<u8>) {
    assert!(p.version == 1 || p.version == 2, "version must be 1 or 2");
    assert_eq!(p.timestamps.len(), p.values.len());
    let n = p.timestamps.len();
    assert!((1..=MAX_POINTS as usize).contains(&n));
    assert!(p.metadata.len() <= MAX_META_LEN as usize);
    out.clear();
    out.extend_from_slice(&PAYLOAD_MAGIC);
    out.extend_from_slice(&p.version.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&p.org_id.to_le_bytes());
    out.extend_from_slice(&p.metric_id.to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&(p.metadata.len() as u32).to_le_bytes());
    if p.version == 2 {
        out.push(p.kind as u8);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&p.interval_s.to_le_bytes());
    }
    for t in p.timestamps {
        out.extend_from_slice(&t.to_le_bytes());
    }
    for v in p.values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(p.metadata.as_bytes());
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
}

/// Writes frames: compresses payloads with zstd (content size in the header)
/// and prefixes them with their length. Buffers are reused between calls.
pub struct PayloadWriter {
    cctx: zstd_safe::CCtx<'static>,
    raw: Vec<u8>,
    level: i32,
}

impl PayloadWriter {
    pub fn new(level: i32) -> Self {
        let mut cctx = zstd_safe::CCtx::create();
        cctx.set_parameter(zstd_safe::CParameter::ContentSizeFlag(true))
            .expect("zstd content size flag");
        cctx.set_parameter(zstd_safe::CParameter::ChecksumFlag(false))
            .expect("zstd checksum flag");
        Self {
            cctx,
            raw: Vec::new(),
            level,
        }
    }

    /// Appends one frame holding `p` to `out`; returns the frame's length.
    pub fn write_frame(&mut self, p: &PayloadSpec<'_>, out: &mut Vec<u8>) -> usize {
        let mut raw = std::mem::take(&mut self.raw);
        encode_payload(p, &mut raw);
        let n = self.write_raw_frame(&raw, out);
        self.raw = raw;
        n
    }

    /// Appends one frame whose body is `raw` compressed as-is (tests use it to
    /// frame hand-made, possibly invalid, payloads).
    pub fn write_raw_frame(&mut self, raw: &[u8], out: &mut Vec<u8>) -> usize {
        let start = out.len();
        let bound = zstd_safe::compress_bound(raw.len());
        out.extend_from_slice(&[0; 4]);
        out.reserve(bound);
        self.cctx
            .set_parameter(zstd_safe::CParameter::CompressionLevel(self.level))
            .expect("zstd level");
        self.cctx
            .set_pledged_src_size(Some(raw.len() as u64))
            .expect("zstd pledged size");
        let body_start = out.len();
        let written = {
            let mut dst = zstd_safe::OutBuffer::around_pos(&mut *out, body_start);
            let mut src = zstd_safe::InBuffer::around(raw);
            let rest = self
                .cctx
                .compress_stream2(
                    &mut dst,
                    &mut src,
                    zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end,
                )
                .expect("zstd compression");
            assert_eq!(rest, 0, "zstd frame fully flushed");
            dst.pos() - body_start
        };
        out[start..start + 4].copy_from_slice(&(written as u32).to_le_bytes());
        out.len() - start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_error_names_are_explained() {
        let e = |reason: &str| {
            ErrorKind::Decompress {
                reason: reason.into(),
            }
            .to_string()
        };
        assert_eq!(
            e("Destination buffer is too small"),
            "zstd decompression failed: Destination buffer is too small (the body \
             decompresses to more than the content size its header declares)"
        );
        assert!(e("Data corruption detected").ends_with("(the compressed data itself is damaged)"));
        assert_eq!(e("Unknown"), "zstd decompression failed: Unknown");
    }

    fn spec<'a>(version: u16, ts: &'a [i64], vals: &'a [u64], meta: &'a str) -> PayloadSpec<'a> {
        PayloadSpec {
            version,
            org_id: 7,
            metric_id: 9,
            kind: Kind::Rate,
            interval_s: 10,
            timestamps: ts,
            values: vals,
            metadata: meta,
        }
    }

    fn decode_one(
        frame: &[u8],
    ) -> Result<(PayloadHeader, Vec<i64>, Vec<u64>, String), FormatError> {
        let len = parse_frame_prefix(frame, 0, frame.len() as u64)? as usize;
        let body = &frame[4..4 + len];
        let info = check_body(body, 0)?;
        let mut buf = vec![0u64; info.content_size / 8];
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, info.content_size)
        };
        Decoder::new().decompress_into(body, info, bytes, 0)?;
        let p = parse_payload(bytes, 0)?;
        Ok((
            p.header,
            p.timestamps.to_vec(),
            p.values.to_vec(),
            p.metadata.to_string(),
        ))
    }

    #[test]
    fn round_trip_both_versions_bit_exact() {
        let ts = [5, -3, i64::MIN, i64::MAX, 5];
        let vals = [
            f64::NAN.to_bits() | 0xdead,
            (-0.0f64).to_bits(),
            f64::INFINITY.to_bits(),
            1u64, // subnormal
            f64::NEG_INFINITY.to_bits(),
        ];
        for version in [1, 2] {
            for meta in ["", "host:wéb-1,env:prod", "abc"] {
                let mut out = Vec::new();
                PayloadWriter::new(3).write_frame(&spec(version, &ts, &vals, meta), &mut out);
                let (h, t, v, m) = decode_one(&out).unwrap();
                assert_eq!(h.version, version);
                assert_eq!((h.org_id, h.metric_id), (7, 9));
                if version == 1 {
                    assert_eq!((h.kind, h.interval_s), (Kind::Gauge, 0));
                } else {
                    assert_eq!((h.kind, h.interval_s), (Kind::Rate, 10));
                }
                assert_eq!(t, ts);
                assert_eq!(v, vals);
                assert_eq!(m, meta);
            }
        }
    }

    #[test]
    fn max_payload_len_matches_spec() {
        assert_eq!(MAX_PAYLOAD_LEN, 40 + 16 * 1_048_576 + 65_536);
    }

    #[test]
    fn find_frame_start_skips_fake_magic_without_chain() {
        let ts = [1i64];
        let vals = [2u64];
        let mut file = Vec::new();
        let mut w = PayloadWriter::new(1);
        w.write_frame(&spec(2, &ts, &vals, ""), &mut file);
        let second = file.len() as u64;
        w.write_frame(&spec(1, &ts, &vals, "x"), &mut file);
        // A fake frame start right at 1: body_len 9 + magic, but no chain.
        let mut fake = vec![0u8; 1];
        fake.extend_from_slice(&9u32.to_le_bytes());
        fake.extend_from_slice(&ZSTD_MAGIC);
        let n = file.len() as u64;
        assert_eq!(find_frame_start(&file, 0, 0, n, n), Sync::Found(0));
        assert_eq!(find_frame_start(&file, 0, 1, n, n), Sync::Found(second));
        assert_eq!(find_frame_start(&file, 0, second + 1, n, n), Sync::None);
        assert_eq!(find_frame_start(&fake, 0, 0, 9, 9), Sync::None);
    }

    /// A file of `payloads` random-valued payloads (stored raw by zstd) with
    /// `inner` copied verbatim into the values of the first one.
    fn file_with_inner_bytes(inner: &[u8]) -> (Vec<u8>, Vec<u64>) {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut words: Vec<u64> = (0..64).map(|_| rnd()).collect();
        let mut padded = inner.to_vec();
        padded.resize(inner.len().div_ceil(8) * 8, 0xA5);
        words.extend(
            padded
                .chunks(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap())),
        );
        words.extend((0..64).map(|_| rnd()));
        // Random timestamps too: nothing to compress, zstd stores the bytes.
        let ts: Vec<i64> = (0..words.len()).map(|_| rnd() as i64).collect();
        let mut file = Vec::new();
        let mut offsets = Vec::new();
        let mut w = PayloadWriter::new(1);
        offsets.push(0);
        w.write_frame(&spec(2, &ts, &words, ""), &mut file);
        let second: Vec<u64> = (0..32).map(|_| rnd()).collect();
        offsets.push(file.len() as u64);
        w.write_frame(&spec(1, &ts[..32], &second, "x"), &mut file);
        (file, offsets)
    }

    #[test]
    fn find_frame_start_never_takes_a_frame_that_does_not_chain() {
        // A complete, valid frame embedded in another frame's raw body: its
        // body decompresses to a valid payload, but it does not chain.
        let mut inner = Vec::new();
        PayloadWriter::new(1).write_frame(&spec(2, &[1], &[2], "inner"), &mut inner);
        let (file, offsets) = file_with_inner_bytes(&inner);
        let at = memchr::memmem::find(&file, &inner).expect("inner frame stored verbatim") as u64;
        assert!(at > 0 && at < offsets[1]);
        let n = file.len() as u64;
        assert_eq!(
            find_frame_start(&file, 0, 1, n, n),
            Sync::Found(offsets[1]),
            "the embedded frame at {at} must not be taken"
        );
        // A real frame whose successor is garbage does not chain either.
        let mut broken = file[..offsets[1] as usize].to_vec();
        broken.extend_from_slice(&[0x55; 16]);
        let bn = broken.len() as u64;
        assert_eq!(find_frame_start(&broken, 0, 0, bn, bn), Sync::None);
    }

    #[test]
    fn find_frame_start_rejects_a_fake_chain_of_fake_magics() {
        // Two fake frame starts planted in a raw body, the first one's length
        // pointing exactly at the second: it chains, but its body is not a
        // zstd frame, so it is rejected (and reported as such).
        let mut fake = Vec::new();
        fake.extend_from_slice(&40u32.to_le_bytes());
        fake.extend_from_slice(&ZSTD_MAGIC);
        fake.extend((0..36u32).map(|i| (i * 97 + 13) as u8));
        fake.extend_from_slice(&9u32.to_le_bytes());
        fake.extend_from_slice(&ZSTD_MAGIC);
        let (file, offsets) = file_with_inner_bytes(&fake);
        let at = memchr::memmem::find(&file, &fake).expect("fake stored verbatim") as u64;
        let n = file.len() as u64;
        let mut rejected = Vec::new();
        let found = find_frame_start_with(&file, 0, 1, n, n, &mut |r| rejected.push(r));
        assert_eq!(found, Sync::Found(offsets[1]));
        assert!(
            rejected.iter().any(|r| r.offset == at && r.next == at + 44),
            "{rejected:?}"
        );
        // From inside the window only up to the fake: asks for its chain first.
        let w = &file[..(at + 20) as usize];
        assert_eq!(
            find_frame_start(w, 0, at, n, n),
            Sync::Candidate {
                candidate: at,
                next: at + 44
            }
        );
    }
}
