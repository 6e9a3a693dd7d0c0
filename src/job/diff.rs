//! `tailor diff`: compares the logical content of two committed outputs,
//! point by point, for a migration's side-by-side run.
//!
//! Each side becomes two DataFusion tables read straight from its committed
//! files, in the order the files already have: `points` (part, org_id,
//! metric_id, ts, bits) and `series` (part, org_id, metric_id, kind,
//! interval_s, metadata, n_points), both declared sorted by their keys.
//! `part` numbers the (shard, window directory name) pairs of both sides in
//! their sorted order, so an integer stands for the two strings in every
//! row and every key comparison of the joins. A FULL OUTER
//! sort-merge join (DataFusion's `SortMergeJoinExec`) of old against new on
//! those keys streams without sorting or hashing either side, so two outputs
//! larger than memory are compared in bounded memory. Only content counts: file
//! layout, size caps, codecs and file counts may differ.
//!
//! Windows are compared by name (`<from>_<to>`); a window committed on one
//! side only shows up as series and points present on that side only.
//! Values are compared by their bits (a NaN equals a NaN only when the bits
//! match).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::compute::SortOptions;
use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray, StringBuilder,
    UInt8Array, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::kernels::boolean::{or, or_kleene};
use datafusion::arrow::compute::kernels::cmp::neq;
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{filter_record_batch, is_not_null, is_null};
use datafusion::arrow::datatypes::{
    DataType, Field, Int64Type, Schema, SchemaRef, UInt8Type, UInt32Type, UInt64Type,
};
use datafusion::catalog::Session;
use datafusion::common::NullEquality;
use datafusion::common::Result as DfResult;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::JoinType;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::joins::SortMergeJoinExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use serde::Serialize;

use crate::datasource::listing::{Hour, Window};
use crate::datasource::store::StoreRoot;
use crate::job::error::{IoContext, JobError, StoreContext};
use crate::job::manifest::{Manifest, read_manifest, window_dirs};
use crate::job::output::{open_data_file, read_data_file};

/// What to compare.
#[derive(Debug, Clone)]
pub struct DiffConfig {
    pub old: String,
    pub new: String,
    /// Shards to compare (default: every shard either side has).
    pub shards: Vec<String>,
    pub from: Option<Hour>,
    pub to: Option<Hour>,
    /// Only these orgs (default: all).
    pub orgs: Vec<u64>,
    /// Examples kept per category and shard for the summary.
    pub examples: usize,
    /// Where to write every differing point (Parquet), if anywhere.
    pub out: Option<std::path::PathBuf>,
    /// A memory pool for the joins (they stream, so little is needed).
    pub memory_limit: Option<u64>,
}

/// Difference categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    SeriesOldOnly,
    SeriesNewOnly,
    KindDiffers,
    IntervalDiffers,
    MetadataDiffers,
    PointOldOnly,
    PointNewOnly,
    ValueDiffers,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::SeriesOldOnly => "series_old_only",
            Category::SeriesNewOnly => "series_new_only",
            Category::KindDiffers => "kind_differs",
            Category::IntervalDiffers => "interval_differs",
            Category::MetadataDiffers => "metadata_differs",
            Category::PointOldOnly => "point_old_only",
            Category::PointNewOnly => "point_new_only",
            Category::ValueDiffers => "value_differs",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One difference, as shown in the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    pub window: String,
    pub org_id: u64,
    pub metric_id: u64,
    pub ts: Option<i64>,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// Per-shard results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardDiff {
    pub counts: BTreeMap<Category, u64>,
    pub examples: BTreeMap<Category, Vec<Example>>,
    pub old_points: u64,
    pub new_points: u64,
}

/// The diff report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffReport {
    pub old: String,
    pub new: String,
    pub shards: BTreeMap<String, ShardDiff>,
    pub totals: BTreeMap<Category, u64>,
    pub compared_points: u64,
    pub differing_points_file: Option<String>,
    pub seconds: f64,
}

