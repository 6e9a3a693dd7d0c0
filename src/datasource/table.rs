//! `PayloadTable`: a listed set of payload files as one DataFusion table.
//!
//! The job lists its input once (it needs the objects' sizes and ETags for
//! the manifest anyway), so the table is built from that listing instead of
//! listing again. It hands DataFusion every file whole, in input order;
//! DataFusion's file-scan repartitioning (`PayloadSource::repartitioned`)
//! cuts them into byte ranges of at most `range_bytes` and spreads those over
//! `target_partitions` partitions (under the skip policy it spreads whole
//! files instead).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::prelude::SessionContext;

use crate::datasource::file_format::PayloadFormat;
use crate::datasource::listing::InputObject;
use crate::datasource::options::PayloadOptions;
use crate::datasource::scan_log::ScanLog;
use crate::datasource::schema::payload_schema;
use crate::datasource::store::StoreRoot;

/// Payload files as a table.
#[derive(Debug)]
pub struct PayloadTable {
    format: PayloadFormat,
    files: Vec<InputObject>,
    store_url: datafusion::execution::object_store::ObjectStoreUrl,
}

impl PayloadTable {
    /// A table over `files` (in input order) of `root`. `options.mmap_local`
    /// is set when the root is the local filesystem.
    pub fn new(
        root: &StoreRoot,
        files: Vec<InputObject>,
        mut options: PayloadOptions,
        log: Arc<ScanLog>,
    ) -> Self {
        options.mmap_local = root.local;
        Self {
            format: PayloadFormat::new(options, log),
            files,
            store_url: root.store_url.clone(),
        }
    }

    pub fn log(&self) -> &Arc<ScanLog> {
        self.format.log()
    }

    /// Every file whole, in input order, as one group: DataFusion's
    /// file-scan repartitioning splits them into byte ranges and spreads
    /// those over the partitions ([`PayloadSource::repartitioned`]).
    fn files_in_input_order(&self) -> FileGroup {
        FileGroup::new(
            self.files
                .iter()
                .map(|o| PartitionedFile::from(o.meta.clone()))
                .collect(),
        )
    }

    /// Registers the root's store with the context (so the scan can reach
    /// it) and this table under `name`.
    pub fn register(
        self,
        ctx: &SessionContext,
        root: &StoreRoot,
        name: &str,
    ) -> Result<Arc<ScanLog>> {
        ctx.register_object_store(root.store_url.as_ref(), Arc::clone(&root.store));
        let log = Arc::clone(self.log());
        ctx.register_table(name, Arc::new(self))?;
        Ok(log)
    }
}

#[async_trait]
impl TableProvider for PayloadTable {
    fn schema(&self) -> SchemaRef {
        payload_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Evaluated inside the scan (PayloadSource::try_pushdown_filters),
        // but DataFusion keeps its own filter above too.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if self.files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(payload_schema().project(p)?),
                None => payload_schema(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let source = self.format.file_source(TableSchema::from(payload_schema()));
        let config = FileScanConfigBuilder::new(self.store_url.clone(), source)
            .with_file_groups(vec![self.files_in_input_order()])
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        self.format.create_physical_plan(state, config).await
    }
}
