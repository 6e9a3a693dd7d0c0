//! The shard job (`tailor run`): the flow a newcomer should read first.
//!
//! ```text
//! list       input objects of the shard and window (sizes, ETags)    listing.rs
//! scan       DataSourceExec(PayloadSource): frames -> payload rows    datasource/
//!            (misrouted rows filtered in the scan, counted in ScanLog)
//! group      raw_points(list views): points as binary views into the
//!            decode slabs, never copied -> CoalescePartitions -> one
//!            SortExec (spills under the memory pool), by
//!            (org_id, metric_id, object_key, frame_offset,
//!            first_point): every series' payloads (one decoding to
//!            over ~80 KiB in rows of 1024 points) arrive together, in
//!            input order; they are gathered per series                SeriesMerger
//! merge      per series, on all cores: stable sort of its points by
//!            timestamp, the last in input order wins; kind/interval/
//!            metadata of the last payload                             SeriesInput::merge
//! encode     series -> TSF blocks on all cores, appended in key order
//!            on a writer thread, files rolled at the size cap, staged
//!            locally                                                  format/tsf.rs
//! write      staged files -> <out>/<shard>/<window>/data/<run>/       manifest.rs
//! commit     _manifest.json, written last, is the commit
//! ```
//!
//! Every step is deterministic: the sort key is a total order that does not
//! depend on how the input was split or scheduled, so the same input gives
//! the same bytes whatever `--target-partitions`, the range size or thread
//! timing.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{UInt8Type, UInt32Type, UInt64Type};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

use crate::datasource::compact::RawPoints;
use crate::datasource::listing::{Listing, Window, list_inputs};
use crate::datasource::source::{PayloadOptions, ScanLog, frame_error};
use crate::datasource::store::StoreRoot;
use crate::datasource::table::PayloadTable;
use crate::job::JobError;
use crate::job::config::RunConfig;
use crate::job::manifest::{self, Manifest, OutputWriter, Staged};
use crate::job::report::{Phase, Report, cpu_time, peak_rss_bytes};

/// One series, merged: sorted, deduplicated, with its last payload's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedSeries {
    pub org_id: u64,
    pub metric_id: u64,
    pub kind: u8,
    pub interval_s: u32,
    pub metadata: String,
    pub timestamps: Vec<i64>,
    pub values: Vec<u64>,
}

/// Counts of what merging dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MergeCounts {
    pub input_points: u64,
    /// Points dropped because a later point of the series had the same timestamp.
    pub duplicates_dropped: u64,
    /// Of those, points whose value bits differed from the winner's.
    pub conflicting_duplicates: u64,
}

/// One series' points as they arrived, in input order, with the metadata
/// of its last payload: what [`SeriesInput::merge`] turns into a
/// [`MergedSeries`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesInput {
    pub org_id: u64,
    pub metric_id: u64,
    pub kind: u8,
    pub interval_s: u32,
    pub metadata: String,
    /// (timestamp, value bits) in input order.
    pub points: Vec<(i64, u64)>,
}

impl SeriesInput {
    /// Applies the spec's rules: points sorted by timestamp, one point per
    /// timestamp, the last in input order wins. A pure function of the
    /// series, so series merge on any thread.
    pub fn merge(mut self) -> (MergedSeries, MergeCounts) {
        let mut counts = MergeCounts {
            input_points: self.points.len() as u64,
            ..Default::default()
        };
        // Stable: among equal timestamps, input order is kept, so the last
        // of each run is the last in input order.
        self.points.sort_by_key(|p| p.0);
        let mut timestamps = Vec::with_capacity(self.points.len());
        let mut values: Vec<u64> = Vec::with_capacity(self.points.len());
        for run in self.points.chunk_by(|a, b| a.0 == b.0) {
            let (t, winner) = run[run.len() - 1];
            timestamps.push(t);
            values.push(winner);
            let dropped = &run[..run.len() - 1];
            counts.duplicates_dropped += dropped.len() as u64;
            counts.conflicting_duplicates +=
                dropped.iter().filter(|p| p.1 != winner).count() as u64;
        }
        let merged = MergedSeries {
            org_id: self.org_id,
            metric_id: self.metric_id,
            kind: self.kind,
            interval_s: self.interval_s,
            metadata: self.metadata,
            timestamps,
            values,
        };
        (merged, counts)
    }
}

