//! Encode: the fourth step of the shard job (see `run.rs`). Merged series
//! are encoded into TSF blocks on all cores and appended, in key order, to
//! size-capped data files staged in a local directory, on a writer thread
//! of their own so that encoding overlaps the scan and the grouping sort.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use rayon::prelude::*;
use std::collections::BTreeMap;

use crate::job::migration::{Migration, Role};

use crate::format::tsf::{self, FileWriter, SeriesHeader, WriterOptions};
use crate::job::error::{IoContext, JobError};
use crate::job::measure::Phase;
use crate::job::merge::{MergeBuffers, MergeCounts, MergedSeries, SeriesInput};

/// How data files are written.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// A file is closed at the first series boundary at or past this size
    /// (so a file exceeds it by at most one series).
    pub max_file_bytes: u64,
    pub writer: WriterOptions,
    /// Most points held by one parallel encoding round (memory bound).
    pub round_points: usize,
    /// Which points are this run's to write (`tailor run --role`):
    /// `None` for every point.
    pub keep: Option<(Role, Arc<Migration>)>,
    /// The series parts the window is written in (`--parts`; 1: one).
    pub parts: u32,
}

/// A data file staged locally, ready to upload. (A cluster's part writer
/// sends it to the client as JSON, without its local path.)
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StagedFile {
    pub name: String,
    #[serde(skip)]
    pub local: PathBuf,
    /// Where it was uploaded already, not yet committed (a cluster run's
    /// pending directory, relative to the output root): the commit moves
    /// it within the store instead of uploading `local`.
    pub remote: Option<String>,
    pub bytes: u64,
    pub crc32c: u32,
    pub series: u64,
    pub points: u64,
    pub first_series: [u64; 2],
    pub last_series: [u64; 2],
    /// The series part it holds (when the window is in parts).
    pub part: Option<u32>,
}

/// What the writer thread produced.
#[derive(Debug, Clone)]
pub struct Staged {
    pub files: Vec<StagedFile>,
    pub series: u64,
    pub points: u64,
    /// What merging the series dropped.
    pub merge: MergeCounts,
    /// Points left to the other system, per org (`--role new|old`).
    pub left_to_other: BTreeMap<u64, u64>,
    pub encode_phase: Phase,
}

/// Where encoded series go, in key order: the staged data files, or an
/// encoded spool of one group of series (merged into the files at the end).
pub trait Sink: Send + 'static {
    fn append(&mut self, h: &SeriesHeader<'_>, e: tsf::EncodedSeries) -> Result<(), JobError>;
    /// Every series sent before [`OutputWriter::mark`] is appended: the
    /// end of a group of series.
    fn mark(&mut self) -> Result<(), JobError> {
        Ok(())
    }
}

/// What the encoder thread receives.
enum Item {
    Series(SeriesInput),
    Mark,
}

/// What encoding a stream of series did besides what its sink holds.
#[derive(Debug, Clone, Default)]
pub struct EncodeTotals {
    pub series: u64,
    pub points: u64,
    pub merge: MergeCounts,
    pub left_to_other: BTreeMap<u64, u64>,
    /// Time spent merging and encoding on the worker threads, and
    /// appending on the writer thread.
    pub busy: std::time::Duration,
    pub wall: std::time::Duration,
}

impl EncodeTotals {
    pub fn add(&mut self, o: &EncodeTotals) {
        self.series += o.series;
        self.points += o.points;
        self.merge.add(&o.merge);
        for (org, n) in &o.left_to_other {
            *self.left_to_other.entry(*org).or_default() += n;
        }
        self.busy += o.busy;
        self.wall += o.wall;
    }
}

/// Merges and encodes series into a [`Sink`] on its own thread, so that
/// encoding overlaps with whatever hands it the series.
pub struct OutputWriter<S: Sink> {
    tx: Option<SyncSender<Item>>,
    backlog: Arc<Backlog>,
    handle: Option<JoinHandle<Result<(S, EncodeTotals), JobError>>>,
}

/// Points handed to the encoder and not yet taken into a round: `send`
/// waits while they exceed two rounds, so the queue holds a bounded number
/// of points whatever the series sizes (a single series over that bound
/// still goes through, alone).
struct Backlog {
    state: std::sync::Mutex<(u64, bool)>, // (queued points, encoder gone)
    changed: std::sync::Condvar,
    max: u64,
}

impl Backlog {
    fn add(&self, n: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.0 > 0 && st.0 + n > self.max && !st.1 {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.0 += n;
    }
    fn take(&self, n: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = st.0.saturating_sub(n);
        self.changed.notify_all();
    }
    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.changed.notify_all();
    }
}

