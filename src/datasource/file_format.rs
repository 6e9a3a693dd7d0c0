//! `PayloadFormat`: the payload file format as a DataFusion [`FileFormat`]
//! (schema, statistics, physical plan), beside `source.rs` which reads it.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::{Result, Statistics, not_impl_err};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::physical_plan::{FileScanConfig, FileSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::physical_plan::ExecutionPlan;
use object_store::{ObjectMeta, ObjectStore};

use crate::datasource::options::PayloadOptions;
use crate::datasource::scan_log::ScanLog;
use crate::datasource::schema::payload_schema;
use crate::datasource::source::PayloadSource;

/// The payload file format (`.tsp`).
#[derive(Debug, Clone)]
pub struct PayloadFormat {
    options: PayloadOptions,
    log: Arc<ScanLog>,
}

impl PayloadFormat {
    pub fn new(options: PayloadOptions, log: Arc<ScanLog>) -> Self {
        Self { options, log }
    }
    pub fn options(&self) -> &PayloadOptions {
        &self.options
    }
    pub fn log(&self) -> &Arc<ScanLog> {
        &self.log
    }
}

#[async_trait]
impl FileFormat for PayloadFormat {
    fn get_ext(&self) -> String {
        ".tsp".to_string()
    }

    fn get_ext_with_compression(&self, c: &FileCompressionType) -> Result<String> {
        if c.is_compressed() {
            return not_impl_err!("payload files are not compressed as a whole");
        }
        Ok(self.get_ext())
    }

    fn compression_type(&self) -> Option<FileCompressionType> {
        None
    }

    async fn infer_schema(
        &self,
        _state: &dyn Session,
        _store: &Arc<dyn ObjectStore>,
        _objects: &[ObjectMeta],
    ) -> Result<SchemaRef> {
        // Fixed by the spec: no need to read any file.
        Ok(payload_schema())
    }

    async fn infer_stats(
        &self,
        _state: &dyn Session,
        _store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        _object: &ObjectMeta,
    ) -> Result<Statistics> {
        Ok(Statistics::new_unknown(&table_schema))
    }

    async fn create_physical_plan(
        &self,
        _state: &dyn Session,
        conf: FileScanConfig,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(DataSourceExec::from_data_source(conf))
    }

    fn file_source(&self, table_schema: TableSchema) -> Arc<dyn FileSource> {
        Arc::new(PayloadSource::new(
            table_schema,
            self.options.clone(),
            Arc::clone(&self.log),
        ))
    }
}
