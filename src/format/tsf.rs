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

use std::io::Write;
use std::ops::Range;

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
/// The zstd levels a writer takes.
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

const MAX_DECIMALS: u8 = 15;
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
const TWO_POW_53: f64 = 9_007_199_254_740_992.0;
const TWO_POW_52: f64 = 4_503_599_627_370_496.0;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// All errors of this module. Offsets are absolute file offsets except for
/// [`parse_trailer`], whose offsets are relative to the start of the trailer.
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

type Result<T> = std::result::Result<T, TsfError>;

fn corrupt(offset: u64, reason: &'static str) -> TsfError {
    TsfError::Corrupt { offset, reason }
}

// ---------------------------------------------------------------------------
// Primitive helpers
// ---------------------------------------------------------------------------

fn zz(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzz(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bounds-checked reader over a slice; `base` is the absolute offset of `b[0]`.
struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Cur<'a> {
    fn new(b: &'a [u8], base: u64) -> Self {
        Cur { b, pos: 0, base }
    }
    fn off(&self) -> u64 {
        self.base.saturating_add(self.pos as u64)
    }
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(TsfError::Truncated {
                offset: self.off(),
                needed: n as u64,
                available: self.remaining() as u64,
            });
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn varint(&mut self) -> Result<u64> {
        let start = self.off();
        let mut v: u64 = 0;
        for i in 0..10u32 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err(corrupt(start, "varint overflows u64"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt(start, "varint longer than 10 bytes"))
    }
    /// Varint that must be `<= max`.
    fn varint_max(&mut self, field: &'static str, max: u64) -> Result<u64> {
        let offset = self.off();
        let v = self.varint()?;
        if v > max {
            return Err(TsfError::ValueOutOfRange {
                offset,
                field,
                found: v,
                max,
            });
        }
        Ok(v)
    }
    fn expect_end(&self, reason: &'static str) -> Result<()> {
        if self.remaining() != 0 {
            return Err(corrupt(self.off(), reason));
        }
        Ok(())
    }
}

/// MSB-first bit writer.
#[derive(Default)]
struct BitWriter {
    buf: Vec<u8>,
    /// Pending bits, right-aligned: the low `nbits` bits of `acc`.
    acc: u128,
    nbits: u32,
}

impl BitWriter {
    #[inline]
    fn write(&mut self, v: u64, n: u32) {
        debug_assert!(n <= 64);
        if n == 0 {
            return;
        }
        let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        self.acc = (self.acc << n) | u128::from(v & mask);
        self.nbits += n;
        if self.nbits >= 64 {
            self.nbits -= 64;
            let word = (self.acc >> self.nbits) as u64;
            self.buf.extend_from_slice(&word.to_be_bytes());
            self.acc &= (1u128 << self.nbits) - 1;
        }
    }
    fn finish(mut self) -> Vec<u8> {
        while self.nbits >= 8 {
            self.nbits -= 8;
            self.buf.push((self.acc >> self.nbits) as u8);
        }
        if self.nbits > 0 {
            self.buf.push((self.acc << (8 - self.nbits)) as u8);
        }
        self.buf
    }
}

/// MSB-first bit reader.
struct BitReader<'a> {
    b: &'a [u8],
    bit: u64,
    base: u64,
}

impl<'a> BitReader<'a> {
    fn new(b: &'a [u8], base: u64) -> Self {
        BitReader { b, bit: 0, base }
    }
    #[inline]
    fn read(&mut self, n: u32) -> Result<u64> {
        // Fast path: the n bits lie within 8 bytes that can be loaded whole.
        let byte = (self.bit / 8) as usize;
        let shift = (self.bit % 8) as u32;
        if n <= 56 && byte + 8 <= self.b.len() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.b[byte..byte + 8]);
            let word = u64::from_be_bytes(w) << shift;
            self.bit += u64::from(n);
            return Ok(if n == 0 { 0 } else { word >> (64 - n) });
        }
        let total = (self.b.len() as u64) * 8;
        if self.bit + u64::from(n) > total {
            return Err(TsfError::Truncated {
                offset: self.base.saturating_add(self.bit / 8),
                needed: u64::from(n).div_ceil(8),
                available: (total - self.bit) / 8,
            });
        }
        let mut v: u64 = 0;
        let mut need = n;
        while need > 0 {
            let byte = self.b[(self.bit / 8) as usize];
            let off = (self.bit % 8) as u32;
            let avail = 8 - off;
            let take = avail.min(need);
            let bits = (u64::from(byte) >> (avail - take)) & ((1u64 << take) - 1);
            v = if take == 64 { bits } else { (v << take) | bits };
            need -= take;
            self.bit += u64::from(take);
        }
        Ok(v)
    }
    fn expect_end(&self) -> Result<()> {
        if self.bit.div_ceil(8) != self.b.len() as u64 {
            return Err(corrupt(
                self.base.saturating_add(self.bit.div_ceil(8)),
                "trailing bytes after bit stream",
            ));
        }
        // The last byte's unused low bits are zero padding.
        let used = (self.bit % 8) as u32;
        if used != 0 && self.b[self.b.len() - 1] & (0xFFu8 >> used) != 0 {
            return Err(corrupt(
                self.base.saturating_add(self.b.len() as u64 - 1),
                "non-zero padding bits after bit stream",
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Timestamp encodings
// ---------------------------------------------------------------------------

/// How a timestamp encoding predicts each timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TsModel {
    /// Delta of delta (Gorilla).
    Dod,
    /// Delta minus the block's median delta `D`.
    Median,
    /// Steps and offset from a grid of pitch `D` that follows the points.
    Grid,
}

impl TsModel {
    fn of(enc: u8) -> Self {
        match enc {
            codec::TS_DELTA_BITS | codec::TS_DELTA_VARINT => TsModel::Median,
            codec::TS_GRID_BITS | codec::TS_GRID_VARINT => TsModel::Grid,
            _ => TsModel::Dod,
        }
    }
}

/// Residual codes for timestamps (excluding the first timestamp, which is the
/// block's `min_ts` from the footer). `scratch` is reused for the median.
/// Returns `false` (and leaves `out` unspecified) when the model cannot
/// encode these timestamps: only the grid can fail, when a code would not
/// fit 64 bits.
fn ts_codes(ts: &[i64], model: TsModel, scratch: &mut Vec<u64>, out: &mut Vec<u64>) -> bool {
    let d = match model {
        TsModel::Dod => 0,
        _ => median_delta(ts, scratch),
    };
    ts_codes_with(ts, model, d, out)
}

/// [`ts_codes`] with the block's median delta `d` already computed.
fn ts_codes_with(ts: &[i64], model: TsModel, d: i64, out: &mut Vec<u64>) -> bool {
    out.clear();
    match model {
        TsModel::Median => {
            out.push(zz(d));
            out.extend(
                ts.windows(2)
                    .map(|w| zz(w[1].wrapping_sub(w[0]).wrapping_sub(d))),
            );
            true
        }
        TsModel::Dod => {
            let mut prev = 0i64;
            out.extend(ts.windows(2).map(|w| {
                let delta = w[1].wrapping_sub(w[0]);
                let code = zz(delta.wrapping_sub(prev));
                prev = delta;
                code
            }));
            true
        }
        TsModel::Grid => grid_codes(ts, d, out),
    }
}

/// The lower median of the block's deltas taken as u64 (0 for one point).
fn median_delta(ts: &[i64], scratch: &mut Vec<u64>) -> i64 {
    if ts.len() < 2 {
        return 0;
    }
    scratch.clear();
    scratch.extend(ts.windows(2).map(|w| w[1].wrapping_sub(w[0]) as u64));
    let k = (scratch.len() - 1) / 2;
    *scratch.select_nth_unstable(k).1 as i64
}

/// Grid codes (see `docs/output-format.md`, ts_enc 5 and 6): the first code
/// is `zz(D)`; then, for each further timestamp, with `g` the grid point of
/// the previous one (`t[0]` for the first), `m` the number of grid steps to
/// the grid point nearest `t` and `j = t - (g + m*D)`, the code
/// `zz(m - 1) * D + zz(j)`. A regular point is code 0, a late or early
/// point a small code, a skipped interval `2*D`.
fn grid_codes(ts: &[i64], d: i64, out: &mut Vec<u64>) -> bool {
    if d < 1 {
        return false;
    }
    out.push(zz(d));
    if grid_fast(ts, d) {
        let mut g = GridFast::new(ts[0], d);
        out.extend(ts[1..].iter().map(|&t| g.code(t)));
        return true;
    }
    let dd = i128::from(d);
    let half = dd / 2;
    let mut g = i128::from(ts[0]);
    for &t in &ts[1..] {
        let diff = i128::from(t) - g;
        let m = (diff + half).div_euclid(dd);
        let j = diff - m * dd;
        let (Ok(m1), Ok(j)) = (i64::try_from(m - 1), i64::try_from(j)) else {
            return false;
        };
        let Some(code) = zz(m1)
            .checked_mul(d as u64)
            .and_then(|q| q.checked_add(zz(j)))
        else {
            return false;
        };
        out.push(code);
        g += m * dd;
    }
    true
}

/// Whether the grid codes of `ts` can be computed in (wrapping) i64
/// arithmetic: a pitch of at most 2^61 and every gap under 2^62, so that
/// every difference and code fits.
fn grid_fast(ts: &[i64], d: i64) -> bool {
    (1..=1 << 61).contains(&d)
        && ts
            .windows(2)
            .all(|w| w[1].checked_sub(w[0]).is_some_and(|x| x < 1 << 62))
}

/// The grid model in i64 arithmetic, valid when [`grid_fast`] holds. The
/// grid point may lie just outside i64 near its ends: it is kept modulo
/// 2^64, which the true differences fit.
struct GridFast {
    g: i64,
    d: i64,
    half: i64,
}

impl GridFast {
    fn new(t0: i64, d: i64) -> Self {
        GridFast {
            g: t0,
            d,
            half: d / 2,
        }
    }

    #[inline]
    fn code(&mut self, t: i64) -> u64 {
        let diff = t.wrapping_sub(self.g);
        // The common case, one step with a small offset, needs no division.
        let m = if diff >= self.d - self.half && diff < 2 * self.d - self.half {
            1
        } else {
            (diff + self.half).div_euclid(self.d)
        };
        let j = diff - m * self.d;
        self.g = self.g.wrapping_add(m * self.d);
        zz(m - 1) * self.d as u64 + zz(j)
    }
}

/// Bits of the bit packing and bytes of the varint packing, for a code of
/// bit width `w` (0..=64).
const CODE_COST: [(u8, u8); 65] = {
    let mut t = [(0u8, 0u8); 65];
    let mut w: usize = 0;
    while w <= 64 {
        let bits = match w {
            0 => 1,
            1..=6 => 8,
            7..=13 => 16,
            14..=20 => 24,
            21..=32 => 37,
            _ => 69,
        };
        let varint = if w == 0 { 1 } else { w.div_ceil(7) };
        t[w] = (bits as u8, varint as u8);
        w += 1;
    }
    t
};

/// The exact plain sizes of the six bit / varint timestamp encodings,
/// computed in one pass without writing codes: `[(bits, varint bytes)]`
/// for delta of delta, median delta and grid (`None` when the grid
/// cannot encode the block).
fn ts_costs(ts: &[i64], d: i64, codes: &mut Vec<u64>) -> [Option<(u64, usize)>; 3] {
    let mut bits = [0u64; 3];
    let mut varints = [0usize; 3];
    let mut add = |i: usize, z: u64| {
        let (b, v) = CODE_COST[(64 - z.leading_zeros()) as usize];
        bits[i] += u64::from(b);
        varints[i] += usize::from(v);
    };
    add(1, zz(d));
    let fast = grid_fast(ts, d);
    if fast {
        add(2, zz(d));
    }
    let mut grid = GridFast::new(ts[0], d.max(1));
    let mut prev = 0i64;
    for w in ts.windows(2) {
        let delta = w[1].wrapping_sub(w[0]);
        add(0, zz(delta.wrapping_sub(prev)));
        prev = delta;
        add(1, zz(delta.wrapping_sub(d)));
        if fast {
            add(2, grid.code(w[1]));
        }
    }
    let grid = if fast {
        Some((bits[2], varints[2]))
    } else {
        codes.clear();
        grid_codes(ts, d, codes).then(|| {
            codes.iter().fold((0u64, 0usize), |(b, v), &z| {
                let (cb, cv) = CODE_COST[(64 - z.leading_zeros()) as usize];
                (b + u64::from(cb), v + usize::from(cv))
            })
        })
    };
    [
        Some((bits[0], varints[0])),
        Some((bits[1], varints[1])),
        grid,
    ]
}

/// The bucket of the timestamp bit packing that holds `z`: its prefix
/// length, prefix bits and payload width.
#[inline]
fn bucket(z: u64) -> (u32, u64, u32) {
    const BUCKETS: [(u32, u64, u32); 6] = [
        (1, 0b0, 0),
        (2, 0b10, 6),
        (3, 0b110, 13),
        (4, 0b1110, 20),
        (5, 0b11110, 32),
        (5, 0b11111, 64),
    ];
    let width = 64 - z.leading_zeros();
    let i = match width {
        0 => 0,
        1..=6 => 1,
        7..=13 => 2,
        14..=20 => 3,
        21..=32 => 4,
        _ => 5,
    };
    BUCKETS[i]
}

#[inline]
fn pack_bucket(bw: &mut BitWriter, z: u64) {
    let (p, prefix, w) = bucket(z);
    if w <= 32 {
        bw.write((prefix << w) | z, p + w);
    } else {
        bw.write(prefix, p);
        bw.write(z, w);
    }
}

#[inline]
fn unpack_bucket(br: &mut BitReader<'_>) -> Result<u64> {
    const WIDTHS: [u32; 6] = [0, 6, 13, 20, 32, 64];
    let mut ones = 0usize;
    while ones < 5 && br.read(1)? == 1 {
        ones += 1;
    }
    br.read(WIDTHS[ones])
}

/// Whether a timestamp encoding packs its codes as bits (else varints).
fn ts_bits(enc: u8) -> bool {
    matches!(
        enc,
        codec::TS_DOD_BITS | codec::TS_DELTA_BITS | codec::TS_GRID_BITS
    )
}

/// Packs timestamp codes as bit buckets or varints into `out`.
fn pack_codes(bits: bool, codes: &[u64], out: &mut Vec<u8>) {
    out.clear();
    if bits {
        let mut bw = BitWriter {
            buf: std::mem::take(out),
            ..Default::default()
        };
        for &z in codes {
            pack_bucket(&mut bw, z);
        }
        *out = bw.finish();
    } else {
        for &z in codes {
            put_varint(out, z);
        }
    }
}

fn encode_ts(
    enc: u8,
    ts: &[i64],
    scratch: &mut Vec<u64>,
    codes: &mut Vec<u64>,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    if enc == codec::TS_RAW {
        for t in ts {
            out.extend_from_slice(&t.to_le_bytes());
        }
        return true;
    }
    if !ts_codes(ts, TsModel::of(enc), scratch, codes) {
        return false;
    }
    pack_codes(ts_bits(enc), codes, out);
    true
}

fn decode_ts(
    enc: u8,
    data: &[u8],
    n: usize,
    first: i64,
    base: u64,
    out: &mut Vec<i64>,
) -> Result<()> {
    if enc == codec::TS_RAW {
        if data.len() as u64 != (n as u64) * 8 {
            return Err(TsfError::CountMismatch {
                offset: base,
                what: "raw timestamp stream length",
                expected: (n as u64) * 8,
                found: data.len() as u64,
            });
        }
        out.extend(
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))),
        );
        return Ok(());
    }
    let model = TsModel::of(enc);
    let bits = ts_bits(enc);
    let mut br = BitReader::new(data, base);
    let mut cur = Cur::new(data, base);
    let mut next = |bits: bool| -> Result<u64> {
        if bits {
            unpack_bucket(&mut br)
        } else {
            cur.varint()
        }
    };
    let d = if model == TsModel::Dod {
        0
    } else {
        unzz(next(bits)?)
    };
    if model == TsModel::Grid && d < 1 {
        return Err(corrupt(base, "grid pitch below 1"));
    }
    let mut t = first;
    let mut g = first;
    let mut prev_delta = 0i64;
    out.push(t);
    for _ in 1..n {
        let code = next(bits)?;
        t = match model {
            TsModel::Dod => {
                prev_delta = prev_delta.wrapping_add(unzz(code));
                t.wrapping_add(prev_delta)
            }
            TsModel::Median => t.wrapping_add(d.wrapping_add(unzz(code))),
            TsModel::Grid => {
                let (q, r) = (code / d as u64, code % d as u64);
                let m = unzz(q).wrapping_add(1);
                g = g.wrapping_add(m.wrapping_mul(d));
                g.wrapping_add(unzz(r))
            }
        };
        out.push(t);
    }
    if bits {
        br.expect_end()
    } else {
        cur.expect_end("trailing bytes after timestamp varints")
    }
}

