//! `PayloadSource` (the scan's configuration, a DataFusion [`FileSource`])
//! and `PayloadOpener` (opens one byte range of one object, a
//! [`FileOpener`]): the payload format's equivalent of DataFusion's
//! `CsvSource` / `CsvOpener`.
//!
//! A range is read by a [`FrameCursor`]; every frame is checked, decompressed
//! into a pooled slab and validated in place ([`BatchBuilder`]); rows pass
//! the pushed-down filters and the projection before they leave the scan.
//! Corrupt frames fail the scan with a [`FrameError`] naming the object key
//! and frame offset, or, under [`CorruptPolicy::Skip`], are counted and
//! recorded in the [`ScanLog`]. A corrupt frame body exactly where one range
//! hands over to the next is only visible once both have been read:
//! [`ScanLog::tiling_errors`] reports it after the scan, with its real
//! reason, and callers fail (or, skipping, count it with
//! [`ScanLog::record_skipped`]). Failing to read bytes (I/O, object store,
//! memory-mapping) is never corruption: those errors pass through as I/O
//! errors under either policy. Misrouted payloads are flagged in the
//! `misrouted` column and recorded in the log too.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::listing::{FileRange, PartitionedFile};
use datafusion::datasource::physical_plan::{
    FileGroup, FileGroupPartitioner, FileOpenFuture, FileOpener, FileScanConfig, FileSource,
};
use datafusion::datasource::projection::{ProjectionOpener, SplitProjection};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_expr::conjunction;
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_expr_common::physical_expr::PhysicalExpr;
use datafusion::physical_plan::DisplayFormatType;
use datafusion::physical_plan::filter_pushdown::{FilterPushdownPropagation, PushedDown};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, Time};
use futures::StreamExt;
use object_store::ObjectStore;
use serde::Serialize;

use crate::datasource::batch::{BatchBuilder, DEFAULT_SLAB_BYTES, SlabPool, chunk_len};
use crate::datasource::reader::{CursorError, FrameCursor, ObjectBytes, Step};
use crate::format::payload::{
    BodyInfo, Decoder, ErrorKind, FormatError, FrameError, Payload, PayloadHeader, Rejected,
    check_body, parse_payload,
};
use crate::format::shard::{Shard, ShardMap};

/// What the scan does with a corrupt frame.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum CorruptPolicy {
    /// Fail the scan with the precise error (default).
    #[default]
    Fail,
    /// Skip the frame, count it and record key + offset + reason.
    Skip,
}

/// Default byte-range size for splitting big files (as in Tailor-S).
pub const DEFAULT_RANGE_BYTES: u64 = 1 << 30;

/// Scan settings shared by every range.
#[derive(Debug, Clone)]
pub struct PayloadOptions {
    pub on_corrupt: CorruptPolicy,
    pub shard_map: Arc<ShardMap>,
    /// Largest byte range one opener reads; bigger files are split.
    pub range_bytes: u64,
    /// Decode slab size (bytes of decompressed payloads per batch).
    pub slab_bytes: usize,
    /// The object store is the local filesystem rooted at `/`: objects are
    /// memory-mapped instead of fetched.
    pub mmap_local: bool,
    /// Largest single fetch for remote objects (mapped files are read as
    /// one slice per range).
    pub fetch_chunk: u64,
    /// Split payloads too big for one ordinary row (decoded size over
    /// [`split_above`] of this: more points than this plus the largest
    /// metadata) into rows of at most this many points (copied out of the
    /// decode buffer; only the last row carries the payload's metadata);
    /// `None`: one row per payload, however big. The job sets
    /// [`ROW_POINTS`]. A split payload takes its decoded size twice while
    /// it is split (decode buffer and copies, up to 2 x 16 MiB per
    /// partition), outside DataFusion's pool.
    pub max_row_points: Option<usize>,
}

/// The most points of a row when the job splits big payloads: a payload
/// may hold 1 Mi points (16 MiB), but the grouping sort reserves, spills
/// and merges memory by batches of rows and cannot split a row, so one
/// such row needs several times its size of pool at once. Rows of at most
/// 1024 points (16 KiB) are like the biggest of ordinary payloads: two
/// 16 MiB payloads failed a 128 MiB job and forty failed one of 1 GiB as
/// one row each, and run at 128 MiB as rows of 1024 points (4096 still
/// failed at 160 MiB).
pub const ROW_POINTS: usize = 1024;

impl PayloadOptions {
    pub fn new(shard_map: Arc<ShardMap>) -> Self {
        Self {
            on_corrupt: CorruptPolicy::Fail,
            shard_map,
            range_bytes: DEFAULT_RANGE_BYTES,
            slab_bytes: DEFAULT_SLAB_BYTES,
            mmap_local: false,
            fetch_chunk: crate::datasource::reader::DEFAULT_CHUNK,
            max_row_points: None,
        }
    }
}

