//! The output of a shard job and how it is committed.
//!
//! ```text
//! <output root>/<shard>/<from>_<to>/_manifest.json                 the commit
//! <output root>/<shard>/<from>_<to>/data/<run_id>/part-00000.tsf   data files (docs/output-format.md)
//! ```
//!
//! `<from>` and `<to>` are the window's first and last hour (`YYYY-MM-DDTHH`,
//! inclusive). Data files are written first, each with an atomic put, under
//! a directory named by the run id, a hash of everything the output depends
//! on (input objects with sizes and ETags, output settings, tailor version)
//! and of the data written (names, sizes, CRC32Cs): the same input gives the
//! same run id, paths and bytes, and different bytes never land on a path a
//! committed manifest names. The manifest is written last with one atomic
//! put: it *is* the commit. Readers read the manifest and only the files it
//! lists, so a job killed at any moment leaves the previous commit (or
//! nothing) visible. After a commit, data directories of other run ids are
//! deleted, unless the manifest read back is already another run's (two
//! runs of one shard window at once; the scheduler should not start them,
//! and the later commit cleans up).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::datasource::listing::{Listing, Window};
use crate::datasource::source::CorruptPolicy;
use crate::datasource::store::StoreRoot;
use crate::format::shard::{Shard, ShardMap};
use crate::format::tsf::{self, FileWriter, SeriesHeader, WriterOptions};
use crate::job::JobError;
use crate::job::config::RunConfig;
use crate::job::report::Phase;
use crate::job::run::{MergeCounts, MergedSeries, SeriesInput};
use rayon::prelude::*;

pub const MANIFEST_NAME: &str = "_manifest.json";
pub const MANIFEST_FORMAT: &str = "tailor-manifest";
pub const MANIFEST_VERSION: u32 = 1;

/// How data files are written.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// A file is closed at the first series boundary at or past this size
    /// (so a file exceeds it by at most one series).
    pub max_file_bytes: u64,
    pub writer: WriterOptions,
    /// Most points held by one parallel encoding round (memory bound).
    pub round_points: usize,
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
    pub fn send(&self, s: SeriesInput) -> Result<(), JobError> {
        let tx = self.tx.as_ref().expect("writer open");
        self.backlog.add(s.points.len() as u64);
        if tx.send(s).is_err() {
            // The encoder stopped: its error comes out of `finish`.
            return Err(JobError::Output("encoder thread stopped early".into()));
        }
        Ok(())
    }

    /// Waits for the encoder and returns the staged files.
    pub fn finish(mut self) -> Result<Staged, JobError> {
        drop(self.tx.take());
        match self.handle.take().expect("writer open").join() {
            Ok(r) => r,
            Err(_) => Err(JobError::Internal("encoder thread panicked".into())),
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
            Result<tsf::EncodedSeries, tsf::TsfError>,
        );
        let encoded: Vec<Done> = round
            .par_drain(..)
            .map(|s| {
                let (m, counts) = s.merge();
                let t = Instant::now();
                let e = tsf::encode_series(&writer, &header(&m), &m.timestamps, &m.values);
                busy.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                (m, counts, e)
            })
            .collect();
        let t = Instant::now();
        for (s, counts, e) in encoded {
            out.merge.add(&counts);
            out.append(&s, e?)?;
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
}

impl Output {
    fn append(&mut self, s: &MergedSeries, e: tsf::EncodedSeries) -> Result<(), JobError> {
        if self.open.is_none() {
            let name = format!("part-{:05}.tsf", self.files.len());
            let local = self.dir.join(&name);
            let f = std::fs::File::create(&local)?;
            self.open = Some(OpenFile {
                writer: FileWriter::new(
                    std::io::BufWriter::with_capacity(1 << 20, f),
                    self.opts.writer,
                )?,
                name,
                local,
                series: 0,
                points: 0,
                first: [s.org_id, s.metric_id],
                last: [s.org_id, s.metric_id],
            });
        }
        let f = self.open.as_mut().expect("open file");
        f.writer.add_encoded(&header(s), e)?;
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
            encode_phase: phase,
        })
    }
}