impl MergeCounts {
    pub fn add(&mut self, o: &MergeCounts) {
        self.input_points += o.input_points;
        self.duplicates_dropped += o.duplicates_dropped;
        self.conflicting_duplicates += o.conflicting_duplicates;
    }
}

/// Gathers the payload rows of one series (they arrive together, in input
/// order) into a [`SeriesInput`].
#[derive(Default)]
pub struct SeriesMerger {
    current: Option<SeriesInput>,
}

impl SeriesMerger {
    pub fn current(&self) -> Option<(u64, u64)> {
        self.current.as_ref().map(|s| (s.org_id, s.metric_id))
    }

    /// Adds one payload row of series `key` (must be the current series or
    /// a new one after [`Self::take`]).
    pub fn push(
        &mut self,
        key: (u64, u64),
        kind: u8,
        interval_s: u32,
        metadata: &str,
        ts: &[i64],
        vals: &[u64],
    ) {
        let s = self.current.get_or_insert_with(|| SeriesInput {
            org_id: key.0,
            metric_id: key.1,
            ..Default::default()
        });
        debug_assert_eq!((s.org_id, s.metric_id), key);
        s.kind = kind;
        s.interval_s = interval_s;
        if s.metadata != metadata {
            s.metadata.clear();
            s.metadata.push_str(metadata);
        }
        s.points
            .extend(ts.iter().copied().zip(vals.iter().copied()));
    }

    /// Like [`Self::push`], with the points as `raw_points` gives them:
    /// `n` timestamps then `n` value bits, 8 bytes each, little-endian.
    pub fn push_raw(
        &mut self,
        key: (u64, u64),
        kind: u8,
        interval_s: u32,
        metadata: &str,
        raw: &[u8],
    ) -> Result<(), JobError> {
        if !raw.len().is_multiple_of(16) {
            return Err(JobError::Internal(format!(
                "series ({}, {}): a payload row has {} point bytes, not a multiple of 16",
                key.0,
                key.1,
                raw.len()
            )));
        }
        self.push(key, kind, interval_s, metadata, &[], &[]);
        let s = self.current.as_mut().expect("pushed above");
        let (ts, vals) = raw.split_at(raw.len() / 2);
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
        s.points.extend(
            ts.chunks_exact(8)
                .zip(vals.chunks_exact(8))
                .map(|(t, v)| (word(t) as i64, word(v))),
        );
        Ok(())
    }

    /// Finishes the current series.
    pub fn take(&mut self) -> Option<SeriesInput> {
        self.current.take()
    }
}

/// The SQL of the group phase. Metadata is copied out of the slab (it is
/// small) so that the points are the rows' only view into it: the sort
/// counts a slab once per view column.
pub const GROUP_SQL: &str = "SELECT org_id, metric_id, kind, interval_s, arrow_cast(metadata, 'Utf8') AS metadata, \
     raw_points(timestamps, \"values\") AS points \
     FROM payloads WHERE NOT misrouted \
     ORDER BY org_id, metric_id, object_key, frame_offset, first_point";

/// Rows per batch. A row is a payload (hundreds of points; at most ~80 KiB,
/// see [`ROW_POINTS`](crate::datasource::source::ROW_POINTS)); under a memory
/// limit, batches stay around 1/64 of what the limit leaves the job (at
/// ~2 KiB a row) so that sorts, their merges and spill read-back always
/// have room for the next one.
fn batch_rows(limit: Option<u64>, resident: u64) -> usize {
    match limit {
        Some(l) => (budget(l, resident) / (64 * 2048)).clamp(16, 8192) as usize,
        None => 8192,
    }
}