/// Payloads whose decompressed size exceeds this certainly hold more than
/// `rows` points (a header, `16 * rows` bytes of points and the largest
/// metadata, padded), and are split into rows; smaller ones stay one row
/// (of at most this size: about 80 KiB for [`ROW_POINTS`]). Decided by the
/// size the zstd frame declares, before decoding.
pub fn split_above(rows: usize) -> usize {
    (crate::format::payload::V2_HEADER_LEN
        + 16 * rows
        + crate::format::payload::MAX_META_LEN as usize)
        .div_ceil(8)
        * 8
}

/// Under the skip policy every object is read as one range, from byte 0,
/// so what a corrupt region hides is settled by one walk of its chain and
/// the frames read never depend on how objects would have been split. (A
/// range that starts inside a corrupt body can find a well-formed frame
/// there that the walk from byte 0 skips with the body; no rule local to
/// the ranges settles every such case.) The files are spread whole over
/// `partitions` groups, largest first onto the least loaded group, each
/// group in input order: the grouping sorts by input position, so the
/// output does not depend on the spread either.
pub fn whole_files_spread(groups: &[FileGroup], partitions: usize) -> Vec<FileGroup> {
    let files: Vec<PartitionedFile> = groups.iter().flat_map(|g| g.iter().cloned()).collect();
    let n = partitions.clamp(1, files.len().max(1));
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(files[i].object_meta.size), i));
    let mut load = vec![0u64; n];
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in order {
        let g = (0..n).min_by_key(|&g| (load[g], g)).expect("n >= 1");
        load[g] += files[i].object_meta.size;
        members[g].push(i);
    }
    members
        .into_iter()
        .filter(|m| !m.is_empty())
        .map(|mut m| {
            m.sort_unstable();
            let whole = m.into_iter().map(|i| {
                let mut f = files[i].clone();
                f.range = None;
                f
            });
            FileGroup::new(whole.collect())
        })
        .collect()
}

/// A corrupt frame skipped under [`CorruptPolicy::Skip`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorruptRecord {
    pub key: String,
    pub offset: u64,
    pub reason: String,
    /// Bytes skipped: from `offset` to the next frame start that the sync
    /// rule accepts (or the object's end), whatever ranges they lie in.
    pub skipped_bytes: u64,
    /// While the scan runs: the region ran past the end of the range that
    /// reported it; [`ScanLog::corrupt`] extends it over the next ranges.
    #[serde(skip)]
    pub open: bool,
}

/// A payload found under a shard its org does not belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MisroutedRecord {
    pub key: String,
    pub offset: u64,
    pub org_id: u64,
    pub metric_id: u64,
    pub points: u64,
    pub found_shard: String,
    pub expected_shard: String,
}

/// One range read to its end: where its frames began, where it stopped and
/// where it handed the frame chain over to the next range. (A range whose
/// stream was dropped early, as under `LIMIT`, is not recorded.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RangeRecord {
    pub key: String,
    pub start: u64,
    pub end: u64,
    pub first_frame: Option<u64>,
    pub stop: u64,
    /// See [`FrameCursor::handover`].
    pub handover: Option<u64>,
    pub bytes_fetched: u64,
    /// See [`FrameCursor::rejected`].
    #[serde(skip)]
    pub rejected: Vec<Rejected>,
}

/// Where a corrupt region that reached `reach` ends: at the first frame
/// the ranges from `reach` on found, passing over ranges that found none.
/// `ranges` are in (key, start) order.
fn region_end(ranges: &[RangeRecord], key: &str, mut reach: u64) -> u64 {
    let from = ranges.partition_point(|r| r.key.as_str() < key);
    let object = &ranges[from..];
    let object = &object[..object.partition_point(|r| r.key == key)];
    while let Some(r) = object.iter().find(|r| r.start <= reach && reach < r.end) {
        match r.first_frame {
            // A frame the range found before `reach` belongs to a chain
            // that the tiling check follows; nothing to add here.
            Some(f) => return f.max(reach),
            None => reach = r.end,
        }
    }
    reach
}

/// Totals of a scan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScanTotals {
    pub frames: u64,
    pub payloads: u64,
    pub points: u64,
    pub bytes_fetched: u64,
    pub corrupt_frames: u64,
    pub misrouted_payloads: u64,
    pub misrouted_points: u64,
}

#[derive(Debug, Default)]
struct ScanLogInner {
    totals: ScanTotals,
    corrupt: Vec<CorruptRecord>,
    misrouted: Vec<MisroutedRecord>,
    ranges: Vec<RangeRecord>,
}

