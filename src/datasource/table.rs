//! `PayloadTable`: a listed set of payload files as one DataFusion table.
//!
//! The job lists its input once (it needs the objects' sizes and ETags for
//! the manifest anyway), so the table is built from that listing instead of
//! listing again: files are split into byte ranges of at most
//! `range_bytes` and spread over `target_partitions` groups in input order;
//! DataFusion may repartition further through `PayloadSource::repartitioned`.

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
use crate::datasource::schema::payload_schema;
use crate::datasource::source::{PayloadOptions, ScanLog};
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

    /// Splits the files into ranges of at most `range_bytes` and deals them,
    /// in input order, into at most `partitions` contiguous groups of
    /// similar byte size.
    fn file_groups(&self, partitions: usize) -> Vec<FileGroup> {
        let max = self.format.options().range_bytes.max(1);
        let mut pieces = Vec::new();
        for obj in &self.files {
            if obj.size == 0 {
                pieces.push(PartitionedFile::from(obj.meta.clone()));
                continue;
            }
            let mut s = 0;
            while s < obj.size {
                let e = s.saturating_add(max).min(obj.size);
                pieces.push(PartitionedFile::from(obj.meta.clone()).with_range(s as i64, e as i64));
                s = e;
            }
        }
        let total: u64 = pieces.iter().map(|p| p.effective_size()).sum();
        let per_group = total.div_ceil(partitions.max(1) as u64).max(1);
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new()];
        let mut size = 0;
        for p in pieces {
            if size >= per_group && groups.len() < partitions {
                groups.push(Vec::new());
                size = 0;
            }
            size += p.effective_size();
            groups.last_mut().unwrap().push(p);
        }
        groups.into_iter().map(FileGroup::new).collect()
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
        let partitions = state.config().target_partitions();
        let source = self.format.file_source(TableSchema::from(payload_schema()));
        let config = FileScanConfigBuilder::new(self.store_url.clone(), source)
            .with_file_groups(self.file_groups(partitions))
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        self.format.create_physical_plan(state, config).await
    }
}