impl DiffReport {
    pub fn identical(&self) -> bool {
        self.totals.values().all(|&n| n == 0)
    }

    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "tailor diff {} -> {}: {} ({} points compared in {:.2}s)",
            self.old,
            self.new,
            if self.identical() {
                "identical"
            } else {
                "DIFFERENT"
            },
            self.compared_points,
            self.seconds
        );
        for (shard, d) in &self.shards {
            let counts: Vec<String> = d
                .counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            let _ = writeln!(
                s,
                "  {shard}: {} old points, {} new points{}{}",
                d.old_points,
                d.new_points,
                if counts.is_empty() { "" } else { ": " },
                counts.join(", ")
            );
            for (c, ex) in &d.examples {
                for e in ex {
                    let _ = writeln!(
                        s,
                        "    {c} {} {}:{}{} old={} new={}",
                        e.window,
                        e.org_id,
                        e.metric_id,
                        e.ts.map(|t| format!(" ts={t}")).unwrap_or_default(),
                        e.old.as_deref().unwrap_or("-"),
                        e.new.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        s
    }
}

/// One side: its windows to read, in (shard, window) order.
#[derive(Clone)]
struct Side {
    root: StoreRoot,
    manifests: Vec<(String, String, Manifest)>,
    /// Shards with at least one committed window (whatever --from/--to say).
    committed: std::collections::BTreeSet<String>,
    orgs: Arc<Vec<u64>>,
}

impl fmt::Debug for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Side({}, {} windows)",
            self.root.display,
            self.manifests.len()
        )
    }
}

fn points_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("part", DataType::UInt32, false),
        Field::new("org_id", DataType::UInt64, false),
        Field::new("metric_id", DataType::UInt64, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("bits", DataType::UInt64, false),
    ]))
}

fn series_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("part", DataType::UInt32, false),
        Field::new("org_id", DataType::UInt64, false),
        Field::new("metric_id", DataType::UInt64, false),
        Field::new("kind", DataType::UInt8, false),
        Field::new("interval_s", DataType::UInt32, false),
        Field::new("metadata", DataType::Utf8, false),
        Field::new("n_points", DataType::UInt64, false),
    ]))
}

/// Points or series of one side, in key order.
#[derive(Debug)]
struct SideStream {
    side: Side,
    /// Both sides' (shard, window) pairs: a row's `part` indexes it.
    parts: Parts,
    points: bool,
    schema: SchemaRef,
}

const BATCH_POINTS: usize = 16 * 1024;

impl PartitionStream for SideStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let side = self.side.clone();
        let parts = Arc::clone(&self.parts);
        let points = self.points;
        let schema = Arc::clone(&self.schema);
        let (tx, rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2);
        let errors = tx.clone();
        let producer = tokio::spawn(async move { produce(side, &parts, points, &tx).await });
        // A producer that fails, or panics, ends the stream with an error:
        // a side that stopped early must never read as "points missing".
        tokio::spawn(async move {
            let error = match producer.await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => datafusion::error::DataFusionError::External(Box::new(e)),
                Err(join) => datafusion::error::DataFusionError::Execution(format!(
                    "reading a side of the diff failed: {join}"
                )),
            };
            let _ = errors.send(Err(error)).await;
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        Box::pin(RecordBatchStreamAdapter::new(schema, stream))
    }
}

/// Rows being gathered for one batch; metadata strings are appended into
/// the array's buffer, not allocated per series.
struct Rows {
    part: Vec<u32>,
    org: Vec<u64>,
    metric: Vec<u64>,
    ts: Vec<i64>,
    bits: Vec<u64>,
    kind: Vec<u8>,
    interval: Vec<u32>,
    meta: StringBuilder,
    n: Vec<u64>,
}