/// What a scan observed beyond its rows: totals, skipped corrupt frames,
/// misrouted payloads and the ranges read. Shared by all partitions of a
/// scan; read it after the plan has run.
#[derive(Debug, Default)]
pub struct ScanLog {
    inner: Mutex<ScanLogInner>,
    progress: AtomicU64,
}

impl ScanLog {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Input bytes whose frames have been read so far (for progress bars).
    pub fn progress_bytes(&self) -> u64 {
        self.progress.load(AtomicOrdering::Relaxed)
    }
    pub fn totals(&self) -> ScanTotals {
        self.inner.lock().unwrap().totals.clone()
    }
    /// Skipped corrupt frames, in input order.
    ///
    /// A range counts only the skipped bytes inside it; a corrupt region
    /// that runs on past its end ends where a later range's sync finds its
    /// first frame (the same rule a range covering both would apply), so
    /// `skipped_bytes` does not depend on how the object was split. Ranges
    /// that were not read to their end end the region where they begin.
    pub fn corrupt(&self) -> Vec<CorruptRecord> {
        let mut v = self.inner.lock().unwrap().corrupt.clone();
        v.sort_by(|a, b| (&a.key, a.offset).cmp(&(&b.key, b.offset)));
        if v.iter().any(|c| c.open) {
            let ranges = self.ranges();
            for c in v.iter_mut().filter(|c| c.open) {
                let end = region_end(&ranges, &c.key, c.offset + c.skipped_bytes);
                c.skipped_bytes = end - c.offset;
                c.open = false;
            }
        }
        v
    }
    /// Misrouted payloads, in input order.
    pub fn misrouted(&self) -> Vec<MisroutedRecord> {
        let mut v = self.inner.lock().unwrap().misrouted.clone();
        v.sort_by(|a, b| (&a.key, a.offset).cmp(&(&b.key, b.offset)));
        v
    }
    /// Ranges read, in (key, start) order.
    pub fn ranges(&self) -> Vec<RangeRecord> {
        let mut v = self.inner.lock().unwrap().ranges.clone();
        v.sort_by(|a, b| (&a.key, a.start).cmp(&(&b.key, b.start)));
        v
    }

    /// Checks that the ranges of every object tile it, after the scan: each
    /// range's first frame is where the previous range handed the frame
    /// chain over ([`RangeRecord::handover`]).
    ///
    /// A range's sync never takes a frame whose body is not a well-formed
    /// zstd frame (see `find_frame_start`), so when the previous range hands
    /// over at such a frame, the next range starts further on. The frames in
    /// between are the sync candidates that range rejected: they are
    /// returned here with their real reason (the [`check_body`] error), as a
    /// reader from byte 0 would have reported them. Anything else between a
    /// hand-over and the next range's first frame is returned as
    /// [`ErrorKind::Unreadable`], and a range that starts before the
    /// previous one's hand-over as [`ErrorKind::RangesOverlap`]. Ranges not
    /// read to their end (a stream dropped early, as under `LIMIT`) are
    /// unknown territory: nothing is concluded across them.
    pub fn tiling_errors(&self) -> Vec<FrameError> {
        self.tiling_problems()
            .into_iter()
            .map(|(e, _, _)| e)
            .collect()
    }

    /// [`Self::tiling_errors`] with the bytes each one covers.
    /// The bool: the region runs on past the range it was found in.
    fn tiling_problems(&self) -> Vec<(FrameError, u64, bool)> {
        let mut ranges = self.ranges();
        // A log shared by several scans of the same files holds each range
        // once per scan.
        ranges.dedup_by(|a, b| (&a.key, a.start, a.end) == (&b.key, b.start, b.end));
        let corrupt = self.corrupt();
        let known = |key: &str, off: u64| corrupt.iter().any(|c| c.key == key && c.offset == off);
        let mut out = Vec::new();
        for object in ranges.chunk_by(|a, b| a.key == b.key) {
            let key = object[0].key.as_str();
            let rejected: std::collections::BTreeMap<u64, &Rejected> = object
                .iter()
                .flat_map(|r| r.rejected.iter())
                .map(|x| (x.offset, x))
                .collect();
            let mut push = |error: FormatError, skipped: u64, open: bool| {
                if !known(key, error.offset) {
                    out.push((FrameError::new(key, error), skipped, open));
                }
            };
            // Where the next frame must start (None: unknown).
            let mut expect: Option<u64> = None;
            let mut prev_end = 0;
            for r in object {
                if r.start != prev_end {
                    // A range before this one was not read to its end.
                    expect = None;
                }
                prev_end = r.end;
                let mut carry = None;
                if let Some(mut cur) = expect {
                    loop {
                        if r.first_frame == Some(cur) {
                            break;
                        }
                        if let Some(f) = r.first_frame.filter(|&f| f < cur) {
                            push(
                                FormatError {
                                    offset: f,
                                    kind: ErrorKind::RangesOverlap { next: cur },
                                },
                                0,
                                false,
                            );
                            break;
                        }
                        if cur >= r.end {
                            // The chain passes over this range.
                            carry = Some(cur);
                            break;
                        }
                        if let Some(x) = rejected.get(&cur) {
                            push(x.error.clone(), x.next - x.offset, false);
                            cur = x.next;
                            continue;
                        }
                        let next = r.first_frame.unwrap_or(r.end);
                        push(
                            FormatError {
                                offset: cur,
                                kind: ErrorKind::Unreadable { next },
                            },
                            next - cur,
                            r.first_frame.is_none(),
                        );
                        break;
                    }
                }
                expect = if r.first_frame.is_some() {
                    r.handover
                } else {
                    carry
                };
            }
        }
        out
    }