/// DataFusion's pool and the sort's merge reservation for
/// `--memory-limit`, for a process that has `resident` bytes resident when
/// the job starts. The process's own footprint is at least
/// [`BASE_FOOTPRINT`]: more code is paged in and threads start later.
///
/// Of the rest of the limit, half (at most [`UNTRACKED_MAX`]) is kept for
/// what the pool does not track: decode slabs in flight, mapped input
/// pages, the encoder's rounds, the series being gathered and merged, the
/// allocator's free pages. The other half is what the sort may really
/// hold. Of that, half (at most 1 GiB) is reserved up front for merging
/// sorted runs (spill files read back: accounted byte for byte), and the
/// rest buffers payload rows, which the sort accounts at
/// [`SORT_ACCOUNTING`] times their bytes; the pool is sized so that both
/// parts reach their real share.
pub fn pool_sizes(limit: u64, resident: u64) -> (usize, usize) {
    let budget = budget(limit, resident);
    let tracked = budget.saturating_sub((budget / 2).min(UNTRACKED_MAX));
    let merge = (tracked / 2).clamp(32 << 10, 1 << 30);
    let rows = tracked.saturating_sub(merge);
    let pool = rows.saturating_mul(SORT_ACCOUNTING).saturating_add(merge);
    (pool.max(MIN_POOL) as usize, merge as usize)
}

/// What `--memory-limit` leaves the job in a process that holds
/// `resident` bytes (at least [`BASE_FOOTPRINT`]) when the job starts.
fn budget(limit: u64, resident: u64) -> u64 {
    limit.saturating_sub(resident.max(BASE_FOOTPRINT))
}

/// How many bytes of DataFusion's pool a byte of buffered payload rows
/// costs. SortExec reserves for each buffered batch its size plus its
/// "sliced" size (room for sorted copies); the rows' points are views into
/// decode slabs (`raw_points`), which sorting never copies, and the slab is
/// counted in both terms. Without this, a 4 GiB shard (decode slabs 11.6
/// GB) spilled 11.9 GB under the default limit of 18 GB, peak RSS 8.8 GB.
pub const SORT_ACCOUNTING: u64 = 2;

/// The process's footprint holding no data: peak RSS of a job over a 1 MiB
/// shard is 70 MiB (code, runtime, thread stacks, allocator), while at the
/// job's start only part of it is resident.
pub const BASE_FOOTPRINT: u64 = 70 << 20;

/// The most of the limit kept outside DataFusion's pool.
pub const UNTRACKED_MAX: u64 = 1 << 30;

/// The smallest pool: below it a sort cannot hold the batches it merges.
/// A limit that leaves less than this is exceeded.
pub const MIN_POOL: u64 = 8 << 20;

/// Builds the session: memory pool, spill directory, partitions.
/// `resident` is what the process holds before the job starts.
pub fn session(
    cfg: &RunConfig,
    spill_dir: &std::path::Path,
    resident: u64,
) -> Result<SessionContext, JobError> {
    // (limit, (pool, merge reservation)) under a memory limit.
    let sizes = cfg.memory_limit.map(|l| (l, pool_sizes(l, resident)));
    // A bounded merge fan-in keeps the read-back of many spill files (one
    // batch each) inside the pool; more runs are merged in several passes.
    let mut rt = RuntimeEnvBuilder::new()
        .with_temp_file_path(spill_dir)
        .with_max_spill_merge_fan_in(16);
    if let Some((_, (pool, _))) = sizes {
        rt = rt.with_memory_pool(Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(pool),
            std::num::NonZeroUsize::new(8).expect("non-zero"),
        )));
    }
    let runtime = rt.build_arc()?;
    let partitions = cfg.target_partitions.max(1);
    let mut sc = SessionConfig::new()
        .with_target_partitions(partitions)
        .with_batch_size(batch_rows(cfg.memory_limit, resident))
        .with_repartition_file_scans(true)
        .with_repartition_file_min_size(cfg.range_bytes.min(usize::MAX as u64) as usize)
        .with_information_schema(false);
    let opts = sc.options_mut();
    // The scan stays parallel, but one sort takes all partitions' rows
    // (CoalescePartitions -> SortExec) and its output goes straight to the
    // series merge. Rows are payloads whose points are views into decode
    // slabs (`raw_points`), so sorting them is cheap next to decoding; and a
    // final SortPreservingMerge over per-partition sorts would account every
    // merged batch at the size of all the slabs its rows view, which
    // exhausts the pool although the memory is shared.
    opts.optimizer.repartition_sorts = false;
    // Nor a round-robin repartition when there are fewer scan ranges than
    // partitions (a small shard, or one file): the scan decodes, and the
    // projection after it is cheap, so it would only hold one batch per
    // partition in its channels, each accounted at the size of its decode
    // slab (up to 16 MiB for one payload of the spec's maximum size).
    opts.optimizer.enable_round_robin_repartition = false;
    if let Some((limit, (_, merge))) = sizes {
        // The sort reserves, up front and unspillable, room to merge what it
        // buffered before it spills.
        opts.execution.sort_spill_reservation_bytes = merge;
        opts.execution.sort_in_place_threshold_bytes =
            (limit / 64).clamp(16 << 10, 1 << 20) as usize;
        // Spills stay uncompressed (DataFusion's default): lz4_frame halved
        // the spilled bytes but doubled the job's wall time at a limit of
        // 1/10 of the input (256 MiB input: 7.1 s -> 15.5 s), the spill
        // files being read back from the page cache anyway.
    }
    let ctx = SessionContext::new_with_config_rt(sc, runtime);
    ctx.register_udf(RawPoints::udf());
    Ok(ctx)
}