impl Rows {
    fn new() -> Self {
        Rows {
            part: Vec::new(),
            org: Vec::new(),
            metric: Vec::new(),
            ts: Vec::new(),
            bits: Vec::new(),
            kind: Vec::new(),
            interval: Vec::new(),
            meta: StringBuilder::new(),
            n: Vec::new(),
        }
    }
    fn len(&self) -> usize {
        self.org.len()
    }
    /// Room left in the batch.
    fn room(&self) -> usize {
        BATCH_POINTS.saturating_sub(self.len())
    }
    /// The batch so far; the point columns start the next one with the
    /// capacity of a whole batch, so that they are never regrown.
    fn take(&mut self, points: bool) -> DfResult<RecordBatch> {
        fn next<T>(v: &mut Vec<T>, points: bool) -> Vec<T> {
            let cap = if points { BATCH_POINTS } else { 0 };
            std::mem::replace(v, Vec::with_capacity(cap))
        }
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(next(&mut self.part, points))),
            Arc::new(UInt64Array::from(next(&mut self.org, points))),
            Arc::new(UInt64Array::from(next(&mut self.metric, points))),
        ];
        if points {
            cols.push(Arc::new(Int64Array::from(next(&mut self.ts, points))));
            cols.push(Arc::new(UInt64Array::from(next(&mut self.bits, points))));
            Ok(RecordBatch::try_new(points_schema(), cols)?)
        } else {
            cols.push(Arc::new(UInt8Array::from(std::mem::take(&mut self.kind))));
            cols.push(Arc::new(UInt32Array::from(std::mem::take(
                &mut self.interval,
            ))));
            cols.push(Arc::new(self.meta.finish()));
            cols.push(Arc::new(UInt64Array::from(std::mem::take(&mut self.n))));
            Ok(RecordBatch::try_new(series_schema(), cols)?)
        }
    }
}

/// Streams one side's points or series in key order. The sort-merge join
/// trusts that order, so it is checked here: series strictly increasing
/// across the files of a window, timestamps strictly increasing in a
/// series. A side that breaks it is corrupt, not different.
async fn produce(
    side: Side,
    parts: &[(String, String)],
    points: bool,
    tx: &tokio::sync::mpsc::Sender<DfResult<RecordBatch>>,
) -> Result<(), JobError> {
    let mut rows = Rows::new();
    let mut ts = Vec::new();
    let mut vals = Vec::new();
    for (shard, window, m) in &side.manifests {
        let part = part_of(parts, shard, window)?;
        let mut last: Option<(u64, u64)> = None;
        for f in &m.files {
            let mut data = read_data_file(&side.root, m, f).await?;
            let bytes = data.bytes.clone();
            let reader = open_data_file(m, f, &data, &bytes)?;
            for e in reader.footer().series() {
                data.release_before(e.byte_range().start);
                let key = (e.org_id, e.metric_id);
                if last.is_some_and(|l| l >= key) {
                    return Err(JobError::BadOutput(format!(
                        "{}: {shard}/{window}/{}: series {}/{} is out of order (after {}/{})",
                        side.root.display,
                        f.path,
                        e.org_id,
                        e.metric_id,
                        last.unwrap().0,
                        last.unwrap().1
                    )));
                }
                last = Some(key);
                if !side.orgs.is_empty() && !side.orgs.contains(&e.org_id) {
                    continue;
                }
                if points {
                    ts.clear();
                    vals.clear();
                    reader
                        .read_series_into(e, &mut ts, &mut vals)
                        .map_err(|err| data.error(err))?;
                    if let Some(w) = ts.windows(2).position(|w| w[0] >= w[1]) {
                        return Err(JobError::BadOutput(format!(
                            "{}: {shard}/{window}/{}: series {}/{} has timestamp {} after {}",
                            side.root.display,
                            f.path,
                            e.org_id,
                            e.metric_id,
                            ts[w + 1],
                            ts[w]
                        )));
                    }
                    // Batches of exactly BATCH_POINTS points (a series may
                    // span several).
                    let mut at = 0;
                    while at < ts.len() {
                        let n = rows.room().min(ts.len() - at);
                        rows.part.extend(std::iter::repeat_n(part, n));
                        rows.org.extend(std::iter::repeat_n(e.org_id, n));
                        rows.metric.extend(std::iter::repeat_n(e.metric_id, n));
                        rows.ts.extend_from_slice(&ts[at..at + n]);
                        rows.bits.extend_from_slice(&vals[at..at + n]);
                        at += n;
                        if rows.room() == 0 && tx.send(rows.take(points)).await.is_err() {
                            return Ok(());
                        }
                    }
                } else {
                    rows.part.push(part);
                    rows.org.push(e.org_id);
                    rows.metric.push(e.metric_id);
                    rows.kind.push(e.kind);
                    rows.interval.push(e.interval_s);
                    rows.meta.append_value(&e.metadata);
                    rows.n.push(e.n_points);
                }
                if rows.len() >= BATCH_POINTS && tx.send(rows.take(points)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    if rows.len() > 0 {
        let _ = tx.send(rows.take(points)).await;
    }
    Ok(())
}

/// A side's points or series as a table, declared sorted by its keys.
#[derive(Debug)]
struct SideTable {
    stream: Arc<SideStream>,
}

#[async_trait]
impl TableProvider for SideTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.stream.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = self.schema();
        let projected = match projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => Arc::clone(&schema),
        };
        let mut keys = vec!["part", "org_id", "metric_id"];
        if self.stream.points {
            keys.push("ts");
        }
        // The ordering, if every key column is projected.
        let sort: Option<Vec<PhysicalSortExpr>> = keys
            .iter()
            .map(|k| col(k, &projected).ok().map(PhysicalSortExpr::new_default))
            .collect();
        let ordering: Vec<LexOrdering> = sort.and_then(LexOrdering::new).into_iter().collect();
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            vec![Arc::clone(&self.stream) as Arc<dyn PartitionStream>],
            projection,
            ordering,
            false,
            limit,
        )?))
    }
}