fn close(f: OpenFile) -> Result<StagedFile, JobError> {
    let (w, summary) = f.writer.finish()?;
    let mut file = w.into_inner().map_err(|e| JobError::Io(e.into_error()))?;
    file.flush()?;
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

/// A data file as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the manifest's directory.
    pub path: String,
    pub bytes: u64,
    pub crc32c: u32,
    pub series: u64,
    pub points: u64,
    /// (org_id, metric_id) of the file's first and last series.
    pub first_series: [u64; 2],
    pub last_series: [u64; 2],
}

/// An input object as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestInput {
    pub key: String,
    pub size: u64,
    pub e_tag: Option<String>,
}

/// The settings the output bytes depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputSettings {
    pub tailor_version: String,
    pub shard_map_modulus: u64,
    pub shard_map_dedicated: Vec<u64>,
    pub max_file_bytes: u64,
    pub block_points: usize,
    pub zstd_level: i32,
    pub on_corrupt: CorruptPolicy,
}

/// What the job dropped, by reason (deterministic for a given input).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub duplicate_points: u64,
    pub conflicting_duplicate_points: u64,
    pub misrouted_payloads: u64,
    pub corrupt_frames: u64,
}

/// The commit record of one shard window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub shard: String,
    pub window_from: String,
    pub window_to: String,
    /// `<shard>/<from>_<to>`, relative to the output root.
    pub location: String,
    pub run_id: String,
    pub series: u64,
    pub points: u64,
    pub files: Vec<ManifestFile>,
    pub dropped: Dropped,
    pub inputs: Vec<ManifestInput>,
    pub settings: OutputSettings,
}

