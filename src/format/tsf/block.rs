//! Blocks: the encoder that chooses a block's codec, and block decoding.

use std::ops::Range;

use super::MAX_BLOCK_POINTS;
use super::bits::{Cur, put_varint, varint_len};
use super::codec;
use super::error::{Result, TsfError, corrupt};
use super::timestamps::{
    TsModel, decode_ts, encode_ts, median_delta, pack_codes, ts_bits, ts_codes_with, ts_costs,
};
use super::values::{
    DecimalParams, MAX_DIVIDED_DIGITS, decimal_digits, decimal_divisor, decimal_encode_upto,
    decode_vals, encode_vals, unzstd,
};

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

pub(super) struct Encoder {
    comp: zstd::bulk::Compressor<'static>,
    codes: Vec<u64>,
    scratch: Vec<u64>,
    plain: Vec<u8>,
    zbuf: Vec<u8>,
    tsec: Vec<u8>,
    vsec: Vec<u8>,
}

impl Encoder {
    pub(super) fn new(level: i32) -> Result<Self> {
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
    pub(super) fn encode_with(
        &mut self,
        c: u8,
        ts: &[i64],
        vals: &[u64],
    ) -> Result<Option<Vec<u8>>> {
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
    #[inline(always)]
    pub(super) fn encode_best(&mut self, ts: &[i64], vals: &[u64]) -> Result<(u8, Vec<u8>)> {
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
                // The grid's codes are left in `codes` by `ts_costs`.
                if model != TsModel::Grid {
                    let dm = if model == TsModel::Dod { 0 } else { d };
                    let ok = ts_codes_with(ts, model, dm, &mut self.codes);
                    debug_assert!(ok);
                }
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
        // At most a quarter exceptions, else the stream is not used; the
        // divided stream only if it is shorter.
        let max_exceptions = vals.len() / 4;
        if let Some(d) = d1 {
            let p = DecimalParams { d, q: 1 };
            decimal =
                decimal_encode_upto(vals, p, max_exceptions, usize::MAX, &mut self.plain).is_some();
        }
        if (!decimal || d1.is_some_and(|d| d > MAX_DIVIDED_DIGITS))
            && let Some(p) = decimal_divisor(vals)
        {
            let max_len = if decimal {
                self.plain.len()
            } else {
                usize::MAX
            };
            if decimal_encode_upto(vals, p, max_exceptions, max_len, &mut self.zbuf).is_some() {
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
pub(super) fn check_section(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tsf::test_util::{
        Rng, check_roundtrip, random_series, small_file, special_values, write_file,
    };
    use crate::format::tsf::{FileReader, Footer, Trailer, WriterOptions, parse_trailer};

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
            assert!(
                super::super::values::decimal_encode_with(&vals, p1, &mut Vec::new()) * 4
                    > vals.len()
            );
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
}