/// Runs one shard job end to end and returns its report. The report is
/// also returned (inside the error) when the job fails after scanning.
pub async fn run_shard(cfg: &RunConfig) -> Result<Report, JobError> {
    let (report, result) = run_shard_reported(cfg).await;
    result.map(|()| report)
}

/// Runs one shard job and returns its report whatever happened: on failure
/// it says how far the job got, why it failed, and the time and memory it
/// took until then.
pub async fn run_shard_reported(cfg: &RunConfig) -> (Report, Result<(), JobError>) {
    let started = Instant::now();
    let cpu0 = cpu_time();
    let mut report = Report::new(cfg);
    let result = run_inner(cfg, &mut report).await;
    if let Err(e) = &result
        && report.status != "failed"
    {
        report.failed(&e.to_string());
    }
    report.wall = started.elapsed();
    report.cpu = cpu_time().saturating_sub(cpu0);
    report.peak_rss_bytes = peak_rss_bytes();
    (report, result)
}

async fn run_inner(cfg: &RunConfig, report: &mut Report) -> Result<(), JobError> {
    // -- list
    let input = StoreRoot::open(&cfg.input)?;
    let output = StoreRoot::open(&cfg.output)?;
    let t = Phase::start("list");
    let listing: Listing = list_inputs(&input, Some(&cfg.shard), &cfg.window).await?;
    report.phases.push(t.stop());
    let window = resolve_window(&cfg.window, &listing)?;
    report.window = Some(window.clone());
    report.set_inputs(&listing);
    // A payload-named object the layout does not place in an hour is not
    // read: its points may belong to this shard, so say so loudly.
    for o in listing.ignored.iter().filter(|o| o.key.ends_with(".tsp")) {
        report.warnings.push(format!(
            "not read: {} ({} bytes): {}",
            o.key, o.size, o.reason
        ));
    }

    // -- scan + group (DataFusion) with merge + encode on a writer thread
    let spill = match &cfg.spill_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::Builder::new()
                .prefix("tailor-spill-")
                .tempdir_in(d)?
        }
        None => tempfile::Builder::new().prefix("tailor-spill-").tempdir()?,
    };
    let stage = tempfile::Builder::new()
        .prefix("tailor-stage-")
        .tempdir_in(cfg.stage_dir.clone().unwrap_or_else(std::env::temp_dir))?;
    // What the process holds before the job: the pool is sized from it.
    let resident = crate::job::report::current_rss_bytes();
    let dirs = (spill.path(), stage.path());
    let staged = scan_group_encode(cfg, &input, &listing, dirs, resident, report).await?;
    // -- write + commit
    let dropped = manifest::Dropped {
        duplicate_points: report.merge.duplicates_dropped,
        conflicting_duplicate_points: report.merge.conflicting_duplicates,
        misrouted_payloads: report.scan.misrouted_payloads,
        corrupt_frames: report.scan.corrupt_frames,
    };
    let manifest = Manifest::build(cfg, &window, &listing, &staged, dropped);
    let t = Phase::start("write");
    manifest::upload_files(&output, &manifest, &staged).await?;
    report.phases.push(t.stop());
    if cfg.fail_before_commit {
        return Err(JobError::Internal(
            "--fail-before-commit: stopped after writing the data files, before the manifest"
                .into(),
        ));
    }
    let t = Phase::start("commit");
    let committed = manifest::commit(&output, &manifest, cfg.cleanup_grace).await?;
    report.phases.push(t.stop());
    report.set_output(&manifest, committed.stale_removed);
    report.warnings.extend(committed.cleanup_error);
    if committed.young_left > 0 {
        report.warnings.push(format!(
            "{} objects of other runs under {}/data left in place: no manifest names them and \
             they are younger than {} s (a run of this window may still be uploading them); \
             a later commit of the window removes them once older",
            committed.young_left,
            manifest.location,
            cfg.cleanup_grace.as_secs()
        ));
    }
    drop(spill);
    Ok(())
}

