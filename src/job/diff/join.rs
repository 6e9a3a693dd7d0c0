//! The joins of a diff: a FULL OUTER sort-merge join of two sorted side
//! tables, the rows that differ, and the Parquet file of differing points.

use std::sync::Arc;

use arrow::compute::SortOptions;
use datafusion::arrow::array::{
    ArrayRef, AsArray, Float64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::compute::kernels::boolean::{or, or_kleene};
use datafusion::arrow::compute::kernels::cmp::neq;
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{filter_record_batch, is_not_null, is_null};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt64Type};
use datafusion::common::NullEquality;
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::JoinType;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_plan::joins::SortMergeJoinExec;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::{SessionConfig, SessionContext};

use super::Category;
use super::sides::{
    BATCH_POINTS, Parts, Side, SideStream, SideTable, points_schema, series_schema,
};
use crate::job::error::{IoContext, JobError};

/// A FULL OUTER sort-merge join of two sorted side tables on their first
/// `keys` columns; DataFusion's `SortMergeJoinExec`, built directly because
/// the SQL planner only picks it with several partitions (which would
/// repartition and then sort both sides).
pub(super) async fn join(
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

pub(super) async fn join_plan(
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
pub(super) fn coalesce(a: &ArrayRef, b: &ArrayRef) -> DfResult<ArrayRef> {
    Ok(zip(&is_not_null(a.as_ref())?, a, b)?)
}

/// The series join's rows as (part, org_id, metric_id, old_kind, new_kind,
/// old_interval, new_interval, old_meta, new_meta, old_n, new_n).
pub(super) fn series_rows(b: &RecordBatch) -> DfResult<Vec<ArrayRef>> {
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
pub(super) fn differing_points(b: &RecordBatch) -> DfResult<RecordBatch> {
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
pub(super) fn session(
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

/// Writes differing points: side, org_id, metric_id, ts, old/new value
/// (f64 with the bits kept) and bits, category.
pub(super) struct DiffWriter {
    w: parquet::arrow::ArrowWriter<std::fs::File>,
    /// "writing <path>", for errors.
    writing: String,
}

pub(super) fn diff_schema() -> SchemaRef {
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
    pub(super) fn create(path: &std::path::Path) -> Result<Self, JobError> {
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .build();
        let writing = format!("writing {}", path.display());
        let file = std::fs::File::create(path).at(&writing)?;
        let w = parquet::arrow::ArrowWriter::try_new(file, diff_schema(), Some(props))
            .map_err(|e| JobError::io(&writing, std::io::Error::other(e)))?;
        Ok(Self { w, writing })
    }

    pub(super) fn write(
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

    pub(super) fn close(self) -> Result<(), JobError> {
        self.w
            .close()
            .map_err(|e| JobError::io(&self.writing, std::io::Error::other(e)))?;
        Ok(())
    }
}
