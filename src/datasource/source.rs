//! `PayloadSource` (the scan's configuration, a DataFusion [`FileSource`])
//! and `PayloadOpener` (opens one byte range of one object, a
//! [`FileOpener`]): the payload format's equivalent of DataFusion's
//! `CsvSource` / `CsvOpener`.
//!
//! A range is read by a [`FrameCursor`](crate::datasource::reader::FrameCursor);
//! every frame is checked, decompressed into a pooled slab and validated in
//! place ([`BatchBuilder`](crate::datasource::batch::BatchBuilder)); rows pass
//! the pushed-down filters and the projection before they leave the scan.
//! Corrupt frames fail the scan with a [`FrameError`] naming the object key
//! and frame offset, or, under
//! [`CorruptPolicy::Skip`](crate::datasource::options::CorruptPolicy::Skip), are counted and
//! recorded in the [`ScanLog`]. A corrupt frame body exactly where one range
//! hands over to the next is only visible once both have been read:
//! [`ScanLog::tiling_errors`] reports it after the scan, with its real
//! reason, and callers fail (or, skipping, count it with
//! [`ScanLog::record_skipped`]). Failing to read bytes (I/O, object store,
//! memory-mapping) is never corruption: those errors pass through as I/O
//! errors under either policy. Misrouted payloads are flagged in the
//! `misrouted` column and recorded in the log too.
//!
//! The pieces live beside this module, one file per seam: the scan settings
//! (`options`), the [`ScanLog`] and its tiling check (`scan_log`), partition
//! planning (`partitions`) and the opener with its range reader (`opener`).

use std::fmt;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::physical_plan::{FileOpener, FileScanConfig, FileSource};
use datafusion::datasource::projection::{ProjectionOpener, SplitProjection};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_expr::conjunction;
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_expr_common::physical_expr::PhysicalExpr;
use datafusion::physical_plan::DisplayFormatType;
use datafusion::physical_plan::filter_pushdown::{FilterPushdownPropagation, PushedDown};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder};
use object_store::ObjectStore;

use crate::datasource::batch::SlabPool;
use crate::datasource::partitions::repartitioned;
use crate::format::payload::FrameError;

use crate::datasource::opener::PayloadOpener;
use crate::datasource::options::PayloadOptions;
use crate::datasource::scan_log::ScanLog;

/// The payload format's [`FileSource`].
#[derive(Clone)]
pub struct PayloadSource {
    pub(super) options: PayloadOptions,
    table_schema: TableSchema,
    projection: SplitProjection,
    pub(super) predicate: Option<Arc<dyn PhysicalExpr>>,
    pub(super) batch_size: usize,
    metrics: ExecutionPlanMetricsSet,
    pub(super) log: Arc<ScanLog>,
    pub(super) pool: Arc<SlabPool>,
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
        let pool = options
            .pool
            .clone()
            .unwrap_or_else(|| SlabPool::new(options.slab_bytes));
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

    /// Splits files into ranges of at most `range_bytes` and spreads them
    /// over partitions (`partitions::repartitioned`).
    fn repartitioned(
        &self,
        target_partitions: usize,
        repartition_file_min_size: usize,
        output_ordering: Option<LexOrdering>,
        config: &FileScanConfig,
    ) -> Result<Option<FileScanConfig>> {
        repartitioned(
            &self.options,
            target_partitions,
            repartition_file_min_size,
            output_ordering,
            config,
        )
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
