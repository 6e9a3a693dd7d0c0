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

/// Where encoded series go, in key order: the staged data files, or the
/// groups of a job that spooled (`staging.rs`: each group's series to an
/// encoded spool, the last group's merged with them into the files).
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
        joined(self.handle.take(), "encoder")
    }
}

/// Waits for a worker thread that returns a result (`None`: it was
/// already waited for); `name` names it in the errors.
pub(crate) fn joined<T>(
    handle: Option<JoinHandle<Result<T, JobError>>>,
    name: &str,
) -> Result<T, JobError> {
    match handle.map(|h| h.join()) {
        Some(Ok(r)) => r,
        Some(Err(_)) => Err(JobError::Internal(format!("the {name} thread panicked"))),
        None => Err(JobError::Internal(format!(
            "the {name} thread already stopped"
        ))),
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

    /// How the files are written.
    pub fn options(&self) -> &FileOptions {
        &self.opts
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