/// The shards under an output root: directories named as shards (the run
/// history, `_history`, and anything else beside them is not data).
async fn shards_of(root: &StoreRoot) -> Result<Vec<String>, JobError> {
    let listing = root
        .store
        .list_with_delimiter(Some(&root.prefix))
        .await
        .op("LIST", format_args!("{}/", root.display))?;
    Ok(listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(|s| s.to_string()))
        .filter(|s| crate::format::shard::Shard::parse(s).is_some())
        .collect())
}

async fn side(url: &str, shards: &[String], cfg: &DiffConfig) -> Result<Side, JobError> {
    let root = StoreRoot::open(url)?;
    let mut manifests = Vec::new();
    let mut committed = std::collections::BTreeSet::new();
    let selection = Window {
        from: cfg.from.clone(),
        to: cfg.to.clone(),
    };
    let selects = |from: &str, to: &str, what: &str| {
        selection
            .selects(from, to, what)
            .map_err(|e| JobError::Config(format!("{url}: {e}")))
    };
    for shard in shards {
        let (windows, uncommitted) = window_dirs(&root, shard).await?;
        if !windows.is_empty() {
            committed.insert(shard.clone());
        }
        // Data without its commit is an error, not a difference: the run
        // that wrote it was stopped and never rerun.
        if let Some(w) = uncommitted.iter().find(|w| {
            w.split_once('_')
                .is_none_or(|(f, t)| selection.selects(f, t, w) != Ok(false))
        }) {
            return Err(JobError::BadOutput(format!(
                "{url}: {shard}/{w} holds files but no {} (a run that did not commit; \
                 rerun it, or leave the window out with --from/--to)",
                crate::job::manifest::MANIFEST_NAME
            )));
        }
        for w in windows {
            let m = read_manifest(&root, shard, &w).await?;
            if selects(&m.window_from, &m.window_to, &m.location)? {
                m.verify(&root, shard, &w)?;
                manifests.push((shard.clone(), w, m));
            }
        }
    }
    if committed.is_empty() {
        return Err(JobError::BadOutput(format!(
            "{url} holds no committed output for {} (is the path right?)",
            if shards.len() == 1 {
                format!("shard {}", shards[0])
            } else {
                "any of the shards compared".to_string()
            }
        )));
    }
    Ok(Side {
        root,
        manifests,
        committed,
        orgs: Arc::new(cfg.orgs.clone()),
    })
}

/// The (shard, window) pairs of both sides, sorted; a row's `part` is its
/// window's index.
type Parts = Arc<Vec<(String, String)>>;

/// Numbers the (shard, window) pairs of both sides in sorted order (the
/// order each side reads its windows in, so `part` grows along a side's
/// rows as the strings would).
fn number_parts(old: &Side, new: &Side) -> Result<Parts, JobError> {
    let mut parts: Vec<(String, String)> = old
        .manifests
        .iter()
        .chain(&new.manifests)
        .map(|(s, w, _)| (s.clone(), w.clone()))
        .collect();
    parts.sort();
    parts.dedup();
    if u32::try_from(parts.len()).is_err() {
        return Err(JobError::BadOutput(format!(
            "{} windows to compare: more than a diff can number",
            parts.len()
        )));
    }
    Ok(Arc::new(parts))
}

