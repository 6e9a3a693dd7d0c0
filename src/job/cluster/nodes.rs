//! tailor's two plan nodes of a cluster run (see `cluster/mod.rs`):
//!
//! ```text
//! ShardWriteExec            per part: group, merge, encode, upload   (stage 2)
//!   RepartitionExec Hash([part_key], K)        Ballista's shuffle
//!     ShuffleRowsExec       rows made compact, part_key added         (stage 1)
//!       DataSourceExec(PayloadSource)   byte ranges, each range's log as a row
//! ```
//!
//! Ballista assigns partitions to tasks and tells a node only its index
//! inside the task's slice, so nothing here depends on a partition index:
//! a row's part comes from its series ([`part_of`]), and a writer writes
//! whatever parts reach it.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, GenericListArray, ListViewArray, RecordBatch, StringArray,
    UInt32Array,
};
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use datafusion::common::hash_utils::create_hashes;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::repartition::REPARTITION_RANDOM_STATE;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::datasource::batch::LOG_ROW_SHARD;
use crate::datasource::schema::{
    METADATA, METRIC_ID, MISROUTED, OBJECT_KEY, ORG_ID, SHARD, TIMESTAMPS, VALUES, payload_schema,
    ts_item, value_item,
};
use crate::format::part::part_of;
use crate::format::tsf::WriterOptions;
use crate::job::buckets::{SpoolSummary, encode_all};
use crate::job::config::MemoryBudget;
use crate::job::encode::{FileOptions, Files, StagedFile};
use crate::job::error::JobError;
use crate::job::group::{Grouper, Objects};
use crate::job::measure::Phase;
use crate::job::merge::MergeCounts;

/// The column the shuffle hashes: a value whose DataFusion hash lands the
/// row in the shuffle partition numbered as its part.
pub const PART_KEY: &str = "part_key";

/// A log row's text when its range failed on a corrupt frame (under the
/// fail policy): this, then the [`FrameError`](crate::format::payload::FrameError)
/// as JSON. The client fails the run with it, as a single-machine scan does.
pub const ERROR_LOG: &str = "error:";

/// The rows as they cross the shuffle: the payload schema with point lists
/// as plain lists (a list view would carry its whole decode slab into
/// every partition's shuffle file) and `part_key` last.
pub fn shuffle_schema() -> SchemaRef {
    static S: LazyLock<SchemaRef> = LazyLock::new(|| {
        let mut fields: Vec<Field> = payload_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[TIMESTAMPS] = Field::new("timestamps", DataType::List(ts_item()), false);
        fields[VALUES] = Field::new("values", DataType::List(value_item()), false);
        fields.push(Field::new(PART_KEY, DataType::UInt32, false));
        Arc::new(Schema::new(fields))
    });
    Arc::clone(&S)
}

/// For each part `p < parts`, the smallest `u32` whose hash under
/// DataFusion's repartitioning (`create_hashes` with
/// `REPARTITION_RANDOM_STATE`, modulo the partition count: what
/// `RepartitionExec` and Ballista's sort shuffle compute) is `p`. Computed
/// where the shuffle writes, with that process's own hashing.
pub fn part_keys(parts: u32) -> Result<Vec<u32>> {
    let parts = parts.max(1);
    let mut keys = vec![None; parts as usize];
    let mut left = parts as usize;
    let mut start = 0u32;
    while left > 0 {
        let n = 4096u32;
        let candidates = UInt32Array::from_iter_values(start..start.saturating_add(n));
        let mut hashes = vec![0u64; candidates.len()];
        let arrays: Vec<ArrayRef> = vec![Arc::new(candidates.clone())];
        create_hashes(
            &arrays,
            REPARTITION_RANDOM_STATE.random_state(),
            &mut hashes,
        )?;
        for (i, h) in hashes.iter().enumerate() {
            let p = (h % u64::from(parts)) as usize;
            if keys[p].is_none() {
                keys[p] = Some(candidates.value(i));
                left -= 1;
            }
        }
        start = start.checked_add(n).ok_or_else(|| {
            DataFusionError::Internal(format!("no hash key found for all {parts} parts"))
        })?;
    }
    Ok(keys
        .into_iter()
        .map(|k| k.expect("every part keyed"))
        .collect())
}