    /// Settles, after the scan, what only shows across ranges
    /// ([`Self::tiling_errors`]). Under the fail policy the first problem
    /// is the error. Under the skip policy they are recorded as skipped
    /// corrupt frames; objects are then read whole ([`whole_files_spread`]),
    /// so a range that took a false frame boundary
    /// ([`ErrorKind::RangesOverlap`]) cannot occur and is an error if it
    /// does: the scan's rows would hold a frame a read of the chain never
    /// takes.
    pub fn settle(&self, policy: CorruptPolicy) -> Result<(), FrameError> {
        let errors = self.tiling_errors();
        let Some(first) = errors.first() else {
            return Ok(());
        };
        if policy == CorruptPolicy::Fail {
            return Err(first.clone());
        }
        if let Some(e) = errors
            .iter()
            .find(|e| matches!(e.kind(), ErrorKind::RangesOverlap { .. }))
        {
            return Err(e.clone());
        }
        self.record_skipped(&errors);
        Ok(())
    }

    /// Records tiling errors as skipped corrupt frames (skip policy).
    pub fn record_skipped(&self, errors: &[FrameError]) {
        let problems = self.tiling_problems();
        let mut g = self.inner.lock().unwrap();
        for e in errors {
            g.totals.corrupt_frames += 1;
            let (skipped, open) = problems
                .iter()
                .find(|(p, _, _)| p == e)
                .map(|(_, s, open)| (*s, *open))
                .unwrap_or(match e.error.kind {
                    ErrorKind::Unreadable { next } => (next.saturating_sub(e.error.offset), false),
                    _ => (0, false),
                });
            g.corrupt.push(CorruptRecord {
                key: e.key.clone(),
                offset: e.error.offset,
                reason: e.error.kind.to_string(),
                skipped_bytes: skipped,
                open,
            });
        }
    }

    fn merge(&self, local: LocalLog) {
        let mut g = self.inner.lock().unwrap();
        let t = &mut g.totals;
        t.frames += local.totals.frames;
        t.payloads += local.totals.payloads;
        t.points += local.totals.points;
        t.bytes_fetched += local.totals.bytes_fetched;
        t.corrupt_frames += local.totals.corrupt_frames;
        t.misrouted_payloads += local.totals.misrouted_payloads;
        t.misrouted_points += local.totals.misrouted_points;
        g.corrupt.extend(local.corrupt);
        g.misrouted.extend(local.misrouted);
        g.ranges.extend(local.range);
    }
}

#[derive(Default)]
struct LocalLog {
    totals: ScanTotals,
    corrupt: Vec<CorruptRecord>,
    misrouted: Vec<MisroutedRecord>,
    range: Option<RangeRecord>,
}

/// The shard directory an object key was found under: the path component
/// before `dt=…`.
pub fn shard_of_key(key: &str) -> Option<&str> {
    let parts: Vec<&str> = key.split('/').collect();
    let dt = parts.iter().rposition(|p| p.starts_with("dt="))?;
    (dt > 0).then(|| parts[dt - 1])
}

/// The payload format's [`FileSource`].
#[derive(Clone)]
pub struct PayloadSource {
    options: PayloadOptions,
    table_schema: TableSchema,
    projection: SplitProjection,
    predicate: Option<Arc<dyn PhysicalExpr>>,
    batch_size: usize,
    metrics: ExecutionPlanMetricsSet,
    log: Arc<ScanLog>,
    pool: Arc<SlabPool>,
}

impl fmt::Debug for PayloadSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadSource")
            .field("options", &self.options)
            .field("predicate", &self.predicate)
            .finish()
    }
}

impl PayloadSource {
    pub fn new(
        table_schema: impl Into<TableSchema>,
        options: PayloadOptions,
        log: Arc<ScanLog>,
    ) -> Self {
        let table_schema = table_schema.into();
        let pool = SlabPool::new(options.slab_bytes);
        Self {
            projection: SplitProjection::unprojected(&table_schema),
            table_schema,
            predicate: None,
            batch_size: 8192,
            metrics: ExecutionPlanMetricsSet::new(),
            options,
            log,
            pool,
        }
    }

