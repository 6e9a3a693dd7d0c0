//! The two sides of a diff as sorted DataFusion tables: each side's
//! committed windows (or a migration's merged view), read series by series
//! in key order and streamed as record batches.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringBuilder, UInt8Array, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::Result as DfResult;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};

use super::DiffConfig;
use crate::datasource::listing::Window;
use crate::datasource::store::StoreRoot;
use crate::job::error::{JobError, StoreContext};
use crate::job::manifest::{Manifest, read_manifest, window_dirs};
use crate::job::migration::Migration;
use crate::job::output::{MergedSeries, SeriesData, WindowReader, WindowSeries};

/// Where one window of a side comes from. (One per window: the size of
/// the larger variant costs nothing worth a box.)
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Source {
    /// A committed window of one output.
    One(StoreRoot, Manifest),
    /// The merged view of a migration: the old system's window (if any),
    /// the new system's (if any), and the migration.
    Merged(MergedSource),
}

/// The two windows (either may be missing) of a merged view.
#[derive(Clone)]
pub(super) struct MergedSource {
    pub(super) old: StoreRoot,
    pub(super) old_manifest: Option<Manifest>,
    pub(super) new: StoreRoot,
    pub(super) new_manifest: Option<Manifest>,
    pub(super) migration: Arc<Migration>,
}

/// One side: its windows to read, in (shard, window) order.
#[derive(Clone)]
pub(super) struct Side {
    /// The side's URL, or what it merges.
    pub(super) display: String,
    pub(super) root: StoreRoot,
    pub(super) manifests: Vec<(String, String, Source)>,
    /// Shards with at least one committed window (whatever --from/--to say).
    pub(super) committed: std::collections::BTreeSet<String>,
    pub(super) orgs: Arc<Vec<u64>>,
}

impl fmt::Debug for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Side({}, {} windows)",
            self.display,
            self.manifests.len()
        )
    }
}

pub(super) fn points_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("part", DataType::UInt32, false),
        Field::new("org_id", DataType::UInt64, false),
        Field::new("metric_id", DataType::UInt64, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("bits", DataType::UInt64, false),
    ]))
}