/// A point list view copied into a plain list of only its rows' points.
fn compact_list<T: datafusion::arrow::datatypes::ArrowPrimitiveType>(
    col: &ArrayRef,
    item: Arc<Field>,
) -> Result<ArrayRef> {
    let view = col.as_list_view::<i32>();
    let child = view.values().as_primitive::<T>().values();
    let mut offsets = Vec::with_capacity(view.len() + 1);
    offsets.push(0i32);
    let total: usize = (0..view.len()).map(|i| view.value_size(i) as usize).sum();
    let mut values = Vec::with_capacity(total);
    for i in 0..view.len() {
        let (o, n) = (view.value_offset(i) as usize, view.value_size(i) as usize);
        values.extend_from_slice(&child[o..o + n]);
        offsets.push(values.len() as i32);
    }
    let values =
        datafusion::arrow::array::PrimitiveArray::<T>::new(ScalarBuffer::from(values), None);
    Ok(Arc::new(GenericListArray::<i32>::try_new(
        item,
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Arc::new(values),
        None,
    )?))
}

/// A scan batch as it crosses the shuffle ([`shuffle_schema`]); misrouted
/// rows (already in the range's log) are left out, log rows kept.
fn shuffle_batch(batch: &RecordBatch, parts: u32, keys: &[u32]) -> Result<Option<RecordBatch>> {
    let misrouted = batch.column(MISROUTED).as_boolean();
    let shard = batch.column(SHARD).as_string_view();
    let keep: Vec<u32> = (0..batch.num_rows())
        .filter(|&i| !misrouted.value(i) || shard.value(i) == LOG_ROW_SHARD)
        .map(|i| i as u32)
        .collect();
    if keep.is_empty() {
        return Ok(None);
    }
    let batch = if keep.len() == batch.num_rows() {
        batch.clone()
    } else {
        datafusion::arrow::compute::take_record_batch(batch, &UInt32Array::from(keep))?
    };
    let org = batch
        .column(ORG_ID)
        .as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
    let metric = batch
        .column(METRIC_ID)
        .as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
    let part_key = UInt32Array::from_iter_values(
        (0..batch.num_rows()).map(|i| keys[part_of(org.value(i), metric.value(i), parts) as usize]),
    );
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns() + 1);
    for (i, c) in batch.columns().iter().enumerate() {
        cols.push(match i {
            TIMESTAMPS => compact_list::<Int64Type>(c, ts_item())?,
            VALUES => compact_list::<Float64Type>(c, value_item())?,
            // Views into the decode slab: only the strings themselves.
            METADATA | OBJECT_KEY | SHARD => Arc::new(c.as_string_view().gc()),
            _ => Arc::clone(c),
        });
    }
    cols.push(Arc::new(part_key));
    Ok(Some(RecordBatch::try_new(shuffle_schema(), cols)?))
}

/// A shuffled batch back in the payload schema, as the grouping takes it.
fn payload_batch(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut cols: Vec<ArrayRef> = batch.columns()[..batch.num_columns() - 1].to_vec();
    for i in [TIMESTAMPS, VALUES] {
        let list = cols[i].as_list::<i32>().clone();
        cols[i] = Arc::new(ListViewArray::from(list));
    }
    Ok(RecordBatch::try_new(payload_schema(), cols)?)
}

fn properties(schema: SchemaRef, partitions: usize) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(partitions),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
}

/// Stage 1 above the scan: each batch made compact for the shuffle, with
/// its rows' part keys ([`shuffle_schema`]).
#[derive(Debug)]
pub struct ShuffleRowsExec {
    input: Arc<dyn ExecutionPlan>,
    parts: u32,
    props: Arc<PlanProperties>,
}

