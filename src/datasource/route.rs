//! Routing payloads by series, for a job whose decoded input does not fit
//! in its memory.
//!
//! Every series falls in one of `buckets` hash buckets ([`bucket_of`]).
//! While a scan reads, payloads of *resident* buckets stay in its batches as
//! usual; a payload of any other bucket is *spooled*: its frame body, still
//! compressed as it was read, is appended to the bucket's spool file with
//! its place in input order (object, frame offset) and its series, and the
//! scan emits no row for it. A spooled bucket is decoded again, alone, when
//! its turn comes (`job/group.rs`), so the job's memory holds at most the
//! resident buckets and one spooled bucket, whatever the input's size; the
//! compressed input is the compact copy of the points that is written to
//! and read back from disk, not the decoded points (3 to 4 times bigger).
//!
//! Which buckets are resident is decided before the scan and can only
//! shrink during it ([`Router::demote_all`]): a job that finds its resident
//! rows over their share of memory stops admitting any, and every later
//! payload is spooled.
//!
//! Spool record (little-endian; written and read by this module only):
//!
//! ```text
//! object u32 | frame_offset u64 | org_id u64 | metric_id u64 |
//! content_size u32 | body_len u32 | body [body_len]
//! ```

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Bytes of a spool record before its body.
pub const RECORD_HEADER: usize = 4 + 8 + 8 + 8 + 4 + 4;