impl<S: Sink> OutputWriter<S> {
    pub fn spawn(sink: S, opts: FileOptions) -> Self {
        let (tx, rx) = sync_channel::<Item>(1024);
        let backlog = Arc::new(Backlog {
            state: std::sync::Mutex::new((0, false)),
            changed: std::sync::Condvar::new(),
            max: 2 * opts.round_points as u64,
        });
        let b = Arc::clone(&backlog);
        let handle = std::thread::Builder::new()
            .name("tailor-encode".into())
            .spawn(move || {
                let r = encode_loop(sink, opts, rx, &b);
                b.close();
                r
            })
            .expect("spawning the encoder thread");
        Self {
            tx: Some(tx),
            backlog,
            handle: Some(handle),
        }
    }

    /// Hands one series to the encoder (blocks while it is two rounds of
    /// points behind).
    /// When the encoder stopped early, this returns why (a full staging
    /// disk, say), not merely that it stopped.
    pub fn send(&mut self, s: SeriesInput) -> Result<(), JobError> {
        self.backlog.add(s.n_points() as u64);
        self.put(Item::Series(s))
    }

    /// Ends a group of series: the sink's [`Sink::mark`] runs once every
    /// series sent before is appended.
    pub fn mark(&mut self) -> Result<(), JobError> {
        self.put(Item::Mark)
    }

    fn put(&mut self, item: Item) -> Result<(), JobError> {
        let tx = self.tx.as_ref().expect("writer open");
        if tx.send(item).is_ok() {
            return Ok(());
        }
        drop(self.tx.take());
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(JobError::Internal("encoder thread panicked".into())),
            Some(Ok(Ok(_))) | None => Err(JobError::Internal(
                "the encoder thread stopped without an error".into(),
            )),
        }
    }

    /// Waits for the encoder; returns the sink and what was encoded.
    pub fn finish(mut self) -> Result<(S, EncodeTotals), JobError> {
        drop(self.tx.take());
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(JobError::Internal("encoder thread panicked".into())),
            None => Err(JobError::Internal(
                "the encoder thread already stopped".into(),
            )),
        }
    }
}

impl<S: Sink> Drop for OutputWriter<S> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct OpenFile {
    writer: FileWriter<std::io::BufWriter<std::fs::File>>,
    part: Option<u32>,
    name: String,
    local: PathBuf,
    series: u64,
    points: u64,
    first: [u64; 2],
    last: [u64; 2],
}

/// Most series (and points) encoded in one parallel round.
const ROUND_SERIES: usize = 1024;

/// One series of a round, merged and encoded: the merged series' header,
/// what merging dropped, its points left to the other system, and its
/// encoding (`None`: every point was the other system's).
type Done = (
    MergedSeries,
    MergeCounts,
    u64,
    Option<Result<tsf::EncodedSeries, tsf::TsfError>>,
);

/// A round handed to the worker threads: its series come back on `rx`,
/// and `mark` says whether a mark follows it.
struct InFlight {
    rx: Receiver<Vec<Done>>,
    mark: bool,
}

fn encode_loop<S: Sink>(
    mut sink: S,
    opts: FileOptions,
    rx: Receiver<Item>,
    backlog: &Backlog,
) -> Result<(S, EncodeTotals), JobError> {
    let wall = Instant::now();
    // Time spent encoding on the worker threads (compute-bound, so this is
    // their CPU time) plus appending on this one.
    let busy = Arc::new(AtomicU64::new(0));
    let mut totals = EncodeTotals::default();
    // Take what the merger has produced (at least one series), encode it on
    // all cores, append in order. Encoding is a pure function of each
    // series, so the bytes do not depend on how series fall into rounds.
    // This thread appends one round while the worker threads encode the
    // next: appending on its own left both cores idle for 1% of the CPU.
    let mut in_flight: Option<InFlight> = None;
    loop {
        let next = match in_flight {
            // A round is being encoded: start the next one if its first
            // series is there, else append the round before waiting.
            Some(_) => match rx.try_recv() {
                Ok(item) => Some(item),
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    append_round(&mut sink, &mut totals, &busy, in_flight.take())?;
                    rx.recv().ok()
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
            },
            None => rx.recv().ok(),
        };
        let Some(first) = next else {
            break;
        };
        let first = match first {
            Item::Series(s) => s,
            Item::Mark => {
                append_round(&mut sink, &mut totals, &busy, in_flight.take())?;
                sink.mark()?;
                continue;
            }
        };
        let mut points = first.n_points();
        let mut round = vec![first];
        // A mark ends the round: it applies once the round is appended.
        let mut mark = false;
        while round.len() < ROUND_SERIES && points < opts.round_points {
            match rx.try_recv() {
                Ok(Item::Series(s)) => {
                    points += s.n_points();
                    round.push(s);
                }
                Ok(Item::Mark) => {
                    mark = true;
                    break;
                }
                Err(_) => break,
            }
        }
        backlog.take(points as u64);
        let started = spawn_round(round, &opts, &busy);
        // The round before is appended while this one is encoded.
        append_round(&mut sink, &mut totals, &busy, in_flight.take())?;
        in_flight = Some(InFlight { rx: started, mark });
    }
    append_round(&mut sink, &mut totals, &busy, in_flight.take())?;
    totals.busy = std::time::Duration::from_nanos(busy.load(Ordering::Relaxed));
    totals.wall = wall.elapsed();
    Ok((sink, totals))
}