/// The run's data directory name: 128 bits of SHA-256 over what the run
/// read (each input's key below the input root, and size), its output
/// settings and what it wrote
/// (each data file's name, size and CRC32C). The same input and settings
/// give the same bytes and so the same paths, and a rerun rewrites
/// identical objects; any difference in the data written (a new tailor
/// build, other settings) gives new paths, so data files a committed
/// manifest refers to are never overwritten with other bytes. ETags are in
/// the manifest but not in the id: a local file's ETag is its inode and
/// mtime, which a copy of the same bytes changes.
fn run_id(
    shard: &str,
    from: &str,
    to: &str,
    inputs: &[ManifestInput],
    settings: &OutputSettings,
    staged: &Staged,
) -> String {
    let files: Vec<(&str, u64, u32)> = staged
        .files
        .iter()
        .map(|f| (f.name.as_str(), f.bytes, f.crc32c))
        .collect();
    // Keys are relative to the store; the layout puts four segments
    // (<shard>/dt=/hour=/<file>) below the input root.
    fn below_root(k: &str) -> &str {
        k.rmatch_indices('/').nth(3).map_or(k, |(i, _)| &k[i + 1..])
    }
    let inputs: Vec<(&str, u64)> = inputs
        .iter()
        .map(|i| (below_root(&i.key), i.size))
        .collect();
    let ident = serde_json::to_vec(&(shard, from, to, inputs, settings, files)).expect("json");
    let digest = ring::digest::digest(&ring::digest::SHA256, &ident);
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The directory name of a window.
pub fn window_dir(from: &str, to: &str) -> String {
    format!("{from}_{to}")
}

impl Manifest {
    pub fn build(
        cfg: &RunConfig,
        window: &Window,
        listing: &Listing,
        staged: &Staged,
        dropped: Dropped,
    ) -> Self {
        let from = window
            .from
            .as_ref()
            .map(|h| h.to_string())
            .unwrap_or_default();
        let to = window
            .to
            .as_ref()
            .map(|h| h.to_string())
            .unwrap_or_default();
        let settings = OutputSettings {
            tailor_version: env!("CARGO_PKG_VERSION").to_string(),
            shard_map_modulus: cfg.shard_map.modulus,
            shard_map_dedicated: cfg.shard_map.dedicated.iter().copied().collect(),
            max_file_bytes: cfg.max_file_bytes,
            block_points: cfg.block_points,
            zstd_level: cfg.zstd_level,
            on_corrupt: cfg.on_corrupt,
        };
        let inputs: Vec<ManifestInput> = listing
            .objects
            .iter()
            .map(|o| ManifestInput {
                key: o.key.clone(),
                size: o.size,
                e_tag: o.e_tag.clone(),
            })
            .collect();
        let location = format!("{}/{}", cfg.shard, window_dir(&from, &to));
        let run_id = run_id(&cfg.shard, &from, &to, &inputs, &settings, staged);
        let files = staged
            .files
            .iter()
            .map(|f| ManifestFile {
                path: format!("data/{run_id}/{}", f.name),
                bytes: f.bytes,
                crc32c: f.crc32c,
                series: f.series,
                points: f.points,
                first_series: f.first_series,
                last_series: f.last_series,
            })
            .collect();
        Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            shard: cfg.shard.clone(),
            window_from: from,
            window_to: to,
            location,
            run_id,
            series: staged.series,
            points: staged.points,
            files,
            dropped,
            inputs,
            settings,
        }
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serialises");
        s.push('\n');
        s
    }

    pub fn parse(bytes: &[u8], key: &str) -> Result<Self, JobError> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| JobError::Output(format!("manifest {key} is not valid: {e}")))?;
        if m.format != MANIFEST_FORMAT || m.version != MANIFEST_VERSION {
            return Err(JobError::Output(format!(
                "manifest {key}: format {:?} version {} (expected {MANIFEST_FORMAT:?} version {MANIFEST_VERSION})",
                m.format, m.version
            )));
        }
        Ok(m)
    }

    /// Checks, before its data is used, that the manifest read from
    /// `<shard>/<window>/` is that window's and adds up ([`Self::check`]).
    pub fn verify(&self, root: &StoreRoot, shard: &str, window: &str) -> Result<(), JobError> {
        let key = root.child(&format!("{shard}/{window}/{MANIFEST_NAME}"));
        if self.location != format!("{shard}/{window}") {
            return Err(JobError::Output(format!(
                "manifest {key} is the manifest of {}, not of {shard}/{window}",
                self.location
            )));
        }
        self.check()
            .map_err(|e| JobError::Output(format!("manifest {key}: {e}")))
    }

    /// What a manifest says about itself must add up: its location is its
    /// shard and window, its totals are the sums over its files, and its
    /// files are named once, relative to it, in series order without
    /// overlap (each file's series range is checked against the file when
    /// it is read: [`open_data_file`]).
    fn check(&self) -> Result<(), String> {
        let location = format!(
            "{}/{}",
            self.shard,
            window_dir(&self.window_from, &self.window_to)
        );
        if self.location != location {
            return Err(format!(
                "location {:?} is not its shard and window ({location:?})",
                self.location
            ));
        }
        if self.settings.shard_map_modulus == 0 {
            return Err("shard_map_modulus is 0".into());
        }
        let (mut series, mut points) = (0u64, 0u64);
        let mut prev: Option<&ManifestFile> = None;
        for f in &self.files {
            if f.path.is_empty()
                || f.path.starts_with('/')
                || f.path
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(format!(
                    "file path {:?} is not relative to the manifest",
                    f.path
                ));
            }
            if f.series == 0 || f.points < f.series || f.first_series > f.last_series {
                return Err(format!(
                    "file {}: {} series, {} points, series {:?} to {:?} do not make a file",
                    f.path, f.series, f.points, f.first_series, f.last_series
                ));
            }
            if let Some(p) = prev
                && p.last_series >= f.first_series
            {
                return Err(format!(
                    "file {} (series {}/{} to {}/{}) does not follow file {} (to {}/{}): files must be in series order, without overlap",
                    f.path,
                    f.first_series[0],
                    f.first_series[1],
                    f.last_series[0],
                    f.last_series[1],
                    p.path,
                    p.last_series[0],
                    p.last_series[1]
                ));
            }
            prev = Some(f);
            series = series.saturating_add(f.series);
            points = points.saturating_add(f.points);
        }
        if (series, points) != (self.series, self.points) {
            return Err(format!(
                "its files hold {series} series and {points} points, it says {} and {}",
                self.series, self.points
            ));
        }
        Ok(())
    }

    /// The shard map the output was written with.
    pub fn shard_map(&self) -> ShardMap {
        ShardMap {
            modulus: self.settings.shard_map_modulus.max(1),
            dedicated: self.settings.shard_map_dedicated.iter().copied().collect(),
        }
    }
}