pub(super) fn series_schema() -> SchemaRef {
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
pub(super) struct SideStream {
    pub(super) side: Side,
    /// Both sides' (shard, window) pairs: a row's `part` indexes it.
    pub(super) parts: Parts,
    pub(super) points: bool,
    pub(super) schema: SchemaRef,
}

pub(super) const BATCH_POINTS: usize = 16 * 1024;

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
pub(super) struct Rows {
    pub(super) part: Vec<u32>,
    pub(super) org: Vec<u64>,
    pub(super) metric: Vec<u64>,
    pub(super) ts: Vec<i64>,
    pub(super) bits: Vec<u64>,
    pub(super) kind: Vec<u8>,
    pub(super) interval: Vec<u32>,
    pub(super) meta: StringBuilder,
    pub(super) n: Vec<u64>,
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

/// Streams one side's points or series in key order (the readers check
/// it: series strictly increasing across the files of a window, timestamps
/// strictly increasing in a series; a side that breaks it is corrupt, not
/// different).
pub(super) async fn produce(
    side: Side,
    parts: &[(String, String)],
    points: bool,
    tx: &tokio::sync::mpsc::Sender<DfResult<RecordBatch>>,
) -> Result<(), JobError> {
    let mut rows = Rows::new();
    let mut s = SeriesData::default();
    for (shard, window, source) in &side.manifests {
        let part = part_of(parts, shard, window)?;
        let mut reader = match source {
            Source::One(root, m) => {
                let r = WindowSeries::new(root, m.clone());
                WindowReader::One(if points { r } else { r.headers_only() })
            }
            Source::Merged(m) => WindowReader::Merged(MergedSeries::new(
                m.old_manifest
                    .clone()
                    .map(|om| WindowSeries::new(&m.old, om)),
                m.new_manifest
                    .clone()
                    .map(|nm| WindowSeries::new(&m.new, nm)),
                Arc::clone(&m.migration),
            )),
        };
        while reader.next(&mut s).await? {
            if !side.orgs.is_empty() && !side.orgs.contains(&s.org_id) {
                continue;
            }
            if points {
                // Batches of exactly BATCH_POINTS points (a series may
                // span several).
                let mut at = 0;
                while at < s.ts.len() {
                    let n = rows.room().min(s.ts.len() - at);
                    rows.part.extend(std::iter::repeat_n(part, n));
                    rows.org.extend(std::iter::repeat_n(s.org_id, n));
                    rows.metric.extend(std::iter::repeat_n(s.metric_id, n));
                    rows.ts.extend_from_slice(&s.ts[at..at + n]);
                    rows.bits.extend_from_slice(&s.vals[at..at + n]);
                    at += n;
                    if rows.room() == 0 && tx.send(rows.take(points)).await.is_err() {
                        return Ok(());
                    }
                }
            } else {
                rows.part.push(part);
                rows.org.push(s.org_id);
                rows.metric.push(s.metric_id);
                rows.kind.push(s.kind);
                rows.interval.push(s.interval_s);
                rows.meta.append_value(&s.metadata);
                rows.n.push(s.n_points);
            }
            if rows.len() >= BATCH_POINTS && tx.send(rows.take(points)).await.is_err() {
                return Ok(());
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
pub(super) struct SideTable {
    pub(super) stream: Arc<SideStream>,
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
pub(super) async fn shards_of(root: &StoreRoot) -> Result<Vec<String>, JobError> {
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

pub(super) async fn side(url: &str, shards: &[String], cfg: &DiffConfig) -> Result<Side, JobError> {
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
                manifests.push((shard.clone(), w, Source::One(root.clone(), m)));
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
        display: url.to_string(),
        root,
        manifests,
        committed,
        orgs: Arc::new(cfg.orgs.clone()),
    })
}

/// The (shard, window) pairs of both sides, sorted; a row's `part` is its
/// window's index.
pub(super) type Parts = Arc<Vec<(String, String)>>;

/// Numbers the (shard, window) pairs of both sides in sorted order (the
/// order each side reads its windows in, so `part` grows along a side's
/// rows as the strings would).
pub(super) fn number_parts(old: &Side, new: &Side) -> Result<Parts, JobError> {
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
pub(super) fn part_of(
    parts: &[(String, String)],
    shard: &str,
    window: &str,
) -> Result<u32, JobError> {
    parts
        .binary_search_by(|(s, w)| (s.as_str(), w.as_str()).cmp(&(shard, window)))
        .map(|i| i as u32)
        .map_err(|_| JobError::Internal(format!("window {shard}/{window} was not numbered")))
}

/// The merged view of a migration's two systems, window by window (a
/// window either has).
pub(super) fn merged_side(old: &Side, new: &Side, migration: &Arc<Migration>) -> Side {
    type Pair = (Option<Manifest>, Option<Manifest>);
    let mut windows: BTreeMap<(String, String), Pair> = BTreeMap::new();
    for (side, is_old) in [(old, true), (new, false)] {
        for (s, w, src) in &side.manifests {
            if let Source::One(_, m) = src {
                let pair = windows.entry((s.clone(), w.clone())).or_default();
                if is_old {
                    pair.0 = Some(m.clone());
                } else {
                    pair.1 = Some(m.clone());
                }
            }
        }
    }
    Side {
        display: format!("merged view of {} and {}", old.display, new.display),
        root: new.root.clone(),
        manifests: windows
            .into_iter()
            .map(|((s, w), (om, nm))| {
                let src = Source::Merged(MergedSource {
                    old: old.root.clone(),
                    old_manifest: om,
                    new: new.root.clone(),
                    new_manifest: nm,
                    migration: Arc::clone(migration),
                });
                (s, w, src)
            })
            .collect(),
        committed: old.committed.union(&new.committed).cloned().collect(),
        orgs: Arc::clone(&old.orgs),
    }
}