/// Scans the listed objects, groups their points per series and stages the
/// encoded files in a fresh directory under `stage`; fills the report's
/// scan, merge and per-phase figures.
async fn scan_group_encode(
    cfg: &RunConfig,
    input: &StoreRoot,
    listing: &Listing,
    (spill, stage): (&std::path::Path, &std::path::Path),
    resident: u64,
    report: &mut Report,
) -> Result<Staged, JobError> {
    let stage = tempfile::Builder::new().prefix("pass-").tempdir_in(stage)?;
    let ctx = session(cfg, spill, resident)?;
    let mut options = PayloadOptions::new(Arc::clone(&cfg.shard_map));
    options.on_corrupt = cfg.on_corrupt;
    options.range_bytes = cfg.range_bytes;
    options.max_row_points = Some(crate::datasource::source::ROW_POINTS);
    if let Some(limit) = cfg.memory_limit {
        // A batch is one slab of decoded payloads: keep it a small fraction
        // of the pool so the sorts can always take the next one.
        options.slab_bytes =
            (limit / (64 * cfg.target_partitions.max(1) as u64)).clamp(16 << 10, 8 << 20) as usize;
    }
    let log = PayloadTable::new(input, listing.objects.clone(), options, ScanLog::new())
        .register(&ctx, input, "payloads")?;

    // scan + decode, group and encode run as one pipeline: their wall times
    // overlap; the CPU of each is measured where it is spent.
    let t_pipeline = Phase::start("pipeline");
    let df = ctx.sql(GROUP_SQL).await?;
    let plan: Arc<dyn ExecutionPlan> = df.create_physical_plan().await?;
    let mut stream = execute_stream(Arc::clone(&plan), ctx.task_ctx())?;

    let writer = OutputWriter::spawn(stage.path().to_path_buf(), cfg.file_options());
    let progress =
        crate::job::report::progress(cfg.progress, listing.total_bytes(), Arc::clone(&log));
    let mut merger = SeriesMerger::default();
    let mut scan_error = None;
    // The consuming thread drives the final merge of sorted runs and merges
    // each series' points: its CPU time (not its waits) is part of "group".
    let pipeline_cpu0 = crate::job::report::cpu_time();
    while let Some(batch) = stream.next().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                scan_error = Some(e);
                break;
            }
        };
        feed(&mut merger, &batch, &writer)?;
    }
    if let Some(last) = merger.take() {
        writer.send(last)?;
    }
    drop(stream);
    drop(progress);
    let pipeline = t_pipeline.stop();
    let pipeline_cpu = crate::job::report::cpu_time().saturating_sub(pipeline_cpu0);
    report.scan = log.totals();
    report.corrupt = log.corrupt();
    report.misrouted = log.misrouted();
    report.spill = crate::job::report::spill_metrics(&plan);
    let ops = crate::job::report::operator_times(&plan);
    let op_cpu = |names: &[&str]| {
        std::time::Duration::from_secs_f64(
            ops.iter()
                .filter(|(n, _)| names.contains(&n.as_str()))
                .map(|(_, s)| s)
                .sum(),
        )
    };
    let mut scan_phase = Phase::measured("scan+decode", pipeline.wall, op_cpu(&["DataSourceExec"]));
    scan_phase.detail = ops.clone();
    report.phases.push(scan_phase);
    let decode_cpu = op_cpu(&["DataSourceExec"]);

    let written = writer.finish();
    if let Some(e) = scan_error {
        if let Some(limit) = cfg.memory_limit
            && let Some(msg) = memory_limit_error(limit, pool_sizes(limit, resident).0, &e)
        {
            report.failed(&msg);
            return Err(JobError::MemoryLimit(msg, Box::new(report.clone())));
        }
        report.failed(&e.to_string());
        return Err(match frame_error(&e) {
            Some(fe) => JobError::Corrupt(Box::new(fe.clone()), Box::new(report.clone())),
            None => JobError::DataFusion(e),
        });
    }
    let staged = written?;
    report.merge = staged.merge;
    // Grouping (DataFusion's sorts and merges, each series' merge) is what
    // the pipeline spent besides decoding and encoding.
    report.phases.push(Phase::measured(
        "group",
        pipeline.wall,
        pipeline_cpu.saturating_sub(decode_cpu + staged.encode_phase.cpu),
    ));
    report.phases.push(staged.encode_phase.clone());
    match log.settle(cfg.on_corrupt) {
        Err(e) => {
            report.failed(&e.to_string());
            return Err(JobError::Corrupt(Box::new(e), Box::new(report.clone())));
        }
        Ok(()) => {
            report.scan = log.totals();
            report.corrupt = log.corrupt();
        }
    }

    if !report.misrouted.is_empty() && cfg.fail_on_misrouted {
        let n = report.misrouted.len();
        report.failed(&format!("{n} misrouted payloads (--fail-on-misrouted)"));
        return Err(JobError::Misrouted(n, Box::new(report.clone())));
    }
    // The staged files live until the job's stage directory is removed.
    let _ = stage.keep();
    Ok(staged)
}