/// The `part` of a side's window.
fn part_of(parts: &[(String, String)], shard: &str, window: &str) -> Result<u32, JobError> {
    parts
        .binary_search_by(|(s, w)| (s.as_str(), w.as_str()).cmp(&(shard, window)))
        .map(|i| i as u32)
        .map_err(|_| JobError::Internal(format!("window {shard}/{window} was not numbered")))
}

/// A FULL OUTER sort-merge join of two sorted side tables on their first
/// `keys` columns; DataFusion's `SortMergeJoinExec`, built directly because
/// the SQL planner only picks it with several partitions (which would
/// repartition and then sort both sides).
async fn join(
    ctx: &SessionContext,
    left: &str,
    right: &str,
    keys: usize,
) -> Result<SendableRecordBatchStream, JobError> {
    let plan = join_plan(ctx, left, right, keys).await?;
    Ok(datafusion::physical_plan::execute_stream(
        plan,
        ctx.task_ctx(),
    )?)
}

async fn join_plan(
    ctx: &SessionContext,
    left: &str,
    right: &str,
    keys: usize,
) -> Result<Arc<dyn ExecutionPlan>, JobError> {
    let state = ctx.state();
    let l = ctx
        .table_provider(left)
        .await?
        .scan(&state, None, &[], None)
        .await?;
    let r = ctx
        .table_provider(right)
        .await?
        .scan(&state, None, &[], None)
        .await?;
    let (ls, rs) = (l.schema(), r.schema());
    let on = (0..keys)
        .map(|i| {
            let name = ls.field(i).name();
            Ok((col(name, &ls)?, col(name, &rs)?))
        })
        .collect::<DfResult<Vec<_>>>()?;
    Ok(Arc::new(SortMergeJoinExec::try_new(
        l,
        r,
        on,
        None,
        JoinType::Full,
        vec![SortOptions::default(); keys],
        NullEquality::NullEqualsNothing,
    )?))
}

/// `a` where it is not null, else `b`.
fn coalesce(a: &ArrayRef, b: &ArrayRef) -> DfResult<ArrayRef> {
    Ok(zip(&is_not_null(a.as_ref())?, a, b)?)
}

/// The series join's rows as (part, org_id, metric_id, old_kind, new_kind,
/// old_interval, new_interval, old_meta, new_meta, old_n, new_n).
fn series_rows(b: &RecordBatch) -> DfResult<Vec<ArrayRef>> {
    let c = |i: usize| Arc::clone(b.column(i));
    let k = 7; // columns per side
    let mut out = (0..3)
        .map(|i| coalesce(b.column(i), b.column(k + i)))
        .collect::<DfResult<Vec<_>>>()?;
    for i in 3..7 {
        out.push(c(i));
        out.push(c(k + i));
    }
    Ok(out)
}

/// The points join's differing rows as (part, org_id, metric_id, ts,
/// old_bits, new_bits).
fn differing_points(b: &RecordBatch) -> DfResult<RecordBatch> {
    let k = 5; // columns per side
    let (ob, nb) = (b.column(4), b.column(k + 4));
    // One side missing, or both present with other bits. (Kleene OR: a
    // missing side makes `neq` null, and true OR null is true.)
    let differs = or_kleene(
        &or(&is_null(ob.as_ref())?, &is_null(nb.as_ref())?)?,
        &neq(ob, nb)?,
    )?;
    let mut cols = (0..4)
        .map(|i| coalesce(b.column(i), b.column(k + i)))
        .collect::<DfResult<Vec<_>>>()?;
    cols.push(Arc::clone(ob));
    cols.push(Arc::clone(nb));
    let schema = Arc::new(Schema::new(vec![
        Field::new("part", DataType::UInt32, true),
        Field::new("org_id", DataType::UInt64, true),
        Field::new("metric_id", DataType::UInt64, true),
        Field::new("ts", DataType::Int64, true),
        Field::new("old_bits", DataType::UInt64, true),
        Field::new("new_bits", DataType::UInt64, true),
    ]));
    let all = RecordBatch::try_new(schema, cols)?;
    Ok(filter_record_batch(&all, &differs)?)
}

