//! Routing payloads by series, for a job whose decoded input does not fit
//! in its memory.
//!
//! Every series falls in one of `buckets` hash buckets ([`bucket_of`]).
//! While a scan reads, payloads of *resident* buckets stay in its batches as
//! usual; a payload of any other bucket is *spooled*: appended to the
//! bucket's spool file with its place in input order (object, frame offset)
//! and its series, and the scan emits no row for it. A spooled bucket is
//! read back, alone, when its turn comes (`job/group.rs`), so the job's
//! memory holds at most the resident buckets and one spooled bucket,
//! whatever the input's size.
//!
//! A payload is spooled in one of two forms:
//!
//! - *packed*: the payload the scan has just decoded, its timestamps
//!   written as their differences from a grid (first timestamp, step) in
//!   the fewest bytes that hold them all, everything else verbatim. Read
//!   back at the speed of a copy: re-decoding the zstd frame instead costs
//!   as much as the scan's own decoding of it (frames of a few hundred
//!   points decompress at well under 1 GB/s a core), which made a job that
//!   spools most of its input take 1.5 times as long as one that does not.
//! - *compressed*: the frame body as read, about half the packed size
//!   (values and metadata stay verbatim in the packed form): used once the
//!   packed form's extra bytes on disk would go over the router's
//!   allowance (what the spill directory's free space leaves), so that a
//!   job whose spill disk is small still runs, decoding those frames again.
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
//! content_size u32 | body_len u32 | form u32 | body [body_len]
//! ```
//!
//! `form` 0: `body` is the zstd frame body. `form` 1: `body` is the packed
//! payload:
//!
//! ```text
//! header [32 or 40 bytes, as decoded] | width u8 (0, 1, 2, 4 or 8) |
//! t0 i64 | step i64 | residual [n_points × width] (signed) |
//! the payload from its values to its end, verbatim
//! ```
//!
//! where timestamp `i` is `t0 + i·step + residual[i]` in wrapping i64
//! arithmetic (so every payload packs exactly, whatever its timestamps).

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::format::payload::PayloadHeader;

/// Bytes of a spool record before its body.
pub const RECORD_HEADER: usize = 4 + 8 + 8 + 8 + 4 + 4 + 4;

/// A record's `form`: the frame body as read.
const FORM_COMPRESSED: u32 = 0;
/// A record's `form`: the packed payload.
const FORM_PACKED: u32 = 1;

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
    /// Its body is the packed payload ([`unpack_payload`]), not the frame
    /// body.
    pub packed: bool,
    /// Its body, in the buffer the frames were read into.
    pub body: std::ops::Range<usize>,
}

/// What one bucket's spool holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub frames: u64,
    /// Bytes of the records' bodies (packed payloads and frame bodies).
    pub bytes: u64,
    /// Their decoded size.
    pub decoded: u64,
    /// Frames spooled packed (the others compressed).
    pub packed: u64,
}

/// One bucket's spool: its file while the scan writes it, and what it
/// holds, counted under the bucket's lock (atomics beside the lock were
/// another four locked operations per payload, on a cache line both scan
/// threads write).
#[derive(Default)]
struct BucketState {
    writer: Option<SpoolWriter>,
    stats: SpoolStats,
}

/// A spool file's write buffer: records are built in `buf` (a packed
/// payload is packed there, not beside it), which goes to the file before
/// it would outgrow `cap` bytes.
struct SpoolWriter {
    file: std::fs::File,
    buf: Vec<u8>,
    cap: usize,
}

impl SpoolWriter {
    fn new(file: std::fs::File, cap: usize) -> Self {
        Self {
            file,
            buf: Vec::with_capacity(cap),
            cap,
        }
    }