// ---------------------------------------------------------------------------
// Value encodings
// ---------------------------------------------------------------------------

fn gorilla_encode(vals: &[u64], out: &mut Vec<u8>) {
    let mut bw = BitWriter {
        buf: std::mem::take(out),
        ..Default::default()
    };
    if let Some((&first, rest)) = vals.split_first() {
        bw.write(first, 64);
        let mut prev = first;
        let mut win: Option<(u32, u32)> = None;
        for &v in rest {
            let x = v ^ prev;
            prev = v;
            if x == 0 {
                bw.write(0, 1);
                continue;
            }
            bw.write(1, 1);
            let lz = x.leading_zeros().min(31);
            let tz = x.trailing_zeros();
            if let Some((plz, ptz)) = win
                && lz >= plz
                && tz >= ptz
            {
                bw.write(0, 1);
                bw.write(x >> ptz, 64 - plz - ptz);
            } else {
                let sig = 64 - lz - tz;
                bw.write(1, 1);
                bw.write(u64::from(lz), 5);
                bw.write(u64::from(sig - 1), 6);
                bw.write(x >> tz, sig);
                win = Some((lz, tz));
            }
        }
    }
    *out = bw.finish();
}

fn gorilla_decode(data: &[u8], n: usize, base: u64, out: &mut Vec<u64>) -> Result<()> {
    let mut br = BitReader::new(data, base);
    if n == 0 {
        return br.expect_end();
    }
    let mut prev = br.read(64)?;
    out.push(prev);
    let mut win: Option<(u32, u32)> = None;
    for _ in 1..n {
        if br.read(1)? == 1 {
            let x = if br.read(1)? == 0 {
                let Some((plz, ptz)) = win else {
                    return Err(corrupt(base, "gorilla window reused before being set"));
                };
                br.read(64 - plz - ptz)? << ptz
            } else {
                let lz = br.read(5)? as u32;
                let sig = br.read(6)? as u32 + 1;
                if lz + sig > 64 {
                    return Err(corrupt(base, "gorilla window exceeds 64 bits"));
                }
                let tz = 64 - lz - sig;
                win = Some((lz, tz));
                br.read(sig)? << tz
            };
            prev ^= x;
        }
        out.push(prev);
    }
    br.expect_end()
}

fn shuffle_encode(words: impl ExactSizeIterator<Item = u64>, out: &mut Vec<u8>) {
    let n = words.len();
    out.clear();
    out.resize(n * 8, 0);
    for (i, w) in words.enumerate() {
        for (k, b) in w.to_le_bytes().into_iter().enumerate() {
            out[k * n + i] = b;
        }
    }
}

fn shuffle_decode(data: &[u8], n: usize, base: u64) -> Result<impl Iterator<Item = u64> + '_> {
    if data.len() as u64 != (n as u64) * 8 {
        return Err(TsfError::CountMismatch {
            offset: base,
            what: "shuffled value stream length",
            expected: (n as u64) * 8,
            found: data.len() as u64,
        });
    }
    Ok((0..n).map(move |i| {
        let mut b = [0u8; 8];
        for (k, byte) in b.iter_mut().enumerate() {
            *byte = data[k * n + i];
        }
        u64::from_le_bytes(b)
    }))
}

/// The parameters of a decimal value stream: `d` digits and divisor `q`;
/// a regular value is `(k / 10^d) / q` (`q = 1`: no division).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DecimalParams {
    d: u8,
    q: u8,
}

/// Flag in the decimal stream's first byte: a divisor byte follows.
const DECIMAL_DIVIDED: u8 = 0x80;

/// `Some(i)` if `f64::from_bits(v) == (i / 10^d) / q` bit for bit (no
/// division when `q == 1`), `|i| < 2^53`.
fn decimal_exact(v: u64, p: DecimalParams) -> Option<i64> {
    let f = f64::from_bits(v);
    if !f.is_finite() {
        return None;
    }
    let scale = POW10[usize::from(p.d)];
    let q = f64::from(p.q);
    let s = if p.q == 1 { f * scale } else { f * q * scale };
    if s.abs() >= TWO_POW_53 {
        return None;
    }
    // Round half away from zero without a libm call; the check below
    // decides whether `i` represents `v`.
    let i = if s.abs() >= TWO_POW_52 {
        s as i64 // already an integer
    } else {
        (s + 0.5f64.copysign(s)) as i64
    };
    (decimal_value(i, scale, p.q) == v).then_some(i)
}

/// The bits of regular decimal value `k`: `(k / scale) / q`.
#[inline]
fn decimal_value(k: i64, scale: f64, q: u8) -> u64 {
    let f = (k as f64) / scale;
    if q == 1 {
        f.to_bits()
    } else {
        (f / f64::from(q)).to_bits()
    }
}

/// Writes the decimal stream with parameters `p`; returns the number of
/// exceptions (values written as raw bits).
fn decimal_encode_with(vals: &[u64], p: DecimalParams, out: &mut Vec<u8>) -> usize {
    out.clear();
    if p.q == 1 {
        out.push(p.d);
    } else {
        out.push(p.d | DECIMAL_DIVIDED);
        out.push(p.q);
    }
    let mut prev = 0i64;
    let mut exceptions = 0;
    for &v in vals {
        match decimal_exact(v, p) {
            Some(i) => {
                put_varint(out, zz(i - prev) << 1);
                prev = i;
            }
            None => {
                out.push(1);
                out.extend_from_slice(&v.to_le_bytes());
                exceptions += 1;
            }
        }
    }
    exceptions
}

/// The smallest digit count at which `v` is regular with divisor `q`.
fn min_digits(v: u64, q: u8) -> Option<u8> {
    min_digits_upto(v, q, MAX_DECIMALS)
}

/// The smallest digit count up to `max` at which `v` is regular with
/// divisor `q`.
fn min_digits_upto(v: u64, q: u8, max: u8) -> Option<u8> {
    (0..=max).find(|&d| decimal_exact(v, DecimalParams { d, q }).is_some())
}

/// Most digits the writer tries with a divisor: more would rarely be
/// smaller than the XOR streams, and each try costs a division.
const MAX_DIVIDED_DIGITS: u8 = 6;

/// The digit count a block's decimal stream uses with divisor `q`: the
/// largest minimal digit count among the first [`DECIMAL_SAMPLE`] values
/// that have one (values that need more digits, or are not finite, become
/// exceptions). `None` when none of them is a short decimal.
fn decimal_digits(vals: &[u64], q: u8) -> Option<u8> {
    vals.iter()
        .take(DECIMAL_SAMPLE)
        .filter_map(|&v| min_digits(v, q))
        .max()
}

/// For blocks that are not short decimals: a divisor `q` in 2..=255 at
/// which the block's first [`DECIMAL_SAMPLE`] values are mostly short
/// decimals (at most [`MAX_DIVIDED_DIGITS`] digits) divided by `q` (rates
/// such as `count / 15` or `sum / 3`, written at full precision). A
/// divisor qualifies when the first finite non-zero sampled value and at
/// least three quarters of the sampled values are; the one at which most
/// sampled values are wins, then the one with the fewest digits, then the
/// smallest.
fn decimal_divisor(vals: &[u64]) -> Option<DecimalParams> {
    let sample = &vals[..vals.len().min(DECIMAL_SAMPLE)];
    let &first = sample.iter().find(|&&v| {
        let f = f64::from_bits(v);
        f.is_finite() && f != 0.0
    })?;
    // (regular sampled values, params)
    let mut best: Option<(usize, DecimalParams)> = None;
    for q in 2..=255u8 {
        let Some(d0) = min_digits_upto(first, q, MAX_DIVIDED_DIGITS) else {
            continue;
        };
        let mut regular = 0;
        let mut d = d0;
        for &v in sample {
            if let Some(dv) = min_digits_upto(v, q, MAX_DIVIDED_DIGITS) {
                regular += 1;
                d = d.max(dv);
            }
        }
        let better = best.is_none_or(|(r, b)| regular > r || (regular == r && d < b.d));
        if regular * 4 >= sample.len() * 3 && better {
            best = Some((regular, DecimalParams { d, q }));
            if regular == sample.len() && d == 0 {
                break;
            }
        }
    }
    best.map(|(_, p)| p)
}

/// Values sampled to choose the decimal digit count and divisor.
const DECIMAL_SAMPLE: usize = 16;

/// Writes the decimal stream (divisor 1); returns the number of exceptions.
fn decimal_encode(vals: &[u64], out: &mut Vec<u8>) -> usize {
    let d = decimal_digits(vals, 1).unwrap_or(0);
    decimal_encode_with(vals, DecimalParams { d, q: 1 }, out)
}

fn decimal_decode(data: &[u8], n: usize, base: u64, out: &mut Vec<u64>) -> Result<()> {
    let mut c = Cur::new(data, base);
    let b0 = c.u8()?;
    let d = b0 & !DECIMAL_DIVIDED;
    if d > MAX_DECIMALS {
        return Err(TsfError::ValueOutOfRange {
            offset: base,
            field: "decimal digits",
            found: u64::from(d),
            max: u64::from(MAX_DECIMALS),
        });
    }
    let q = if b0 & DECIMAL_DIVIDED != 0 {
        let off = c.off();
        let q = c.u8()?;
        if q < 2 {
            return Err(corrupt(off, "decimal divisor below 2"));
        }
        q
    } else {
        1
    };
    let scale = POW10[usize::from(d)];
    let mut prev = 0i64;
    for _ in 0..n {
        let off = c.off();
        let tok = c.varint()?;
        if tok & 1 == 0 {
            prev = prev.wrapping_add(unzz(tok >> 1));
            out.push(decimal_value(prev, scale, q));
        } else if tok == 1 {
            out.push(c.u64()?);
        } else {
            return Err(corrupt(off, "invalid decimal token"));
        }
    }
    c.expect_end("trailing bytes after decimal values")
}

