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
    /// The series appended from now on (after [`OutputWriter::last`]) are
    /// the last group's.
    fn last(&mut self) -> Result<(), JobError> {
        Ok(())
    }
}

/// What the encoder thread receives.
enum Item {
    Series(SeriesInput),
    Boundary(Boundary),
}

/// Where a group of series ends or the last group begins; applied once
/// every series sent before it is appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boundary {
    Mark,
    Last,
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
        self.put(Item::Boundary(Boundary::Mark))
    }

    /// Begins the last group of series: the sink's [`Sink::last`] runs
    /// once every series sent before is appended.
    pub fn last(&mut self) -> Result<(), JobError> {
        self.put(Item::Boundary(Boundary::Last))
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

/// Rounds handed to the worker threads and not yet appended, at most.
const ROUNDS_IN_FLIGHT: usize = 3;

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
/// and `then` is the boundary that follows it, if one does.
struct InFlight {
    rx: Receiver<Vec<Done>>,
    then: Option<Boundary>,
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
    // next ones: appending on its own left both cores idle for 1% of the
    // CPU. Up to three rounds are in flight: with two, a round's last
    // series left a core idle whenever the queue was empty as the round
    // before was appended (a tenth of the encoding's samples on the 2 GiB
    // benchmark input had one core idle).
    let mut in_flight: std::collections::VecDeque<InFlight> = Default::default();
    loop {
        let next = if in_flight.len() >= ROUNDS_IN_FLIGHT {
            None
        } else if in_flight.is_empty() {
            match rx.recv() {
                Ok(item) => Some(item),
                Err(_) => break,
            }
        } else {
            match rx.try_recv() {
                Ok(item) => Some(item),
                Err(std::sync::mpsc::TryRecvError::Empty) => None,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            }
        };
        // As many rounds in flight as allowed, or nothing queued: the
        // oldest round is appended (once encoded) before anything else.
        let Some(first) = next else {
            append_round(&mut sink, &mut totals, &busy, in_flight.pop_front())?;
            continue;
        };
        let first = match first {
            Item::Series(s) => s,
            Item::Boundary(b) => {
                while let Some(r) = in_flight.pop_front() {
                    append_round(&mut sink, &mut totals, &busy, Some(r))?;
                }
                apply(&mut sink, b)?;
                continue;
            }
        };
        let mut points = first.n_points();
        let mut round = vec![first];
        // A boundary ends the round: it applies once the round is appended.
        let mut then = None;
        while round.len() < ROUND_SERIES && points < opts.round_points {
            match rx.try_recv() {
                Ok(Item::Series(s)) => {
                    points += s.n_points();
                    round.push(s);
                }
                Ok(Item::Boundary(b)) => {
                    then = Some(b);
                    break;
                }
                Err(_) => break,
            }
        }
        backlog.take(points as u64);
        let started = spawn_round(round, &opts, &busy);
        in_flight.push_back(InFlight { rx: started, then });
    }
    while let Some(r) = in_flight.pop_front() {
        append_round(&mut sink, &mut totals, &busy, Some(r))?;
    }
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
    let Some(InFlight { rx, then }) = round else {
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
    if let Some(b) = then {
        apply(sink, b)?;
    }
    busy.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    Ok(())
}

fn apply<S: Sink>(sink: &mut S, b: Boundary) -> Result<(), JobError> {
    match b {
        Boundary::Mark => sink.mark(),
        Boundary::Last => sink.last(),
    }
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

    /// Ends the current group and flushes the file; returns the groups'
    /// byte ranges so far.
    fn flush_groups(&mut self) -> Result<Vec<std::ops::Range<u64>>, JobError> {
        self.mark()?;
        self.w
            .flush()
            .at(format_args!("writing spool file {}", self.path.display()))?;
        Ok(self.segments.clone())
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

impl SpooledSeries {
    fn append_to(self, files: &mut Files) -> Result<(), JobError> {
        let Self {
            org_id,
            metric_id,
            kind,
            interval_s,
            metadata,
            encoded,
        } = self;
        let h = SeriesHeader {
            org_id,
            metric_id,
            kind,
            interval_s,
            metadata: &metadata,
        };
        files.append(&h, encoded)
    }
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

/// Where a series goes in the files: [`Files::order`].
type SeriesOrder = (u32, u64, u64);

/// A k-way merge by series key of an encoded spool's groups (disjoint
/// series, each group in key order) into the files, together with the
/// series of a last group that is not spooled, appended as they come.
struct SpoolMerge {
    readers: Vec<SpoolReader>,
    heads: Vec<Option<SpooledSeries>>,
    /// The next key of each group that has one, and the group.
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(SeriesOrder, usize)>>,
    /// The key last appended to the files.
    last: Option<SeriesOrder>,
    parts: u32,
}

impl SpoolMerge {
    fn open(
        path: &std::path::Path,
        segments: &[std::ops::Range<u64>],
        buffer: usize,
        files: &Files,
    ) -> Result<Self, JobError> {
        let block_points = files.opts.writer.block_points;
        let mut m = Self {
            readers: Vec::with_capacity(segments.len()),
            heads: Vec::with_capacity(segments.len()),
            heap: std::collections::BinaryHeap::new(),
            last: None,
            parts: files.opts.parts,
        };
        for (i, s) in segments.iter().enumerate() {
            let mut r = SpoolReader::open(path, s.clone(), buffer, block_points)?;
            let head = r.next()?;
            if let Some(h) = &head {
                m.heap
                    .push(std::cmp::Reverse((m.order(h.org_id, h.metric_id), i)));
            }
            m.readers.push(r);
            m.heads.push(head);
        }
        Ok(m)
    }

    fn order(&self, org_id: u64, metric_id: u64) -> SeriesOrder {
        Files::order(self.parts, org_id, metric_id)
    }

    /// Records that `key` reaches the files next: an error unless it is
    /// past the last key appended.
    fn next_key(&mut self, key: SeriesOrder) -> Result<(), JobError> {
        if self.last.is_some_and(|l| l >= key) {
            return Err(JobError::Internal(format!(
                "series {}/{} is in two groups, or out of order",
                key.1, key.2
            )));
        }
        self.last = Some(key);
        Ok(())
    }

    /// Appends the spooled series before `until` (all of them: `None`) to
    /// `files`, in key order.
    fn append_until(
        &mut self,
        until: Option<SeriesOrder>,
        files: &mut Files,
    ) -> Result<(), JobError> {
        while let Some(&std::cmp::Reverse((key, i))) = self.heap.peek() {
            if until.is_some_and(|u| key >= u) {
                break;
            }
            self.heap.pop();
            self.next_key(key)?;
            let s = self.heads[i].take().expect("a head for every heap entry");
            s.append_to(files)?;
            let next = self.readers[i].next()?;
            if let Some(n) = &next {
                let key = self.order(n.org_id, n.metric_id);
                self.heap.push(std::cmp::Reverse((key, i)));
            }
            self.heads[i] = next;
        }
        Ok(())
    }
}

/// The sink of a job that encodes its series in groups (a group of
/// resident buckets, then each spooled bucket): each group's series go to
/// an encoded spool, except the last group's, which a thread of its own
/// merges with the spooled groups straight into the files as they are
/// encoded. The merge then overlaps the last group's encoding instead of
/// following it on one thread with the other core idle (it was the job's
/// last 0.4 s on the 2 GiB benchmark input), and the last group is never
/// written to the spool and read back.
pub struct Staging {
    spool: EncodedSpool,
    /// The files, until the last group's merge thread takes them.
    files: Option<Files>,
    last_group: Option<LastGroup>,
    /// The read buffer of each group's reader, by the number of groups.
    read_buffer: Box<dyn Fn(usize) -> usize + Send>,
    /// Groups merged into the files, the last one included.
    groups: u64,
}

/// The thread that merges the last group's series with the spooled groups
/// into the files.
struct LastGroup {
    tx: Option<SyncSender<SpooledSeries>>,
    handle: Option<JoinHandle<Result<Files, JobError>>>,
    /// Set when the job stopped early: the thread stops instead of
    /// writing out the rest of the spooled groups.
    abandoned: Arc<std::sync::atomic::AtomicBool>,
}

impl LastGroup {
    /// Waits for the merge; returns the files.
    fn join(&mut self) -> Result<Files, JobError> {
        drop(self.tx.take());
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(JobError::Internal("the merging thread panicked".into())),
            None => Err(JobError::Internal(
                "the merging thread already stopped".into(),
            )),
        }
    }
}

impl Drop for LastGroup {
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::Relaxed);
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What staging a job's groups did: the encoded spool's bytes and the
/// groups merged.
pub struct StagingSummary {
    pub encoded_spool_bytes: u64,
    pub groups: u64,
}

/// Series of the last group queued for its merging thread at most.
const LAST_GROUP_QUEUE: usize = 256;

impl Staging {
    pub fn new(
        spool: EncodedSpool,
        files: Files,
        read_buffer: impl Fn(usize) -> usize + Send + 'static,
    ) -> Self {
        Self {
            spool,
            files: Some(files),
            last_group: None,
            read_buffer: Box::new(read_buffer),
            groups: 0,
        }
    }

    /// The merge of the groups spooled so far.
    fn start_merge(&mut self, files: &Files) -> Result<SpoolMerge, JobError> {
        let segments = self.spool.flush_groups()?;
        self.groups += segments.len() as u64;
        let buffer = (self.read_buffer)(segments.len() + 1);
        SpoolMerge::open(&self.spool.path, &segments, buffer, files)
    }

    fn take_files(&mut self) -> Result<Files, JobError> {
        self.files
            .take()
            .ok_or_else(|| JobError::Internal("the staged files are gone".into()))
    }

    /// Merges what is left into the files and deletes the spool; returns
    /// the files.
    pub fn finish(mut self) -> Result<(Files, StagingSummary), JobError> {
        let files = match self.last_group.take() {
            Some(mut last) => last.join()?,
            None => {
                let mut files = self.take_files()?;
                let mut merge = self.start_merge(&files)?;
                merge.append_until(None, &mut files)?;
                files
            }
        };
        let summary = StagingSummary {
            encoded_spool_bytes: self.spool.bytes,
            groups: self.groups,
        };
        let (path, _) = self.spool.close()?;
        let _ = std::fs::remove_file(&path);
        Ok((files, summary))
    }
}

impl Sink for Staging {
    fn append(&mut self, h: &SeriesHeader<'_>, e: tsf::EncodedSeries) -> Result<(), JobError> {
        let Some(last) = &mut self.last_group else {
            return self.spool.append(h, e);
        };
        let s = SpooledSeries {
            org_id: h.org_id,
            metric_id: h.metric_id,
            kind: h.kind,
            interval_s: h.interval_s,
            metadata: h.metadata.to_string(),
            encoded: e,
        };
        let sent = last.tx.as_ref().is_some_and(|tx| tx.send(s).is_ok());
        if sent {
            return Ok(());
        }
        // The merging thread stopped: why.
        match last.join() {
            Err(e) => Err(e),
            Ok(_) => Err(JobError::Internal(
                "the merging thread stopped without an error".into(),
            )),
        }
    }

    fn mark(&mut self) -> Result<(), JobError> {
        match self.last_group {
            Some(_) => Ok(()),
            None => self.spool.mark(),
        }
    }

    fn last(&mut self) -> Result<(), JobError> {
        if self.last_group.is_some() {
            return Ok(());
        }
        let mut files = self.take_files()?;
        let mut merge = self.start_merge(&files)?;
        self.groups += 1;
        let (tx, rx) = sync_channel::<SpooledSeries>(LAST_GROUP_QUEUE);
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = Arc::clone(&abandoned);
        let handle = std::thread::Builder::new()
            .name("tailor-merge".into())
            .spawn(move || {
                for s in rx {
                    let key = merge.order(s.org_id, s.metric_id);
                    merge.append_until(Some(key), &mut files)?;
                    merge.next_key(key)?;
                    s.append_to(&mut files)?;
                }
                if stop.load(Ordering::Relaxed) {
                    return Err(JobError::Internal("the merge was abandoned".into()));
                }
                merge.append_until(None, &mut files)?;
                Ok(files)
            })
            .map_err(|e| JobError::io("starting the merging thread", e))?;
        self.last_group = Some(LastGroup {
            tx: Some(tx),
            handle: Some(handle),
            abandoned,
        });
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn options(parts: u32) -> FileOptions {
        FileOptions {
            // Small files: a group's series cross file boundaries.
            max_file_bytes: 6 << 10,
            writer: WriterOptions {
                block_points: 64,
                ..WriterOptions::default()
            },
            round_points: 500,
            keep: None,
            parts,
        }
    }

    /// A series whose points depend on its key.
    fn series(org_id: u64, metric_id: u64) -> SeriesInput {
        let n = 50 + (org_id * 7 + metric_id * 13) % 200;
        SeriesInput {
            org_id,
            metric_id,
            kind: (metric_id % 2) as u8,
            interval_s: 10,
            metadata: format!("m{metric_id}"),
            points: (0..n as i64)
                .map(|i| (1_700_000_000_000 + i * 10_000, (i as f64 * 0.5).to_bits()))
                .collect(),
            ..Default::default()
        }
    }

    fn sorted(parts: u32, keys: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut keys = keys.to_vec();
        Files::sort_keys(parts, &mut keys);
        keys
    }

    /// Staged files' names and bytes.
    type Contents = Vec<(String, Vec<u8>)>;

    /// The staged files, by name.
    fn contents(files: Files) -> Contents {
        let phase = Phase::measured("encode", Default::default(), Default::default());
        let staged = files.finish(EncodeTotals::default(), phase).unwrap();
        staged
            .files
            .iter()
            .map(|f| (f.name.clone(), std::fs::read(&f.local).unwrap()))
            .collect()
    }

    /// `groups` through an encoded spool and the merge, the last one
    /// merged as it is encoded when `last`.
    fn staged(
        parts: u32,
        groups: &[Vec<(u64, u64)>],
        last: bool,
    ) -> Result<(Contents, StagingSummary), JobError> {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path().join("stage"), options(parts));
        std::fs::create_dir(dir.path().join("stage")).unwrap();
        let spool = EncodedSpool::create(dir.path().join("groups.enc"), 4096)?;
        let mut w = OutputWriter::spawn(Staging::new(spool, files, |_| 4096), options(parts));
        for (i, g) in groups.iter().enumerate() {
            if last && i + 1 == groups.len() {
                w.last()?;
            }
            for &(org, metric) in &sorted(parts, g) {
                w.send(series(org, metric))?;
            }
            w.mark()?;
        }
        let (staging, _) = w.finish()?;
        let (files, summary) = staging.finish()?;
        assert!(!dir.path().join("groups.enc").exists());
        Ok((contents(files), summary))
    }

    /// The same series in one stream, in key order.
    fn direct(parts: u32, groups: &[Vec<(u64, u64)>]) -> Contents {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path().to_path_buf(), options(parts));
        let mut w = OutputWriter::spawn(files, options(parts));
        for (org, metric) in sorted(parts, &groups.concat()) {
            w.send(series(org, metric)).unwrap();
        }
        let (files, _) = w.finish().unwrap();
        contents(files)
    }

    /// Disjoint groups of keys, hashed apart as buckets are.
    fn groups(n: usize, keys: u64) -> Vec<Vec<(u64, u64)>> {
        let mut g = vec![Vec::new(); n];
        for org in 1..=4u64 {
            for metric in 0..keys {
                let h = (org * 0x9E37_79B9 + metric * 0x85EB_CA6B) % 1_000_003;
                g[(h % n as u64) as usize].push((org, metric));
            }
        }
        g
    }

    #[test]
    fn the_last_group_merged_as_it_is_encoded_gives_the_bytes_of_one_stream() {
        for parts in [1, 3] {
            for n in [1, 2, 4] {
                let g = groups(n, 60);
                let want = direct(parts, &g);
                assert!(want.len() > 2, "several files: {}", want.len());
                for last in [false, true] {
                    let (got, summary) = staged(parts, &g, last).unwrap();
                    assert!(got == want, "parts {parts}, {n} groups, last {last}");
                    assert_eq!(summary.groups, n as u64);
                    // The last group streamed is never spooled.
                    let spooled = summary.encoded_spool_bytes;
                    if last {
                        let (_, all) = staged(parts, &g, false).unwrap();
                        assert!(spooled < all.encoded_spool_bytes);
                        if n == 1 {
                            assert_eq!(spooled, 0);
                        }
                    }
                }
            }
        }
        // An empty last group, and an empty spooled one.
        let mut g = groups(3, 40);
        g.push(Vec::new());
        assert!(staged(1, &g, true).unwrap().0 == direct(1, &g));
        g.insert(0, Vec::new());
        assert!(staged(1, &g, true).unwrap().0 == direct(1, &g));
    }

    /// Bytes of the files under `dir`.
    fn bytes_under(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn a_job_stopped_during_the_last_group_does_not_write_out_the_spooled_ones() {
        let g = groups(2, 200);
        let run = |finish: bool| {
            let dir = tempfile::tempdir().unwrap();
            let stage = dir.path().join("stage");
            std::fs::create_dir(&stage).unwrap();
            let files = Files::new(stage.clone(), options(1));
            let spool = EncodedSpool::create(dir.path().join("groups.enc"), 4096).unwrap();
            let mut w = OutputWriter::spawn(Staging::new(spool, files, |_| 4096), options(1));
            for &(org, metric) in &sorted(1, &g[0]) {
                w.send(series(org, metric)).unwrap();
            }
            w.mark().unwrap();
            w.last().unwrap();
            // The last group's first series only.
            let (org, metric) = sorted(1, &g[1])[0];
            w.send(series(org, metric)).unwrap();
            let (staging, _) = w.finish().unwrap();
            if finish {
                staging.finish().unwrap();
            } else {
                // As when the job fails: dropped, not finished.
                drop(staging);
            }
            bytes_under(&stage)
        };
        let whole = run(true);
        let stopped = run(false);
        assert!(stopped * 4 < whole, "{stopped} of {whole} bytes written");
    }

    #[test]
    fn a_series_in_two_groups_is_an_internal_error_not_a_panic() {
        for last in [false, true] {
            let mut g = groups(3, 30);
            let twice = g[0][g[0].len() / 2];
            g[2].push(twice);
            match staged(1, &g, last) {
                Err(JobError::Internal(m)) => {
                    assert!(m.contains(&format!("{}/{}", twice.0, twice.1)), "{m}")
                }
                other => panic!("last {last}: {:?}", other.map(|(f, _)| f.len())),
            }
        }
    }
}