/// The session with both sides' tables registered.
fn session(
    old: &Side,
    new: &Side,
    parts: &Parts,
    memory_limit: Option<u64>,
) -> Result<SessionContext, JobError> {
    let sc = SessionConfig::new()
        .with_target_partitions(1)
        .with_batch_size(BATCH_POINTS);
    let mut rt = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
    if let Some(l) = memory_limit {
        rt = rt.with_memory_pool(Arc::new(
            datafusion::execution::memory_pool::FairSpillPool::new(l as usize),
        ));
    }
    let ctx = SessionContext::new_with_config_rt(sc, rt.build_arc()?);
    for (name, s, points) in [
        ("old_points", old, true),
        ("new_points", new, true),
        ("old_series", old, false),
        ("new_series", new, false),
    ] {
        let stream = Arc::new(SideStream {
            side: s.clone(),
            parts: Arc::clone(parts),
            points,
            schema: if points {
                points_schema()
            } else {
                series_schema()
            },
        });
        ctx.register_table(name, Arc::new(SideTable { stream }))?;
    }
    Ok(ctx)
}

/// The physical plans of the two joins (tests check that they stream).
pub async fn explain(cfg: &DiffConfig) -> Result<String, JobError> {
    let old = side(&cfg.old, &cfg.shards, cfg).await?;
    let new = side(&cfg.new, &cfg.shards, cfg).await?;
    let parts = number_parts(&old, &new)?;
    let ctx = session(&old, &new, &parts, cfg.memory_limit)?;
    let mut out = String::new();
    for (l, r, keys) in [
        ("old_series", "new_series", 3),
        ("old_points", "new_points", 4),
    ] {
        let plan = join_plan(&ctx, l, r, keys).await?;
        out.push_str(
            &datafusion::physical_plan::displayable(plan.as_ref())
                .indent(true)
                .to_string(),
        );
        out.push('\n');
    }
    Ok(out)
}