/// What to tell the user when DataFusion's pool (of `pool` bytes, for
/// `--memory-limit` `limit`) ran out: `None` for other errors.
fn memory_limit_error(limit: u64, pool: usize, e: &DataFusionError) -> Option<String> {
    let DataFusionError::ResourcesExhausted(what) = e.find_root() else {
        return None;
    };
    Some(format!(
        "--memory-limit {:.1} MiB is too small for this shard: the grouping sort's pool of \
         {:.1} MiB could not take what it had to hold or merge ({}); run the job again with \
         a larger --memory-limit",
        limit as f64 / (1 << 20) as f64,
        pool as f64 / (1 << 20) as f64,
        what.lines().next().unwrap_or_default().trim()
    ))
}

/// The window the job covers: the flags, or every hour present.
fn resolve_window(w: &Window, listing: &Listing) -> Result<Window, JobError> {
    let hours = listing.hours();
    let from = w.from.clone().or_else(|| hours.first().cloned());
    let to = w.to.clone().or_else(|| hours.last().cloned());
    match (from, to) {
        (Some(from), Some(to)) if from <= to => Ok(Window {
            from: Some(from),
            to: Some(to),
        }),
        (Some(from), Some(to)) => Err(JobError::Config(format!(
            "--from {from} is after --to {to}"
        ))),
        _ => Err(JobError::Config(
            "no input hours found and no --from/--to given: nothing to do".into(),
        )),
    }
}