impl ShuffleRowsExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, parts: u32) -> Self {
        let n = input.properties().partitioning.partition_count();
        Self {
            input,
            parts,
            props: properties(shuffle_schema(), n),
        }
    }

    pub fn parts(&self) -> u32 {
        self.parts
    }
}

impl DisplayAs for ShuffleRowsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ShuffleRowsExec: parts={}", self.parts)
    }
}

impl ExecutionPlan for ShuffleRowsExec {
    fn name(&self) -> &'static str {
        "ShuffleRowsExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }
    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = one_child(children)?;
        Ok(Arc::new(Self::new(input, self.parts)))
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let parts = self.parts;
        let keys = Arc::new(part_keys(parts)?);
        let input = self.input.execute(partition, context)?;
        // A corrupt frame ends the range's stream as a row of its own: the
        // error reaches the client whole (Ballista would pass on only its
        // text), and the client fails the run with it.
        let out = futures::stream::unfold((input, false), move |(mut input, done)| {
            let keys = Arc::clone(&keys);
            async move {
                if done {
                    return None;
                }
                loop {
                    let item = match input.next().await? {
                        Ok(b) => match shuffle_batch(&b, parts, &keys) {
                            Ok(None) => continue,
                            Ok(Some(b)) => return Some((Ok(b), (input, false))),
                            Err(e) => Err(e),
                        },
                        Err(e) => match crate::datasource::source::frame_error(&e) {
                            Some(fe) => error_row(fe, parts, &keys),
                            None => Err(e),
                        },
                    };
                    return Some((item, (input, true)));
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            shuffle_schema(),
            out,
        )))
    }
}

/// The row that carries a range's corrupt frame to the client.
fn error_row(
    fe: &crate::format::payload::FrameError,
    parts: u32,
    keys: &[u32],
) -> Result<RecordBatch> {
    let text = format!("{ERROR_LOG}{}", serde_json::to_string(fe).expect("json"));
    let row = crate::datasource::batch::log_row_batch(&fe.key, &text)?;
    shuffle_batch(&row, parts, keys)?
        .ok_or_else(|| DataFusionError::Internal("an error row dropped".into()))
}

fn one_child(mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
    match (children.pop(), children.is_empty()) {
        (Some(c), true) => Ok(c),
        _ => Err(DataFusionError::Internal("a node of one input".into())),
    }
}

/// What a part writer needs: where and how to write, and the input order
/// of the objects (a series' rows are merged in it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WriteParams {
    /// The output root (URL), and the window's location below it.
    pub output: String,
    pub location: String,
    /// This run's directory for files not yet committed:
    /// `<location>/data/_parts/<token>/`.
    pub token: String,
    pub parts: u32,
    pub max_file_bytes: u64,
    pub block_points: usize,
    pub zstd_level: i32,
    pub round_points: usize,
    /// Object keys in input order.
    pub objects: Vec<String>,
    /// Local scratch directory of the executors (the system's when unset).
    pub stage_dir: Option<String>,
    /// Retries of requests to the output store.
    pub store_retries: usize,
    /// Files up to this size are uploaded in one request, bigger ones in
    /// parts (the run's setting, as on a single machine).
    pub single_put_max: u64,
}

impl WriteParams {
    /// Where a file not yet committed is uploaded, relative to the root.
    pub fn pending_path(&self, name: &str) -> String {
        format!("{}/data/_parts/{}/{name}", self.location, self.token)
    }
}

/// What one partition's writer did: its files (in order), the parts it
/// wrote and its totals.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Written {
    pub parts: Vec<u32>,
    /// Uploaded under the run's pending directory, not yet committed.
    pub files: Vec<StagedFile>,
    pub series: u64,
    pub points: u64,
    pub merge: MergeCounts,
    pub rows: u64,
}