/// The bucket of series `(org, metric)` among `buckets`, at split `level`
/// (a bucket too big to decode at once is split again with the next
/// level's hash). Any well-mixed function would do: where a series is
/// grouped never shows in the output, only in how memory is used.
pub fn bucket_of(org: u64, metric: u64, buckets: u32, level: u32) -> u32 {
    fn mix(mut z: u64) -> u64 {
        // splitmix64's finaliser
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let h = mix(org ^ mix(metric ^ (u64::from(level) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    ((u128::from(h) * u128::from(buckets.max(1))) >> 64) as u32
}

/// One spooled frame, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledFrame {
    /// Index of its object in input order.
    pub object: u32,
    pub frame_offset: u64,
    pub org_id: u64,
    pub metric_id: u64,
    /// Its decompressed size (the zstd frame header's).
    pub content_size: u32,
    /// Its body, in the buffer the frames were read into.
    pub body: std::ops::Range<usize>,
}

/// What one bucket's spool holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub frames: u64,
    /// Compressed bytes (the frames' bodies).
    pub bytes: u64,
    /// Their decoded size.
    pub decoded: u64,
}

struct Bucket {
    file: Mutex<Option<BufWriter<std::fs::File>>>,
    frames: AtomicU64,
    bytes: AtomicU64,
    decoded: AtomicU64,
}

/// The routing of one scan: bucket count, resident buckets, spool files.
pub struct Router {
    buckets: u32,
    resident: AtomicU32,
    demoted: AtomicBool,
    objects: HashMap<String, u32>,
    dir: PathBuf,
    write_buffer: usize,
    spool: Vec<Bucket>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("buckets", &self.buckets)
            .field("resident", &self.resident.load(Ordering::Relaxed))
            .field("dir", &self.dir)
            .finish()
    }
}

impl Router {
    /// Routes to `buckets` buckets, of which the first `resident` stay in
    /// the scan's batches; spool files go under `dir` (which must exist),
    /// each written through a buffer of `write_buffer` bytes. `objects`
    /// are the scan's object keys in input order.
    pub fn new(
        buckets: u32,
        resident: u32,
        objects: &[String],
        dir: &Path,
        write_buffer: usize,
    ) -> Self {
        let buckets = buckets.max(1);
        Self {
            buckets,
            resident: AtomicU32::new(resident.min(buckets)),
            demoted: AtomicBool::new(false),
            objects: objects
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), i as u32))
                .collect(),
            dir: dir.to_path_buf(),
            write_buffer: write_buffer.max(4096),
            spool: (0..buckets)
                .map(|_| Bucket {
                    file: Mutex::new(None),
                    frames: AtomicU64::new(0),
                    bytes: AtomicU64::new(0),
                    decoded: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// Buckets `0..resident()` stay in memory.
    pub fn resident(&self) -> u32 {
        self.resident.load(Ordering::Acquire)
    }

    /// Whether [`Self::demote_all`] was called.
    pub fn demoted(&self) -> bool {
        self.demoted.load(Ordering::Acquire)
    }

    /// The bucket of a series.
    pub fn bucket(&self, org: u64, metric: u64) -> u32 {
        bucket_of(org, metric, self.buckets, 0)
    }

    /// Whether a payload of series `(org, metric)` stays in the scan's rows.
    pub fn keeps(&self, org: u64, metric: u64) -> bool {
        self.bucket(org, metric) < self.resident()
    }

    /// From now on every payload is spooled (rows already emitted stay).
    pub fn demote_all(&self) {
        self.resident.store(0, Ordering::Release);
        self.demoted.store(true, Ordering::Release);
    }

    /// The index in input order of an object of the scan.
    pub fn object_index(&self, key: &str) -> Option<u32> {
        self.objects.get(key).copied()
    }

    /// The spool file of bucket `b`.
    pub fn path(&self, b: u32) -> PathBuf {
        self.dir.join(format!("bucket-{b:05}.spool"))
    }

    /// Appends one frame to its bucket's spool.
    #[allow(clippy::too_many_arguments)]
    pub fn spool(
        &self,
        object: u32,
        frame_offset: u64,
        org: u64,
        metric: u64,
        content_size: usize,
        body: &[u8],
    ) -> std::io::Result<()> {
        let b = self.bucket(org, metric);
        let bucket = &self.spool[b as usize];
        let mut record = [0u8; RECORD_HEADER];
        record[0..4].copy_from_slice(&object.to_le_bytes());
        record[4..12].copy_from_slice(&frame_offset.to_le_bytes());
        record[12..20].copy_from_slice(&org.to_le_bytes());
        record[20..28].copy_from_slice(&metric.to_le_bytes());
        record[28..32].copy_from_slice(&(content_size as u32).to_le_bytes());
        record[32..36].copy_from_slice(&(body.len() as u32).to_le_bytes());
        let mut file = bucket.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.is_none() {
            let path = self.path(b);
            let f = std::fs::File::create(&path).map_err(|e| with_path(e, "creating", &path))?;
            *file = Some(BufWriter::with_capacity(self.write_buffer, f));
        }
        let w = file.as_mut().expect("opened above");
        w.write_all(&record)
            .and_then(|()| w.write_all(body))
            .map_err(|e| with_path(e, "writing", &self.path(b)))?;
        bucket.frames.fetch_add(1, Ordering::Relaxed);
        bucket.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        bucket
            .decoded
            .fetch_add(content_size as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Flushes and closes every spool file (after the scan).
    pub fn finish(&self) -> std::io::Result<()> {
        for (b, bucket) in self.spool.iter().enumerate() {
            let mut file = bucket.file.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mut w) = file.take() {
                let path = self.path(b as u32);
                w.flush().map_err(|e| with_path(e, "writing", &path))?;
            }
        }
        Ok(())
    }

    /// What bucket `b`'s spool holds.
    pub fn stats(&self, b: u32) -> SpoolStats {
        let bucket = &self.spool[b as usize];
        SpoolStats {
            frames: bucket.frames.load(Ordering::Relaxed),
            bytes: bucket.bytes.load(Ordering::Relaxed),
            decoded: bucket.decoded.load(Ordering::Relaxed),
        }
    }
}

fn with_path(e: std::io::Error, what: &str, path: &Path) -> std::io::Error {
    std::io::Error::new(
        e.kind(),
        format!("{what} spool file {}: {e}", path.display()),
    )
}

/// Reads a whole spool file: its bytes, and its frames in file order.
pub fn read_spool(path: &Path) -> std::io::Result<(Vec<u8>, Vec<SpooledFrame>)> {
    let mut bytes = Vec::new();
    let frames = read_spool_into(path, &mut bytes)?;
    Ok((bytes, frames))
}

/// Like [`read_spool`], into `bytes` (cleared first; a caller reading
/// spool after spool reuses its buffer).
pub fn read_spool_into(path: &Path, bytes: &mut Vec<u8>) -> std::io::Result<Vec<SpooledFrame>> {
    bytes.clear();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(bytes))
        .map_err(|e| with_path(e, "reading", path))?;
    let mut frames = Vec::new();
    let mut at = 0usize;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    while at < bytes.len() {
        let truncated = || {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "spool file {} is truncated at byte {at} (the disk lost what was written)",
                    path.display()
                ),
            )
        };
        if bytes.len() - at < RECORD_HEADER {
            return Err(truncated());
        }
        let len = u32_at(bytes, at + 32) as usize;
        let body = at + RECORD_HEADER..at + RECORD_HEADER + len;
        if body.end > bytes.len() {
            return Err(truncated());
        }
        frames.push(SpooledFrame {
            object: u32_at(bytes, at),
            frame_offset: u64_at(bytes, at + 4),
            org_id: u64_at(bytes, at + 12),
            metric_id: u64_at(bytes, at + 20),
            content_size: u32_at(bytes, at + 28),
            body: body.clone(),
        });
        at = body.end;
    }
    Ok(frames)
}