/// Merges (sorts, deduplicates) and encodes each series of `round` on the
/// worker threads, each thread in buffers it keeps from series to series;
/// the round's series come back, in order, on the receiver.
fn spawn_round(
    round: Vec<SeriesInput>,
    opts: &FileOptions,
    busy: &Arc<AtomicU64>,
) -> Receiver<Vec<Done>> {
    let (tx, rx) = sync_channel(1);
    let (writer, keep, busy) = (opts.writer, opts.keep.clone(), Arc::clone(busy));
    rayon::spawn(move || {
        // A panic on a worker thread would abort the process; caught, it
        // drops `tx`, and the encoder thread reports an internal error.
        let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            encode_round(round, writer, keep.as_ref(), &busy)
        }));
        if let Ok(encoded) = encoded {
            // The encoder thread gone (it failed): nothing to hand back.
            let _ = tx.send(encoded);
        }
    });
    rx
}

/// [`spawn_round`]'s work, on the worker threads.
fn encode_round(
    round: Vec<SeriesInput>,
    writer: WriterOptions,
    keep: Option<&(Role, Arc<Migration>)>,
    busy: &AtomicU64,
) -> Vec<Done> {
    thread_local! {
        static BUFS: std::cell::RefCell<MergeBuffers> = Default::default();
    }
    // Only ever `panic` (debug builds): the error path of a worker's bug.
    if let Err(e) = crate::job::faults::fail_point("encode.round") {
        panic!("{e}");
    }
    round
        .into_par_iter()
        .map(|s| {
            BUFS.with_borrow_mut(|bufs| {
                let (m, counts) = s.merge_into(bufs);
                // The run's own points only; the rest is the other
                // system's.
                let r = match keep {
                    Some((role, migration)) => migration.kept(*role, m.org_id, &bufs.timestamps),
                    None => 0..bufs.timestamps.len(),
                };
                let left = (bufs.timestamps.len() - r.len()) as u64;
                if r.is_empty() {
                    // Every point of the series is the other system's.
                    return (m, counts, left, None);
                }
                let t = Instant::now();
                let e = tsf::encode_series(
                    &writer,
                    &header(&m),
                    &bufs.timestamps[r.clone()],
                    &bufs.values[r],
                );
                busy.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                (m, counts, left, Some(e))
            })
        })
        .collect()
}

/// Appends a round's series in order (and applies its mark), once the
/// worker threads have encoded it.
fn append_round<S: Sink>(
    sink: &mut S,
    totals: &mut EncodeTotals,
    busy: &AtomicU64,
    round: Option<InFlight>,
) -> Result<(), JobError> {
    let Some(InFlight { rx, mark }) = round else {
        return Ok(());
    };
    let encoded = rx
        .recv()
        .map_err(|_| JobError::Internal("encoding a round of series panicked".into()))?;
    let t = Instant::now();
    for (s, counts, left, e) in encoded {
        totals.merge.add(&counts);
        if left > 0 {
            *totals.left_to_other.entry(s.org_id).or_default() += left;
        }
        let Some(e) = e else {
            continue;
        };
        // The merged series is the writer's own input: one it refuses
        // is a bug, not bad data.
        let e = e.map_err(|e| {
            JobError::Internal(format!("encoding series {}/{}: {e}", s.org_id, s.metric_id))
        })?;
        totals.series += 1;
        totals.points += e.points;
        sink.append(&header(&s), e)?;
    }
    if mark {
        sink.mark()?;
    }
    busy.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    Ok(())
}