/// Runs the diff.
pub async fn diff(cfg: &DiffConfig) -> Result<DiffReport, JobError> {
    let started = std::time::Instant::now();
    let shards: Vec<String> = if cfg.shards.is_empty() {
        let mut s = shards_of(&StoreRoot::open(&cfg.old)?).await?;
        s.extend(shards_of(&StoreRoot::open(&cfg.new)?).await?);
        s.sort();
        s.dedup();
        s
    } else {
        let mut s = cfg.shards.clone();
        s.sort();
        s.dedup();
        s
    };
    let old = side(&cfg.old, &shards, cfg).await?;
    let new = side(&cfg.new, &shards, cfg).await?;
    if let Some(s) = shards
        .iter()
        .find(|s| !old.committed.contains(*s) && !new.committed.contains(*s))
    {
        return Err(JobError::BadOutput(format!(
            "shard {s} has no committed output on either side"
        )));
    }
    if old.manifests.is_empty() && new.manifests.is_empty() {
        return Err(JobError::BadOutput(
            "neither side has a committed window to compare".into(),
        ));
    }
    let parts = number_parts(&old, &new)?;
    let ctx = session(&old, &new, &parts, cfg.memory_limit)?;
    let mut report = DiffReport {
        old: cfg.old.clone(),
        new: cfg.new.clone(),
        ..Default::default()
    };
    for shard in &shards {
        report.shards.insert(shard.clone(), ShardDiff::default());
    }

    // Series level: presence, kind, interval, metadata; and point counts.
    let mut stream = join(&ctx, "old_series", "new_series", 3).await?;
    while let Some(b) = stream.next().await {
        let b = b?;
        let cols = series_rows(&b)?;
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(
                cols.iter()
                    .enumerate()
                    .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
                    .collect::<Vec<_>>(),
            )),
            cols,
        )
        .map_err(datafusion::error::DataFusionError::from)?;
        let part = b.column(0).as_primitive::<UInt32Type>();
        let org = b.column(1).as_primitive::<UInt64Type>();
        let metric = b.column(2).as_primitive::<UInt64Type>();
        let (ok, nk) = (
            b.column(3).as_primitive::<UInt8Type>(),
            b.column(4).as_primitive::<UInt8Type>(),
        );
        let (oi, ni) = (
            b.column(5).as_primitive::<UInt32Type>(),
            b.column(6).as_primitive::<UInt32Type>(),
        );
        let (om, nm) = (
            b.column(7).as_string::<i32>(),
            b.column(8).as_string::<i32>(),
        );
        let (on, nn) = (
            b.column(9).as_primitive::<UInt64Type>(),
            b.column(10).as_primitive::<UInt64Type>(),
        );
        for i in 0..b.num_rows() {
            let (shard, window) = &parts[part.value(i) as usize];
            let d = shard_diff(&mut report.shards, shard);
            let ex = |old: Option<String>, new: Option<String>| Example {
                window: window.clone(),
                org_id: org.value(i),
                metric_id: metric.value(i),
                ts: None,
                old,
                new,
            };
            let mut hits = Vec::new();
            if ok.is_null(i) {
                hits.push((
                    Category::SeriesNewOnly,
                    ex(None, Some(format!("{} points", nn.value(i)))),
                ));
            } else if nk.is_null(i) {
                hits.push((
                    Category::SeriesOldOnly,
                    ex(Some(format!("{} points", on.value(i))), None),
                ));
            } else {
                if ok.value(i) != nk.value(i) {
                    hits.push((
                        Category::KindDiffers,
                        ex(Some(ok.value(i).to_string()), Some(nk.value(i).to_string())),
                    ));
                }
                if oi.value(i) != ni.value(i) {
                    hits.push((
                        Category::IntervalDiffers,
                        ex(Some(oi.value(i).to_string()), Some(ni.value(i).to_string())),
                    ));
                }
                if om.value(i) != nm.value(i) {
                    hits.push((
                        Category::MetadataDiffers,
                        ex(
                            Some(format!("{:?}", om.value(i))),
                            Some(format!("{:?}", nm.value(i))),
                        ),
                    ));
                }
            }
            if !on.is_null(i) {
                d.old_points += on.value(i);
            }
            if !nn.is_null(i) {
                d.new_points += nn.value(i);
            }
            for (c, e) in hits {
                record(d, c, cfg.examples, || e);
            }
        }
    }

    // Point level: every differing point, streamed to Parquet.
    let mut writer = match &cfg.out {
        Some(p) => Some(DiffWriter::create(p)?),
        None => None,
    };
    let mut stream = join(&ctx, "old_points", "new_points", 4).await?;
    while let Some(b) = stream.next().await {
        let b = differing_points(&b?)?;
        if b.num_rows() == 0 {
            continue;
        }
        let part = b.column(0).as_primitive::<UInt32Type>();
        let org = b.column(1).as_primitive::<UInt64Type>();
        let metric = b.column(2).as_primitive::<UInt64Type>();
        let ts = b.column(3).as_primitive::<Int64Type>();
        let ob = b.column(4).as_primitive::<UInt64Type>();
        let nb = b.column(5).as_primitive::<UInt64Type>();
        let mut cats = Vec::with_capacity(b.num_rows());
        for i in 0..b.num_rows() {
            let c = if ob.is_null(i) {
                Category::PointNewOnly
            } else if nb.is_null(i) {
                Category::PointOldOnly
            } else {
                Category::ValueDiffers
            };
            cats.push(c);
            let (shard, window) = &parts[part.value(i) as usize];
            let d = shard_diff(&mut report.shards, shard);
            let show = |a: &UInt64Array| {
                (!a.is_null(i))
                    .then(|| format!("{} (0x{:016x})", f64::from_bits(a.value(i)), a.value(i)))
            };
            record(d, c, cfg.examples, || Example {
                window: window.clone(),
                org_id: org.value(i),
                metric_id: metric.value(i),
                ts: Some(ts.value(i)),
                old: show(ob),
                new: show(nb),
            });
        }
        if let Some(w) = writer.as_mut() {
            w.write(&b, &cats, &parts)?;
        }
    }
    if let Some(w) = writer {
        w.close()?;
        report.differing_points_file = cfg.out.as_ref().map(|p| p.display().to_string());
    }
    for d in report.shards.values() {
        for (c, n) in &d.counts {
            *report.totals.entry(*c).or_default() += n;
        }
        report.compared_points += d.old_points.max(d.new_points);
    }
    for c in [
        Category::SeriesOldOnly,
        Category::SeriesNewOnly,
        Category::KindDiffers,
        Category::IntervalDiffers,
        Category::MetadataDiffers,
        Category::PointOldOnly,
        Category::PointNewOnly,
        Category::ValueDiffers,
    ] {
        report.totals.entry(c).or_default();
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Counts a difference; keeps the example `make` builds while fewer than
/// `keep` are kept (only then is it built).
fn record(d: &mut ShardDiff, c: Category, keep: usize, make: impl FnOnce() -> Example) {
    *d.counts.entry(c).or_default() += 1;
    let ex = d.examples.entry(c).or_default();
    if ex.len() < keep {
        ex.push(make());
    }
}

/// A shard's results, without allocating its name when it has some.
fn shard_diff<'a>(shards: &'a mut BTreeMap<String, ShardDiff>, shard: &str) -> &'a mut ShardDiff {
    if !shards.contains_key(shard) {
        shards.insert(shard.to_string(), ShardDiff::default());
    }
    shards.get_mut(shard).expect("inserted above")
}