/// Splits the spool file `path` into `parts` files of the series' buckets
/// at `level` (beside it, named after it), for a bucket too big to decode at
/// once; returns, for each part that holds frames, its index, file and what
/// it holds. Reads the file whole: a spooled bucket is compressed, a third
/// or less of what decoding it takes.
pub fn split_spool(
    path: &Path,
    parts: u32,
    level: u32,
) -> std::io::Result<Vec<(u32, PathBuf, SpoolStats)>> {
    let (bytes, frames) = read_spool(path)?;
    let mut out: Vec<(PathBuf, SpoolStats, Option<BufWriter<std::fs::File>>)> = (0..parts)
        .map(|p| {
            let name = format!(
                "{}.{level}-{p:04}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("spool")
            );
            (path.with_file_name(name), SpoolStats::default(), None)
        })
        .collect();
    for f in &frames {
        let p = bucket_of(f.org_id, f.metric_id, parts, level) as usize;
        let (sub, stats, w) = &mut out[p];
        if w.is_none() {
            let file = std::fs::File::create(&*sub).map_err(|e| with_path(e, "creating", sub))?;
            *w = Some(BufWriter::with_capacity(1 << 20, file));
        }
        let start = f.body.start - RECORD_HEADER;
        w.as_mut()
            .expect("opened above")
            .write_all(&bytes[start..f.body.end])
            .map_err(|e| with_path(e, "writing", sub))?;
        stats.frames += 1;
        stats.bytes += f.body.len() as u64;
        stats.decoded += u64::from(f.content_size);
    }
    let mut done = Vec::new();
    for (p, (sub, stats, w)) in out.into_iter().enumerate() {
        if let Some(mut w) = w {
            w.flush().map_err(|e| with_path(e, "writing", &sub))?;
            done.push((p as u32, sub, stats));
        }
    }
    Ok(done)
}