    /// Appends a record of `len` bytes, which `fill` writes at the end of
    /// the buffer: what the buffer holds goes to the file first if the
    /// record would not fit beside it, and a record bigger than the buffer
    /// (a payload of up to a million points packs into up to 16 MiB) is
    /// written at once and its room given back, not kept for the scan.
    fn append(&mut self, len: usize, fill: impl FnOnce(&mut Vec<u8>)) -> std::io::Result<()> {
        if self.buf.len() + len > self.cap && !self.buf.is_empty() {
            self.flush()?;
        }
        fill(&mut self.buf);
        if self.buf.capacity() > self.cap {
            self.flush()?;
            self.buf = Vec::with_capacity(self.cap);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

/// The routing of one scan: bucket count, resident buckets, spool files.
pub struct Router {
    buckets: u32,
    resident: AtomicU32,
    demoted: AtomicBool,
    objects: HashMap<String, u32>,
    dir: PathBuf,
    write_buffer: usize,
    spool: Vec<Mutex<BucketState>>,
    /// Bytes the packed form may still take on disk beyond the compressed
    /// form's.
    allowance: AtomicU64,
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
    /// are the scan's object keys in input order. Payloads are spooled
    /// packed while that takes at most `allowance` bytes more on disk than
    /// their frames would, compressed after (0: always compressed).
    pub fn new(
        buckets: u32,
        resident: u32,
        objects: &[String],
        dir: &Path,
        write_buffer: usize,
        allowance: u64,
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
            spool: (0..buckets).map(|_| Mutex::default()).collect(),
            allowance: AtomicU64::new(allowance),
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

    /// Appends one payload to its bucket's spool: `payload` is it decoded
    /// (as the scan parsed it, `header`), `body` its frame body, of which
    /// `object` and `frame_offset` give the place in input order.
    pub fn spool(
        &self,
        object: u32,
        frame_offset: u64,
        header: &PayloadHeader,
        payload: &[u8],
        body: &[u8],
    ) -> std::io::Result<()> {
        let packing = if self.allowance.load(Ordering::Relaxed) > 0 {
            let plan = PackPlan::of(header, payload);
            self.take_allowance((plan.len as u64).saturating_sub(body.len() as u64))
                .then_some(plan)
        } else {
            None
        };
        let b = self.bucket(header.org_id, header.metric_id);
        let (form, stored_len) = match &packing {
            Some(plan) => (FORM_PACKED, plan.len),
            None => (FORM_COMPRESSED, body.len()),
        };
        let mut record = [0u8; RECORD_HEADER];
        record[0..4].copy_from_slice(&object.to_le_bytes());
        record[4..12].copy_from_slice(&frame_offset.to_le_bytes());
        record[12..20].copy_from_slice(&header.org_id.to_le_bytes());
        record[20..28].copy_from_slice(&header.metric_id.to_le_bytes());
        record[28..32].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        record[32..36].copy_from_slice(&(stored_len as u32).to_le_bytes());
        record[36..40].copy_from_slice(&form.to_le_bytes());
        let mut state = self.spool[b as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let BucketState { writer, stats } = &mut *state;
        if writer.is_none() {
            let path = self.path(b);
            let f = std::fs::File::create(&path).map_err(|e| with_path(e, "creating", &path))?;
            *writer = Some(SpoolWriter::new(f, self.write_buffer));
        }
        let w = writer.as_mut().expect("opened above");
        // The payload is packed straight into the spool's buffer: one copy
        // of it fewer than packing it aside and writing that.
        w.append(RECORD_HEADER + stored_len, |buf| {
            buf.extend_from_slice(&record);
            match &packing {
                Some(plan) => plan.pack_into(header, payload, buf),
                None => buf.extend_from_slice(body),
            }
        })
        .map_err(|e| with_path(e, "writing", &self.path(b)))?;
        stats.frames += 1;
        stats.bytes += stored_len as u64;
        stats.decoded += payload.len() as u64;
        stats.packed += u64::from(form == FORM_PACKED);
        Ok(())
    }

    /// Takes `extra` bytes of the allowance, if it has them; once it has
    /// not, it is spent (later payloads are not packed only to be thrown
    /// away).
    fn take_allowance(&self, extra: u64) -> bool {
        let taken = self
            .allowance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                a.checked_sub(extra)
            })
            .is_ok();
        if !taken {
            self.allowance.store(0, Ordering::Relaxed);
        }
        taken
    }

    /// Flushes and closes every spool file (after the scan).
    pub fn finish(&self) -> std::io::Result<()> {
        for (b, bucket) in self.spool.iter().enumerate() {
            let mut state = bucket.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mut w) = state.writer.take() {
                let path = self.path(b as u32);
                w.flush().map_err(|e| with_path(e, "writing", &path))?;
            }
        }
        Ok(())
    }

    /// What bucket `b`'s spool holds.
    pub fn stats(&self, b: u32) -> SpoolStats {
        let state = self.spool[b as usize].lock();
        state.unwrap_or_else(|e| e.into_inner()).stats.clone()
    }
}

fn with_path(e: std::io::Error, what: &str, path: &Path) -> std::io::Error {
    std::io::Error::new(
        e.kind(),
        format!("{what} spool file {}: {e}", path.display()),
    )
}

/// Reads a spool file a chunk at a time: each [`Self::next_chunk`] holds
/// whole records of about `chunk` bytes (more for a bigger record), so
/// reading back a bucket takes a chunk of memory beside what it decodes to.
pub struct SpoolReader {
    path: PathBuf,
    file: std::fs::File,
    chunk: usize,
    buf: Vec<u8>,
    /// `buf[..consumed]` was handed out by the last chunk.
    consumed: usize,
    /// Bytes of the file before `buf[0]`.
    at: u64,
    eof: bool,
}

impl SpoolReader {
    pub fn open(path: &Path, chunk: usize) -> std::io::Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| with_path(e, "reading", path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            chunk: chunk.max(RECORD_HEADER),
            buf: Vec::new(),
            consumed: 0,
            at: 0,
            eof: false,
        })
    }