    pub fn options(&self) -> &PayloadOptions {
        &self.options
    }

    pub fn log(&self) -> &Arc<ScanLog> {
        &self.log
    }
}

impl From<PayloadSource> for Arc<dyn FileSource> {
    fn from(source: PayloadSource) -> Self {
        Arc::new(source)
    }
}

impl FileSource for PayloadSource {
    fn create_file_opener(
        &self,
        object_store: Arc<dyn ObjectStore>,
        _base_config: &FileScanConfig,
        partition: usize,
    ) -> Result<Arc<dyn FileOpener>> {
        let opener = Arc::new(PayloadOpener {
            source: Arc::new(self.clone()),
            store: object_store,
            file_indices: self.projection.file_indices.clone(),
            frames: MetricBuilder::new(&self.metrics).counter("frames", partition),
            points: MetricBuilder::new(&self.metrics).counter("points", partition),
            bytes_fetched: MetricBuilder::new(&self.metrics).counter("bytes_fetched", partition),
            corrupt: MetricBuilder::new(&self.metrics).counter("corrupt_frames_skipped", partition),
            decode_time: MetricBuilder::new(&self.metrics).elapsed_compute(partition),
        }) as Arc<dyn FileOpener>;
        ProjectionOpener::try_new(
            self.projection.clone(),
            opener,
            self.table_schema.file_schema(),
        )
    }

    fn table_schema(&self) -> &TableSchema {
        &self.table_schema
    }

    fn with_batch_size(&self, batch_size: usize) -> Arc<dyn FileSource> {
        let mut s = self.clone();
        s.batch_size = batch_size;
        Arc::new(s)
    }

    fn filter(&self) -> Option<Arc<dyn PhysicalExpr>> {
        self.predicate.clone()
    }

    fn projection(&self) -> Option<&ProjectionExprs> {
        Some(&self.projection.source)
    }

    fn try_pushdown_projection(
        &self,
        projection: &ProjectionExprs,
    ) -> Result<Option<Arc<dyn FileSource>>> {
        let mut s = self.clone();
        let merged = self.projection.source.try_merge(projection)?;
        s.projection = SplitProjection::new(self.table_schema.file_schema(), &merged);
        Ok(Some(Arc::new(s)))
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        &self.metrics
    }

    fn file_type(&self) -> &str {
        "tsp"
    }

    fn fmt_extra(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(f, ", on_corrupt={:?}", self.options.on_corrupt)?;
                if let Some(p) = &self.predicate {
                    write!(f, ", predicate={p}")?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => Ok(()),
        }
    }

    /// Splits files into ranges of at most `range_bytes`, then lets
    /// DataFusion's [`FileGroupPartitioner`] spread them evenly. Under the
    /// skip policy files are never split ([`whole_files_spread`]).
    fn repartitioned(
        &self,
        target_partitions: usize,
        repartition_file_min_size: usize,
        output_ordering: Option<LexOrdering>,
        config: &FileScanConfig,
    ) -> Result<Option<FileScanConfig>> {
        if self.options.on_corrupt == CorruptPolicy::Skip {
            let mut c = config.clone();
            c.file_groups = whole_files_spread(&config.file_groups, target_partitions);
            return Ok(Some(c));
        }
        let max = self.options.range_bytes.max(1);
        let mut split = Vec::new();
        for group in &config.file_groups {
            let mut files = Vec::new();
            for f in group.iter() {
                let (start, end) = f.range();
                let mut s = start;
                while s < end {
                    let e = s.saturating_add(max).min(end);
                    let mut piece = f.clone();
                    piece.range = Some(FileRange {
                        start: s as i64,
                        end: e as i64,
                    });
                    files.push(piece);
                    s = e;
                }
                if start == end {
                    files.push(f.clone());
                }
            }
            split.push(FileGroup::new(files));
        }
        let partitioned = FileGroupPartitioner::new()
            .with_target_partitions(target_partitions)
            .with_repartition_file_min_size(repartition_file_min_size)
            .with_preserve_order_within_groups(output_ordering.is_some())
            .repartition_file_groups(&split)
            .unwrap_or(split);
        let mut c = config.clone();
        c.file_groups = partitioned;
        Ok(Some(c))
    }