fn header(s: &MergedSeries) -> SeriesHeader<'_> {
    SeriesHeader {
        org_id: s.org_id,
        metric_id: s.metric_id,
        kind: s.kind,
        interval_s: s.interval_s,
        metadata: &s.metadata,
    }
}

/// The staged data files: series appended in key order, a file closed at
/// the first series boundary past the size cap. A window in parts gets its
/// series part after part (each part in key order), each part's files
/// named `p<part>-<n>.tsf`; otherwise they are `part-<n>.tsf`.
pub struct Files {
    dir: PathBuf,
    opts: FileOptions,
    files: Vec<StagedFile>,
    open: Option<OpenFile>,
    /// The part being written, and files of it so far.
    part: u32,
    in_part: usize,
}

impl Files {
    /// Files staged under `dir`.
    pub fn new(dir: PathBuf, opts: FileOptions) -> Self {
        Self {
            dir,
            opts,
            files: Vec::new(),
            open: None,
            part: 0,
            in_part: 0,
        }
    }

    /// The order series must reach the files in: part, then key.
    pub fn order(parts: u32, org_id: u64, metric_id: u64) -> (u32, u64, u64) {
        (
            crate::format::part::part_of(org_id, metric_id, parts),
            org_id,
            metric_id,
        )
    }

    /// Sorts series keys into the order of [`Self::order`].
    pub fn sort_keys(parts: u32, keys: &mut [(u64, u64)]) {
        if parts > 1 {
            keys.sort_by_cached_key(|k| Self::order(parts, k.0, k.1));
        } else {
            keys.sort_unstable();
        }
    }

    /// Closes the last file; what was staged, with the encoding's totals.
    pub fn finish(mut self, totals: EncodeTotals, phase: Phase) -> Result<Staged, JobError> {
        if let Some(f) = self.open.take() {
            self.files.push(close(f)?);
        }
        Ok(Staged {
            files: self.files,
            series: totals.series,
            points: totals.points,
            merge: totals.merge,
            left_to_other: totals.left_to_other,
            encode_phase: phase,
        })
    }
}

impl Sink for Files {
    fn append(&mut self, h: &SeriesHeader<'_>, e: tsf::EncodedSeries) -> Result<(), JobError> {
        let parts = self.opts.parts;
        let part = crate::format::part::part_of(h.org_id, h.metric_id, parts);
        if part != self.part {
            // The next part: its own files.
            if part < self.part {
                return Err(JobError::Internal(format!(
                    "series {}/{} of part {part} reached the files after part {}",
                    h.org_id, h.metric_id, self.part
                )));
            }
            if let Some(f) = self.open.take() {
                self.files.push(close(f)?);
            }
            self.part = part;
            self.in_part = 0;
        }
        if self.open.is_none() {
            let name = if parts > 1 {
                format!("p{part:04}-{:05}.tsf", self.in_part)
            } else {
                format!("part-{:05}.tsf", self.files.len())
            };
            self.in_part += 1;
            let local = self.dir.join(&name);
            let f = std::fs::File::create(&local)
                .at(format_args!("creating staged file {}", local.display()))?;
            self.open = Some(OpenFile {
                writer: FileWriter::new(
                    std::io::BufWriter::with_capacity(1 << 20, f),
                    self.opts.writer,
                )
                .map_err(staging(&local))?,
                part: (parts > 1).then_some(part),
                name,
                local,
                series: 0,
                points: 0,
                first: [h.org_id, h.metric_id],
                last: [h.org_id, h.metric_id],
            });
        }
        let f = self.open.as_mut().expect("open file");
        let points = e.points;
        f.writer.add_encoded(h, e).map_err(staging(&f.local))?;
        f.series += 1;
        f.points += points;
        f.last = [h.org_id, h.metric_id];
        // The file as it would be closed now, footer and trailer included.
        if f.writer.estimated_final_size() >= self.opts.max_file_bytes {
            let f = self.open.take().expect("open file");
            self.files.push(close(f)?);
        }
        Ok(())
    }
}

/// One group's encoded series, in key order, in a scratch file: what a
/// group of series the job encodes apart (a spooled bucket) leaves for the
/// final merge into the data files.
///
/// Record (little-endian; this module's own, never read elsewhere):
/// `org u64 | metric u64 | kind u8 | interval u32 | meta_len u32 | meta |
/// points u64 | blocks u32 | (codec u8 | n_points u32 | min_ts i64 |
/// max_ts i64 | len u32 | bytes)*`.
pub struct EncodedSpool {
    path: PathBuf,
    w: std::io::BufWriter<std::fs::File>,
    pub series: u64,
    pub bytes: u64,
    /// Where the current group began, and the groups written so far (each
    /// in key order; one k-way merge takes them all).
    start: u64,
    segments: Vec<std::ops::Range<u64>>,
}