    /// The next records in file order and the bytes their bodies are in;
    /// `None` at the end of the file.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<(&[u8], Vec<SpooledFrame>)>> {
        self.buf.drain(..self.consumed);
        self.at += self.consumed as u64;
        self.consumed = 0;
        let mut frames = Vec::new();
        let mut end = 0usize;
        loop {
            // Whole records in what is read.
            while let Some(f) = record_at(&self.buf, end) {
                end = f.body.end;
                frames.push(f);
            }
            if self.eof || (end >= self.chunk && !frames.is_empty()) {
                break;
            }
            // Read up to a chunk more, or the rest of the record begun.
            let want = self.chunk.max(record_len(&self.buf, end).unwrap_or(0));
            let need = (end + want).saturating_sub(self.buf.len());
            // Read into the buffer's spare room (not zeroed first: that
            // was a tenth of the loader's time at a small limit).
            self.buf.reserve_exact(need);
            let got = (&mut self.file)
                .take(need as u64)
                .read_to_end(&mut self.buf)
                .map_err(|e| with_path(e, "reading", &self.path))?;
            if got < need {
                self.eof = true;
            }
        }
        if self.eof && end < self.buf.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "spool file {} is truncated at byte {} (the disk lost what was written)",
                    self.path.display(),
                    self.at + end as u64
                ),
            ));
        }
        if frames.is_empty() {
            return Ok(None);
        }
        self.consumed = end;
        Ok(Some((&self.buf[..end], frames)))
    }

    /// [`Self::next_chunk`], with the chunk's bytes handed over: `spare`
    /// (a buffer the caller is done with) takes their place, so that the
    /// next chunk can be read while this one is decoded.
    pub fn next_owned(
        &mut self,
        spare: Vec<u8>,
    ) -> std::io::Result<Option<(Vec<u8>, Vec<SpooledFrame>)>> {
        let Some((_, frames)) = self.next_chunk()? else {
            return Ok(None);
        };
        let end = self.consumed;
        // The record begun after the chunk, if any, starts the new buffer.
        let mut next = spare;
        next.clear();
        next.extend_from_slice(&self.buf[end..]);
        let mut chunk = std::mem::replace(&mut self.buf, next);
        chunk.truncate(end);
        self.at += end as u64;
        self.consumed = 0;
        Ok(Some((chunk, frames)))
    }
}

/// The length of the record at `at` of `bytes`, if its header is there.
fn record_len(bytes: &[u8], at: usize) -> Option<usize> {
    let len = bytes.get(at + 32..at + 36)?;
    Some(RECORD_HEADER + u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize)
}

/// The record at `at` of `bytes`, if it is there whole.
fn record_at(bytes: &[u8], at: usize) -> Option<SpooledFrame> {
    let len = record_len(bytes, at)?;
    if bytes.len() - at < len {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[at + i..at + i + 4].try_into().expect("4"));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[at + i..at + i + 8].try_into().expect("8"));
    Some(SpooledFrame {
        object: u32_at(0),
        frame_offset: u64_at(4),
        org_id: u64_at(12),
        metric_id: u64_at(20),
        content_size: u32_at(28),
        packed: u32_at(36) == FORM_PACKED,
        body: at + RECORD_HEADER..at + len,
    })
}

/// Reads a whole spool file: its bytes, and its records in file order
/// (tests; the job reads a chunk at a time, [`SpoolReader`]).
#[cfg(test)]
pub(crate) fn read_spool(path: &Path) -> std::io::Result<(Vec<u8>, Vec<SpooledFrame>)> {
    let len = std::fs::metadata(path)
        .map_err(|e| with_path(e, "reading", path))?
        .len();
    let mut r = SpoolReader::open(path, len as usize)?;
    Ok(match r.next_chunk()? {
        Some((bytes, frames)) => (bytes.to_vec(), frames),
        None => (Vec::new(), Vec::new()),
    })
}

