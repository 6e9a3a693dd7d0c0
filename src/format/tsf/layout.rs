//! File layout around the blocks: the header, the trailer and the footer
//! index.

use std::ops::Range;

use super::bits::{Cur, unzz};
use super::block::{BlockEntry, check_section};
use super::error::{Result, TsfError, corrupt};
use super::{
    HEADER_LEN, MAGIC, MAX_BLOCK_POINTS, MAX_KIND, MAX_METADATA_LEN, TRAILER_LEN, VERSION,
};

/// Parsed 16-byte file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub flags: u16,
}

pub(super) fn encode_header() -> [u8; HEADER_LEN] {
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

pub(super) fn encode_trailer(t: &Trailer) -> [u8; TRAILER_LEN] {
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
/// start of `bytes`: file offsets when `bytes` is the whole file.
pub fn parse_trailer(bytes: &[u8]) -> Result<Trailer> {
    if bytes.len() < TRAILER_LEN {
        return Err(TsfError::Truncated {
            offset: 0,
            needed: TRAILER_LEN as u64,
            available: bytes.len() as u64,
        });
    }
    let base = (bytes.len() - TRAILER_LEN) as u64;
    let b = &bytes[bytes.len() - TRAILER_LEN..];
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&b[44..52]);
    if &magic != MAGIC {
        return Err(TsfError::BadMagic {
            offset: base + 44,
            found: magic,
        });
    }
    let mut c = Cur::new(b, base);
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
            offset: base + 36,
            found: version,
        });
    }
    let actual = crc32c::crc32c(&b[..40]);
    if stored != actual {
        return Err(TsfError::ChecksumMismatch {
            what: "trailer",
            offset: base + 40,
            expected: stored,
            actual,
        });
    }
    if flags != 0 {
        return Err(TsfError::UnsupportedFlags {
            offset: base + 38,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tsf::FileReader;
    use crate::format::tsf::bits::put_varint;
    use crate::format::tsf::decode_block;
    use crate::format::tsf::test_util::small_file;

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
        // Offsets are the file's, for the trailer's errors too.
        let t0 = (l - TRAILER_LEN) as u64;
        assert!(matches!(
            parse_trailer(&b),
            Err(TsfError::BadMagic { offset, .. }) if offset == t0 + 44
        ));
        assert!(matches!(
            parse_trailer(&b[l - TRAILER_LEN..]),
            Err(TsfError::BadMagic { offset: 44, .. })
        ));
        let mut b = bytes.clone();
        b[l - TRAILER_LEN + 1] ^= 1;
        assert!(matches!(
            FileReader::open(&b),
            Err(TsfError::ChecksumMismatch {
                what: "trailer",
                offset,
                ..
            }) if offset == t0 + 40
        ));
        let mut b = bytes.clone();
        b[l - TRAILER_LEN + 38] = 1;
        let crc = crc32c::crc32c(&b[l - TRAILER_LEN..l - TRAILER_LEN + 40]);
        b[l - TRAILER_LEN + 40..l - TRAILER_LEN + 44].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            FileReader::open(&b),
            Err(TsfError::UnsupportedFlags { offset, found: 1 }) if offset == t0 + 38
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
            parse_trailer(&b[l - TRAILER_LEN..]),
            Err(TsfError::UnsupportedVersion {
                offset: 36,
                found: 7
            })
        ));
        assert!(matches!(
            FileReader::open(&b),
            Err(TsfError::UnsupportedVersion { offset, found: 7 })
                if offset == (l - TRAILER_LEN + 36) as u64
        ));
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
}
