//! The streaming file writer and series encoding.

use std::io::Write;

use super::bits::{put_varint, varint_len, zz};
use super::block::Encoder;
use super::error::{Result, TsfError};
use super::layout::{Trailer, encode_header, encode_trailer};
use super::{
    DEFAULT_BLOCK_POINTS, DEFAULT_ZSTD_LEVEL, MAX_BLOCK_POINTS, MAX_KIND, MAX_METADATA_LEN,
    TRAILER_LEN, VERSION, ZSTD_LEVELS,
};

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
        if !ZSTD_LEVELS.contains(&opts.zstd_level) {
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

/// Encodes a series' blocks; on an x86-64 CPU with AVX2, BMI2 and LZCNT
/// (x86-64-v3: Haswell, Zen and later) the same code compiled for them.
/// The build targets baseline x86-64 (SSE2), where the encoder's loops
/// over 64-bit integers vectorize poorly and every varint length is a
/// `bsr`; the v3 copy took 3.5% less CPU in the job's encode phase (three
/// alternated runs of the 2 GiB benchmark job: 16.2-17.2 s against
/// 17.1-17.6 s). Integer and IEEE operations give the same results either
/// way (Rust never fuses a multiply and an add by itself): the same bytes.
fn encode_blocks(
    enc: &mut Encoder,
    bp: usize,
    ts: &[i64],
    values: &[u64],
) -> Result<EncodedSeries> {
    #[cfg(target_arch = "x86_64")]
    if has_v3() {
        // SAFETY: the CPU has the features (checked just above).
        return unsafe { encode_blocks_v3(enc, bp, ts, values) };
    }
    encode_blocks_here(enc, bp, ts, values)
}

/// Whether this CPU has the features [`encode_blocks_v3`] is compiled for
/// (std detects them once and caches them).
#[cfg(target_arch = "x86_64")]
fn has_v3() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("bmi1")
        && std::is_x86_feature_detected!("bmi2")
        && std::is_x86_feature_detected!("lzcnt")
        && std::is_x86_feature_detected!("popcnt")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn encode_blocks_v3(
    enc: &mut Encoder,
    bp: usize,
    ts: &[i64],
    values: &[u64],
) -> Result<EncodedSeries> {
    encode_blocks_here(enc, bp, ts, values)
}

/// [`encode_blocks`]'s body, inlined into both copies (as are the
/// encoder's hot functions, marked `#[inline(always)]` for that).
#[inline(always)]
fn encode_blocks_here(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tsf::FileReader;
    use crate::format::tsf::test_util::{
        Rng, Series, check_roundtrip, random_file, special_values, write_file,
    };

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

    /// Both copies of the encoder (baseline x86-64 and x86-64-v3) write
    /// the same blocks. Where the CPU lacks the v3 features there is one.
    #[test]
    fn the_v3_encoder_writes_the_baseline_bytes() {
        #[cfg(target_arch = "x86_64")]
        if has_v3() {
            let mut rng = Rng(7);
            let (mut base, mut v3) = (Encoder::new(3).unwrap(), Encoder::new(3).unwrap());
            let mut blocks = 0;
            for seed in 0..4 {
                for (_, _, _, _, _, ts, vals) in random_file(seed, 40) {
                    let bp = [4096, 1000, 7, 1][rng.below(4) as usize];
                    let a = encode_blocks_here(&mut base, bp, &ts, &vals).unwrap();
                    // SAFETY: the CPU has the features (checked above).
                    let b = unsafe { encode_blocks_v3(&mut v3, bp, &ts, &vals) }.unwrap();
                    assert_eq!(a.blocks.len(), b.blocks.len());
                    for (x, y) in a.blocks.iter().zip(&b.blocks) {
                        assert_eq!((x.codec, &x.bytes), (y.codec, &y.bytes));
                    }
                    blocks += a.blocks.len();
                }
            }
            assert!(blocks > 100, "{blocks} blocks");
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