/// Opens `bytes` (those of `data`, the file `f` of manifest `m`, size and
/// CRC32C checked by [`read_data_file`]) and checks its footer against what
/// the manifest says of it: series and point counts, first and last
/// series, and that every series belongs to the manifest's shard.
pub fn open_data_file<'a>(
    m: &Manifest,
    f: &ManifestFile,
    data: &DataFile,
    bytes: &'a [u8],
) -> Result<tsf::FileReader<'a>, JobError> {
    let reader = tsf::FileReader::open(bytes).map_err(|e| data.error(e))?;
    let series = reader.footer().series();
    let points: u64 = series
        .iter()
        .map(|e| e.n_points)
        .fold(0, u64::saturating_add);
    let key = |e: &tsf::SeriesEntry| [e.org_id, e.metric_id];
    let (first, last) = (series.first().map(key), series.last().map(key));
    if series.len() as u64 != f.series
        || points != f.points
        || first != Some(f.first_series)
        || last != Some(f.last_series)
    {
        let name = |k: Option<[u64; 2]>| k.map_or("none".into(), |[o, m]| format!("{o}/{m}"));
        return Err(JobError::Output(format!(
            "data file {}: holds {} series and {points} points, series {} to {}; the manifest says {} series and {} points, {} to {}",
            data.path,
            series.len(),
            name(first),
            name(last),
            f.series,
            f.points,
            name(Some(f.first_series)),
            name(Some(f.last_series))
        )));
    }
    let map = m.shard_map();
    let shard = Shard::parse(&m.shard);
    if let Some(e) = series
        .iter()
        .find(|e| Some(map.shard_of(e.org_id)) != shard)
    {
        return Err(JobError::Output(format!(
            "data file {}: series {}/{} belongs to shard {}, not {}",
            data.path,
            e.org_id,
            e.metric_id,
            map.shard_of(e.org_id),
            m.shard
        )));
    }
    Ok(reader)
}

async fn put_file(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    local: &std::path::Path,
) -> Result<(), JobError> {
    let len = std::fs::metadata(local)?.len();
    if len <= 32 << 20 {
        let bytes = std::fs::read(local)?;
        store
            .put(path, PutPayload::from(Bytes::from(bytes)))
            .await?;
        return Ok(());
    }
    // Multipart: the object appears atomically when the upload completes.
    // A failed upload is aborted, so that no incomplete multipart upload
    // is left to be billed until a lifecycle rule finds it.
    let mut w = BufWriter::new(Arc::clone(store), path.clone());
    let copied = async {
        let mut f = tokio::fs::File::open(local).await?;
        tokio::io::copy(&mut f, &mut w).await?;
        w.shutdown().await
    }
    .await;
    if let Err(e) = copied {
        let _ = w.abort().await;
        return Err(e.into());
    }
    Ok(())
}

/// Moves the staged data files to their final paths, each one atomically.
/// A local output on the staging directory's filesystem takes a rename (no
/// copy: the default staging directory, the system's temporary directory,
/// is usually on the same filesystem); otherwise each file is uploaded (one
/// put, or a multipart upload that completes atomically).
pub async fn upload_files(root: &StoreRoot, m: &Manifest, staged: &Staged) -> Result<(), JobError> {
    for (f, s) in m.files.iter().zip(&staged.files) {
        let path = root.child(&format!("{}/{}", m.location, f.path));
        if root.local && rename_local(root, &s.local, &path).await {
            continue;
        }
        put_file(&root.store, &path, &s.local).await?;
    }
    Ok(())
}

/// Renames a staged file into a local store; false when that is not
/// possible (another filesystem, a path the store cannot name), so the
/// caller copies it instead. The rename replaces an existing file
/// atomically, as a put does.
async fn rename_local(root: &StoreRoot, local: &std::path::Path, to: &Path) -> bool {
    let Ok(abs) = std::path::absolute(local) else {
        return false;
    };
    let Ok(from) = Path::from_absolute_path(&abs) else {
        return false;
    };
    root.store.rename(&from, to).await.is_ok()
}

