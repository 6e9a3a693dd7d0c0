//! The payload table's schema: one row per payload, points as list columns.
//!
//! | column            | type                 | meaning |
//! |-------------------|----------------------|---------|
//! | `org_id`          | UInt64               | payload header |
//! | `metric_id`       | UInt64               | payload header |
//! | `kind`            | UInt8                | 0 gauge, 1 count, 2 rate (v1 payloads: 0) |
//! | `interval_s`      | UInt32               | v2 header (v1 payloads: 0) |
//! | `metadata`        | Utf8View             | the payload's tags, zero-copy |
//! | `timestamps`      | `ListView<Int64>`    | epoch ms, zero-copy into the decode buffer |
//! | `values`          | `ListView<Float64>`  | bits preserved, zero-copy into the decode buffer |
//! | `n_points`        | UInt32               | list length |
//! | `payload_version` | UInt8                | 1 or 2 |
//! | `object_key`      | Utf8View             | input order, first key |
//! | `frame_offset`    | UInt64               | input order, second key |
//! | `shard`           | Utf8View             | the shard directory the object was found under |
//! | `misrouted`       | Boolean              | the org does not belong to `shard` per the shard map |
//! | `first_point`     | UInt32               | index in the payload of the row's first point (0 unless split) |
//!
//! The third component of input order, the index in the payload, is
//! `first_point` plus the position inside the `timestamps` / `values`
//! lists. A row is a whole payload, except that the job has a payload
//! whose decoded size is over
//! [`split_above`](crate::datasource::options::split_above)`(`[`ROW_POINTS`](crate::datasource::options::ROW_POINTS)`)`
//! (about 80 KiB: more than 1024 points and the largest metadata) split
//! into rows of at most 1024 consecutive points (copied out of
//! the decode buffer; only the last row carries the metadata, which is
//! what the series takes), so that no row is much bigger than the rest: the
//! sort that groups them accounts, spills and merges memory by batches of
//! rows, and cannot split one row. For one row per point,
//! `SELECT org_id, metric_id, unnest(timestamps) AS ts, unnest(values) AS value FROM payloads`.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

pub const ORG_ID: usize = 0;
pub const METRIC_ID: usize = 1;
pub const KIND: usize = 2;
pub const INTERVAL_S: usize = 3;
pub const METADATA: usize = 4;
pub const TIMESTAMPS: usize = 5;
pub const VALUES: usize = 6;
pub const N_POINTS: usize = 7;
pub const PAYLOAD_VERSION: usize = 8;
pub const OBJECT_KEY: usize = 9;
pub const FRAME_OFFSET: usize = 10;
pub const SHARD: usize = 11;
pub const MISROUTED: usize = 12;
pub const FIRST_POINT: usize = 13;

/// The list element field of `timestamps`.
pub fn ts_item() -> Arc<Field> {
    Arc::new(Field::new_list_field(DataType::Int64, false))
}

/// The list element field of `values`.
pub fn value_item() -> Arc<Field> {
    Arc::new(Field::new_list_field(DataType::Float64, false))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("org_id", DataType::UInt64, false),
        Field::new("metric_id", DataType::UInt64, false),
        Field::new("kind", DataType::UInt8, false),
        Field::new("interval_s", DataType::UInt32, false),
        Field::new("metadata", DataType::Utf8View, false),
        Field::new("timestamps", DataType::ListView(ts_item()), false),
        Field::new("values", DataType::ListView(value_item()), false),
        Field::new("n_points", DataType::UInt32, false),
        Field::new("payload_version", DataType::UInt8, false),
        Field::new("object_key", DataType::Utf8View, false),
        Field::new("frame_offset", DataType::UInt64, false),
        Field::new("shard", DataType::Utf8View, false),
        Field::new("misrouted", DataType::Boolean, false),
        Field::new("first_point", DataType::UInt32, false),
    ]))
});

/// The file (and table) schema of payload files.
pub fn payload_schema() -> SchemaRef {
    Arc::clone(&SCHEMA)
}
