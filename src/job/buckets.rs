//! Buckets: how the grouped series reach the data files when the decoded
//! input does not fit in memory (see `datasource/route.rs` for the
//! routing and the spool).
//!
//! Without spooling, every series is in the [`Grouper`] after the scan:
//! they go to the data files in key order, one stream. Otherwise each group
//! of series is encoded apart into an *encoded spool* (key order inside it),
//! and the groups are merged into the data files at the end:
//!
//! 1. the resident buckets' series, complete in memory (unless the scan
//!    demoted them: then they are completed bucket by bucket below);
//! 2. each spooled bucket: its payloads read back (a chunk of the spool
//!    file at a time) and unpacked or decoded on all cores,
//!    grouped together with the rows the scan kept of it (if it was
//!    demoted), encoded. A bucket whose spooled payloads decode to more than
//!    its share of memory is first split by another hash of the series
//!    (up to [`MAX_SPLITS`] times; then it is decoded whole if its largest
//!    series, with its merged copy, fits what the buckets share, and is a
//!    usage error naming that series otherwise);
//! 3. a k-way merge of the groups by series key into the files. It starts
//!    when the last group does, on a thread of its own, and takes the last
//!    group's series as they are encoded (they are never spooled), so that
//!    it overlaps that group's encoding.
//!
//! The groups are one pipeline: a loader thread reads and decodes the next
//! bucket (on all cores) while this thread groups the current one and the
//! encoder thread merges and encodes it (on all cores) into one encoded
//! spool, a group after another. Two buckets are in memory at once: each
//! bucket's share is half of what the budget leaves beside the rows the
//! scan kept.
//!
//! Every series is in exactly one group and each series' rows keep input
//! order, so the files hold the same bytes whatever the grouping.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::datasource::batch::SlabPool;
use crate::datasource::route::{
    Router, SpoolReader, SpoolStats, bucket_of, largest_series, split_spool,
};
use crate::job::config::{BucketPlan, MemoryBudget};
use crate::job::encode::{EncodeTotals, FileOptions, Files, OutputWriter};
use crate::job::error::JobError;
use crate::job::group::{Grouper, Objects, decode_spooled};
use crate::job::staging::{EncodedSpool, Staging};

/// Times a bucket is split again at most.
pub const MAX_SPLITS: u32 = 3;

/// What the job spooled and how it grouped (the report's `spool`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpoolSummary {
    /// The plan made before the scan (absent without a memory limit).
    pub plan: Option<BucketPlan>,
    /// The scan stopped keeping rows: its resident rows went over their share.
    pub demoted: bool,
    /// Payloads spooled, the bytes of their records' bodies on disk, and
    /// their decoded bytes.
    pub spooled_frames: u64,
    pub spooled_bytes: u64,
    pub spooled_decoded_bytes: u64,
    /// Of the payloads spooled, those spooled packed (read back with a
    /// copy); the others were spooled compressed (decoded again).
    pub spooled_packed_frames: u64,
    /// Groups encoded apart and merged into the files (0: one stream).
    pub groups: u64,
    /// Buckets split again because they decoded to more than a bucket's share.
    pub splits: u64,
    /// Bytes of encoded series written to spools and merged.
    pub encoded_spool_bytes: u64,
}

/// Which series a group takes: those of one bucket and, after splits, of
/// one part at each level.
#[derive(Debug, Clone)]
struct Pick {
    bucket: u32,
    parts: Vec<(u32, u32, u32)>, // (level, parts, index)
}

impl Pick {
    fn matches(&self, router: &Router, org: u64, metric: u64) -> bool {
        router.bucket(org, metric) == self.bucket
            && self
                .parts
                .iter()
                .all(|&(level, n, i)| bucket_of(org, metric, n, level) == i)
    }
}

/// A batch of a spooled bucket's rows, decoded.
type DecodedBatch = (datafusion::arrow::array::RecordBatch, Objects);