    /// Every filter is evaluated inside the scan, on each batch before it
    /// leaves (all columns are file columns, so any filter can be).
    fn try_pushdown_filters(
        &self,
        filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn FileSource>>> {
        if filters.is_empty() {
            return Ok(FilterPushdownPropagation::with_parent_pushdown_result(
                vec![],
            ));
        }
        let mut s = self.clone();
        let mut all = filters.clone();
        if let Some(p) = &self.predicate {
            all.push(Arc::clone(p));
        }
        s.predicate = Some(conjunction(all));
        Ok(FilterPushdownPropagation::with_parent_pushdown_result(vec![
            PushedDown::Yes;
            filters.len()
        ])
        .with_updated_node(Arc::new(s) as Arc<dyn FileSource>))
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let mut r =
            datafusion::physical_plan::apply_expression_roots(self.projection.source.iter(), f)?;
        if r == TreeNodeRecursion::Continue
            && let Some(p) = &self.predicate
        {
            r = f(p)?;
        }
        Ok(r)
    }
}

/// Opens one byte range of one payload file.
pub struct PayloadOpener {
    source: Arc<PayloadSource>,
    store: Arc<dyn ObjectStore>,
    file_indices: Vec<usize>,
    frames: Count,
    points: Count,
    bytes_fetched: Count,
    corrupt: Count,
    decode_time: Time,
}

impl FileOpener for PayloadOpener {
    fn open(&self, file: PartitionedFile) -> Result<FileOpenFuture> {
        let source = Arc::clone(&self.source);
        let store = Arc::clone(&self.store);
        let file_indices = self.file_indices.clone();
        let counters = [
            self.frames.clone(),
            self.points.clone(),
            self.bytes_fetched.clone(),
            self.corrupt.clone(),
        ];
        let decode_time = self.decode_time.clone();
        Ok(Box::pin(async move {
            let key = file.object_meta.location.to_string();
            let size = file.object_meta.size;
            let (start, end) = file.range();
            let bytes = if source.options.mmap_local {
                let path = std::path::Path::new("/").join(file.object_meta.location.as_ref());
                // An I/O error (retried by the scheduler, exit code 74),
                // never corruption.
                ObjectBytes::map_file(&path).map_err(|e| {
                    DataFusionError::IoError(std::io::Error::new(
                        e.kind(),
                        format!("memory-mapping {key:?} ({}): {e}", path.display()),
                    ))
                })?
            } else {
                ObjectBytes::Store {
                    store,
                    location: file.object_meta.location.clone(),
                    e_tag: file.object_meta.e_tag.clone(),
                }
            };
            let scan = RangeScan::new(
                source,
                key,
                size,
                start..end,
                bytes,
                file_indices,
                counters,
                decode_time,
            );
            let stream = futures::stream::try_unfold(scan, |mut scan| async move {
                let batch = scan.next_batch().await?;
                Ok(batch.map(|b| (b, scan)))
            });
            Ok(stream.boxed())
        }))
    }
}

/// The state of one range being read.
struct RangeScan {
    source: Arc<PayloadSource>,
    key: String,
    range: Range<u64>,
    cursor: FrameCursor,
    builder: BatchBuilder,
    /// Batches made and not yet returned (a split payload makes several).
    pending: std::collections::VecDeque<RecordBatch>,
    /// Decode buffer of payloads that are split into rows (reused).
    scratch: Vec<u64>,
    decoder: Decoder,
    found_shard: Option<Shard>,
    found_shard_name: String,
    file_indices: Vec<usize>,
    local: LocalLog,
    counters: [Count; 4],
    /// CPU spent decoding (frame checks, zstd, validation, batch building).
    decode_time: Time,
    done: bool,
}

impl RangeScan {
    #[allow(clippy::too_many_arguments)]
    fn new(
        source: Arc<PayloadSource>,
        key: String,
        size: u64,
        range: Range<u64>,
        bytes: ObjectBytes,
        file_indices: Vec<usize>,
        counters: [Count; 4],
        decode_time: Time,
    ) -> Self {
        let skip = source.options.on_corrupt == CorruptPolicy::Skip;
        let cursor = FrameCursor::new(bytes, size, range.clone(), skip)
            .with_chunk(source.options.fetch_chunk);
        let shard_name = shard_of_key(&key).unwrap_or("").to_string();
        let builder = BatchBuilder::new(
            Arc::clone(&source.pool),
            source.batch_size,
            &key,
            &shard_name,
        );
        Self {
            found_shard: Shard::parse(&shard_name),
            found_shard_name: shard_name,
            key,
            range,
            cursor,
            builder,
            pending: Default::default(),
            scratch: Vec::new(),
            decoder: Decoder::new(),
            file_indices,
            local: LocalLog::default(),
            counters,
            decode_time,
            done: false,
            source,
        }
    }

    /// Corruption in a frame: fails, or is recorded under the skip policy.
    fn corrupt(&mut self, error: FormatError, skipped: u64, open: bool) -> Result<()> {
        if self.source.options.on_corrupt == CorruptPolicy::Fail {
            return Err(DataFusionError::External(Box::new(FrameError::new(
                self.key.clone(),
                error,
            ))));
        }
        self.counters[3].add(1);
        self.local.totals.corrupt_frames += 1;
        self.local.corrupt.push(CorruptRecord {
            key: self.key.clone(),
            offset: error.offset,
            reason: error.kind.to_string(),
            skipped_bytes: skipped,
            open,
        });
        Ok(())
    }