fn encode_vals(enc: u8, vals: &[u64], out: &mut Vec<u8>) {
    out.clear();
    match enc {
        codec::VAL_RAW => {
            for v in vals {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        codec::VAL_GORILLA => gorilla_encode(vals, out),
        codec::VAL_XOR_SHUFFLE => {
            let xs = vals
                .iter()
                .scan(0u64, |p, &v| Some(v ^ std::mem::replace(p, v)));
            shuffle_encode(xs.collect::<Vec<_>>().into_iter(), out)
        }
        codec::VAL_DECIMAL => {
            decimal_encode(vals, out);
        }
        _ => {
            let ds = vals.iter().scan(0u64, |p, &v| {
                Some(zz(v.wrapping_sub(std::mem::replace(p, v)) as i64))
            });
            shuffle_encode(ds.collect::<Vec<_>>().into_iter(), out)
        }
    }
}

fn decode_vals(enc: u8, data: &[u8], n: usize, base: u64, out: &mut Vec<u64>) -> Result<()> {
    match enc {
        codec::VAL_RAW => {
            if data.len() as u64 != (n as u64) * 8 {
                return Err(TsfError::CountMismatch {
                    offset: base,
                    what: "raw value stream length",
                    expected: (n as u64) * 8,
                    found: data.len() as u64,
                });
            }
            out.extend(
                data.chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))),
            );
            Ok(())
        }
        codec::VAL_GORILLA => gorilla_decode(data, n, base, out),
        codec::VAL_XOR_SHUFFLE => {
            let mut prev = 0u64;
            out.extend(shuffle_decode(data, n, base)?.map(|x| {
                prev ^= x;
                prev
            }));
            Ok(())
        }
        codec::VAL_DECIMAL => decimal_decode(data, n, base, out),
        _ => {
            let mut prev = 0u64;
            out.extend(shuffle_decode(data, n, base)?.map(|z| {
                prev = prev.wrapping_add(unzz(z) as u64);
                prev
            }));
            Ok(())
        }
    }
}

/// Upper bound of any plain (uncompressed) stream for `n` points; used to
/// bound zstd decompression.
fn plain_stream_bound(n: usize) -> usize {
    16 * n + 64
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses a zstd section (at most the plain bound of `n` points) with
/// this thread's reused context.
fn unzstd(data: &[u8], n: usize, base: u64) -> Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        // Exactly one zstd frame: the decompressor would also take several
        // frames back to back, or skippable ones.
        if zstd::zstd_safe::find_frame_compressed_size(data) != Ok(data.len()) {
            return Err(corrupt(base, "section is not exactly one zstd frame"));
        }
        let d = slot.as_mut().expect("set above");
        d.decompress(data, plain_stream_bound(n))
            .map_err(|_| corrupt(base, "zstd decompression failed"))
    })
}

// ---------------------------------------------------------------------------
// Blocks
// ---------------------------------------------------------------------------

/// One block as described by the footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEntry {
    /// Absolute file offset of the block's first byte (its codec byte).
    pub offset: u64,
    /// Length of the block in bytes.
    pub len: u64,
    pub n_points: u32,
    /// First (smallest) timestamp of the block.
    pub min_ts: i64,
    /// Last (largest) timestamp of the block.
    pub max_ts: i64,
    /// CRC32C (Castagnoli) over the block's `len` bytes.
    pub crc: u32,
    /// Codec byte (also the first byte of the block).
    pub codec: u8,
}

impl BlockEntry {
    pub fn byte_range(&self) -> Range<u64> {
        self.offset..self.offset.saturating_add(self.len)
    }
}

struct Encoder {
    comp: zstd::bulk::Compressor<'static>,
    codes: Vec<u64>,
    scratch: Vec<u64>,
    plain: Vec<u8>,
    zbuf: Vec<u8>,
    tsec: Vec<u8>,
    vsec: Vec<u8>,
}

impl Encoder {
    fn new(level: i32) -> Result<Self> {
        let mut comp = zstd::bulk::Compressor::new(level)?;
        comp.include_checksum(false)?;
        comp.include_contentsize(true)?;
        comp.include_dictid(false)?;
        Ok(Encoder {
            comp,
            codes: Vec::new(),
            scratch: Vec::new(),
            plain: Vec::new(),
            zbuf: Vec::new(),
            tsec: Vec::new(),
            vsec: Vec::new(),
        })
    }

    /// zstd-compresses `self.plain` into `self.zbuf`.
    fn compress_plain(&mut self) -> Result<()> {
        self.zbuf.clear();
        self.zbuf
            .reserve(zstd_safe::compress_bound(self.plain.len()));
        self.comp.compress_to_buffer(&self.plain, &mut self.zbuf)?;
        Ok(())
    }

    /// Section for one stream: plain or zstd depending on `zstd`.
    #[cfg(test)]
    fn section(&mut self, zstd: bool) -> Result<Vec<u8>> {
        if zstd {
            self.compress_plain()?;
            Ok(self.zbuf.clone())
        } else {
            Ok(self.plain.clone())
        }
    }

    /// Encode with an explicit (known) codec byte; used by tests. `None`
    /// when the timestamp encoding cannot represent these timestamps.
    #[cfg(test)]
    fn encode_with(&mut self, c: u8, ts: &[i64], vals: &[u64]) -> Result<Option<Vec<u8>>> {
        if !encode_ts(
            c & 0x07,
            ts,
            &mut self.scratch,
            &mut self.codes,
            &mut self.plain,
        ) {
            return Ok(None);
        }
        let tsec = self.section(c & codec::TS_ZSTD != 0)?;
        encode_vals(c & 0x70, vals, &mut self.plain);
        let vsec = self.section(c & codec::VAL_ZSTD != 0)?;
        Ok(Some(assemble(c, &tsec, &vsec)))
    }

    /// Encode choosing a small codec, deterministically (a pure function of
    /// the block). Not every codec is tried; zstd runs at most three times
    /// per block:
    ///
    /// * timestamps: the plain sizes of the six bit and varint encodings
    ///   are computed from their codes, the smallest is written, then zstd
    ///   over it is kept if smaller (when it is over 64 bytes);
    /// * values: the decimal stream (divisor 1, else the best small divisor);
    ///   when at most a quarter of the values
    ///   are exceptions, it plain or under zstd; otherwise also Gorilla and
    ///   the byte-shuffled XOR stream under zstd; raw when nothing is
    ///   smaller than 8 bytes a value.
    ///
    /// Ties go to the first candidate in that order.
    fn encode_best(&mut self, ts: &[i64], vals: &[u64]) -> Result<(u8, Vec<u8>)> {
        let len_cost = |n: usize| varint_len(n as u64) + n;
        // (encoding, plain length, model; None = raw)
        let mut best: (u8, usize, Option<TsModel>) = (codec::TS_RAW, ts.len() * 8, None);
        let d = median_delta(ts, &mut self.scratch);
        let costs = ts_costs(ts, d, &mut self.codes);
        for ((model, bits_enc, varint_enc), cost) in [
            (TsModel::Dod, codec::TS_DOD_BITS, codec::TS_DOD_VARINT),
            (
                TsModel::Median,
                codec::TS_DELTA_BITS,
                codec::TS_DELTA_VARINT,
            ),
            (TsModel::Grid, codec::TS_GRID_BITS, codec::TS_GRID_VARINT),
        ]
        .into_iter()
        .zip(costs)
        {
            let Some((bits, varints)) = cost else {
                continue;
            };
            for (enc, n) in [(bits_enc, bits.div_ceil(8) as usize), (varint_enc, varints)] {
                if len_cost(n) < len_cost(best.1) {
                    best = (enc, n, Some(model));
                }
            }
        }
        match best.2 {
            None => {
                encode_ts(
                    codec::TS_RAW,
                    ts,
                    &mut self.scratch,
                    &mut self.codes,
                    &mut self.plain,
                );
            }
            Some(model) => {
                let dm = if model == TsModel::Dod { 0 } else { d };
                let ok = ts_codes_with(ts, model, dm, &mut self.codes);
                debug_assert!(ok);
                pack_codes(ts_bits(best.0), &self.codes, &mut self.plain);
            }
        }
        debug_assert_eq!(self.plain.len(), best.1);
        let mut tc = best.0;
        self.tsec.clear();
        self.tsec.extend_from_slice(&self.plain);
        if self.plain.len() > ZSTD_MIN_INPUT {
            self.compress_plain()?;
            if len_cost(self.zbuf.len()) < len_cost(self.tsec.len()) {
                tc |= codec::TS_ZSTD;
                std::mem::swap(&mut self.tsec, &mut self.zbuf);
            }
        }

        // Values. `vsec` holds the best candidate so far, `vc` its codec.
        // Mostly short decimals (at most a quarter exceptions): the decimal
        // stream, plain or zstd; the XOR streams rarely beat it there.
        // Short decimals first (divisor 1). When there are none, too many
        // exceptions, or many digits (any double near 16 is a 14-digit
        // decimal), also short decimals divided by a small integer (rates
        // written at full precision); the smaller plain stream wins.
        let mut decimal = false;
        let d1 = decimal_digits(vals, 1);
        if let Some(d) = d1 {
            let p = DecimalParams { d, q: 1 };
            decimal = decimal_encode_with(vals, p, &mut self.plain) * 4 <= vals.len();
        }
        if (!decimal || d1.is_some_and(|d| d > MAX_DIVIDED_DIGITS))
            && let Some(p) = decimal_divisor(vals)
        {
            let exceptions = decimal_encode_with(vals, p, &mut self.zbuf);
            if exceptions * 4 <= vals.len() && (!decimal || self.zbuf.len() < self.plain.len()) {
                std::mem::swap(&mut self.plain, &mut self.zbuf);
                decimal = true;
            }
        }
        let mut vc = codec::VAL_RAW;
        self.vsec.clear();
        if decimal {
            vc = codec::VAL_DECIMAL;
            self.vsec.extend_from_slice(&self.plain);
            if self.plain.len() > ZSTD_MIN_INPUT {
                self.compress_plain()?;
                if self.zbuf.len() < self.vsec.len() {
                    vc = codec::VAL_DECIMAL | codec::VAL_ZSTD;
                    std::mem::swap(&mut self.vsec, &mut self.zbuf);
                }
            }
        }
        // Not decimals, or decimals with many digits (over 4 bytes a
        // value): Gorilla, and the byte-shuffled XOR stream under zstd.
        if !decimal || self.vsec.len() > vals.len() * 4 {
            encode_vals(codec::VAL_GORILLA, vals, &mut self.plain);
            if !decimal || self.plain.len() < self.vsec.len() {
                vc = codec::VAL_GORILLA;
                std::mem::swap(&mut self.vsec, &mut self.plain);
            }
            if vals.len() * 8 > ZSTD_MIN_INPUT {
                encode_vals(codec::VAL_XOR_SHUFFLE, vals, &mut self.plain);
                self.compress_plain()?;
                if self.zbuf.len() < self.vsec.len() {
                    vc = codec::VAL_XOR_SHUFFLE | codec::VAL_ZSTD;
                    std::mem::swap(&mut self.vsec, &mut self.zbuf);
                }
            }
        }
        if self.vsec.len() > vals.len() * 8 {
            vc = codec::VAL_RAW;
            encode_vals(codec::VAL_RAW, vals, &mut self.vsec);
        }
        let c = tc | vc;
        Ok((c, assemble(c, &self.tsec, &self.vsec)))
    }
}

/// Streams this small are never worth a zstd frame.
const ZSTD_MIN_INPUT: usize = 64;

fn assemble(c: u8, tsec: &[u8], vsec: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(1 + 10 + tsec.len() + vsec.len());
    b.push(c);
    put_varint(&mut b, tsec.len() as u64);
    b.extend_from_slice(tsec);
    b.extend_from_slice(vsec);
    b
}

/// Checks that a section (a block, the footer) has its expected length and
/// CRC32C; `offset` is where it starts in the file.
fn check_section(
    bytes: &[u8],
    offset: u64,
    len: u64,
    crc: u32,
    what_len: &'static str,
    what: &'static str,
) -> Result<()> {
    if (bytes.len() as u64) < len {
        return Err(TsfError::Truncated {
            offset,
            needed: len,
            available: bytes.len() as u64,
        });
    }
    if bytes.len() as u64 != len {
        return Err(TsfError::CountMismatch {
            offset,
            what: what_len,
            expected: len,
            found: bytes.len() as u64,
        });
    }
    let actual = crc32c::crc32c(bytes);
    if actual != crc {
        return Err(TsfError::ChecksumMismatch {
            what,
            offset,
            expected: crc,
            actual,
        });
    }
    Ok(())
}

/// Decode one block, appending its points to `ts_out` / `val_out`.
///
/// Checks, in order: length, CRC32C, codec byte (known and equal to the
/// footer's), stream lengths and point count, strictly increasing timestamps
/// and `min_ts` / `max_ts`. On error the output vectors are left as they were.
pub fn decode_block(
    entry: &BlockEntry,
    block_bytes: &[u8],
    ts_out: &mut Vec<i64>,
    val_out: &mut Vec<u64>,
) -> Result<()> {
    let (ts_len0, val_len0) = (ts_out.len(), val_out.len());
    let r = decode_block_inner(entry, block_bytes, ts_out, val_out);
    if r.is_err() {
        ts_out.truncate(ts_len0);
        val_out.truncate(val_len0);
    }
    r
}

