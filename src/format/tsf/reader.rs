//! Convenience reader over a whole file in memory.

use super::block::{block_bytes, decode_block};
use super::error::{Result, TsfError};
use super::layout::{Footer, Header, SeriesEntry, Trailer, parse_header, parse_trailer};
use super::{HEADER_LEN, TRAILER_LEN};

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
        // Its errors are at file offsets: it is handed the whole file.
        let trailer = parse_trailer(bytes)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tsf::WriterOptions;
    use crate::format::tsf::bits::Cur;
    use crate::format::tsf::block::{BlockEntry, Encoder};
    use crate::format::tsf::codec;
    use crate::format::tsf::test_util::{
        Rng, Series, random_file, read_all, small_file, write_file,
    };

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
            let e = read_all(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(
                    e,
                    TsfError::Truncated { .. }
                        | TsfError::BadMagic { .. }
                        | TsfError::ChecksumMismatch { .. }
                        | TsfError::Corrupt { .. }
                ),
                "cut at {cut}: {e}"
            );
        }
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
}