impl EncodedSpool {
    pub fn create(path: PathBuf, buffer: usize) -> Result<Self, JobError> {
        let f = std::fs::File::create(&path)
            .at(format_args!("creating spool file {}", path.display()))?;
        Ok(Self {
            w: std::io::BufWriter::with_capacity(buffer.max(4096), f),
            path,
            series: 0,
            bytes: 0,
            start: 0,
            segments: Vec::new(),
        })
    }

    /// Groups written so far.
    pub fn groups(&self) -> usize {
        self.segments.len()
    }

    /// Flushes the file; returns its path and its groups' byte ranges.
    pub fn close(mut self) -> Result<(PathBuf, Vec<std::ops::Range<u64>>), JobError> {
        self.mark()?;
        self.w
            .flush()
            .at(format_args!("writing spool file {}", self.path.display()))?;
        Ok((self.path, self.segments))
    }
}

impl Sink for EncodedSpool {
    fn append(&mut self, h: &SeriesHeader<'_>, e: tsf::EncodedSeries) -> Result<(), JobError> {
        let mut rec = Vec::with_capacity(40 + h.metadata.len() + e.blocks.len() * 32);
        rec.extend_from_slice(&h.org_id.to_le_bytes());
        rec.extend_from_slice(&h.metric_id.to_le_bytes());
        rec.push(h.kind);
        rec.extend_from_slice(&h.interval_s.to_le_bytes());
        rec.extend_from_slice(&(h.metadata.len() as u32).to_le_bytes());
        rec.extend_from_slice(h.metadata.as_bytes());
        rec.extend_from_slice(&e.points.to_le_bytes());
        rec.extend_from_slice(&(e.blocks.len() as u32).to_le_bytes());
        let what = format_args!("writing spool file {}", self.path.display());
        self.w.write_all(&rec).at(what)?;
        self.bytes += rec.len() as u64;
        for b in &e.blocks {
            let mut head = [0u8; 25];
            head[0] = b.codec;
            head[1..5].copy_from_slice(&b.n_points.to_le_bytes());
            head[5..13].copy_from_slice(&b.min_ts.to_le_bytes());
            head[13..21].copy_from_slice(&b.max_ts.to_le_bytes());
            head[21..25].copy_from_slice(&(b.bytes.len() as u32).to_le_bytes());
            self.w.write_all(&head).at(what)?;
            self.w.write_all(&b.bytes).at(what)?;
            self.bytes += 25 + b.bytes.len() as u64;
        }
        self.series += 1;
        Ok(())
    }

    fn mark(&mut self) -> Result<(), JobError> {
        if self.bytes > self.start {
            self.segments.push(self.start..self.bytes);
            self.start = self.bytes;
        }
        Ok(())
    }
}

/// One series read back from an encoded spool.
struct SpooledSeries {
    org_id: u64,
    metric_id: u64,
    kind: u8,
    interval_s: u32,
    metadata: String,
    encoded: tsf::EncodedSeries,
}

/// Reads an encoded spool's series in order.
struct SpoolReader {
    path: PathBuf,
    r: std::io::BufReader<std::io::Take<std::fs::File>>,
    block_points: usize,
}

impl SpoolReader {
    fn open(
        path: &std::path::Path,
        segment: std::ops::Range<u64>,
        buffer: usize,
        block_points: usize,
    ) -> Result<Self, JobError> {
        use std::io::{Read, Seek};
        let what = format_args!("reading spool file {}", path.display());
        let mut f = std::fs::File::open(path).at(what)?;
        f.seek(std::io::SeekFrom::Start(segment.start)).at(what)?;
        Ok(Self {
            r: std::io::BufReader::with_capacity(
                buffer.max(4096),
                f.take(segment.end - segment.start),
            ),
            path: path.to_path_buf(),
            block_points,
        })
    }