fn decode_block_inner(
    entry: &BlockEntry,
    bytes: &[u8],
    ts_out: &mut Vec<i64>,
    val_out: &mut Vec<u64>,
) -> Result<()> {
    let off = entry.offset;
    check_section(bytes, off, entry.len, entry.crc, "block length", "block")?;
    let n = entry.n_points as usize;
    if n == 0 || n > MAX_BLOCK_POINTS {
        return Err(TsfError::ValueOutOfRange {
            offset: off,
            field: "block n_points",
            found: n as u64,
            max: MAX_BLOCK_POINTS as u64,
        });
    }
    let mut c = Cur::new(bytes, off);
    let cb = c.u8()?;
    if !codec::is_known(cb) {
        return Err(TsfError::UnknownCodec {
            offset: off,
            codec: cb,
        });
    }
    if cb != entry.codec {
        return Err(TsfError::CodecMismatch {
            offset: off,
            expected: entry.codec,
            found: cb,
        });
    }
    let ts_len = c.varint_max("timestamp section length", c.remaining() as u64)? as usize;
    let ts_off = c.off();
    let ts_sec = c.bytes(ts_len)?;
    let val_off = c.off();
    let val_sec = c.bytes(c.remaining())?;

    let ts_plain;
    let ts_data = if cb & codec::TS_ZSTD != 0 {
        ts_plain = unzstd(ts_sec, n, ts_off)?;
        &ts_plain[..]
    } else {
        ts_sec
    };
    let start = ts_out.len();
    decode_ts(cb & 0x07, ts_data, n, entry.min_ts, ts_off, ts_out)?;
    let got = &ts_out[start..];
    if got.len() != n {
        return Err(TsfError::CountMismatch {
            offset: ts_off,
            what: "timestamp count",
            expected: n as u64,
            found: got.len() as u64,
        });
    }
    if got[0] != entry.min_ts || got[n - 1] != entry.max_ts {
        return Err(corrupt(
            ts_off,
            "block timestamps disagree with footer min/max",
        ));
    }
    if let Some(i) = got.windows(2).position(|w| w[1] <= w[0]) {
        return Err(TsfError::NonIncreasingTimestamp {
            index: i + 1,
            prev: got[i],
            found: got[i + 1],
        });
    }

    let val_plain;
    let val_data = if cb & codec::VAL_ZSTD != 0 {
        val_plain = unzstd(val_sec, n, val_off)?;
        &val_plain[..]
    } else {
        val_sec
    };
    let vstart = val_out.len();
    decode_vals(cb & 0x70, val_data, n, val_off, val_out)?;
    if val_out.len() - vstart != n {
        return Err(TsfError::CountMismatch {
            offset: val_off,
            what: "value count",
            expected: n as u64,
            found: (val_out.len() - vstart) as u64,
        });
    }
    Ok(())
}

/// The `len` bytes of a block inside a whole file, checked to be there.
pub fn block_bytes<'a>(file: &'a [u8], entry: &BlockEntry) -> Result<&'a [u8]> {
    let end = entry
        .offset
        .checked_add(entry.len)
        .filter(|&e| e <= file.len() as u64);
    match end {
        Some(end) => Ok(&file[entry.offset as usize..end as usize]),
        None => Err(TsfError::Truncated {
            offset: entry.offset,
            needed: entry.len,
            available: (file.len() as u64).saturating_sub(entry.offset),
        }),
    }
}

/// The lengths of a block's timestamp and value sections (as stored, so
/// compressed when the codec says zstd), after checking its CRC.
pub fn block_sections(entry: &BlockEntry, bytes: &[u8]) -> Result<(usize, usize)> {
    check_section(
        bytes,
        entry.offset,
        entry.len,
        entry.crc,
        "block length",
        "block",
    )?;
    let mut c = Cur::new(bytes, entry.offset);
    c.u8()?;
    let ts_len = c.varint_max("timestamp section length", c.remaining() as u64)? as usize;
    Ok((ts_len, c.remaining() - ts_len))
}

// ---------------------------------------------------------------------------
// Header / trailer
// ---------------------------------------------------------------------------

/// Parsed 16-byte file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub flags: u16,
}

fn encode_header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    // flags (10..12) = 0
    let crc = crc32c::crc32c(&h[..12]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Parse the header from the first bytes of a file (at least [`HEADER_LEN`]).
pub fn parse_header(bytes: &[u8]) -> Result<Header> {
    let mut c = Cur::new(bytes, 0);
    let magic = c.array::<8>()?;
    if &magic != MAGIC {
        return Err(TsfError::BadMagic {
            offset: 0,
            found: magic,
        });
    }
    let version = c.u16()?;
    if version != VERSION {
        return Err(TsfError::UnsupportedVersion {
            offset: 8,
            found: version,
        });
    }
    let flags = c.u16()?;
    let stored = c.u32()?;
    let actual = crc32c::crc32c(&bytes[..12]);
    if stored != actual {
        return Err(TsfError::ChecksumMismatch {
            what: "header",
            offset: 12,
            expected: stored,
            actual,
        });
    }
    if flags != 0 {
        return Err(TsfError::UnsupportedFlags {
            offset: 10,
            found: flags,
        });
    }
    Ok(Header { version, flags })
}

/// Parsed fixed-size trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub footer_offset: u64,
    pub footer_len: u64,
    pub series_count: u64,
    pub point_count: u64,
    pub footer_crc: u32,
    pub version: u16,
    pub flags: u16,
}

fn encode_trailer(t: &Trailer) -> [u8; TRAILER_LEN] {
    let mut b = [0u8; TRAILER_LEN];
    b[0..8].copy_from_slice(&t.footer_offset.to_le_bytes());
    b[8..16].copy_from_slice(&t.footer_len.to_le_bytes());
    b[16..24].copy_from_slice(&t.series_count.to_le_bytes());
    b[24..32].copy_from_slice(&t.point_count.to_le_bytes());
    b[32..36].copy_from_slice(&t.footer_crc.to_le_bytes());
    b[36..38].copy_from_slice(&t.version.to_le_bytes());
    b[38..40].copy_from_slice(&t.flags.to_le_bytes());
    let crc = crc32c::crc32c(&b[..40]);
    b[40..44].copy_from_slice(&crc.to_le_bytes());
    b[44..52].copy_from_slice(MAGIC);
    b
}

/// Parse the trailer from the last [`TRAILER_LEN`] bytes of `bytes` (any
/// longer tail of the file is accepted). Error offsets are relative to the
/// start of the trailer.
pub fn parse_trailer(bytes: &[u8]) -> Result<Trailer> {
    if bytes.len() < TRAILER_LEN {
        return Err(TsfError::Truncated {
            offset: 0,
            needed: TRAILER_LEN as u64,
            available: bytes.len() as u64,
        });
    }
    let b = &bytes[bytes.len() - TRAILER_LEN..];
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&b[44..52]);
    if &magic != MAGIC {
        return Err(TsfError::BadMagic {
            offset: 44,
            found: magic,
        });
    }
    let mut c = Cur::new(b, 0);
    let footer_offset = c.u64()?;
    let footer_len = c.u64()?;
    let series_count = c.u64()?;
    let point_count = c.u64()?;
    let footer_crc = c.u32()?;
    let version = c.u16()?;
    let flags = c.u16()?;
    let stored = c.u32()?;
    if version != VERSION {
        return Err(TsfError::UnsupportedVersion {
            offset: 36,
            found: version,
        });
    }
    let actual = crc32c::crc32c(&b[..40]);
    if stored != actual {
        return Err(TsfError::ChecksumMismatch {
            what: "trailer",
            offset: 40,
            expected: stored,
            actual,
        });
    }
    if flags != 0 {
        return Err(TsfError::UnsupportedFlags {
            offset: 38,
            found: flags,
        });
    }
    Ok(Trailer {
        footer_offset,
        footer_len,
        series_count,
        point_count,
        footer_crc,
        version,
        flags,
    })
}

// ---------------------------------------------------------------------------
// Footer
// ---------------------------------------------------------------------------

/// One series as described by the footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesEntry {
    pub org_id: u64,
    pub metric_id: u64,
    pub kind: u8,
    pub interval_s: u32,
    pub metadata: String,
    pub n_points: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub blocks: Vec<BlockEntry>,
}

impl SeriesEntry {
    /// Byte range covering all of the series' blocks (they are contiguous).
    pub fn byte_range(&self) -> Range<u64> {
        match (self.blocks.first(), self.blocks.last()) {
            (Some(f), Some(l)) => f.offset..l.offset.saturating_add(l.len),
            _ => 0..0,
        }
    }
}

/// The parsed footer index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    series: Vec<SeriesEntry>,
}

// Smallest possible encodings, used to bound counts before allocating.
const MIN_SERIES_RECORD: usize = 1 + 1 + 1 + 1 + 1 + 1; // ids, kind, interval, meta len, block count
const MIN_BLOCK_RECORD: usize = 1 + 1 + 1 + 1 + 1 + 4; // codec, len, n, ts, span, crc

impl Footer {
    /// Parse and verify the footer. `bytes` must be exactly the footer
    /// (`trailer.footer_len` bytes starting at `trailer.footer_offset`).
    pub fn parse(bytes: &[u8], trailer: &Trailer) -> Result<Footer> {
        let fo = trailer.footer_offset;
        check_section(
            bytes,
            fo,
            trailer.footer_len,
            trailer.footer_crc,
            "footer length",
            "footer",
        )?;
        let mut c = Cur::new(bytes, fo);
        let cnt_off = c.off();
        let count = c.varint()?;
        if count != trailer.series_count {
            return Err(TsfError::CountMismatch {
                offset: cnt_off,
                what: "series count",
                expected: trailer.series_count,
                found: count,
            });
        }
        let max_series = (c.remaining() / MIN_SERIES_RECORD) as u64;
        if count > max_series {
            return Err(TsfError::ValueOutOfRange {
                offset: cnt_off,
                field: "series count",
                found: count,
                max: max_series,
            });
        }
        let mut series = Vec::with_capacity(count as usize);
        let mut next_offset = HEADER_LEN as u64;
        let mut total_points: u64 = 0;
        let mut prev_key: Option<(u64, u64)> = None;
        for _ in 0..count {
            let rec_off = c.off();
            let org_id = c.varint()?;
            let metric_id = c.varint()?;
            if let Some((po, pm)) = prev_key
                && (org_id, metric_id) <= (po, pm)
            {
                return Err(TsfError::OutOfOrderSeries {
                    prev_org_id: po,
                    prev_metric_id: pm,
                    org_id,
                    metric_id,
                });
            }
            prev_key = Some((org_id, metric_id));
            let koff = c.off();
            let kind = c.u8()?;
            if kind > MAX_KIND {
                return Err(TsfError::ValueOutOfRange {
                    offset: koff,
                    field: "kind",
                    found: u64::from(kind),
                    max: u64::from(MAX_KIND),
                });
            }
            let interval_s = c.varint_max("interval_s", u64::from(u32::MAX))? as u32;
            let mlen = c.varint_max("metadata length", MAX_METADATA_LEN as u64)? as usize;
            let moff = c.off();
            let meta = c.bytes(mlen)?;
            let metadata = std::str::from_utf8(meta)
                .map_err(|_| TsfError::InvalidUtf8 { offset: moff })?
                .to_owned();
            let max_blocks = (c.remaining() / MIN_BLOCK_RECORD) as u64;
            let nblocks = c.varint_max("block count", max_blocks)?;
            if nblocks == 0 {
                return Err(corrupt(rec_off, "series without blocks"));
            }
            let mut blocks = Vec::with_capacity(nblocks as usize);
            let mut prev_max: Option<i64> = None;
            let mut n_points: u64 = 0;
            for _ in 0..nblocks {
                let boff = c.off();
                // A reserved codec is not an error here: only that block is
                // unreadable (decode_block says so), the rest of the file is.
                let cb = c.u8()?;
                let len = c.varint_max("block length", fo.saturating_sub(next_offset))?;
                if len == 0 {
                    return Err(corrupt(boff, "empty block"));
                }
                let n = c.varint_max("block n_points", MAX_BLOCK_POINTS as u64)?;
                if n == 0 {
                    return Err(corrupt(boff, "block without points"));
                }
                let toff = c.off();
                let min_ts = match prev_max {
                    None => unzz(c.varint()?),
                    Some(pm) => {
                        let gap = c.varint()?;
                        if gap == 0 {
                            return Err(corrupt(toff, "block overlaps previous block"));
                        }
                        pm.checked_add_unsigned(gap)
                            .ok_or(corrupt(toff, "block min_ts overflows i64"))?
                    }
                };
                let span = c.varint()?;
                if span < n - 1 {
                    return Err(corrupt(toff, "block time span too small for its points"));
                }
                let max_ts = min_ts
                    .checked_add_unsigned(span)
                    .ok_or(corrupt(toff, "block max_ts overflows i64"))?;
                let crc = c.u32()?;
                blocks.push(BlockEntry {
                    offset: next_offset,
                    len,
                    n_points: n as u32,
                    min_ts,
                    max_ts,
                    crc,
                    codec: cb,
                });
                next_offset += len;
                n_points += n;
                prev_max = Some(max_ts);
            }
            total_points = total_points.saturating_add(n_points);
            let (min_ts, max_ts) = (blocks[0].min_ts, blocks[blocks.len() - 1].max_ts);
            series.push(SeriesEntry {
                org_id,
                metric_id,
                kind,
                interval_s,
                metadata,
                n_points,
                min_ts,
                max_ts,
                blocks,
            });
        }
        c.expect_end("trailing bytes in footer")?;
        if next_offset != fo {
            return Err(TsfError::CountMismatch {
                offset: fo,
                what: "end of block data",
                expected: fo,
                found: next_offset,
            });
        }
        if total_points != trailer.point_count {
            return Err(TsfError::CountMismatch {
                offset: fo,
                what: "point count",
                expected: trailer.point_count,
                found: total_points,
            });
        }
        Ok(Footer { series })
    }