/// Feeds one sorted batch into the merger, handing finished series to the writer.
fn feed(
    merger: &mut SeriesMerger,
    batch: &RecordBatch,
    writer: &OutputWriter,
) -> Result<(), JobError> {
    let org = batch.column(0).as_primitive::<UInt64Type>();
    let metric = batch.column(1).as_primitive::<UInt64Type>();
    let kind = batch.column(2).as_primitive::<UInt8Type>();
    let interval = batch.column(3).as_primitive::<UInt32Type>();
    let meta = batch.column(4).as_string::<i32>();
    let points = batch.column(5).as_binary_view();
    for i in 0..batch.num_rows() {
        let key = (org.value(i), metric.value(i));
        if merger.current().is_some_and(|k| k != key)
            && let Some(done) = merger.take()
        {
            writer.send(done)?;
        }
        merger.push_raw(
            key,
            kind.value(i),
            interval.value(i),
            meta.value(i),
            points.value(i),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge(points: &[(i64, u64)]) -> (Vec<(i64, u64)>, MergeCounts) {
        let (m, c) = SeriesInput {
            points: points.to_vec(),
            ..Default::default()
        }
        .merge();
        (m.timestamps.into_iter().zip(m.values).collect(), c)
    }

    #[test]
    fn the_last_point_in_input_order_wins_and_conflicts_are_counted_against_it() {
        let nan = f64::NAN.to_bits();
        // ts 5: A, B, A -> A wins; only B differs from it.
        // ts 1: A, A, B -> B wins; both As differ from it.
        // ts 3: NaN with two payloads: bits differ, so they conflict.
        let (points, c) = merge(&[
            (5, 10),
            (1, 7),
            (5, 11),
            (3, nan),
            (1, 7),
            (5, 10),
            (3, nan | 1),
            (1, 8),
        ]);
        assert_eq!(points, vec![(1, 8), (3, nan | 1), (5, 10)]);
        assert_eq!(c.input_points, 8);
        assert_eq!(c.duplicates_dropped, 5);
        assert_eq!(c.conflicting_duplicates, 4);
        // Verbatim repeats are duplicates, not conflicts.
        let (_, c) = merge(&[(1, 2), (1, 2), (2, 3)]);
        assert_eq!((c.duplicates_dropped, c.conflicting_duplicates), (1, 0));
    }

    #[test]
    fn point_bytes_that_are_not_whole_points_are_an_error() {
        let mut g = SeriesMerger::default();
        let raw: Vec<u8> = [1i64, 2, 10, 20]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        g.push_raw((1, 2), 0, 10, "m", &raw).unwrap();
        let e = g.push_raw((1, 2), 0, 10, "m", &raw[..24]).unwrap_err();
        assert!(e.to_string().contains("24 point bytes"), "{e}");
        assert_eq!(g.take().unwrap().points, vec![(1, 10), (2, 20)]);
    }

    #[test]
    fn a_pool_that_ran_out_is_reported_as_the_memory_limit_with_what_ran_out() {
        let inner = DataFusionError::ResourcesExhausted(
            "Additional allocation failed for ExternalSorterMerge[0] with top memory consumers:\n  a\n  b".into(),
        );
        let e = DataFusionError::Context("sorting".into(), Box::new(inner));
        let msg = memory_limit_error(128 << 20, 45 << 20, &e).unwrap();
        assert!(
            msg.starts_with("--memory-limit 128.0 MiB is too small for this shard")
                && msg.contains("pool of 45.0 MiB")
                && msg.contains("(Additional allocation failed for ExternalSorterMerge[0] with top memory consumers:)")
                && msg.ends_with("larger --memory-limit"),
            "{msg}"
        );
        let other = DataFusionError::Execution("x".into());
        assert_eq!(memory_limit_error(1, 1, &other), None);
    }

    #[test]
    fn the_pool_gives_the_sort_at_most_its_real_share_of_the_limit() {
        for limit in [0u64, 100 << 20, 200 << 20, 1 << 30, 18 << 30, 200 << 30] {
            for resident in [10u64 << 20, 200 << 20] {
                let (pool, merge) = pool_sizes(limit, resident);
                let budget = limit.saturating_sub(resident.max(BASE_FOOTPRINT));
                // What the sort really holds: merged runs byte for byte,
                // buffered rows at 1 / SORT_ACCOUNTING of their reservation.
                let real = merge as u64 + (pool - merge) as u64 / SORT_ACCOUNTING;
                // ... is the limit less the footprint and the untracked reserve.
                let tracked = budget - (budget / 2).min(UNTRACKED_MAX);
                if budget >= 2 * MIN_POOL {
                    assert!(
                        real <= tracked && real + 2 >= tracked,
                        "limit {limit}, resident {resident}: {real} of {tracked}"
                    );
                } else {
                    assert_eq!(pool as u64, MIN_POOL, "the smallest pool");
                }
                assert!(merge <= 1 << 30 && merge <= pool);
            }
        }
        // A 4 GiB shard's rows (11.6 GB of slabs, accounted twice) fit the
        // pool of the default limit on a 24 GiB machine.
        let (pool, merge) = pool_sizes(18 << 30, 20 << 20);
        assert!((pool - merge) as u64 >= 2 * 11_600_000_000);
    }

    #[test]
    fn the_gatherer_keeps_the_last_payloads_metadata() {
        let mut g = SeriesMerger::default();
        g.push((1, 2), 0, 10, "a:1", &[1, 2], &[5, 6]);
        g.push((1, 2), 2, 60, "b:2", &[2], &[7]);
        let s = g.take().unwrap();
        assert_eq!((s.kind, s.interval_s, s.metadata.as_str()), (2, 60, "b:2"));
        assert_eq!(s.points, vec![(1, 5), (2, 6), (2, 7)]);
        assert!(g.take().is_none());
    }
}