/// Estimates the decoded size of `objects` (bytes once decompressed) from
/// the first frames of a few of them: the zstd frame headers declare their
/// content size, so reading up to `sample` bytes at the start of up to
/// `max_objects` objects (the largest) gives the input's expansion without
/// decoding anything. Objects that cannot be read or hold no whole frame in
/// the sample are passed over (the scan reports them); with no frame seen
/// at all, the expansion is taken to be 4 (zstd on points: 3 to 4). A
/// store that fails the read fails the estimate (what the scan would meet).
pub async fn estimate_decoded(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    objects: &[object_store::ObjectMeta],
    max_objects: usize,
    sample: u64,
) -> Result<u64, crate::datasource::error::StoreOpError> {
    let total: u64 = objects.iter().map(|o| o.size).sum();
    let mut by_size: Vec<&object_store::ObjectMeta> =
        objects.iter().filter(|o| o.size > 8).collect();
    by_size.sort_by(|a, b| {
        b.size
            .cmp(&a.size)
            .then_with(|| a.location.cmp(&b.location))
    });
    let (mut compressed, mut decoded) = (0u64, 0u64);
    for o in by_size.into_iter().take(max_objects) {
        let range = 0..sample.min(o.size);
        // Read as the scan reads: conditional on the listed ETag, and the
        // length checked.
        let object = crate::datasource::reader::ObjectBytes::Store {
            store: std::sync::Arc::clone(store),
            location: o.location.clone(),
            e_tag: o.e_tag.clone(),
        };
        let bytes = object.fetch(range.clone()).await.map_err(|source| {
            crate::datasource::error::StoreOpError {
                op: "GET",
                target: format!("{} bytes {range:?}", o.location),
                source,
            }
        })?;
        let mut at = 0usize;
        while bytes.len() - at >= 4 {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            let Some(body) = bytes.get(at + 4..at + 4 + len) else {
                break;
            };
            let Ok(info) = crate::format::payload::check_body(body, at as u64) else {
                break;
            };
            compressed += 4 + len as u64;
            decoded += info.content_size as u64;
            at += 4 + len;
        }
    }
    if compressed == 0 {
        return Ok(total.saturating_mul(4));
    }
    Ok((total as f64 * decoded as f64 / compressed as f64).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_spread_series_evenly_and_levels_differ() {
        let n = 16u32;
        let mut counts = vec![0u32; n as usize];
        let mut moved = 0;
        for org in 0..200u64 {
            for metric in 0..50u64 {
                let b = bucket_of(org, metric, n, 0);
                counts[b as usize] += 1;
                if bucket_of(org, metric, n, 1) != b {
                    moved += 1;
                }
            }
        }
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*lo > 500 && *hi < 750, "{counts:?}");
        assert!(moved > 9000, "another level is another hash: {moved}");
        assert_eq!(bucket_of(1, 2, 1, 0), 0);
    }

    #[test]
    fn spooled_frames_read_back_and_split_by_series() {
        let dir = tempfile::tempdir().unwrap();
        let r = Router::new(4, 0, &["a".into(), "b".into()], dir.path(), 64);
        assert_eq!(r.object_index("b"), Some(1));
        let mut want: Vec<Vec<(u64, u64, Vec<u8>)>> = vec![Vec::new(); 4];
        for i in 0..100u64 {
            let body = vec![i as u8; (i % 7) as usize + 1];
            r.spool(1, i * 10, i % 9, i % 5, 100 + i as usize, &body)
                .unwrap();
            want[r.bucket(i % 9, i % 5) as usize].push((i % 9, i % 5, body));
        }
        r.finish().unwrap();
        let mut total = 0;
        for b in 0..4 {
            let s = r.stats(b);
            if s.frames == 0 {
                assert!(!r.path(b).exists());
                continue;
            }
            let (bytes, frames) = read_spool(&r.path(b)).unwrap();
            let got: Vec<_> = frames
                .iter()
                .map(|f| (f.org_id, f.metric_id, bytes[f.body.clone()].to_vec()))
                .collect();
            assert_eq!(got, want[b as usize]);
            assert_eq!(s.frames, frames.len() as u64);
            assert_eq!(
                s.decoded,
                frames
                    .iter()
                    .map(|f| u64::from(f.content_size))
                    .sum::<u64>()
            );
            total += frames.len();
            let parts = split_spool(&r.path(b), 3, 1).unwrap();
            let n: u64 = parts.iter().map(|(_, _, s)| s.frames).sum();
            assert_eq!(n, s.frames);
            for (_, p, _) in parts {
                let (_, sub) = read_spool(&p).unwrap();
                let buckets: std::collections::BTreeSet<u32> = sub
                    .iter()
                    .map(|f| bucket_of(f.org_id, f.metric_id, 3, 1))
                    .collect();
                assert_eq!(buckets.len(), 1, "one sub-bucket per file");
            }
        }
        assert_eq!(total, 100);
        // A truncated spool is an I/O error naming the file.
        let p = r.path(r.bucket(0, 0));
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let e = read_spool(&p).unwrap_err();
        assert!(e.to_string().contains("is truncated"), "{e}");
    }
}