/// What a commit did after the manifest was written.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    /// Objects of other runs removed: the run this commit replaced, and
    /// runs no manifest names that are older than the grace period.
    pub stale_removed: u64,
    /// Objects of other runs left in place: younger than the grace period
    /// and not the replaced commit's, so possibly a run of this window
    /// still uploading. A later commit removes them once they are older.
    pub young_left: u64,
    /// Why the cleanup stopped, if it did. The commit stands: readers
    /// trust the manifest, and the next run of the window cleans up.
    pub cleanup_error: Option<String>,
}

/// How long files of a run that no manifest names are left alone by other
/// runs' cleanups: a run of the same window may still be uploading them.
pub const DEFAULT_CLEANUP_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Writes the manifest (the commit), then removes data of other runs: at
/// once the files of the commit it replaces, and those of runs no manifest
/// names once they are older than `grace`. Only writing the manifest can
/// fail the commit; the cleanup after it is best effort and reported.
pub async fn commit(
    root: &StoreRoot,
    m: &Manifest,
    grace: std::time::Duration,
) -> Result<Committed, JobError> {
    let (shard, window) = m
        .location
        .split_once('/')
        .ok_or_else(|| JobError::Internal(format!("bad location {}", m.location)))?;
    // The commit this one replaces, and when it was written (none, or
    // unreadable: then its files wait for the grace period like any
    // other run's).
    let replaced = read_manifest_at(root, shard, window)
        .await
        .ok()
        .filter(|(p, _)| p.run_id != m.run_id)
        .map(|(p, at)| Replaced {
            dir: format!("{}/data/{}/", m.location, p.run_id),
            committed_at_ms: at,
        });
    let path = root.child(&format!("{}/{MANIFEST_NAME}", m.location));
    root.store
        .put(
            &path,
            PutPayload::from(Bytes::from(m.to_json().into_bytes())),
        )
        .await?;
    let mut done = Committed::default();
    if let Err(e) = cleanup(
        root,
        (shard, window),
        m,
        replaced.as_ref(),
        grace,
        &mut done,
    )
    .await
    {
        done.cleanup_error = Some(format!(
            "committed, but removing other runs' files under {} failed: {e}",
            m.location
        ));
    }
    Ok(done)
}

/// The commit a commit replaces.
struct Replaced {
    /// Its data directory (relative to the output root, with a final `/`).
    dir: String,
    /// When its manifest was written (store time, ms since the epoch).
    committed_at_ms: i64,
}

async fn cleanup(
    root: &StoreRoot,
    (shard, window): (&str, &str),
    m: &Manifest,
    replaced: Option<&Replaced>,
    grace: std::time::Duration,
    done: &mut Committed,
) -> Result<(), JobError> {
    // Another run of this window may have committed after us: its files
    // are the visible ones, and its cleanup handles ours.
    if read_manifest(root, shard, window).await?.run_id != m.run_id {
        return Ok(());
    }
    let data = root.child(&format!("{}/data", m.location));
    let keep = format!("{}/data/{}/", m.location, m.run_id);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let cutoff = now.saturating_sub(grace.as_millis().min(i64::MAX as u128) as i64);
    let objects: Vec<_> = root.store.list(Some(&data)).try_collect().await?;
    for o in objects {
        let rel = root.relative(&o.location).unwrap_or_default().to_string();
        if rel.starts_with(&keep) {
            continue;
        }
        // A file of the replaced run written after its commit is a rerun
        // of that run (same inputs, same run id) rewriting it: left alone.
        let written = o.last_modified.timestamp_millis();
        let of_replaced =
            replaced.is_some_and(|r| rel.starts_with(&r.dir) && written <= r.committed_at_ms);
        if of_replaced || written <= cutoff {
            root.store.delete(&o.location).await?;
            done.stale_removed += 1;
        } else {
            done.young_left += 1;
        }
    }
    Ok(())
}

/// The committed windows of a shard (directory names), sorted.
pub async fn list_windows(root: &StoreRoot, shard: &str) -> Result<Vec<String>, JobError> {
    Ok(window_dirs(root, shard).await?.0)
}