    /// All series, sorted by `(org_id, metric_id)`.
    pub fn series(&self) -> &[SeriesEntry] {
        &self.series
    }

    /// Binary search for one series.
    pub fn find(&self, org_id: u64, metric_id: u64) -> Option<&SeriesEntry> {
        self.series
            .binary_search_by(|s| (s.org_id, s.metric_id).cmp(&(org_id, metric_id)))
            .ok()
            .map(|i| &self.series[i])
    }
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

/// Writer options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// Maximum points per block, `1..=MAX_BLOCK_POINTS` (default 4096).
    pub block_points: usize,
    /// zstd level used for zstd candidates, `-7..=22` (default 3).
    pub zstd_level: i32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            block_points: DEFAULT_BLOCK_POINTS,
            zstd_level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

/// Header of one series passed to [`FileWriter::add_series`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesHeader<'a> {
    pub org_id: u64,
    pub metric_id: u64,
    pub kind: u8,
    pub interval_s: u32,
    pub metadata: &'a str,
}

/// Returned by [`FileWriter::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSummary {
    /// Total file size in bytes.
    pub bytes: u64,
    pub series: u64,
    pub points: u64,
    /// CRC32C of the whole file.
    pub crc32c: u32,
}

/// Streaming writer. Blocks are written as soon as a series is added; the
/// footer is kept in memory and written by [`FileWriter::finish`].
pub struct FileWriter<W: Write> {
    w: W,
    opts: WriterOptions,
    pos: u64,
    crc: u32,
    footer_body: Vec<u8>,
    series: u64,
    points: u64,
    last_key: Option<(u64, u64)>,
    poisoned: bool,
    enc: Encoder,
}

impl<W: Write> FileWriter<W> {
    /// Validate options and write the 16-byte header.
    pub fn new(w: W, opts: WriterOptions) -> Result<Self> {
        if opts.block_points == 0 || opts.block_points > MAX_BLOCK_POINTS {
            return Err(TsfError::InvalidOptions {
                reason: "block_points must be in 1..=65536",
            });
        }
        if !(-7..=22).contains(&opts.zstd_level) {
            return Err(TsfError::InvalidOptions {
                reason: "zstd_level must be in -7..=22",
            });
        }
        let mut fw = FileWriter {
            w,
            opts,
            pos: 0,
            crc: 0,
            footer_body: Vec::new(),
            series: 0,
            points: 0,
            last_key: None,
            poisoned: false,
            enc: Encoder::new(opts.zstd_level)?,
        };
        fw.write_raw(&encode_header())?;
        Ok(fw)
    }

    fn write_raw(&mut self, b: &[u8]) -> Result<()> {
        if let Err(e) = self.w.write_all(b) {
            self.poisoned = true;
            return Err(e.into());
        }
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Append one series. Validation errors leave the writer usable; I/O
    /// errors poison it.
    pub fn add_series(&mut self, h: &SeriesHeader<'_>, ts: &[i64], values: &[u64]) -> Result<()> {
        if self.poisoned {
            return Err(TsfError::WriterPoisoned);
        }
        self.check_header(h)?;
        check_points(h, ts, values)?;
        let encoded = match encode_blocks(&mut self.enc, self.opts.block_points, ts, values) {
            Ok(e) => e,
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        };
        self.append(h, encoded)
    }

    /// Append a series encoded by [`encode_series`] (possibly on another
    /// thread). The bytes are the same as [`Self::add_series`] would write.
    pub fn add_encoded(&mut self, h: &SeriesHeader<'_>, encoded: EncodedSeries) -> Result<()> {
        if self.poisoned {
            return Err(TsfError::WriterPoisoned);
        }
        if encoded.block_points != self.opts.block_points {
            return Err(TsfError::InvalidOptions {
                reason: "series encoded with another block_points",
            });
        }
        self.check_header(h)?;
        self.append(h, encoded)
    }

    fn check_header(&self, h: &SeriesHeader<'_>) -> Result<()> {
        if h.kind > MAX_KIND {
            return Err(TsfError::InvalidKind { found: h.kind });
        }
        if h.metadata.len() > MAX_METADATA_LEN {
            return Err(TsfError::MetadataTooLong {
                len: h.metadata.len(),
                max: MAX_METADATA_LEN,
            });
        }
        if let Some((po, pm)) = self.last_key
            && (h.org_id, h.metric_id) <= (po, pm)
        {
            return Err(TsfError::OutOfOrderSeries {
                prev_org_id: po,
                prev_metric_id: pm,
                org_id: h.org_id,
                metric_id: h.metric_id,
            });
        }
        Ok(())
    }

    fn append(&mut self, h: &SeriesHeader<'_>, encoded: EncodedSeries) -> Result<()> {
        let mut rec = Vec::with_capacity(32 + h.metadata.len() + 16 * encoded.blocks.len());
        put_varint(&mut rec, h.org_id);
        put_varint(&mut rec, h.metric_id);
        rec.push(h.kind);
        put_varint(&mut rec, u64::from(h.interval_s));
        put_varint(&mut rec, h.metadata.len() as u64);
        rec.extend_from_slice(h.metadata.as_bytes());
        put_varint(&mut rec, encoded.blocks.len() as u64);
        let mut prev_max: Option<i64> = None;
        for b in &encoded.blocks {
            self.write_raw(&b.bytes)?;
            rec.push(b.codec);
            put_varint(&mut rec, b.bytes.len() as u64);
            put_varint(&mut rec, u64::from(b.n_points));
            match prev_max {
                None => put_varint(&mut rec, zz(b.min_ts)),
                Some(pm) => put_varint(&mut rec, b.min_ts.wrapping_sub(pm) as u64),
            }
            put_varint(&mut rec, b.max_ts.wrapping_sub(b.min_ts) as u64);
            rec.extend_from_slice(&crc32c::crc32c(&b.bytes).to_le_bytes());
            prev_max = Some(b.max_ts);
        }
        self.footer_body.extend_from_slice(&rec);
        self.series += 1;
        self.points += encoded.points;
        self.last_key = Some((h.org_id, h.metric_id));
        Ok(())
    }

    /// Bytes written to the underlying writer so far (header + blocks).
    pub fn bytes_written(&self) -> u64 {
        self.pos
    }

    /// Exact size the file would have if [`FileWriter::finish`] were called now.
    pub fn estimated_final_size(&self) -> u64 {
        self.pos
            + varint_len(self.series) as u64
            + self.footer_body.len() as u64
            + TRAILER_LEN as u64
    }

    pub fn series_count(&self) -> u64 {
        self.series
    }

    pub fn point_count(&self) -> u64 {
        self.points
    }

    /// Write footer and trailer, flush, and return the inner writer.
    pub fn finish(mut self) -> Result<(W, FileSummary)> {
        if self.poisoned {
            return Err(TsfError::WriterPoisoned);
        }
        let mut footer = Vec::with_capacity(10 + self.footer_body.len());
        put_varint(&mut footer, self.series);
        footer.extend_from_slice(&self.footer_body);
        let trailer = Trailer {
            footer_offset: self.pos,
            footer_len: footer.len() as u64,
            series_count: self.series,
            point_count: self.points,
            footer_crc: crc32c::crc32c(&footer),
            version: VERSION,
            flags: 0,
        };
        self.write_raw(&footer)?;
        self.write_raw(&encode_trailer(&trailer))?;
        self.w.flush()?;
        let summary = FileSummary {
            bytes: self.pos,
            series: self.series,
            points: self.points,
            crc32c: self.crc,
        };
        Ok((self.w, summary))
    }
}

/// One encoded block of a series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBlock {
    pub codec: u8,
    pub bytes: Vec<u8>,
    pub n_points: u32,
    pub min_ts: i64,
    pub max_ts: i64,
}

/// A series' blocks, encoded and ready for [`FileWriter::add_encoded`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSeries {
    pub block_points: usize,
    pub points: u64,
    pub blocks: Vec<EncodedBlock>,
}

fn check_points(h: &SeriesHeader<'_>, ts: &[i64], values: &[u64]) -> Result<()> {
    if ts.len() != values.len() {
        return Err(TsfError::LengthMismatch {
            timestamps: ts.len(),
            values: values.len(),
        });
    }
    if ts.is_empty() {
        return Err(TsfError::EmptySeries {
            org_id: h.org_id,
            metric_id: h.metric_id,
        });
    }
    if let Some(i) = ts.windows(2).position(|w| w[1] <= w[0]) {
        return Err(TsfError::NonIncreasingTimestamp {
            index: i + 1,
            prev: ts[i],
            found: ts[i + 1],
        });
    }
    Ok(())
}

fn encode_blocks(
    enc: &mut Encoder,
    bp: usize,
    ts: &[i64],
    values: &[u64],
) -> Result<EncodedSeries> {
    let mut blocks = Vec::with_capacity(ts.len().div_ceil(bp));
    for (bts, bvals) in ts.chunks(bp).zip(values.chunks(bp)) {
        let (codec, bytes) = enc.encode_best(bts, bvals)?;
        blocks.push(EncodedBlock {
            codec,
            bytes,
            n_points: bts.len() as u32,
            min_ts: bts[0],
            max_ts: bts[bts.len() - 1],
        });
    }
    Ok(EncodedSeries {
        block_points: bp,
        points: ts.len() as u64,
        blocks,
    })
}

thread_local! {
    static ENCODERS: std::cell::RefCell<Vec<(i32, Encoder)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encodes a series' points into blocks, as [`FileWriter::add_series`]
/// would, without a writer: a pure function of its inputs, so series can be
/// encoded on many threads and appended in order. Each thread keeps its own
/// zstd context per level.
pub fn encode_series(
    opts: &WriterOptions,
    h: &SeriesHeader<'_>,
    ts: &[i64],
    values: &[u64],
) -> Result<EncodedSeries> {
    if opts.block_points == 0 || opts.block_points > MAX_BLOCK_POINTS {
        return Err(TsfError::InvalidOptions {
            reason: "block_points must be in 1..=65536",
        });
    }
    check_points(h, ts, values)?;
    ENCODERS.with(|cell| {
        let mut encs = cell.borrow_mut();
        let i = match encs.iter().position(|(l, _)| *l == opts.zstd_level) {
            Some(i) => i,
            None => {
                encs.push((opts.zstd_level, Encoder::new(opts.zstd_level)?));
                encs.len() - 1
            }
        };
        encode_blocks(&mut encs[i].1, opts.block_points, ts, values)
    })
}

// ---------------------------------------------------------------------------
// Whole-file reader
// ---------------------------------------------------------------------------

/// Convenience reader over a complete file in memory.
#[derive(Debug, Clone)]
pub struct FileReader<'a> {
    bytes: &'a [u8],
    header: Header,
    trailer: Trailer,
    footer: Footer,
}