    fn is_misrouted(&self, h: &PayloadHeader) -> bool {
        match self.found_shard {
            Some(found) => self.source.options.shard_map.shard_of(h.org_id) != found,
            None => true,
        }
    }

    /// Records a decoded payload (totals, and the misrouted list); returns
    /// whether it is misrouted.
    fn record_payload(&mut self, header: &PayloadHeader, offset: u64) -> bool {
        let misrouted = self.is_misrouted(header);
        if misrouted {
            self.local.totals.misrouted_payloads += 1;
            self.local.totals.misrouted_points += header.n_points as u64;
            self.local.misrouted.push(MisroutedRecord {
                key: self.key.clone(),
                offset,
                org_id: header.org_id,
                metric_id: header.metric_id,
                points: header.n_points as u64,
                found_shard: self.found_shard_name.clone(),
                expected_shard: self
                    .source
                    .options
                    .shard_map
                    .shard_of(header.org_id)
                    .to_string(),
            });
        }
        self.local.totals.payloads += 1;
        self.local.totals.points += header.n_points as u64;
        self.counters[1].add(header.n_points as usize);
        misrouted
    }

    /// Finishes the builder's batch, if it has rows, into `pending`.
    fn flush(&mut self) -> Result<()> {
        if let Some(b) = self.builder.finish()? {
            self.pending.push_back(b);
        }
        Ok(())
    }

    /// Decodes one frame into the builder (batches it fills go to
    /// `pending`).
    fn decode_frame(&mut self, offset: u64, body: &[u8]) -> Result<()> {
        let info = match check_body(body, offset) {
            Ok(i) => i,
            Err(e) => {
                let len = body.len() as u64 + 4;
                self.corrupt(e, len, false)?;
                return Ok(());
            }
        };
        if let Some(rows) = self.source.options.max_row_points
            && info.content_size > split_above(rows)
        {
            return self.decode_split(offset, body, info, rows);
        }
        if !self.builder.fits(info.content_size) {
            self.flush()?;
        }
        let dst = self.builder.reserve(info.content_size)?;
        let header = match self
            .decoder
            .decompress_into(body, info, dst, offset)
            .and_then(|_| parse_payload(dst, offset).map(|p| p.header))
        {
            Ok(h) => h,
            Err(e) => {
                self.corrupt(e, body.len() as u64 + 4, false)?;
                return Ok(());
            }
        };
        let misrouted = self.record_payload(&header, offset);
        self.builder.commit(&header, offset, misrouted);
        Ok(())
    }

    /// A payload of more than `rows` points: decoded into the scratch
    /// buffer, then copied into the builder's slabs as rows of at most
    /// `rows` consecutive points, each with its `first_point`.
    fn decode_split(
        &mut self,
        offset: u64,
        body: &[u8],
        info: BodyInfo,
        rows: usize,
    ) -> Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let words = info.content_size.div_ceil(8);
        if scratch.len() < words {
            scratch.resize(words, 0);
        }
        let buf =
            &mut crate::datasource::batch::bytemuck_bytes_mut(&mut scratch)[..info.content_size];
        let r = self
            .decoder
            .decompress_into(body, info, buf, offset)
            .and_then(|_| parse_payload(buf, offset));
        let payload = match r {
            Ok(p) => p,
            Err(e) => {
                self.scratch = scratch;
                self.corrupt(e, body.len() as u64 + 4, false)?;
                return Ok(());
            }
        };
        let misrouted = self.record_payload(&payload.header, offset);
        let r = self.push_split(&payload, offset, misrouted, rows.max(1));
        self.scratch = scratch;
        r
    }