/// A bucket (or part of one) the loader decoded, and whether it is the
/// last.
type Loaded = (Pick, Vec<DecodedBatch>, bool);

/// Encodes every series the grouper holds, and those of every spooled
/// bucket, into `files`; returns them with the encoding's totals. `routed`:
/// the scan's router and the pool of its decode slabs, which the spooled
/// buckets reuse.
pub fn encode_all(
    mut grouper: Grouper,
    routed: Option<(&Router, &std::sync::Arc<SlabPool>)>,
    opts: &FileOptions,
    files: Files,
    spill_dir: &Path,
    budget: &MemoryBudget,
    summary: &mut SpoolSummary,
) -> Result<(Files, EncodeTotals), JobError> {
    let spooled = |r: &Router| (0..r.buckets()).any(|b| r.stats(b).frames > 0);
    let Some((router, pool)) = routed.filter(|(r, _)| r.demoted() || spooled(r)) else {
        // Everything is in memory: one stream of series in key order
        // (part after part).
        let mut w = OutputWriter::spawn(files, opts.clone());
        let mut keys = grouper.keys(|_, _| true);
        Files::sort_keys(opts.parts, &mut keys);
        for key in keys {
            if let Some(s) = grouper.take(key) {
                w.send(s)?;
            }
        }
        return w.finish();
    };
    summary.demoted = router.demoted();
    // The most any spooled bucket decodes to (for the slabs kept below).
    let mut largest = 0;
    for b in 0..router.buckets() {
        let s = router.stats(b);
        largest = largest.max(s.decoded);
        summary.spooled_frames += s.frames;
        summary.spooled_bytes += s.bytes;
        summary.spooled_decoded_bytes += s.decoded;
        summary.spooled_packed_frames += s.packed;
    }
    // Two spooled buckets share what the budget leaves beside the rows the
    // scan kept and that stay after the resident buckets' series: none
    // unless the scan demoted them (then they stay until their bucket's
    // turn).
    let held = if router.demoted() { grouper.bytes() } else { 0 };
    let cap = budget.bucket_cap_beside(held).unwrap_or(u64::MAX);
    let room = budget.buckets_room_beside(held).unwrap_or(u64::MAX);
    // Slabs come back as series are encoded and go to the next bucket:
    // from the resident rows first (the scan's slabs), then bucket after
    // bucket. Idle slabs are some of those the rows encoded before freed,
    // and a bucket takes them before any new one. As many are kept as two
    // of the largest spooled buckets decode to (two are in flight at
    // once), so that the spooled buckets seldom make a slab of their own:
    // kept to one bucket's share, the 2 GiB benchmark job at its default
    // limit freed 2.7 GB of the resident rows' slabs and faulted 0.7 GB of
    // new ones in (3.77 GB faulted in all, 3.01 GB now; peak RSS 3128 and
    // 3146 MiB). Keeping every slab the resident rows free raised the peak
    // by 230 MiB: the encoder's memory came on top of them. Once the last
    // bucket is loaded, none is kept (see `Load::load`).
    let keep = largest.min(cap).saturating_mul(2).min(room) / pool.slab_bytes() as u64;
    pool.set_keep(keep.min(1 << 16) as usize);
    let buffer = budget.spool_buffer(2);
    let read_budget = *budget;
    let mut w = OutputWriter::spawn(
        Staging::new(
            EncodedSpool::create(spill_dir.join("groups.enc"), buffer)?,
            files,
            move |groups| read_budget.spool_buffer(groups as u32).min(buffer),
        ),
        opts.clone(),
    );
    // The resident buckets' series, complete unless the scan demoted them.
    if !router.demoted() {
        let resident = router.resident();
        let mut keys = grouper.keys(|o, m| router.bucket(o, m) < resident);
        Files::sort_keys(opts.parts, &mut keys);
        for key in keys {
            if let Some(s) = grouper.take(key) {
                w.send(s)?;
            }
        }
        w.mark()?;
    }
    debug_assert_eq!(
        grouper.bytes(),
        held,
        "rows left after the resident buckets"
    );
    // Each spooled bucket: the loader reads and decodes the next while this
    // thread groups the current one and the encoder encodes it.
    let limit = budget.limit.unwrap_or(u64::MAX);
    let buckets: Vec<(u32, Option<(PathBuf, SpoolStats)>)> = (0..router.buckets())
        .filter_map(|b| {
            let stats = router.stats(b);
            let spool = (stats.frames > 0).then(|| (router.path(b), stats));
            (spool.is_some() || router.demoted()).then_some((b, spool))
        })
        .collect();
    let splits = std::sync::atomic::AtomicU64::new(0);
    let read_chunk = budget.spool_read_chunk();
    let loaded = std::thread::scope(|scope| -> Result<(), JobError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Loaded, JobError>>(0);
        let splits = &splits;
        let (reap, reaped) = std::sync::mpsc::channel::<PathBuf>();
        scope.spawn(move || {
            for path in reaped {
                let _ = std::fs::remove_file(path);
            }
        });
        let loader = scope.spawn(move || {
            let n = buckets.len();
            for (i, (b, spool)) in buckets.into_iter().enumerate() {
                let pick = Pick {
                    bucket: b,
                    parts: Vec::new(),
                };
                let mut load = Load {
                    cap,
                    room,
                    limit,
                    pool,
                    splits,
                    tx: &tx,
                    chunk: read_chunk,
                    reap: &reap,
                };
                if let Err(e) = load.load(spool, pick, i + 1 == n) {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        });
        for item in rx {
            let (pick, batches, last) = item?;
            if last {
                // Its series are merged with the spooled groups' as they
                // are encoded.
                w.last()?;
            }
            for (batch, objects) in batches {
                grouper.push(batch, objects)?;
            }
            let mut keys = grouper.keys(|o, m| pick.matches(router, o, m));
            Files::sort_keys(opts.parts, &mut keys);
            for key in keys {
                if let Some(s) = grouper.take(key) {
                    w.send(s)?;
                }
            }
            w.mark()?;
        }
        loader
            .join()
            .map_err(|_| JobError::Internal("the bucket loader panicked".into()))
    });
    // An error of this thread or the loader's; the encoder's, if it stopped.
    loaded?;
    summary.splits = splits.load(std::sync::atomic::Ordering::Relaxed);
    if !grouper.is_empty() {
        return Err(JobError::Internal(
            "series left in no group after the buckets".into(),
        ));
    }
    let (staging, totals) = w.finish()?;
    let (files, staged) = staging.finish()?;
    summary.encoded_spool_bytes = staged.encoded_spool_bytes;
    summary.groups = staged.groups;
    Ok((files, totals))
}

/// The loader: reads and decodes spooled buckets for the grouping thread.
struct Load<'a> {
    cap: u64,
    /// What a single series may take at most, merged copy included, and
    /// the memory limit it comes from (for the error).
    room: u64,
    limit: u64,
    pool: &'a std::sync::Arc<SlabPool>,
    splits: &'a std::sync::atomic::AtomicU64,
    tx: &'a std::sync::mpsc::SyncSender<Result<Loaded, JobError>>,
    /// Bytes of a spool file read at once.
    chunk: usize,
    /// Spool files read back, for the thread that deletes them.
    reap: &'a std::sync::mpsc::Sender<PathBuf>,
}