/// The window directories of a shard: (committed, uncommitted), each
/// sorted. An uncommitted one holds files but no manifest: what a run that
/// was stopped before its commit leaves behind, and never rerun.
pub async fn window_dirs(
    root: &StoreRoot,
    shard: &str,
) -> Result<(Vec<String>, Vec<String>), JobError> {
    let prefix = root.child(shard);
    let objects: Vec<_> = root.store.list(Some(&prefix)).try_collect().await?;
    let mut committed = std::collections::BTreeSet::new();
    let mut all = std::collections::BTreeSet::new();
    for o in &objects {
        let Some(rel) = root.relative(&o.location) else {
            continue;
        };
        let mut parts = rel.split('/');
        let (Some(_), Some(w), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        all.insert(w.to_string());
        if name == MANIFEST_NAME && parts.next().is_none() {
            committed.insert(w.to_string());
        }
    }
    let uncommitted = all.difference(&committed).cloned().collect();
    Ok((committed.into_iter().collect(), uncommitted))
}

/// Reads a committed manifest.
pub async fn read_manifest(
    root: &StoreRoot,
    shard: &str,
    window: &str,
) -> Result<Manifest, JobError> {
    Ok(read_manifest_at(root, shard, window).await?.0)
}

/// [`read_manifest`], with when the manifest was written (store time, ms
/// since the epoch).
async fn read_manifest_at(
    root: &StoreRoot,
    shard: &str,
    window: &str,
) -> Result<(Manifest, i64), JobError> {
    let path = root.child(&format!("{shard}/{window}/{MANIFEST_NAME}"));
    let (bytes, at) = match root.store.get(&path).await {
        Ok(r) => {
            let at = r.meta.last_modified.timestamp_millis();
            (r.bytes().await?, at)
        }
        Err(object_store::Error::NotFound { .. }) => {
            return Err(JobError::Output(format!(
                "{shard}/{window} has no committed output ({MANIFEST_NAME} not found under {})",
                root.display
            )));
        }
        Err(e) => return Err(e.into()),
    };
    Ok((Manifest::parse(&bytes, path.as_ref())?, at))
}

/// A format error found in the data file at `path`, naming it.
pub fn data_file_error(path: impl std::fmt::Display, e: tsf::TsfError) -> JobError {
    JobError::Output(format!("data file {path}: {e}"))
}

/// One data file of a committed output, checked against its manifest.
pub struct DataFile {
    pub bytes: Bytes,
    /// Where it was read from, for errors.
    pub path: String,
    map: Option<Arc<memmap2::Mmap>>,
    released: u64,
}

impl DataFile {
    /// A format error found in this file, naming it.
    pub fn error(&self, e: tsf::TsfError) -> JobError {
        data_file_error(&self.path, e)
    }

    /// Tells the file that everything before `offset` has been read: a
    /// mapped file hands those pages back, so reading a file many times
    /// the memory limit keeps a small resident set.
    pub fn release_before(&mut self, offset: u64) {
        if let Some(map) = &self.map
            && offset >= self.released + crate::datasource::reader::RELEASE_STEP
        {
            crate::datasource::reader::release_pages(map, self.released, offset);
            self.released = offset;
        }
    }
}

/// Opens one data file of a manifest (memory-mapped when local, one
/// streamed GET into a mapped temp file otherwise) and checks its size and CRC32C against the manifest.
pub async fn read_data_file(
    root: &StoreRoot,
    m: &Manifest,
    f: &ManifestFile,
) -> Result<DataFile, JobError> {
    let path = root.child(&format!("{}/{}", m.location, f.path));
    // A file the manifest names and the store does not have: the output is
    // incomplete (an error in the data, not one to retry).
    let missing = |e: &dyn std::fmt::Display| {
        JobError::Output(format!(
            "data file {path} named by the manifest of {} cannot be read: {e}",
            m.location
        ))
    };
    let map = if root.local {
        let local = std::path::Path::new("/").join(path.as_ref());
        if local.is_dir() {
            return Err(missing(&"it is a directory"));
        }
        crate::datasource::reader::map(&local).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => missing(&e),
            _ => JobError::Io(std::io::Error::new(e.kind(), format!("{path}: {e}"))),
        })?
    } else {
        // Streamed into an unlinked temp file and mapped, so that a data
        // file of up to the size cap never sits on the heap and its pages
        // can be handed back as it is read, as for a local file.
        let mut spool = std::io::BufWriter::with_capacity(1 << 20, tempfile::tempfile()?);
        let mut body = match root.store.get(&path).await {
            Ok(r) => r.into_stream(),
            Err(e @ object_store::Error::NotFound { .. }) => return Err(missing(&e)),
            Err(e) => return Err(e.into()),
        };
        while let Some(chunk) = body.try_next().await? {
            spool.write_all(&chunk)?;
        }
        let file = spool.into_inner().map_err(|e| e.into_error())?;
        if file.metadata()?.len() == 0 {
            None
        } else {
            // SAFETY: the file is private to this process (unlinked) and
            // is not written again.
            Some(Arc::new(unsafe { memmap2::Mmap::map(&file)? }))
        }
    };
    let bytes = match &map {
        Some(m) => Bytes::from_owner(crate::datasource::reader::MapOwner(Arc::clone(m))),
        None => Bytes::new(),
    };
    if bytes.len() as u64 != f.bytes {
        return Err(JobError::Output(format!(
            "data file {path} is {} bytes, the manifest says {}",
            bytes.len(),
            f.bytes
        )));
    }
    // The CRC in steps, releasing what it has read.
    let mut file = DataFile {
        bytes,
        path: path.to_string(),
        map,
        released: 0,
    };
    let mut crc = 0u32;
    let step = crate::datasource::reader::RELEASE_STEP as usize;
    for (i, chunk) in file.bytes.clone().chunks(step).enumerate() {
        crc = crc32c::crc32c_append(crc, chunk);
        file.release_before(((i + 1) * step) as u64);
    }
    file.release_before(u64::MAX / 2);
    file.released = 0;
    if crc != f.crc32c {
        return Err(JobError::Output(format!(
            "data file {path} has CRC32C {crc:08x}, the manifest says {:08x}",
            f.crc32c
        )));
    }
    Ok(file)
}