/// What a writer measured of its process (not deterministic: a result
/// that came twice differs here only).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct WriterProcess {
    pub peak_rss_bytes: u64,
    /// Bytes of the rows it received (in memory, decoded).
    pub shuffled_bytes: u64,
}

/// The writers' output rows: `kind` is `log` (a range's scan log, as the
/// scan emitted it), `written` (a [`Written`] as JSON) or `process` (a
/// [`WriterProcess`]).
pub fn result_schema() -> SchemaRef {
    static S: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("kind", DataType::Utf8, false),
            Field::new("json", DataType::Utf8, false),
        ]))
    });
    Arc::clone(&S)
}

/// Stage 2: per shuffle partition, its rows grouped by series, merged,
/// encoded into files per part and uploaded under the run's pending
/// directory; the scan logs that reached it passed on.
#[derive(Debug)]
pub struct ShardWriteExec {
    input: Arc<dyn ExecutionPlan>,
    params: Arc<WriteParams>,
    props: Arc<PlanProperties>,
}

impl ShardWriteExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, params: Arc<WriteParams>) -> Self {
        let n = input.properties().partitioning.partition_count();
        Self {
            input,
            params,
            props: properties(result_schema(), n),
        }
    }

    pub fn params(&self) -> &Arc<WriteParams> {
        &self.params
    }
}

impl DisplayAs for ShardWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShardWriteExec: parts={} location={}",
            self.params.parts, self.params.location
        )
    }
}

impl ExecutionPlan for ShardWriteExec {
    fn name(&self) -> &'static str {
        "ShardWriteExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }
    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = one_child(children)?;
        Ok(Arc::new(Self::new(input, Arc::clone(&self.params))))
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let params = Arc::clone(&self.params);
        let out = futures::stream::once(write_partition(input, params));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            result_schema(),
            out,
        )))
    }
}

/// A job error as the cluster sees it: I/O that a retry may cure as
/// `IoError` (Ballista retries those tasks), anything else as is.
fn to_df(e: JobError) -> DataFusionError {
    match e {
        JobError::Io { .. } | JobError::ObjectStore(_) => {
            DataFusionError::IoError(std::io::Error::other(e.to_string()))
        }
        e => DataFusionError::External(Box::new(e)),
    }
}