    fn next(&mut self) -> Result<Option<SpooledSeries>, JobError> {
        use std::io::Read;
        let what = format_args!("reading spool file {}", self.path.display());
        let mut head = [0u8; 25];
        // The end of the file, or a whole record.
        match self.r.read(&mut head[..1]).at(what)? {
            0 => return Ok(None),
            _ => self.r.read_exact(&mut head[1..25]).at(what)?,
        }
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
        let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
        let (org_id, metric_id, kind) = (u64_at(&head, 0), u64_at(&head, 8), head[16]);
        let interval_s = u32_at(&head, 17);
        let meta_len = u32_at(&head, 21) as usize;
        let mut meta = vec![0u8; meta_len];
        self.r.read_exact(&mut meta).at(what)?;
        let metadata = String::from_utf8(meta).map_err(|_| {
            JobError::Internal(format!(
                "spool file {}: metadata not UTF-8",
                self.path.display()
            ))
        })?;
        let mut tail = [0u8; 12];
        self.r.read_exact(&mut tail).at(what)?;
        let points = u64_at(&tail, 0);
        let n_blocks = u32_at(&tail, 8) as usize;
        let mut blocks = Vec::with_capacity(n_blocks);
        for _ in 0..n_blocks {
            let mut b = [0u8; 25];
            self.r.read_exact(&mut b).at(what)?;
            let mut bytes = vec![0u8; u32_at(&b, 21) as usize];
            self.r.read_exact(&mut bytes).at(what)?;
            blocks.push(tsf::EncodedBlock {
                codec: b[0],
                n_points: u32_at(&b, 1),
                min_ts: u64_at(&b, 5) as i64,
                max_ts: u64_at(&b, 13) as i64,
                bytes,
            });
        }
        Ok(Some(SpooledSeries {
            org_id,
            metric_id,
            kind,
            interval_s,
            metadata,
            encoded: tsf::EncodedSeries {
                block_points: self.block_points,
                points,
                blocks,
            },
        }))
    }
}

/// Appends the series of every group of an encoded spool to `files`, in
/// key order (a k-way merge; the groups hold disjoint series, each in key
/// order).
pub fn merge_spool(
    path: &std::path::Path,
    segments: &[std::ops::Range<u64>],
    buffer: usize,
    files: &mut Files,
) -> Result<(), JobError> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let block_points = files.opts.writer.block_points;
    let parts = files.opts.parts;
    let order = |s: &SpooledSeries| Files::order(parts, s.org_id, s.metric_id);
    let mut readers = segments
        .iter()
        .map(|s| SpoolReader::open(path, s.clone(), buffer, block_points))
        .collect::<Result<Vec<_>, _>>()?;
    let mut heads: Vec<Option<SpooledSeries>> = Vec::with_capacity(readers.len());
    let mut heap = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        let s = r.next()?;
        if let Some(s) = &s {
            heap.push(Reverse((order(s), i)));
        }
        heads.push(s);
    }
    let mut last: Option<(u32, u64, u64)> = None;
    while let Some(Reverse((key, i))) = heap.pop() {
        if last.is_some_and(|l| l >= key) {
            return Err(JobError::Internal(format!(
                "series {}/{} is in two spooled groups, or out of order",
                key.1, key.2
            )));
        }
        last = Some(key);
        let s = heads[i].take().expect("a head for every heap entry");
        files.append(
            &SeriesHeader {
                org_id: s.org_id,
                metric_id: s.metric_id,
                kind: s.kind,
                interval_s: s.interval_s,
                metadata: &s.metadata,
            },
            s.encoded,
        )?;
        let next = readers[i].next()?;
        if let Some(n) = &next {
            heap.push(Reverse((order(n), i)));
        }
        heads[i] = next;
    }
    Ok(())
}

/// A writer error while staging `path`: I/O (a full or failing staging
/// disk: exit 74), or a bug.
fn staging(path: &std::path::Path) -> impl Fn(tsf::TsfError) -> JobError + '_ {
    move |e| match e {
        tsf::TsfError::Io(io) => {
            JobError::io(format_args!("writing staged file {}", path.display()), io)
        }
        other => JobError::Internal(format!("staging {}: {other}", path.display())),
    }
}

fn close(f: OpenFile) -> Result<StagedFile, JobError> {
    let (w, summary) = f.writer.finish().map_err(staging(&f.local))?;
    let what = format_args!("writing staged file {}", f.local.display());
    let mut file = w
        .into_inner()
        .map_err(|e| JobError::io(what, e.into_error()))?;
    file.flush().at(what)?;
    Ok(StagedFile {
        name: f.name,
        local: f.local,
        remote: None,
        bytes: summary.bytes,
        crc32c: summary.crc32c,
        series: f.series,
        points: f.points,
        first_series: f.first,
        last_series: f.last,
        part: f.part,
    })
}