/// Writes differing points: side, org_id, metric_id, ts, old/new value
/// (f64 with the bits kept) and bits, category.
struct DiffWriter {
    w: parquet::arrow::ArrowWriter<std::fs::File>,
    /// "writing <path>", for errors.
    writing: String,
}

fn diff_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("side", DataType::Utf8, false),
        Field::new("shard", DataType::Utf8, false),
        Field::new("win", DataType::Utf8, false),
        Field::new("org_id", DataType::UInt64, false),
        Field::new("metric_id", DataType::UInt64, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("old_value", DataType::Float64, true),
        Field::new("new_value", DataType::Float64, true),
        Field::new("old_bits", DataType::UInt64, true),
        Field::new("new_bits", DataType::UInt64, true),
        Field::new("category", DataType::Utf8, false),
    ]))
}

impl DiffWriter {
    fn create(path: &std::path::Path) -> Result<Self, JobError> {
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .build();
        let writing = format!("writing {}", path.display());
        let file = std::fs::File::create(path).at(&writing)?;
        let w = parquet::arrow::ArrowWriter::try_new(file, diff_schema(), Some(props))
            .map_err(|e| JobError::io(&writing, std::io::Error::other(e)))?;
        Ok(Self { w, writing })
    }

    fn write(
        &mut self,
        b: &RecordBatch,
        cats: &[Category],
        parts: &[(String, String)],
    ) -> Result<(), JobError> {
        let ob = b.column(4).as_primitive::<UInt64Type>();
        let nb = b.column(5).as_primitive::<UInt64Type>();
        let part = b.column(0).as_primitive::<UInt32Type>();
        let names = |pick: fn(&(String, String)) -> &str| -> StringArray {
            part.values()
                .iter()
                .map(|&p| Some(pick(&parts[p as usize])))
                .collect()
        };
        let to_f64 =
            |a: &UInt64Array| -> Float64Array { a.iter().map(|v| v.map(f64::from_bits)).collect() };
        let side: StringArray = cats
            .iter()
            .map(|c| {
                Some(match c {
                    Category::PointOldOnly => "old",
                    Category::PointNewOnly => "new",
                    _ => "both",
                })
            })
            .collect();
        let category: StringArray = cats.iter().map(|c| Some(c.name())).collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(side),
            Arc::new(names(|p| &p.0)),
            Arc::new(names(|p| &p.1)),
            Arc::clone(b.column(1)),
            Arc::clone(b.column(2)),
            Arc::clone(b.column(3)),
            Arc::new(to_f64(ob)),
            Arc::new(to_f64(nb)),
            Arc::clone(b.column(4)),
            Arc::clone(b.column(5)),
            Arc::new(category),
        ];
        let batch = RecordBatch::try_new(diff_schema(), cols)
            .map_err(datafusion::error::DataFusionError::from)?;
        self.w
            .write(&batch)
            .map_err(|e| JobError::io(&self.writing, std::io::Error::other(e)))
    }

    fn close(self) -> Result<(), JobError> {
        self.w
            .close()
            .map_err(|e| JobError::io(&self.writing, std::io::Error::other(e)))?;
        Ok(())
    }
}