/// The series of the spool file `path` that decodes to the most bytes,
/// and those bytes (`None`: the file holds nothing). Reads the records'
/// headers a chunk of `chunk` bytes at a time.
pub fn largest_series(path: &Path, chunk: usize) -> std::io::Result<Option<((u64, u64), u64)>> {
    let mut sizes: HashMap<(u64, u64), u64> = HashMap::new();
    let mut reader = SpoolReader::open(path, chunk)?;
    while let Some((_, frames)) = reader.next_chunk()? {
        for f in &frames {
            *sizes.entry((f.org_id, f.metric_id)).or_default() += u64::from(f.content_size);
        }
    }
    Ok(sizes
        .into_iter()
        .max_by_key(|&(k, n)| (n, std::cmp::Reverse(k))))
}

/// Splits the spool file `path` into `parts` files of the series' buckets
/// at `level` (beside it, named after it), for a bucket too big to decode at
/// once; returns, for each part that holds frames, its index, file and what
/// it holds. Reads the file a chunk of `chunk` bytes at a time.
pub fn split_spool(
    path: &Path,
    parts: u32,
    level: u32,
    chunk: usize,
) -> std::io::Result<Vec<(u32, PathBuf, SpoolStats)>> {
    let mut out: Vec<(PathBuf, SpoolStats, Option<BufWriter<std::fs::File>>)> = (0..parts)
        .map(|p| {
            let name = format!(
                "{}.{level}-{p:04}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("spool")
            );
            (path.with_file_name(name), SpoolStats::default(), None)
        })
        .collect();
    let mut reader = SpoolReader::open(path, chunk)?;
    while let Some((bytes, frames)) = reader.next_chunk()? {
        for f in &frames {
            let p = bucket_of(f.org_id, f.metric_id, parts, level) as usize;
            let (sub, stats, w) = &mut out[p];
            if w.is_none() {
                let file =
                    std::fs::File::create(&*sub).map_err(|e| with_path(e, "creating", sub))?;
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
            stats.packed += u64::from(f.packed);
        }
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

/// Appends the packed form of `payload` (decoded, of `header`) to `out`
/// (see the module's documentation); the spool packs through [`PackPlan`]
/// straight into its write buffer.
#[cfg(test)]
fn pack_payload(header: &PayloadHeader, payload: &[u8], out: &mut Vec<u8>) {
    PackPlan::of(header, payload).pack_into(header, payload, out);
}

/// How a payload packs: its grid, the residuals' width and the packed
/// length, known before anything is written (so that the spool can decide
/// the form first and pack straight into its buffer).
struct PackPlan {
    t0: i64,
    step: i64,
    width: usize,
    len: usize,
}

impl PackPlan {
    fn of(header: &PayloadHeader, payload: &[u8]) -> Self {
        let (ts_at, n) = (header.ts_offset(), header.n_points as usize);
        let bytes = &payload[ts_at..ts_at + 8 * n];
        let t = |i: usize| i64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8"));
        let t0 = if n > 0 { t(0) } else { 0 };
        // The grid through the first and last timestamps: with points at a
        // steady interval, the residuals are the jitter.
        let step = if n > 1 {
            ((i128::from(t(n - 1)) - i128::from(t0)) / (n as i128 - 1)) as i64
        } else {
            0
        };
        // `r` fits `bits` signed bits iff `r ^ (r >> 63)` (r, or !r when
        // negative) is under 2^(bits-1); OR-ing those of every residual
        // keeps the widest, and OR-ing the residuals tells whether all are
        // 0. Two ORs a point, which the compiler vectorises, where a
        // min and a max of i64 were two compares and moves each (a third
        // of the spool's time in the scan).
        let (mut any, mut magnitude) = (0i64, 0i64);
        for r in residuals(timestamps(bytes), t0, step) {
            any |= r;
            magnitude |= r ^ (r >> 63);
        }
        let fits = |bits: u32| magnitude < 1i64 << (bits - 1);
        let width: usize = match () {
            () if any == 0 => 0,
            () if fits(8) => 1,
            () if fits(16) => 2,
            () if fits(32) => 4,
            () => 8,
        };
        let len = ts_at + 17 + width * n + payload.len() - header.values_offset();
        Self {
            t0,
            step,
            width,
            len,
        }
    }

    /// Appends the packed payload (`self.len` bytes) to `out`.
    fn pack_into(&self, header: &PayloadHeader, payload: &[u8], out: &mut Vec<u8>) {
        let (ts_at, n) = (header.ts_offset(), header.n_points as usize);
        let start = out.len();
        out.reserve(self.len);
        out.extend_from_slice(&payload[..ts_at]);
        out.push(self.width as u8);
        out.extend_from_slice(&self.t0.to_le_bytes());
        out.extend_from_slice(&self.step.to_le_bytes());
        let ts = timestamps(&payload[ts_at..ts_at + 8 * n]);
        let rs = residuals(ts, self.t0, self.step);
        // One loop per width over a slice of the right size, rather than
        // a push of a few bytes per point (this runs over every spooled
        // point).
        fn put<const W: usize>(out: &mut Vec<u8>, n: usize, rs: impl Iterator<Item = i64>) {
            let at = out.len();
            out.resize(at + W * n, 0);
            for (dst, r) in out[at..].chunks_exact_mut(W).zip(rs) {
                dst.copy_from_slice(&r.to_le_bytes()[..W]);
            }
        }
        match self.width {
            0 => {}
            1 => put::<1>(out, n, rs),
            2 => put::<2>(out, n, rs),
            4 => put::<4>(out, n, rs),
            _ => put::<8>(out, n, rs),
        }
        out.extend_from_slice(&payload[header.values_offset()..]);
        debug_assert_eq!(out.len() - start, self.len);
    }
}

/// The timestamps of a payload's timestamp column.
fn timestamps(bytes: &[u8]) -> impl Iterator<Item = i64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|t| i64::from_le_bytes(t.try_into().expect("8")))
}

/// Each timestamp less its grid point `t0 + i·step` (wrapping).
fn residuals(ts: impl Iterator<Item = i64>, t0: i64, step: i64) -> impl Iterator<Item = i64> {
    ts.scan(t0, move |grid, t| {
        let r = t.wrapping_sub(*grid);
        *grid = grid.wrapping_add(step);
        Some(r)
    })
}

/// Writes the payload packed in `packed` into `dst`, which must be its
/// decoded size; `Err` says what in `packed` does not fit that size.
pub fn unpack_payload(packed: &[u8], dst: &mut [u8]) -> Result<(), String> {
    let short = || format!("a packed payload of {} bytes is cut short", packed.len());
    let version = u16::from_le_bytes(packed.get(4..6).ok_or_else(short)?.try_into().expect("2"));
    let ts_at = if version == 1 { 32 } else { 40 };
    let head = packed.get(..ts_at + 17).ok_or_else(short)?;
    let n = u32::from_le_bytes(head[24..28].try_into().expect("4")) as usize;
    let width = usize::from(head[ts_at]);
    if !matches!(width, 0 | 1 | 2 | 4 | 8) {
        return Err(format!("a packed payload has residuals of {width} bytes"));
    }
    let t0 = i64::from_le_bytes(head[ts_at + 1..ts_at + 9].try_into().expect("8"));
    let step = i64::from_le_bytes(head[ts_at + 9..ts_at + 17].try_into().expect("8"));
    let residuals = packed
        .get(ts_at + 17..ts_at + 17 + width * n)
        .ok_or_else(short)?;
    let rest = &packed[ts_at + 17 + width * n..];
    if dst.len() != ts_at + 8 * n + rest.len() {
        return Err(format!(
            "a packed payload of {n} points unpacks to {} bytes, not its {}",
            ts_at + 8 * n + rest.len(),
            dst.len()
        ));
    }
    dst[..ts_at].copy_from_slice(&head[..ts_at]);
    let (ts, tail) = dst[ts_at..].split_at_mut(8 * n);
    tail.copy_from_slice(rest);
    // One loop per width, so that each is a plain loop the compiler
    // unrolls (this runs over every spooled point).
    fn fill<const W: usize>(ts: &mut [u8], residuals: &[u8], t0: i64, step: i64) {
        let mut t = t0;
        for (out, r) in ts.chunks_exact_mut(8).zip(residuals.chunks_exact(W.max(1))) {
            let r = match W {
                0 => 0,
                1 => i64::from(r[0] as i8),
                2 => i64::from(i16::from_le_bytes([r[0], r[1]])),
                4 => i64::from(i32::from_le_bytes([r[0], r[1], r[2], r[3]])),
                _ => i64::from_le_bytes(r.try_into().expect("8")),
            };
            out.copy_from_slice(&t.wrapping_add(r).to_le_bytes());
            t = t.wrapping_add(step);
        }
    }
    match width {
        0 => {
            let mut t = t0;
            for out in ts.chunks_exact_mut(8) {
                out.copy_from_slice(&t.to_le_bytes());
                t = t.wrapping_add(step);
            }
        }
        1 => fill::<1>(ts, residuals, t0, step),
        2 => fill::<2>(ts, residuals, t0, step),
        4 => fill::<4>(ts, residuals, t0, step),
        _ => fill::<8>(ts, residuals, t0, step),
    }
    Ok(())
}

/// The bytes the packed form may take on disk beyond the compressed form,
/// for a spill directory with `free` bytes available where about
/// `compressed` bytes of frames are to be spooled: what is left once the
/// compressed spool (and a tenth more: the records' headers, an estimate
/// short of the mark) and a tenth of the free space are set aside. The
/// spool is the most the spill disk holds at once: each bucket's file is
/// deleted once read back, before the encoded groups (about a fifth of
/// the input) grow and the output is written. A spooled payload takes
/// about twice the bytes packed that it takes compressed, so this decides
/// how much of the spooled input is read back with a copy rather than
/// decoded again.
pub fn packed_allowance(free: u64, compressed: u64) -> u64 {
    let compressed = compressed.saturating_add(compressed / 10);
    free.saturating_sub(compressed.saturating_add(free / 10))
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

    use crate::format::payload::{Kind, PayloadSpec, PayloadWriter, encode_payload, parse_header};
    use rand::{Rng, SeedableRng};

    /// A payload of `ts` and `values` decoded, with its header, and its
    /// frame body.
    fn payload(
        version: u16,
        org: u64,
        metric: u64,
        ts: &[i64],
        values: &[u64],
    ) -> (PayloadHeader, Vec<u8>, Vec<u8>) {
        let meta = "m".repeat(ts.len() % 11);
        let spec = PayloadSpec {
            version,
            org_id: org,
            metric_id: metric,
            kind: Kind::Rate,
            interval_s: 15,
            timestamps: ts,
            values,
            metadata: &meta,
        };
        let mut decoded = Vec::new();
        encode_payload(&spec, &mut decoded);
        let mut frame = Vec::new();
        PayloadWriter::new(1).write_frame(&spec, &mut frame);
        (
            parse_header(&decoded, 0).unwrap(),
            decoded,
            frame[4..].to_vec(),
        )
    }

    /// Values 0, 1, 2, ... for timestamps `ts`.
    fn counting(ts: &[i64]) -> Vec<u64> {
        (0..ts.len() as u64).collect()
    }

    fn unpacked(packed: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0xAA; len];
        unpack_payload(packed, &mut out).unwrap();
        out
    }

    #[test]
    fn packed_payloads_unpack_to_the_same_bytes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let cases: Vec<(Vec<i64>, usize)> = vec![
            (vec![1_700_000_000_000], 0),
            (
                (0..500).map(|i| 1_700_000_000_000 + i * 10_000).collect(),
                0,
            ),
            (
                (0..500)
                    .map(|i| 1_700_000_000_000 + i * 10_000 + (i % 3 - 1))
                    .collect(),
                1,
            ),
            (
                (0..300)
                    .map(|i| i * 15_000 + if i % 10 == 0 { 499 } else { 0 })
                    .collect(),
                2,
            ),
            (
                (0..100)
                    .map(|i| if i == 50 { 0 } else { i * 60_000 })
                    .collect(),
                4,
            ),
            (vec![i64::MIN, i64::MAX, 0, -1, i64::MAX], 8),
            (vec![i64::MAX, i64::MIN], 0),
            (vec![5, 5, 5, 5], 0),
        ];
        // Each width's edges: the middle point's residual is its timestamp
        // (the grid through 0 and 0 is 0).
        let cases = cases.into_iter().chain(
            [
                (-1, 1),
                (127, 1),
                (-128, 1),
                (128, 2),
                (-129, 2),
                (32_767, 2),
                (-32_768, 2),
                (32_768, 4),
                (-32_769, 4),
                ((1 << 31) - 1, 4),
                (-(1 << 31), 4),
                (1 << 31, 8),
                (-(1 << 31) - 1, 8),
            ]
            .map(|(r, width)| (vec![0, r, 0], width)),
        );
        for (ts, width) in cases {
            for version in [1, 2] {
                let (h, decoded, _) = payload(version, 1, 2, &ts, &counting(&ts));
                let mut packed = Vec::new();
                pack_payload(&h, &decoded, &mut packed);
                assert_eq!(usize::from(packed[h.ts_offset()]), width, "{ts:?}");
                assert_eq!(
                    packed.len(),
                    decoded.len() - 8 * ts.len() + 17 + width * ts.len()
                );
                assert_eq!(unpacked(&packed, decoded.len()), decoded, "{ts:?}");
            }
        }
        for _ in 0..2000 {
            let n = rng.random_range(1..300usize);
            let base: i64 = rng.random();
            let step: i64 = rng.random_range(-100_000..100_000);
            let spread = [0i64, 100, 40_000, 1 << 40, i64::MAX][rng.random_range(0..5)];
            let ts: Vec<i64> = (0..n as i64)
                .map(|i| {
                    let j = if spread == 0 {
                        0
                    } else {
                        rng.random_range(-spread..=spread)
                    };
                    base.wrapping_add(i.wrapping_mul(step)).wrapping_add(j)
                })
                .collect();
            let (h, decoded, _) = payload(2, 3, 4, &ts, &counting(&ts));
            let mut packed = Vec::new();
            pack_payload(&h, &decoded, &mut packed);
            assert_eq!(unpacked(&packed, decoded.len()), decoded, "{ts:?}");
        }
        // Sizes that do not agree are refused, never written past.
        let (h, decoded, _) = payload(2, 3, 4, &[1, 2, 3], &[0, 1, 2]);
        let mut packed = Vec::new();
        pack_payload(&h, &decoded, &mut packed);
        let mut out = vec![0; decoded.len() + 8];
        assert!(
            unpack_payload(&packed, &mut out)
                .unwrap_err()
                .contains("unpacks to")
        );
        assert!(
            unpack_payload(&packed[..30], &mut out)
                .unwrap_err()
                .contains("cut short")
        );
        let mut bad = packed.clone();
        bad[h.ts_offset()] = 3;
        assert!(
            unpack_payload(&bad, &mut out)
                .unwrap_err()
                .contains("residuals of 3 bytes")
        );
    }

    #[test]
    fn spooled_payloads_read_back_and_split_by_series() {
        // (org, metric, header, decoded, frame body); random values, which
        // zstd cannot shorten: the packed form is the longer. Records go
        // through a write buffer of 4 KiB (the least): most share it, and
        // two, of 1000 points, are bigger than it.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let payloads: Vec<_> = (0..100u64)
            .map(|i| {
                let n = if i == 50 || i == 51 { 1000 } else { i % 40 + 1 };
                let ts: Vec<i64> = (0..n as i64).map(|k| k * 10_000 + (k % 3) * 7).collect();
                let values: Vec<u64> = ts.iter().map(|_| rng.random()).collect();
                let (h, decoded, body) = payload(1 + (i % 2) as u16, i % 9, i % 5, &ts, &values);
                (i % 9, i % 5, h, decoded, body)
            })
            .collect();
        let extra = |h: &PayloadHeader, decoded: &[u8], body: &[u8]| {
            let mut packed = Vec::new();
            pack_payload(h, decoded, &mut packed);
            (packed.len() as u64).saturating_sub(body.len() as u64)
        };
        let extras: Vec<u64> = payloads.iter().map(|p| extra(&p.2, &p.3, &p.4)).collect();
        let total_extra: u64 = extras.iter().sum();
        assert!(total_extra > 0);
        for allowance in [0u64, total_extra / 2, u64::MAX] {
            let dir = tempfile::tempdir().unwrap();
            let r = Router::new(4, 0, &["a".into(), "b".into()], dir.path(), 64, allowance);
            assert_eq!(r.object_index("b"), Some(1));
            // (org, metric, decoded, frame body, packed?), per bucket in
            // spool order: packed until the allowance lacks the extra bytes.
            type Spooled = (u64, u64, Vec<u8>, Vec<u8>, bool);
            let mut want: Vec<Vec<Spooled>> = vec![Vec::new(); 4];
            let mut left = allowance;
            for (i, (org, metric, h, decoded, body)) in payloads.iter().enumerate() {
                r.spool(1, i as u64 * 10, h, decoded, body).unwrap();
                let packed = left > 0 && left >= extras[i];
                // The first payload the allowance cannot take spends it.
                left = if packed { left - extras[i] } else { 0 };
                let b = r.bucket(*org, *metric) as usize;
                want[b].push((*org, *metric, decoded.clone(), body.clone(), packed));
            }
            r.finish().unwrap();
            let (mut total, mut packed) = (0, 0);
            for b in 0..4 {
                let s = r.stats(b);
                if s.frames == 0 {
                    assert!(!r.path(b).exists());
                    continue;
                }
                let (bytes, frames) = read_spool(&r.path(b)).unwrap();
                let got: Vec<Spooled> = frames
                    .iter()
                    .zip(&want[b as usize])
                    .map(|(f, w)| {
                        let body = bytes[f.body.clone()].to_vec();
                        assert_eq!(f.content_size as usize, w.2.len());
                        if f.packed {
                            (
                                f.org_id,
                                f.metric_id,
                                unpacked(&body, w.2.len()),
                                w.3.clone(),
                                true,
                            )
                        } else {
                            (f.org_id, f.metric_id, w.2.clone(), body, false)
                        }
                    })
                    .collect();
                assert_eq!(got, want[b as usize]);
                assert_eq!(s.frames, frames.len() as u64);
                assert_eq!(s.packed, frames.iter().filter(|f| f.packed).count() as u64);
                assert_eq!(
                    s.decoded,
                    frames
                        .iter()
                        .map(|f| u64::from(f.content_size))
                        .sum::<u64>()
                );
                // Read a record or so at a time, the same records.
                let mut reader = SpoolReader::open(&r.path(b), 50).unwrap();
                let mut again = Vec::new();
                while let Some((chunk, fs)) = reader.next_chunk().unwrap() {
                    again.extend(
                        fs.iter()
                            .map(|f| (f.org_id, f.packed, chunk[f.body.clone()].to_vec())),
                    );
                }
                let whole: Vec<_> = frames
                    .iter()
                    .map(|f| (f.org_id, f.packed, bytes[f.body.clone()].to_vec()))
                    .collect();
                assert_eq!(again, whole);
                total += frames.len();
                packed += s.packed;
                let parts = split_spool(&r.path(b), 3, 1, 100).unwrap();
                let n: u64 = parts.iter().map(|(_, _, s)| s.frames).sum();
                assert_eq!(n, s.frames);
                assert_eq!(
                    parts.iter().map(|(_, _, s)| s.packed).sum::<u64>(),
                    s.packed
                );
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
            match allowance {
                0 => assert_eq!(packed, 0),
                u64::MAX => assert_eq!(packed, 100),
                _ => assert!(
                    packed > 0 && packed < 100,
                    "{packed} packed within the allowance"
                ),
            }
            if allowance != u64::MAX {
                let stored: u64 = (0..4).map(|b| r.stats(b).bytes).sum();
                let frames: u64 = payloads.iter().map(|p| p.4.len() as u64).sum();
                let used = stored.saturating_sub(frames);
                assert!(
                    used <= allowance,
                    "{used} extra bytes on disk, {allowance} allowed"
                );
            }
            // Chunks handed over (`next_owned`, the spare buffer reused)
            // hold the records read in place, a record begun past a chunk
            // carried into the next.
            let p = r.path(r.bucket(0, 0));
            let records = |chunk: usize, owned: bool| {
                let mut reader = SpoolReader::open(&p, chunk).unwrap();
                let mut out = Vec::new();
                let mut spare = Vec::new();
                loop {
                    let (bytes, frames) = if owned {
                        match reader.next_owned(std::mem::take(&mut spare)).unwrap() {
                            Some(c) => c,
                            None => break,
                        }
                    } else {
                        match reader.next_chunk().unwrap() {
                            Some((b, f)) => (b.to_vec(), f),
                            None => break,
                        }
                    };
                    for f in &frames {
                        out.push((f.object, f.frame_offset, bytes[f.body.clone()].to_vec()));
                    }
                    spare = bytes;
                }
                out
            };
            let want = records(10, false);
            assert!(!want.is_empty());
            for chunk in [10, 100, 1000] {
                assert!(records(chunk, true) == want, "chunks of {chunk} bytes");
            }
            // A truncated spool is an I/O error naming the file and the byte.
            let len = std::fs::metadata(&p).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(len - 1)
                .unwrap();
            let e = read_spool(&p).unwrap_err();
            assert!(e.to_string().contains("is truncated at byte"), "{e}");
            let mut reader = SpoolReader::open(&p, 10).unwrap();
            let e = loop {
                match reader.next_chunk() {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("the truncated record went unnoticed"),
                    Err(e) => break e,
                }
            };
            assert!(e.to_string().contains("is truncated at byte"), "{e}");
            let mut reader = SpoolReader::open(&p, 100).unwrap();
            let e = loop {
                match reader.next_owned(Vec::new()) {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("the truncated record went unnoticed"),
                    Err(e) => break e,
                }
            };
            assert!(e.to_string().contains("is truncated at byte"), "{e}");
        }
    }

    #[test]
    fn the_packed_form_keeps_room_on_the_spill_disk() {
        // 100 GB free, 30 GB of frames to spool: 33 + 10 set aside.
        assert_eq!(packed_allowance(100_000, 30_000), 57_000);
        assert_eq!(packed_allowance(36_000, 30_000), 0);
    }
}