impl Load<'_> {
    /// Deletes a spool file read back, on a thread of its own: deleting a
    /// file waits for the disk (ext4 discards its blocks), and the grouping
    /// thread waits for this one. (That thread outlives every sender.)
    fn remove(&self, path: &Path) {
        let _ = self.reap.send(path.to_path_buf());
    }

    /// Reads and decodes one spooled bucket (or part of one), first
    /// splitting it by another hash of the series while it decodes to more
    /// than `cap`; a part without a spool (the scan demoted the bucket, and
    /// its rows are all in memory) is sent with no batches.
    /// `last`: nothing is loaded after this part.
    fn load(
        &mut self,
        spool: Option<(PathBuf, SpoolStats)>,
        pick: Pick,
        last: bool,
    ) -> Result<(), JobError> {
        let level = pick.parts.len() as u32;
        if let Some((path, stats)) = &spool
            && stats.decoded > self.cap
            && level < MAX_SPLITS
        {
            let parts = (stats.decoded.div_ceil(self.cap) + 1).min(1 << 12) as u32;
            let subs = split_spool(path, parts, level + 1, self.chunk)
                .map_err(|e| JobError::io("splitting a spooled bucket", e))?;
            self.remove(path);
            self.splits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut subs = subs.into_iter().peekable();
            for p in 0..parts {
                let sub = subs
                    .next_if(|(i, _, _)| *i == p)
                    .map(|(_, path, stats)| (path, stats));
                let mut pick = pick.clone();
                pick.parts.push((level + 1, parts, p));
                self.load(sub, pick, last && p + 1 == parts)?;
            }
            return Ok(());
        }
        if let Some((path, stats)) = &spool
            && stats.decoded > self.cap
        {
            self.check_series_fit(path)?;
        }
        let batches = match &spool {
            Some((path, _)) => {
                let batches = self.read_back(path)?;
                self.remove(path);
                batches
            }
            None => Vec::new(),
        };
        if last {
            // Nothing more takes a slab: the idle ones are freed now, on
            // this thread, while the encoder works, and the rest as they
            // come back. Left to the end, freeing them was the job's last
            // 0.2 s, on one core.
            self.pool.set_keep(0);
        }
        // The grouping thread gone (it failed): nothing more to load.
        let _ = self.tx.send(Ok((pick, batches, last)));
        Ok(())
    }

    /// Reads a spool file back a chunk at a time and decodes it on all
    /// cores, the next chunk read (on a thread of its own) while one is
    /// decoded: read in turn, the reading left a core idle for a fifth of
    /// the loader's time, which the encoder waits for at the first
    /// spooled bucket. Two chunks are in memory at once.
    fn read_back(&self, path: &Path) -> Result<Vec<DecodedBatch>, JobError> {
        let io = |e| JobError::io("reading back a spooled bucket", e);
        let mut reader = SpoolReader::open(path, self.chunk).map_err(io)?;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(0);
            let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Vec<u8>>();
            scope.spawn(move || {
                loop {
                    let spare = spare_rx.try_recv().unwrap_or_default();
                    let next = reader.next_owned(spare);
                    let end = !matches!(next, Ok(Some(_)));
                    // The loader gone (it failed), or the end of the file.
                    if tx.send(next).is_err() || end {
                        return;
                    }
                }
            });
            let mut batches = Vec::new();
            for next in rx {
                let Some((bytes, frames)) = next.map_err(io)? else {
                    break;
                };
                batches.extend(decode_spooled(&bytes, &frames, self.pool)?);
                let _ = spare_tx.send(bytes);
            }
            Ok(batches)
        })
    }

    /// A part split as often as it may be and still over its share is
    /// decoded whole, as long as its largest series fits what the buckets
    /// share (with its merged copy); one that does not cannot be merged
    /// within the limit, whatever the grouping: a usage error naming it.
    fn check_series_fit(&self, path: &Path) -> Result<(), JobError> {
        let largest = largest_series(path, self.chunk)
            .map_err(|e| JobError::io("reading back a spooled bucket", e))?;
        match largest {
            Some(((org, metric), bytes)) if bytes.saturating_mul(2) > self.room => {
                Err(JobError::Config(format!(
                    "series {org}/{metric} decodes to {bytes} bytes and needs about twice that \
                     to merge and encode, more than the {} bytes --memory-limit {} leaves it: \
                     raise --memory-limit",
                    self.room, self.limit
                )))
            }
            _ => Ok(()),
        }
    }
}