impl<'a> FileReader<'a> {
    /// Parse header, trailer and footer (all checksums verified).
    pub fn open(bytes: &'a [u8]) -> Result<Self> {
        let min = (HEADER_LEN + TRAILER_LEN) as u64;
        if (bytes.len() as u64) < min {
            return Err(TsfError::Truncated {
                offset: 0,
                needed: min,
                available: bytes.len() as u64,
            });
        }
        let header = parse_header(bytes)?;
        let tstart = (bytes.len() - TRAILER_LEN) as u64;
        let trailer = parse_trailer(bytes).map_err(|e| match e {
            TsfError::BadMagic { offset, found } => TsfError::BadMagic {
                offset: offset + tstart,
                found,
            },
            TsfError::UnsupportedVersion { offset, found } => TsfError::UnsupportedVersion {
                offset: offset + tstart,
                found,
            },
            other => other,
        })?;
        let fend = trailer.footer_offset.checked_add(trailer.footer_len);
        if trailer.footer_offset < HEADER_LEN as u64 || fend != Some(tstart) {
            return Err(TsfError::CountMismatch {
                offset: tstart,
                what: "footer end",
                expected: tstart,
                found: fend.unwrap_or(u64::MAX),
            });
        }
        let fb = &bytes[trailer.footer_offset as usize..tstart as usize];
        let footer = Footer::parse(fb, &trailer)?;
        Ok(FileReader {
            bytes,
            header,
            trailer,
            footer,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn trailer(&self) -> &Trailer {
        &self.trailer
    }

    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    pub fn find(&self, org_id: u64, metric_id: u64) -> Option<&SeriesEntry> {
        self.footer.find(org_id, metric_id)
    }

    /// Decode all points of one series.
    pub fn read_series(&self, entry: &SeriesEntry) -> Result<(Vec<i64>, Vec<u64>)> {
        let cap = entry.n_points.min(self.bytes.len() as u64) as usize;
        let mut ts = Vec::with_capacity(cap);
        let mut vals = Vec::with_capacity(cap);
        self.read_series_into(entry, &mut ts, &mut vals)?;
        Ok((ts, vals))
    }

    /// Like [`Self::read_series`], appending into caller-owned buffers so a
    /// reader walking many series reuses them.
    pub fn read_series_into(
        &self,
        entry: &SeriesEntry,
        ts: &mut Vec<i64>,
        vals: &mut Vec<u64>,
    ) -> Result<()> {
        for b in &entry.blocks {
            decode_block(b, block_bytes(self.bytes, b)?, ts, vals)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zstd_section_is_exactly_one_frame() {
        let one = zstd::bulk::compress(&[1u8; 64], 3).unwrap();
        assert_eq!(unzstd(&one, 8, 0).unwrap(), vec![1u8; 64]);
        let two = [one.as_slice(), one.as_slice()].concat();
        let skippable = [one.as_slice(), &[0x50, 0x2A, 0x4D, 0x18, 0, 0, 0, 0]].concat();
        for (what, bad) in [("two frames", two), ("a skippable frame after", skippable)] {
            let e = unzstd(&bad, 16, 100).unwrap_err().to_string();
            assert!(e.contains("not exactly one zstd frame"), "{what}: {e}");
        }
    }

    #[test]
    fn a_bit_stream_ends_with_zero_padding() {
        let mut r = BitReader::new(&[0b1010_0000], 0);
        assert_eq!(r.read(3).unwrap(), 0b101);
        r.expect_end().unwrap();
        let mut r = BitReader::new(&[0b1010_0001], 40);
        r.read(3).unwrap();
        let e = r.expect_end().unwrap_err().to_string();
        assert!(e.contains("padding") && e.contains("40"), "{e}");
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn f64(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        /// Approximately normal(0,1).
        fn normal(&mut self) -> f64 {
            (0..12).map(|_| self.f64()).sum::<f64>() - 6.0
        }
    }

    type Series = (u64, u64, u8, u32, String, Vec<i64>, Vec<u64>);

    fn write_file(series: &[Series], opts: WriterOptions) -> (Vec<u8>, FileSummary) {
        let mut w = FileWriter::new(Vec::new(), opts).unwrap();
        for (o, m, k, iv, meta, ts, vs) in series {
            let h = SeriesHeader {
                org_id: *o,
                metric_id: *m,
                kind: *k,
                interval_s: *iv,
                metadata: meta,
            };
            w.add_series(&h, ts, vs).unwrap();
        }
        let (bytes, s) = w.finish().unwrap();
        assert_eq!(s.bytes, bytes.len() as u64);
        (bytes, s)
    }

    fn special_values() -> Vec<u64> {
        vec![
            f64::NAN.to_bits(),
            0x7ff0_0000_0000_0001, // signalling NaN with payload
            0xfff8_dead_beef_0001, // negative quiet NaN with payload
            (-0.0f64).to_bits(),
            0.0f64.to_bits(),
            f64::INFINITY.to_bits(),
            f64::NEG_INFINITY.to_bits(),
            f64::MIN_POSITIVE.to_bits() - 1, // largest subnormal
            1,                               // smallest subnormal
            f64::MAX.to_bits(),
            f64::MIN.to_bits(),
            u64::MAX,
            0.1f64.to_bits(),
            (-1.5f64).to_bits(),
        ]
    }

    fn random_series(rng: &mut Rng, n: usize) -> (Vec<i64>, Vec<u64>) {
        let style = rng.below(7);
        let q = [3u8, 7, 15, 60][rng.below(4) as usize];
        let mut ts = Vec::with_capacity(n);
        let mut t: i64 = match rng.below(4) {
            0 => i64::MIN + rng.below(1000) as i64,
            1 => -(rng.below(1 << 40) as i64),
            _ => 1_700_000_000_000 + rng.below(1 << 30) as i64,
        };
        let step = [10_000i64, 15_000, 60_000, 1][rng.below(4) as usize];
        for _ in 0..n {
            ts.push(t);
            let inc = match rng.below(20) {
                0 => 1 + rng.below(1 << 40) as i64, // huge gap
                1 => 1 + rng.below(1000) as i64,
                _ => step + rng.below(50) as i64,
            };
            t = match t.checked_add(inc) {
                Some(x) => x,
                None => break,
            };
        }
        if rng.below(10) == 0 && ts.first().is_some_and(|&f| f >= 0) {
            // End exactly at i64::MAX.
            let shift = i64::MAX - *ts.last().unwrap();
            for x in &mut ts {
                *x += shift;
            }
        }
        let n = ts.len();
        let specials = special_values();
        let mut v = 100.0f64;
        let vals = (0..n)
            .map(|i| match style {
                0 => rng.next(),
                1 => {
                    v += rng.normal();
                    v.to_bits()
                }
                2 => ((i as u64 / 3) as f64).to_bits(),
                3 => specials[rng.below(specials.len() as u64) as usize],
                4 => 42.5f64.to_bits(),
                // A rate: a short decimal divided by a small integer.
                5 => {
                    v += rng.normal();
                    ((v * 100.0).round() / 100.0 / f64::from(q)).to_bits()
                }
                _ => {
                    if rng.below(10) == 0 {
                        specials[rng.below(specials.len() as u64) as usize]
                    } else {
                        v += rng.normal();
                        ((v * 100.0).round() / 100.0).to_bits()
                    }
                }
            })
            .collect();
        (ts, vals)
    }

    fn random_file(seed: u64, nseries: usize) -> Vec<Series> {
        let mut rng = Rng(seed);
        let mut out = Vec::new();
        let mut org = rng.below(5);
        let mut metric = 0;
        for _ in 0..nseries {
            if rng.below(3) == 0 {
                org += 1 + rng.below(1 << 20);
                metric = rng.below(10);
            } else {
                metric += 1 + rng.below(1000);
            }
            let n = match rng.below(5) {
                0 => 1,
                1 => 2 + rng.below(10) as usize,
                2 => 5000 + rng.below(3000) as usize,
                _ => 10 + rng.below(500) as usize,
            };
            let (ts, vs) = random_series(&mut rng, n);
            let meta = "x".repeat(rng.below(40) as usize) + "é";
            out.push((
                org,
                metric,
                rng.below(3) as u8,
                rng.below(100) as u32,
                meta,
                ts,
                vs,
            ));
        }
        out
    }

    fn check_roundtrip(series: &[Series], bytes: &[u8]) {
        let r = FileReader::open(bytes).unwrap();
        assert_eq!(r.footer().series().len(), series.len());
        for (o, m, k, iv, meta, ts, vs) in series {
            let e = r.find(*o, *m).expect("series present");
            assert_eq!((e.kind, e.interval_s, &e.metadata), (*k, *iv, meta));
            assert_eq!(e.n_points, ts.len() as u64);
            assert_eq!((e.min_ts, e.max_ts), (ts[0], ts[ts.len() - 1]));
            let (rts, rvs) = r.read_series(e).unwrap();
            assert_eq!(&rts, ts);
            assert_eq!(&rvs, vs);
        }
    }

    #[test]
    fn roundtrip_random_files() {
        for seed in 0..6 {
            let series = random_file(seed, 40);
            let opts = WriterOptions {
                block_points: [4096, 1000, 7][seed as usize % 3],
                zstd_level: 3,
            };
            let (bytes, s) = write_file(&series, opts);
            assert_eq!(s.series, series.len() as u64);
            assert_eq!(s.crc32c, crc32c::crc32c(&bytes));
            check_roundtrip(&series, &bytes);
        }
    }

    #[test]
    fn roundtrip_extremes() {
        let sp = special_values();
        let ts_extreme = vec![i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
        let series: Vec<Series> = vec![
            (
                0,
                0,
                0,
                0,
                String::new(),
                vec![i64::MIN],
                vec![(-0.0f64).to_bits()],
            ),
            (
                0,
                1,
                1,
                u32::MAX,
                "m".into(),
                vec![i64::MAX],
                vec![0x7ff0_0000_0000_0001],
            ),
            (
                0,
                2,
                2,
                10,
                "z".repeat(MAX_METADATA_LEN),
                vec![i64::MIN, i64::MAX],
                vec![1, 2],
            ),
            (
                u64::MAX,
                u64::MAX - 1,
                0,
                1,
                "ü".into(),
                ts_extreme.clone(),
                sp[..ts_extreme.len()].to_vec(),
            ),
            (
                u64::MAX,
                u64::MAX,
                0,
                1,
                String::new(),
                (0..sp.len() as i64).collect(),
                sp.clone(),
            ),
        ];
        for bp in [1, 2, 3, 4096] {
            let opts = WriterOptions {
                block_points: bp,
                ..Default::default()
            };
            let (bytes, _) = write_file(&series, opts);
            check_roundtrip(&series, &bytes);
        }
    }

    #[test]
    fn every_codec_roundtrips() {
        let mut rng = Rng(7);
        let mut enc = Encoder::new(3).unwrap();
        let mut inputs: Vec<(Vec<i64>, Vec<u64>)> = (0..8)
            .map(|i| random_series(&mut rng, [1, 2, 3, 100, 1000, 50, 7, 4096][i]))
            .collect();
        inputs.push((vec![i64::MIN, 0, i64::MAX], special_values()[..3].to_vec()));
        let mut count = 0;
        let mut grid_refused = 0;
        for c in 0..=255u8 {
            if !codec::is_known(c) {
                continue;
            }
            count += 1;
            for (ts, vs) in &inputs {
                let Some(block) = enc.encode_with(c, ts, vs).unwrap() else {
                    // Only the grid can refuse (a code over 64 bits).
                    assert!(matches!(c & 7, codec::TS_GRID_BITS | codec::TS_GRID_VARINT));
                    grid_refused += 1;
                    continue;
                };
                let entry = BlockEntry {
                    offset: 0,
                    len: block.len() as u64,
                    n_points: ts.len() as u32,
                    min_ts: ts[0],
                    max_ts: ts[ts.len() - 1],
                    crc: crc32c::crc32c(&block),
                    codec: c,
                };
                let (mut rt, mut rv) = (Vec::new(), Vec::new());
                decode_block(&entry, &block, &mut rt, &mut rv)
                    .unwrap_or_else(|e| panic!("codec {c:#04x}: {e}"));
                assert_eq!(&rt, ts, "codec {c:#04x}");
                assert_eq!(&rv, vs, "codec {c:#04x}");
            }
        }
        assert_eq!(count, 140);
        // The grid refuses at most the block that spans all of i64.
        assert!(grid_refused <= 40, "{grid_refused}");
    }

    #[test]
    fn grid_timestamps_cost_one_code_per_late_point() {
        // A 10 s grid with one late point and one skipped interval.
        let mut ts: Vec<i64> = (0..100).map(|k| 1_700_000_000_000 + k * 10_000).collect();
        ts[40] += 437;
        ts.remove(70);
        let mut codes = Vec::new();
        assert!(ts_codes(&ts, TsModel::Grid, &mut Vec::new(), &mut codes));
        let nonzero: Vec<u64> = codes[1..].iter().copied().filter(|&c| c != 0).collect();
        assert_eq!(codes[0], zz(10_000));
        assert_eq!(nonzero, vec![zz(437), zz(1) * 10_000]);
        // Delta of delta needs three codes for the late point, two for the gap.
        ts_codes(&ts, TsModel::Dod, &mut Vec::new(), &mut codes);
        assert_eq!(codes[1..].iter().filter(|&&c| c != 0).count(), 5);
        // Round trip through both packings, and the extremes.
        let mut enc = Encoder::new(3).unwrap();
        for ts in [
            ts.clone(),
            vec![i64::MIN, i64::MIN + 1, 0, i64::MAX - 1, i64::MAX],
            vec![i64::MIN, -5, i64::MAX],
            vec![-3, -2, 7, 8, 1 << 62],
        ] {
            let vals = vec![0u64; ts.len()];
            for c in [codec::TS_GRID_BITS, codec::TS_GRID_VARINT] {
                let Some(block) = enc.encode_with(c, &ts, &vals).unwrap() else {
                    continue;
                };
                let entry = BlockEntry {
                    offset: 0,
                    len: block.len() as u64,
                    n_points: ts.len() as u32,
                    min_ts: ts[0],
                    max_ts: ts[ts.len() - 1],
                    crc: crc32c::crc32c(&block),
                    codec: c,
                };
                let (mut rt, mut rv) = (Vec::new(), Vec::new());
                decode_block(&entry, &block, &mut rt, &mut rv).unwrap();
                assert_eq!(rt, ts);
            }
        }
    }

    #[test]
    fn timestamp_costs_are_the_packed_sizes() {
        let mut rng = Rng(11);
        let mut inputs: Vec<Vec<i64>> = (0..200)
            .map(|i| random_series(&mut rng, [1, 2, 3, 17, 300, 4096][i % 6]).0)
            .collect();
        inputs.push(vec![i64::MIN, i64::MIN + 1, 0, i64::MAX - 1, i64::MAX]);
        inputs.push(vec![i64::MIN, -5, i64::MAX]);
        inputs.push(vec![i64::MAX - 3, i64::MAX]);
        let (mut scratch, mut codes, mut out) = (Vec::new(), Vec::new(), Vec::new());
        for ts in &inputs {
            let d = median_delta(ts, &mut scratch);
            let costs = ts_costs(ts, d, &mut codes);
            for (i, model) in [TsModel::Dod, TsModel::Median, TsModel::Grid]
                .into_iter()
                .enumerate()
            {
                let ok = ts_codes(ts, model, &mut scratch, &mut codes);
                assert_eq!(ok, costs[i].is_some(), "{model:?}");
                let Some((bits, varints)) = costs[i] else {
                    continue;
                };
                pack_codes(true, &codes, &mut out);
                assert_eq!(out.len() as u64, bits.div_ceil(8), "{model:?} bits {ts:?}");
                pack_codes(false, &codes, &mut out);
                assert_eq!(out.len(), varints, "{model:?} varints");
            }
        }
    }

    #[test]
    fn mostly_decimal_blocks_keep_the_decimal_stream() {
        // One special value in eight: still a decimal block, the specials
        // are exceptions.
        let ts: Vec<i64> = (0..512).map(|k| k * 1000).collect();
        let vals: Vec<u64> = (0..512)
            .map(|k| match k % 8 {
                0 => f64::NAN.to_bits() | k as u64,
                _ => (100.0 + (k % 97) as f64 / 100.0).to_bits(),
            })
            .collect();
        let mut enc = Encoder::new(3).unwrap();
        let (c, _) = enc.encode_best(&ts, &vals).unwrap();
        assert_eq!(c & 0x70, codec::VAL_DECIMAL, "codec {c:#04x}");
    }

    #[test]
    fn rates_that_are_decimals_divided_by_a_small_integer_use_the_divided_stream() {
        let ts: Vec<i64> = (0..2048).map(|k| k * 15_000).collect();
        for q in [3u8, 7, 15, 60] {
            let vals: Vec<u64> = (0..2048)
                .map(|k| {
                    let gauge = (5000 + (k * 37) % 1999) as f64 / 100.0;
                    (gauge / f64::from(q)).to_bits()
                })
                .collect();
            // Mostly not short decimals themselves.
            let p1 = DecimalParams {
                d: decimal_digits(&vals, 1).unwrap_or(0),
                q: 1,
            };
            assert!(decimal_encode_with(&vals, p1, &mut Vec::new()) * 4 > vals.len());
            let mut enc = Encoder::new(3).unwrap();
            let (c, block) = enc.encode_best(&ts, &vals).unwrap();
            assert_eq!(c & 0x70, codec::VAL_DECIMAL, "q {q}: codec {c:#04x}");
            assert!(block.len() < vals.len() * 2, "q {q}: {} bytes", block.len());
            let series = vec![(1, 2, 0, 15, String::new(), ts.clone(), vals)];
            let (bytes, _) = write_file(&series, WriterOptions::default());
            check_roundtrip(&series, &bytes);
        }
    }

    #[test]
    fn divided_decimal_stream_decodes_and_rejects_bad_headers() {
        // d = 2, q = 3: 1234 -> (12.34 / 3), then +1 -> (12.35 / 3), then an
        // exception (NaN bits).
        let nan = f64::NAN.to_bits() | 5;
        let mut data = vec![0x82, 3];
        put_varint(&mut data, zz(1234) << 1);
        put_varint(&mut data, zz(1) << 1);
        data.push(1);
        data.extend_from_slice(&nan.to_le_bytes());
        let mut out = Vec::new();
        decimal_decode(&data, 3, 0, &mut out).unwrap();
        assert_eq!(
            out,
            [(12.34f64 / 3.0).to_bits(), (12.35f64 / 3.0).to_bits(), nan]
        );
        // A divisor below 2 and digits over 15 are corrupt.
        for bad in [
            vec![0x82u8, 1, 0],
            vec![0x82, 0, 0],
            vec![0x90, 0],
            vec![0xa0, 3, 0],
        ] {
            let mut out = Vec::new();
            assert!(decimal_decode(&bad, 1, 0, &mut out).is_err(), "{bad:02x?}");
        }
        // The writer's stream for the same values round-trips.
        let vals = [out_of(12.34 / 3.0), out_of(12.35 / 3.0), nan];
        let p = DecimalParams { d: 2, q: 3 };
        let mut enc = Vec::new();
        assert_eq!(decimal_encode_with(&vals, p, &mut enc), 1);
        assert_eq!(enc, data);
    }

    fn out_of(f: f64) -> u64 {
        f.to_bits()
    }

    /// The worked example of docs/output-format.md, byte for byte.
    #[test]
    fn golden_worked_example() {
        let mut w = FileWriter::new(Vec::new(), WriterOptions::default()).unwrap();
        let h = SeriesHeader {
            org_id: 1,
            metric_id: 2,
            kind: 0,
            interval_s: 10,
            metadata: "",
        };
        let ts = [1_700_000_000_000, 1_700_000_010_000, 1_700_000_020_000];
        let vs = [1f64.to_bits(), 2f64.to_bits(), 3f64.to_bits()];
        w.add_series(&h, &ts, &vs).unwrap();
        let (b, s) = w.finish().unwrap();
        let expected: [u8; 101] = [
            0x89, 0x54, 0x53, 0x46, 0x0d, 0x0a, 0x1a, 0x0a, 0x01, 0x00, 0x00, 0x00, 0xd1, 0x6b,
            0x9b, 0x88, // header
            0x31, 0x04, 0xe0, 0x4e, 0x20, 0x00, 0x00, 0x04, 0x04, 0x04, // block
            0x01, 0x01, 0x02, 0x00, 0x0a, 0x00, 0x01, 0x31, 0x0a, 0x03, 0x80, 0xa0, 0xab, 0xfe,
            0xf9, 0x62, 0xa0, 0x9c, 0x01, 0xdb, 0x5f, 0x31, 0x95, // footer
            0x1a, 0, 0, 0, 0, 0, 0, 0, 0x17, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0,
            0, 0, 0, 0, 0, 0xa1, 0x3d, 0xd2, 0x97, 1, 0, 0, 0, 0x9e, 0xb4, 0x37, 0xf6, 0x89, 0x54,
            0x53, 0x46, 0x0d, 0x0a, 0x1a, 0x0a, // trailer
        ];
        assert_eq!(b, expected);
        assert_eq!(s.crc32c, crc32c::crc32c(&expected));
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn determinism() {
        let series = random_file(99, 30);
        let (a, sa) = write_file(&series, WriterOptions::default());
        let (b, sb) = write_file(&series, WriterOptions::default());
        assert_eq!(a, b);
        assert_eq!(sa, sb);
    }

    #[test]
    fn find_binary_search() {
        let series = random_file(5, 60);
        let (bytes, _) = write_file(&series, WriterOptions::default());
        let r = FileReader::open(&bytes).unwrap();
        for (o, m, ..) in &series {
            let e = r.find(*o, *m).unwrap();
            assert_eq!((e.org_id, e.metric_id), (*o, *m));
            let range = e.byte_range();
            assert_eq!(range.start, e.blocks[0].offset);
        }
        let (o, m, ..) = &series[3];
        assert!(r.find(*o, m + 1).is_none() || series.iter().any(|s| s.0 == *o && s.1 == m + 1));
        assert!(r.find(u64::MAX, u64::MAX).is_none());
        // Manual path: trailer -> footer -> find -> blocks only.
        let t = parse_trailer(&bytes[bytes.len() - TRAILER_LEN..]).unwrap();
        let fb = &bytes[t.footer_offset as usize..(t.footer_offset + t.footer_len) as usize];
        let f = Footer::parse(fb, &t).unwrap();
        let (o, m, _, _, _, ts, vs) = &series[series.len() / 2];
        let e = f.find(*o, *m).unwrap();
        let range = e.byte_range();
        let region = &bytes[range.start as usize..range.end as usize];
        let (mut rt, mut rv) = (Vec::new(), Vec::new());
        for b in &e.blocks {
            let s = (b.offset - range.start) as usize;
            decode_block(b, &region[s..s + b.len as usize], &mut rt, &mut rv).unwrap();
        }
        assert_eq!((&rt, &rv), (ts, vs));
    }

    #[test]
    fn writer_rejects_bad_input() {
        let mut w = FileWriter::new(Vec::new(), WriterOptions::default()).unwrap();
        let h = |o, m| SeriesHeader {
            org_id: o,
            metric_id: m,
            kind: 0,
            interval_s: 10,
            metadata: "",
        };
        w.add_series(&h(1, 5), &[1, 2], &[0, 0]).unwrap();
        assert!(matches!(
            w.add_series(&h(1, 5), &[1], &[0]),
            Err(TsfError::OutOfOrderSeries {
                prev_org_id: 1,
                prev_metric_id: 5,
                org_id: 1,
                metric_id: 5
            })
        ));
        assert!(matches!(
            w.add_series(&h(0, 9), &[1], &[0]),
            Err(TsfError::OutOfOrderSeries { .. })
        ));
        assert!(matches!(
            w.add_series(&h(1, 6), &[1, 3, 3], &[0, 0, 0]),
            Err(TsfError::NonIncreasingTimestamp {
                index: 2,
                prev: 3,
                found: 3
            })
        ));
        assert!(matches!(
            w.add_series(&h(1, 6), &[5, 4], &[0, 0]),
            Err(TsfError::NonIncreasingTimestamp {
                index: 1,
                prev: 5,
                found: 4
            })
        ));
        assert!(matches!(
            w.add_series(&h(1, 6), &[1], &[0, 0]),
            Err(TsfError::LengthMismatch {
                timestamps: 1,
                values: 2
            })
        ));
        assert!(matches!(
            w.add_series(&h(1, 6), &[], &[]),
            Err(TsfError::EmptySeries { .. })
        ));
        let mut bad = h(1, 6);
        bad.kind = 3;
        assert!(matches!(
            w.add_series(&bad, &[1], &[0]),
            Err(TsfError::InvalidKind { found: 3 })
        ));
        let long = "a".repeat(MAX_METADATA_LEN + 1);
        let mut bad = h(1, 6);
        bad.metadata = &long;
        assert!(matches!(
            w.add_series(&bad, &[1], &[0]),
            Err(TsfError::MetadataTooLong { .. })
        ));
        // Still usable after validation errors.
        w.add_series(&h(1, 6), &[1], &[0]).unwrap();
        let before = w.estimated_final_size();
        let (bytes, s) = w.finish().unwrap();
        assert_eq!(before, bytes.len() as u64);
        assert_eq!(s.series, 2);
        assert!(matches!(
            FileWriter::new(
                Vec::new(),
                WriterOptions {
                    block_points: 0,
                    zstd_level: 3
                }
            ),
            Err(TsfError::InvalidOptions { .. })
        ));
    }

    #[test]
    fn size_cap_estimate_is_exact() {
        let series = random_file(3, 20);
        let mut w = FileWriter::new(Vec::new(), WriterOptions::default()).unwrap();
        for (o, m, k, iv, meta, ts, vs) in &series {
            let h = SeriesHeader {
                org_id: *o,
                metric_id: *m,
                kind: *k,
                interval_s: *iv,
                metadata: meta,
            };
            w.add_series(&h, ts, vs).unwrap();
            assert!(w.bytes_written() < w.estimated_final_size());
        }
        let est = w.estimated_final_size();
        let (bytes, _) = w.finish().unwrap();
        assert_eq!(est, bytes.len() as u64);
    }

    fn small_file() -> (Vec<Series>, Vec<u8>) {
        let mut rng = Rng(11);
        let (ts, vs) = random_series(&mut rng, 300);
        let series = vec![(1, 2, 0, 10, "meta".to_string(), ts, vs)];
        let (bytes, _) = write_file(&series, WriterOptions::default());
        (series, bytes)
    }

    fn read_all(bytes: &[u8]) -> Result<usize> {
        let r = FileReader::open(bytes)?;
        let mut n = 0;
        for e in r.footer().series() {
            n += r.read_series(e)?.0.len();
        }
        Ok(n)
    }

    #[test]
    fn corrupt_block_byte_is_checksum_mismatch() {
        let (_, mut bytes) = small_file();
        bytes[HEADER_LEN + 3] ^= 0x40;
        match read_all(&bytes) {
            Err(TsfError::ChecksumMismatch {
                what: "block",
                offset,
                ..
            }) => {
                assert_eq!(offset, HEADER_LEN as u64)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn corrupt_footer_and_header() {
        let (_, bytes) = small_file();
        let t = parse_trailer(&bytes).unwrap();
        let mut b = bytes.clone();
        b[t.footer_offset as usize + 1] ^= 1;
        assert!(matches!(
            FileReader::open(&b),
            Err(TsfError::ChecksumMismatch { what: "footer", .. })
        ));
        let mut b = bytes.clone();
        b[3] = b'X';
        assert!(matches!(
            FileReader::open(&b),
            Err(TsfError::BadMagic { offset: 0, .. })
        ));
        let mut b = bytes.clone();
        let l = b.len();
        b[l - 1] = 0;
        assert!(matches!(
            parse_trailer(&b),
            Err(TsfError::BadMagic { offset: 44, .. })
        ));
        let mut b = bytes.clone();
        b[l - TRAILER_LEN + 1] ^= 1;
        assert!(matches!(
            parse_trailer(&b),
            Err(TsfError::ChecksumMismatch {
                what: "trailer",
                ..
            })
        ));
    }

    #[test]
    fn unknown_version() {
        let (_, bytes) = small_file();
        let mut b = bytes.clone();
        b[8..10].copy_from_slice(&2u16.to_le_bytes());
        assert!(matches!(
            parse_header(&b),
            Err(TsfError::UnsupportedVersion {
                offset: 8,
                found: 2
            })
        ));
        assert!(matches!(
            FileReader::open(&b),
            Err(TsfError::UnsupportedVersion { found: 2, .. })
        ));
        let mut b = bytes.clone();
        let l = b.len();
        b[l - 16..l - 14].copy_from_slice(&7u16.to_le_bytes());
        assert!(matches!(
            parse_trailer(&b),
            Err(TsfError::UnsupportedVersion {
                offset: 36,
                found: 7
            })
        ));
    }

    #[test]
    fn truncated_file() {
        let (_, bytes) = small_file();
        assert!(matches!(
            FileReader::open(&bytes[..10]),
            Err(TsfError::Truncated {
                offset: 0,
                needed: 68,
                available: 10
            })
        ));
        assert!(matches!(
            parse_trailer(&bytes[..20]),
            Err(TsfError::Truncated {
                needed: 52,
                available: 20,
                ..
            })
        ));
        assert!(matches!(
            parse_header(&bytes[..12]),
            Err(TsfError::Truncated { .. })
        ));
        // Block slice shorter than the footer says.
        let r = FileReader::open(&bytes).unwrap();
        let b = &r.footer().series()[0].blocks[0];
        let s = b.offset as usize;
        let (mut t, mut v) = (Vec::new(), Vec::new());
        assert!(matches!(
            decode_block(b, &bytes[s..s + b.len as usize - 1], &mut t, &mut v),
            Err(TsfError::Truncated { .. })
        ));
        // Cutting the file anywhere must fail cleanly.
        for cut in 0..bytes.len() {
            assert!(read_all(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn unknown_codec() {
        // Build a block whose codec byte is undefined, with valid CRC.
        let (_, bytes) = small_file();
        let r = FileReader::open(&bytes).unwrap();
        let mut e = r.footer().series()[0].blocks[0].clone();
        let mut block = bytes[e.offset as usize..(e.offset + e.len) as usize].to_vec();
        block[0] = 0x07; // ts encoding 7 is reserved
        e.crc = crc32c::crc32c(&block);
        e.codec = 0x07;
        let (mut t, mut v) = (Vec::new(), Vec::new());
        assert!(matches!(
            decode_block(&e, &block, &mut t, &mut v),
            Err(TsfError::UnknownCodec { codec: 0x07, .. })
        ));
        assert!(t.is_empty() && v.is_empty());
        // Unknown codec inside a footer with a valid footer CRC.
        let t0 = parse_trailer(&bytes).unwrap();
        let mut footer =
            bytes[t0.footer_offset as usize..(t0.footer_offset + t0.footer_len) as usize].to_vec();
        // series count(1) org(1) metric(1) kind(1) interval(1) mlen(1) "meta"(4) nblocks(1)
        let codec_pos = 1 + 1 + 1 + 1 + 1 + 1 + 4 + 1;
        footer[codec_pos] = 0x75;
        let t1 = Trailer {
            footer_crc: crc32c::crc32c(&footer),
            ..t0
        };
        // The footer still parses (other series stay readable); that block
        // fails to decode with "unknown codec".
        let f = Footer::parse(&footer, &t1).unwrap();
        let b = &f.series()[0].blocks[0];
        assert_eq!(b.codec, 0x75);
        let (mut t, mut v) = (Vec::new(), Vec::new());
        let block = &bytes[b.offset as usize..(b.offset + b.len) as usize];
        assert!(matches!(
            decode_block(b, block, &mut t, &mut v),
            Err(TsfError::CodecMismatch { .. } | TsfError::UnknownCodec { .. })
        ));
        let mut block = block.to_vec();
        block[0] = 0x75;
        let b2 = BlockEntry {
            crc: crc32c::crc32c(&block),
            ..b.clone()
        };
        assert!(matches!(
            decode_block(&b2, &block, &mut t, &mut v),
            Err(TsfError::UnknownCodec { codec: 0x75, .. })
        ));
    }

    #[test]
    fn an_unknown_codec_leaves_the_other_series_readable() {
        let series: Vec<Series> = (0..3)
            .map(|m| {
                let ts: Vec<i64> = (0..10).map(|k| k * 1000).collect();
                (1, m, 0, 10, String::new(), ts, vec![m * 77; 10])
            })
            .collect();
        let (mut bytes, _) = write_file(&series, WriterOptions::default());
        // Make series 1's block codec reserved (ts_enc 7) in the block and
        // in the footer, with both CRCs fixed up.
        let r = FileReader::open(&bytes).unwrap();
        let b = r.footer().series()[1].blocks[0].clone();
        let t = *r.trailer();
        bytes[b.offset as usize] = 0x07;
        let crc = crc32c::crc32c(&bytes[b.offset as usize..(b.offset + b.len) as usize]);
        let fo = t.footer_offset as usize;
        let fl = t.footer_len as usize;
        let mut footer = bytes[fo..fo + fl].to_vec();
        // The series' block record: find its codec byte followed by its CRC.
        let pos = (0..footer.len() - 4)
            .filter(|&i| footer[i] == b.codec)
            .find(|&i| {
                let mut c = Cur::new(&footer[i + 1..], 0);
                let ok = (|| -> Result<bool> {
                    Ok(
                        c.varint()? == b.len && c.varint()? == u64::from(b.n_points) && {
                            c.varint()?;
                            c.varint()?;
                            c.u32()? == b.crc
                        },
                    )
                })();
                ok.unwrap_or(false)
            })
            .unwrap();
        footer[pos] = 0x07;
        let crc_at = pos + {
            let mut c = Cur::new(&footer[pos + 1..], 0);
            for _ in 0..4 {
                c.varint().unwrap();
            }
            1 + c.pos
        };
        footer[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        bytes[fo..fo + fl].copy_from_slice(&footer);
        let tb = bytes.len() - TRAILER_LEN;
        bytes[tb + 32..tb + 36].copy_from_slice(&crc32c::crc32c(&footer).to_le_bytes());
        let tcrc = crc32c::crc32c(&bytes[tb..tb + 40]);
        bytes[tb + 40..tb + 44].copy_from_slice(&tcrc.to_le_bytes());

        let r = FileReader::open(&bytes).unwrap();
        let s = r.footer().series();
        assert!(r.read_series(&s[0]).is_ok());
        assert!(matches!(
            r.read_series(&s[1]),
            Err(TsfError::UnknownCodec { codec: 0x07, .. })
        ));
        assert!(r.read_series(&s[2]).is_ok());
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        // Footer claiming 2^60 series, with a consistent trailer.
        let mut footer = Vec::new();
        put_varint(&mut footer, 1 << 60);
        let t = Trailer {
            footer_offset: HEADER_LEN as u64,
            footer_len: footer.len() as u64,
            series_count: 1 << 60,
            point_count: 0,
            footer_crc: crc32c::crc32c(&footer),
            version: VERSION,
            flags: 0,
        };
        assert!(matches!(
            Footer::parse(&footer, &t),
            Err(TsfError::ValueOutOfRange {
                field: "series count",
                ..
            })
        ));
        // Block entry with a huge n_points.
        let e = BlockEntry {
            offset: 0,
            len: 3,
            n_points: u32::MAX,
            min_ts: 0,
            max_ts: 0,
            crc: crc32c::crc32c(&[0, 0, 0]),
            codec: 0,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert!(matches!(
            decode_block(&e, &[0, 0, 0], &mut a, &mut b),
            Err(TsfError::ValueOutOfRange { .. })
        ));
    }

    #[test]
    fn fuzz_mutations_never_panic() {
        let mut rng = Rng(1234);
        let series = random_file(77, 6);
        let opts = WriterOptions {
            block_points: 64,
            ..Default::default()
        };
        let (bytes, _) = write_file(&series, opts);
        let r = FileReader::open(&bytes).unwrap();
        let entries: Vec<BlockEntry> = r
            .footer()
            .series()
            .iter()
            .flat_map(|s| s.blocks.clone())
            .collect();
        let mut ok = 0;
        for _ in 0..3000 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next() as u8;
            }
            if read_all(&b).is_ok() {
                ok += 1;
            }
        }
        // Block-level fuzz with CRC fixed up so the decoders see garbage.
        let mut enc = Encoder::new(1).unwrap();
        for _ in 0..3000 {
            let e = &entries[rng.below(entries.len() as u64) as usize];
            let mut block = bytes[e.offset as usize..(e.offset + e.len) as usize].to_vec();
            if rng.below(4) == 0 {
                // Re-encode with a random known codec first.
                let mut c = rng.next() as u8;
                while !codec::is_known(c) {
                    c = rng.next() as u8;
                }
                let (mut t, mut v) = (Vec::new(), Vec::new());
                decode_block(e, &block, &mut t, &mut v).unwrap();
                match enc.encode_with(c, &t, &v).unwrap() {
                    Some(b) => block = b,
                    None => continue,
                }
            }
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(block.len() as u64) as usize;
                block[i] = rng.next() as u8;
            }
            if rng.below(8) == 0 {
                block.truncate(rng.below(block.len() as u64) as usize);
            }
            let mut e2 = e.clone();
            e2.len = block.len() as u64;
            e2.crc = crc32c::crc32c(&block);
            e2.codec = block.first().copied().unwrap_or(0);
            let (mut t, mut v) = (Vec::new(), Vec::new());
            let _ = decode_block(&e2, &block, &mut t, &mut v);
        }
        // Footer fuzz with CRC fixed up so the parser sees garbage.
        let t0 = parse_trailer(&bytes).unwrap();
        let footer = &bytes[t0.footer_offset as usize..(t0.footer_offset + t0.footer_len) as usize];
        for _ in 0..3000 {
            let mut f = footer.to_vec();
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(f.len() as u64) as usize;
                f[i] = rng.next() as u8;
            }
            let t1 = Trailer {
                footer_len: f.len() as u64,
                footer_crc: crc32c::crc32c(&f),
                ..t0
            };
            let _ = Footer::parse(&f, &t1);
        }
        assert!(ok < 3000);
    }

    // -----------------------------------------------------------------------
    // Size measurements (run with --nocapture to see the figures).
    // -----------------------------------------------------------------------

    fn gen_pattern(rng: &mut Rng, pattern: &str, n: usize) -> (Vec<i64>, Vec<u64>, u32) {
        let interval = match rng.below(3) {
            0 => 10,
            1 => 15,
            _ => 60,
        };
        let mut ts = Vec::with_capacity(n);
        let mut t = 1_700_000_000_000i64 + (rng.below(1000) as i64) * 1000;
        let jitter = pattern.contains("jitter");
        for _ in 0..n {
            let j = if jitter { rng.below(200) as i64 } else { 0 };
            ts.push(t + j);
            t += i64::from(interval) * 1000;
            if jitter && rng.below(200) == 0 {
                t += i64::from(interval) * 1000 * (1 + rng.below(30) as i64); // gap
            }
        }
        let mut v = 50.0 + rng.f64() * 100.0;
        let mut c = rng.below(1000) as f64;
        let vals = (0..n)
            .map(|_| {
                let x = match pattern {
                    p if p.starts_with("gauge_full") => {
                        v += rng.normal();
                        v
                    }
                    p if p.starts_with("gauge_2dp") => {
                        v += rng.normal();
                        (v * 100.0).round() / 100.0
                    }
                    p if p.starts_with("counter") => {
                        c += rng.below(20) as f64;
                        c
                    }
                    p if p.starts_with("constant") => 1.0,
                    _ => {
                        v += rng.normal();
                        match rng.below(50) {
                            0 => f64::NAN,
                            1 => f64::INFINITY,
                            _ => (v * 10.0).round() / 10.0,
                        }
                    }
                };
                x.to_bits()
            })
            .collect();
        (ts, vals, interval)
    }

    #[test]
    fn bytes_per_point_report() {
        let patterns = [
            "gauge_full_regular",
            "gauge_full_jitter",
            "gauge_2dp_jitter",
            "counter_regular",
            "counter_jitter",
            "constant_regular",
            "mixed_nan_inf_jitter",
        ];
        let nseries = 50;
        let npoints = 2000;
        println!(
            "{:<22} {:>10} {:>9} {:>11} {:>7}  codecs",
            "pattern", "points", "B/point", "zstd-cols", "ratio"
        );
        for (pi, p) in patterns.iter().enumerate() {
            let mut rng = Rng(1000 + pi as u64);
            let mut w = FileWriter::new(Vec::new(), WriterOptions::default()).unwrap();
            let (mut all_ts, mut all_vals, mut ids) = (Vec::new(), Vec::new(), Vec::new());
            for s in 0..nseries {
                let (ts, vals, interval) = gen_pattern(&mut rng, p, npoints);
                let h = SeriesHeader {
                    org_id: 1,
                    metric_id: s as u64,
                    kind: 0,
                    interval_s: interval,
                    metadata: "",
                };
                w.add_series(&h, &ts, &vals).unwrap();
                all_ts.extend_from_slice(&ts);
                all_vals.extend_from_slice(&vals);
                ids.extend(std::iter::repeat_n(s as u64, ts.len()));
            }
            let (bytes, sum) = w.finish().unwrap();
            let r = FileReader::open(&bytes).unwrap();
            let mut codecs: Vec<u8> = r
                .footer()
                .series()
                .iter()
                .flat_map(|s| s.blocks.iter().map(|b| b.codec))
                .collect();
            codecs.sort_unstable();
            codecs.dedup();
            // Baseline: each column as plain little-endian, zstd level 3
            // (a rough stand-in for Parquet PLAIN + zstd).
            let col = |it: &mut dyn Iterator<Item = [u8; 8]>| {
                let raw: Vec<u8> = it.flatten().collect();
                zstd::bulk::compress(&raw, 3).unwrap().len()
            };
            let base = col(&mut all_ts.iter().map(|t| t.to_le_bytes()))
                + col(&mut all_vals.iter().map(|v| v.to_le_bytes()))
                + col(&mut ids.iter().map(|v| v.to_le_bytes()));
            let bpp = sum.bytes as f64 / sum.points as f64;
            let base_bpp = base as f64 / sum.points as f64;
            println!(
                "{:<22} {:>10} {:>9.3} {:>11.3} {:>7.3}  {:02x?}",
                p,
                sum.points,
                bpp,
                base_bpp,
                bpp / base_bpp,
                codecs
            );
        }
    }
}