async fn write_partition(
    mut input: SendableRecordBatchStream,
    params: Arc<WriteParams>,
) -> Result<RecordBatch> {
    crate::job::faults::fail_point("cluster.write").map_err(to_df)?;
    let index: HashMap<String, u32> = params
        .objects
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), i as u32))
        .collect();
    let mut grouper = Grouper::new();
    let mut logs = Vec::new();
    let mut written = Written::default();
    let mut shuffled_bytes = 0u64;
    while let Some(batch) = input.next().await {
        let batch = batch?;
        shuffled_bytes += batch.get_array_memory_size() as u64;
        let shard = batch.column(SHARD).as_string_view();
        let key = batch.column(OBJECT_KEY).as_string_view();
        let meta = batch.column(METADATA).as_string_view();
        let mut rows = Vec::new();
        for i in 0..batch.num_rows() {
            if shard.value(i) == LOG_ROW_SHARD {
                logs.push(meta.value(i).to_string());
                continue;
            }
            let o = index.get(key.value(i)).copied().ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "a row of {}, which is not among the listed objects",
                    key.value(i)
                ))
            })?;
            rows.push(o);
        }
        if rows.is_empty() {
            continue;
        }
        written.rows += rows.len() as u64;
        let payload = payload_batch(&batch)?;
        let payload = if rows.len() == payload.num_rows() {
            payload
        } else {
            // Log rows out (they are misrouted: the grouping skips them,
            // but the object index must be one per row).
            let keep: Vec<u32> = (0..batch.num_rows())
                .filter(|&i| shard.value(i) != LOG_ROW_SHARD)
                .map(|i| i as u32)
                .collect();
            datafusion::arrow::compute::take_record_batch(&payload, &UInt32Array::from(keep))?
        };
        grouper
            .push(payload, Objects::PerRow(rows))
            .map_err(to_df)?;
    }
    if !grouper.is_empty() {
        let p = Arc::clone(&params);
        let staged = tokio::task::spawn_blocking(move || encode_part(grouper, &p))
            .await
            .map_err(|e| DataFusionError::Internal(format!("the part writer panicked: {e}")))?
            .map_err(to_df)?;
        let (dir, files, totals) = staged;
        let root = crate::datasource::store::StoreRoot::open_with(
            &params.output,
            &crate::datasource::store::StoreOptions {
                retry: Some(object_store::RetryConfig {
                    max_retries: params.store_retries,
                    ..Default::default()
                }),
            },
        )
        .map_err(|e| to_df(e.into()))?;
        for f in &files.files {
            let path = root.child(&params.pending_path(&f.name));
            crate::job::commit::put_file(&root, &path, &f.local, params.single_put_max)
                .await
                .map_err(to_df)?;
            written.files.push(f.clone());
        }
        written.series = totals.series;
        written.points = totals.points;
        written.merge = totals.merge;
        let mut parts: Vec<u32> = files.files.iter().map(|f| f.part.unwrap_or(0)).collect();
        parts.dedup();
        written.parts = parts;
        drop(dir);
    }
    let process = WriterProcess {
        peak_rss_bytes: crate::job::measure::peak_rss_bytes(),
        shuffled_bytes,
    };
    let mut kinds = vec!["written".to_string(), "process".to_string()];
    let mut jsons = vec![
        serde_json::to_string(&written).expect("json"),
        serde_json::to_string(&process).expect("json"),
    ];
    for l in logs {
        kinds.push("log".into());
        jsons.push(l);
    }
    Ok(RecordBatch::try_new(
        result_schema(),
        vec![
            Arc::new(StringArray::from(kinds)),
            Arc::new(StringArray::from(jsons)),
        ],
    )?)
}

/// Merges and encodes one partition's series into files staged in a fresh
/// local directory (removed when the returned guard drops).
fn encode_part(
    grouper: Grouper,
    params: &WriteParams,
) -> Result<
    (
        crate::job::scratch::ScratchDir,
        crate::job::encode::Staged,
        crate::job::encode::EncodeTotals,
    ),
    JobError,
> {
    let stage = crate::job::scratch::ScratchDir::create(
        params.stage_dir.as_deref().map(std::path::Path::new),
        "stage",
        "--stage-dir",
    )?;
    let opts = FileOptions {
        max_file_bytes: params.max_file_bytes,
        writer: WriterOptions {
            block_points: params.block_points,
            zstd_level: params.zstd_level,
        },
        round_points: params.round_points,
        keep: None,
        parts: params.parts,
    };
    let budget = MemoryBudget::new(None, 0, 1);
    let files = Files::new(PathBuf::from(stage.path()), opts.clone());
    let mut summary = SpoolSummary::default();
    let (files, totals) = encode_all(
        grouper,
        None,
        &opts,
        files,
        stage.path(),
        &budget,
        &mut summary,
    )?;
    let staged = files.finish(totals.clone(), Phase::start("encode").stop())?;
    Ok((stage, staged, totals))
}