/// Calls `f` for every series of a committed output, in (org, metric) order.
pub async fn for_each_series(
    root: &StoreRoot,
    m: &Manifest,
    mut f: impl FnMut(&tsf::SeriesEntry, &[i64], &[u64]) -> Result<(), JobError>,
) -> Result<(), JobError> {
    let mut ts = Vec::new();
    let mut vals = Vec::new();
    for file in &m.files {
        let mut data = read_data_file(root, m, file).await?;
        let bytes = data.bytes.clone();
        let reader = open_data_file(m, file, &data, &bytes)?;
        for entry in reader.footer().series() {
            data.release_before(entry.byte_range().start);
            ts.clear();
            vals.clear();
            reader
                .read_series_into(entry, &mut ts, &mut vals)
                .map_err(|e| data.error(e))?;
            f(entry, &ts, &vals)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(crc: u32) -> Staged {
        Staged {
            files: vec![StagedFile {
                name: "part-00000.tsf".into(),
                local: PathBuf::new(),
                bytes: 100,
                crc32c: crc,
                series: 1,
                points: 1,
                first_series: [1, 1],
                last_series: [1, 1],
            }],
            series: 1,
            points: 1,
            merge: Default::default(),
            encode_phase: Phase::measured("encode", Default::default(), Default::default()),
        }
    }

    #[test]
    fn run_ids_follow_the_data_written() {
        let settings = OutputSettings {
            tailor_version: "0".into(),
            shard_map_modulus: 64,
            shard_map_dedicated: vec![],
            max_file_bytes: 1 << 30,
            block_points: 4096,
            zstd_level: 3,
            on_corrupt: CorruptPolicy::Fail,
        };
        let inputs = vec![ManifestInput {
            key: "a.tsp".into(),
            size: 10,
            e_tag: Some("x".into()),
        }];
        let id = |crc| {
            run_id(
                "org-1",
                "2026-11-21T00",
                "2026-11-21T00",
                &inputs,
                &settings,
                &staged(crc),
            )
        };
        assert_eq!(id(7), id(7));
        assert_eq!(id(7).len(), 32);
        // Same input and settings but other bytes (another tailor build):
        // another directory, so a committed file is never overwritten.
        assert_ne!(id(7), id(8));
    }
}
