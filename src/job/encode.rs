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
use crate::job::merge::{MergeCounts, MergedSeries, SeriesInput};

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
}

/// A data file staged locally, ready to upload.
#[derive(Debug, Clone)]
pub struct StagedFile {
    pub name: String,
    pub local: PathBuf,
    pub bytes: u64,
    pub crc32c: u32,
    pub series: u64,
    pub points: u64,
    pub first_series: [u64; 2],
    pub last_series: [u64; 2],
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

/// Encodes merged series into size-capped files on its own thread, so that
/// encoding overlaps with DataFusion's scan and sort.
pub struct OutputWriter {
    tx: Option<SyncSender<SeriesInput>>,
    backlog: Arc<Backlog>,
    handle: Option<JoinHandle<Result<Staged, JobError>>>,
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

impl OutputWriter {
    pub fn spawn(dir: PathBuf, opts: FileOptions) -> Self {
        let (tx, rx) = sync_channel::<SeriesInput>(1024);
        let backlog = Arc::new(Backlog {
            state: std::sync::Mutex::new((0, false)),
            changed: std::sync::Condvar::new(),
            max: 2 * opts.round_points as u64,
        });
        let b = Arc::clone(&backlog);
        let handle = std::thread::Builder::new()
            .name("tailor-encode".into())
            .spawn(move || {
                let r = encode_loop(dir, opts, rx, &b);
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
        let tx = self.tx.as_ref().expect("writer open");
        self.backlog.add(s.points.len() as u64);
        if tx.send(s).is_ok() {
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

    /// Waits for the encoder and returns the staged files.
    pub fn finish(mut self) -> Result<Staged, JobError> {
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

impl Drop for OutputWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct OpenFile {
    writer: FileWriter<std::io::BufWriter<std::fs::File>>,
    name: String,
    local: PathBuf,
    series: u64,
    points: u64,
    first: [u64; 2],
    last: [u64; 2],
}

/// Most series (and points) encoded in one parallel round.
const ROUND_SERIES: usize = 1024;

fn encode_loop(
    dir: PathBuf,
    opts: FileOptions,
    rx: Receiver<SeriesInput>,
    backlog: &Backlog,
) -> Result<Staged, JobError> {
    let wall = Instant::now();
    // Time spent encoding on the worker threads (compute-bound, so this is
    // their CPU time) plus appending on this one.
    let busy = AtomicU64::new(0);
    let mut out = Output {
        dir,
        opts,
        files: Vec::new(),
        open: None,
        series: 0,
        points: 0,
        merge: MergeCounts::default(),
        left_to_other: BTreeMap::new(),
    };
    let mut round: Vec<SeriesInput> = Vec::new();
    // Take what the merger has produced (at least one series), encode it on
    // all cores, append in order. Encoding is a pure function of each
    // series, so the bytes do not depend on how series fall into rounds.
    while let Ok(first) = rx.recv() {
        let mut points = first.points.len();
        round.push(first);
        while round.len() < ROUND_SERIES && points < out.opts.round_points {
            match rx.try_recv() {
                Ok(s) => {
                    points += s.points.len();
                    round.push(s);
                }
                Err(_) => break,
            }
        }
        backlog.take(points as u64);
        let writer = out.opts.writer;
        // Merge (sort, deduplicate) and encode each series on all cores.
        type Done = (
            MergedSeries,
            MergeCounts,
            u64,
            Result<tsf::EncodedSeries, tsf::TsfError>,
        );
        let keep = out.opts.keep.clone();
        let encoded: Vec<Done> = round
            .par_drain(..)
            .map(|s| {
                let (mut m, counts) = s.merge();
                // The run's own points only; the rest is the other system's.
                let mut left = 0;
                if let Some((role, migration)) = &keep {
                    let r = migration.kept(*role, m.org_id, &m.timestamps);
                    left = (m.timestamps.len() - r.len()) as u64;
                    if left > 0 {
                        m.timestamps = m.timestamps[r.clone()].to_vec();
                        m.values = m.values[r].to_vec();
                    }
                }
                let t = Instant::now();
                let e = tsf::encode_series(&writer, &header(&m), &m.timestamps, &m.values);
                busy.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                (m, counts, left, e)
            })
            .collect();
        let t = Instant::now();
        for (s, counts, left, e) in encoded {
            out.merge.add(&counts);
            if left > 0 {
                *out.left_to_other.entry(s.org_id).or_default() += left;
            }
            if s.timestamps.is_empty() {
                // Every point of the series is the other system's.
                continue;
            }
            // The merged series is the writer's own input: one it refuses
            // is a bug, not bad data.
            let e = e.map_err(|e| {
                JobError::Internal(format!("encoding series {}/{}: {e}", s.org_id, s.metric_id))
            })?;
            out.append(&s, e)?;
        }
        busy.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
    out.finish(Phase::measured(
        "encode",
        wall.elapsed(),
        std::time::Duration::from_nanos(busy.load(Ordering::Relaxed)),
    ))
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

struct Output {
    dir: PathBuf,
    opts: FileOptions,
    files: Vec<StagedFile>,
    open: Option<OpenFile>,
    series: u64,
    points: u64,
    merge: MergeCounts,
    left_to_other: BTreeMap<u64, u64>,
}

impl Output {
    fn append(&mut self, s: &MergedSeries, e: tsf::EncodedSeries) -> Result<(), JobError> {
        if self.open.is_none() {
            let name = format!("part-{:05}.tsf", self.files.len());
            let local = self.dir.join(&name);
            let f = std::fs::File::create(&local)
                .at(format_args!("creating staged file {}", local.display()))?;
            self.open = Some(OpenFile {
                writer: FileWriter::new(
                    std::io::BufWriter::with_capacity(1 << 20, f),
                    self.opts.writer,
                )
                .map_err(staging(&local))?,
                name,
                local,
                series: 0,
                points: 0,
                first: [s.org_id, s.metric_id],
                last: [s.org_id, s.metric_id],
            });
        }
        let f = self.open.as_mut().expect("open file");
        f.writer
            .add_encoded(&header(s), e)
            .map_err(staging(&f.local))?;
        f.series += 1;
        f.points += s.timestamps.len() as u64;
        f.last = [s.org_id, s.metric_id];
        self.series += 1;
        self.points += s.timestamps.len() as u64;
        // The file as it would be closed now, footer and trailer included.
        if f.writer.estimated_final_size() >= self.opts.max_file_bytes {
            let f = self.open.take().expect("open file");
            self.files.push(close(f)?);
        }
        Ok(())
    }

    fn finish(mut self, phase: Phase) -> Result<Staged, JobError> {
        if let Some(f) = self.open.take() {
            self.files.push(close(f)?);
        }
        Ok(Staged {
            files: self.files,
            series: self.series,
            points: self.points,
            merge: self.merge,
            left_to_other: self.left_to_other,
            encode_phase: phase,
        })
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
        bytes: summary.bytes,
        crc32c: summary.crc32c,
        series: f.series,
        points: f.points,
        first_series: f.first,
        last_series: f.last,
    })
}