    /// The rows of [`Self::decode_split`]: at most `rows` points each, the
    /// metadata (up to 64 KiB) only on the last (a series takes it from its
    /// last row, and the others stay small).
    fn push_split(
        &mut self,
        payload: &Payload<'_>,
        offset: u64,
        misrouted: bool,
        rows: usize,
    ) -> Result<()> {
        let last = (payload.timestamps.len() - 1) / rows;
        let chunks = payload
            .timestamps
            .chunks(rows)
            .zip(payload.values.chunks(rows));
        for (i, (ts, values)) in chunks.enumerate() {
            let meta = if i == last { payload.metadata } else { "" };
            if !self.builder.fits(chunk_len(ts.len(), meta.len())) {
                self.flush()?;
            }
            let first = (i * rows) as u32;
            self.builder
                .push_chunk(&payload.header, offset, misrouted, first, ts, values, meta)?;
        }
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                if let Some(batch) = self.filter_and_project(batch)? {
                    return Ok(Some(batch));
                }
                continue;
            }
            if self.done {
                return Ok(None);
            }
            let step = match self.cursor.next().await {
                Ok(s) => s,
                Err(CursorError::Corrupt(e)) => {
                    // Only under the fail policy; `corrupt` turns it into the error.
                    self.corrupt(e, 0, false)?;
                    continue;
                }
                Err(CursorError::Io { range, source }) => {
                    return Err(DataFusionError::ObjectStore(Box::new(source))
                        .context(format!("reading {:?} bytes {range:?}", self.key)));
                }
            };
            match step {
                Some(Step::Frame(frame)) => {
                    self.source
                        .log
                        .progress
                        .fetch_add(frame.body.len() as u64 + 4, AtomicOrdering::Relaxed);
                    self.local.totals.frames += 1;
                    self.counters[0].add(1);
                    let start = std::time::Instant::now();
                    let r = self.decode_frame(frame.offset, &frame.body);
                    self.decode_time.add_duration(start.elapsed());
                    r?;
                }
                Some(Step::Skipped {
                    error,
                    skipped,
                    open,
                }) => self.corrupt(error, skipped, open)?,
                None => {
                    self.done = true;
                    self.finish_range();
                    self.flush()?;
                }
            }
        }
    }

    fn finish_range(&mut self) {
        let fetched = self.cursor.bytes_fetched();
        self.counters[2].add(fetched as usize);
        self.local.totals.bytes_fetched += fetched;
        self.local.range = Some(RangeRecord {
            key: self.key.clone(),
            start: self.range.start,
            end: self.range.end,
            first_frame: self.cursor.first_frame(),
            stop: self.cursor.stop(),
            handover: self.cursor.handover(),
            bytes_fetched: fetched,
            rejected: self.cursor.rejected().to_vec(),
        });
        self.source.log.merge(std::mem::take(&mut self.local));
    }

    fn filter_and_project(&self, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        let batch = match &self.source.predicate {
            Some(p) => {
                let mask = p.evaluate(&batch)?.into_array(batch.num_rows())?;
                filter_record_batch(&batch, mask.as_boolean())?
            }
            None => batch,
        };
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        Ok(Some(batch.project(&self.file_indices)?))
    }
}

impl Drop for RangeScan {
    /// A range whose stream is dropped before its end (`LIMIT`, an error
    /// elsewhere): what it saw is kept, but no range record, so that stopping
    /// early is never taken for a gap in the object.
    fn drop(&mut self) {
        if !self.done {
            let fetched = self.cursor.bytes_fetched();
            self.counters[2].add(fetched as usize);
            self.local.totals.bytes_fetched += fetched;
            self.source.log.merge(std::mem::take(&mut self.local));
        }
    }
}

/// Finds the [`FrameError`] inside a DataFusion error chain, if any.
pub fn frame_error(e: &DataFusionError) -> Option<&FrameError> {
    let mut cur: &DataFusionError = e;
    loop {
        match cur {
            DataFusionError::External(inner) => return inner.downcast_ref::<FrameError>(),
            DataFusionError::Context(_, inner) => cur = inner,
            DataFusionError::Shared(inner) => cur = inner,
            DataFusionError::ArrowError(inner, _) => {
                return match inner.as_ref() {
                    datafusion::arrow::error::ArrowError::ExternalError(e) => {
                        e.downcast_ref::<FrameError>()
                    }
                    _ => None,
                };
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> PartitionedFile {
        let mut f = PartitionedFile::new(name.to_string(), size);
        // A range as an earlier split would have left it.
        f.range = Some(FileRange { start: 0, end: 1 });
        f
    }

    #[test]
    fn the_skip_policy_spreads_whole_files_largest_first_each_group_in_input_order() {
        let groups = vec![FileGroup::new(vec![
            file("a", 10),
            file("b", 100),
            file("c", 30),
            file("d", 60),
            file("e", 20),
        ])];
        let spread = whole_files_spread(&groups, 2);
        let names: Vec<Vec<String>> = spread
            .iter()
            .map(|g| {
                g.iter()
                    .map(|f| f.object_meta.location.to_string())
                    .collect()
            })
            .collect();
        // b (100) | d (60), c (30 -> 90), e (20 -> 110) | a (10 -> 110).
        assert_eq!(names, [vec!["a", "b"], vec!["c", "d", "e"]]);
        assert!(
            spread
                .iter()
                .flat_map(|g| g.iter())
                .all(|f| f.range.is_none())
        );
        // More partitions than files: one file per group, none empty.
        assert_eq!(whole_files_spread(&groups, 8).len(), 5);
        assert_eq!(whole_files_spread(&[], 4).len(), 0);
    }
}