/// The shuffle's rows back from a batch (for tests).
#[cfg(test)]
pub(crate) fn round_trip(batch: &RecordBatch, parts: u32) -> Result<Option<RecordBatch>> {
    let keys = part_keys(parts)?;
    shuffle_batch(batch, parts, &keys)?
        .map(|b| payload_batch(&b))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_keys_hash_to_their_part() {
        for parts in [1u32, 2, 7, 64] {
            let keys = part_keys(parts).unwrap();
            let arr: ArrayRef = Arc::new(UInt32Array::from(keys.clone()));
            let mut h = vec![0u64; keys.len()];
            create_hashes(&[arr], REPARTITION_RANDOM_STATE.random_state(), &mut h).unwrap();
            for (p, h) in h.iter().enumerate() {
                assert_eq!(h % u64::from(parts), p as u64);
            }
        }
    }

    /// A payload batch of two rows whose point lists view a bigger slab,
    /// out of order.
    fn slab_batch(misrouted: [bool; 2]) -> RecordBatch {
        use datafusion::arrow::array::{
            BooleanArray, Float64Array, Int64Array, StringViewArray, UInt8Array, UInt64Array,
        };
        let lv = |child: ArrayRef, item| -> ArrayRef {
            Arc::new(ListViewArray::new(
                item,
                ScalarBuffer::from(vec![3i32, 0]),
                ScalarBuffer::from(vec![2i32, 3]),
                child,
                None,
            ))
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(vec![1u64, 2])),
            Arc::new(UInt64Array::from(vec![10u64, 20])),
            Arc::new(UInt8Array::from(vec![0u8, 1])),
            Arc::new(UInt32Array::from(vec![0u32, 10])),
            Arc::new(StringViewArray::from(vec![
                "m1",
                "a metadata string past 12 bytes",
            ])),
            lv(
                Arc::new(Int64Array::from((0..10).collect::<Vec<i64>>())),
                ts_item(),
            ),
            lv(
                Arc::new(Float64Array::from(
                    (0..10).map(f64::from).collect::<Vec<_>>(),
                )),
                value_item(),
            ),
            Arc::new(UInt32Array::from(vec![2u32, 3])),
            Arc::new(UInt8Array::from(vec![1u8, 1])),
            Arc::new(StringViewArray::from(vec!["k", "k"])),
            Arc::new(UInt64Array::from(vec![5u64, 9])),
            Arc::new(StringViewArray::from(vec!["org-mod-1", "org-mod-1"])),
            Arc::new(BooleanArray::from(misrouted.to_vec())),
            Arc::new(UInt32Array::from(vec![0u32, 0])),
        ];
        RecordBatch::try_new(payload_schema(), cols).unwrap()
    }

    #[test]
    fn rows_cross_the_shuffle_whole_and_compact() {
        let b = slab_batch([false, false]);
        let back = round_trip(&b, 7).unwrap().unwrap();
        assert_eq!(back.schema(), payload_schema());
        for c in 0..b.num_columns() {
            if c == TIMESTAMPS || c == VALUES {
                let (x, y) = (
                    b.column(c).as_list_view::<i32>(),
                    back.column(c).as_list_view::<i32>(),
                );
                for r in 0..2 {
                    assert_eq!(
                        x.value(r).as_ref(),
                        y.value(r).as_ref(),
                        "column {c} row {r}"
                    );
                }
                // Only the rows' own points crossed.
                assert_eq!(y.values().len(), 5);
            } else {
                assert_eq!(b.column(c).as_ref(), back.column(c).as_ref(), "column {c}");
            }
        }
        // Misrouted rows stay behind (their log went with the range's).
        let m = round_trip(&slab_batch([true, false]), 2).unwrap().unwrap();
        assert_eq!(m.num_rows(), 1);
        assert!(round_trip(&slab_batch([true, true]), 2).unwrap().is_none());
        // A log row is kept.
        let log = crate::datasource::batch::log_row_batch("k", "{}").unwrap();
        assert_eq!(round_trip(&log, 3).unwrap().unwrap().num_rows(), 1);
    }

    #[test]
    fn string_views_are_compacted_too() {
        use datafusion::arrow::array::StringViewArray;
        // A view array over a big buffer keeps only its strings.
        let long = "x".repeat(100);
        let a = StringViewArray::from(vec![long.as_str(); 1000]);
        let one = a.slice(0, 1);
        assert!(one.gc().get_buffer_memory_size() < 1000);
    }
}
