//! How tailor's plan nodes travel between the client, the scheduler and
//! the executors: a physical extension codec that takes tailor's nodes and
//! hands every other node to Ballista's own codec (which encodes its
//! shuffle nodes; DataFusion's built-in nodes never reach a codec).
//!
//! Message: one tag byte, then the node's own bytes.
//!
//! ```text
//! 0  Ballista's codec's message, as it wrote it
//! 1  DataSourceExec(PayloadSource): u32 LE length of the scan options
//!    (JSON, ScanWire) | those | DataFusion's FileScanExecConf (protobuf:
//!    file groups with byte ranges, schema, projection, limit)
//! 2  ShuffleRowsExec: parts as u32 LE
//! 3  ShardWriteExec: WriteParams as JSON
//! ```
//!
//! Every process of a cluster runs the same tailor build (Ballista refuses
//! a client of another major version; tailor's tags have no versions of
//! their own).

use std::sync::Arc;

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::from_proto::parse_protobuf_file_scan_config;
use datafusion_proto::physical_plan::to_proto::serialize_file_scan_config;
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf::FileScanExecConf;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::datasource::options::{CorruptPolicy, PayloadOptions};
use crate::datasource::scan_log::ScanLog;
use crate::datasource::schema::payload_schema;
use crate::datasource::source::PayloadSource;
use crate::format::shard::ShardMap;
use crate::job::cluster::nodes::{ShardWriteExec, ShuffleRowsExec, WriteParams};

const BALLISTA: u8 = 0;
const PAYLOAD_SCAN: u8 = 1;
const SHUFFLE_ROWS: u8 = 2;
const SHARD_WRITE: u8 = 3;

/// The scan's settings as they travel ([`PayloadOptions`] without what
/// only a single-machine run has: its router and its log, which a scan on
/// an executor sends as rows instead).
#[derive(Debug, Serialize, Deserialize)]
struct ScanWire {
    on_corrupt: CorruptPolicy,
    shard_map: ShardMap,
    range_bytes: u64,
    slab_bytes: usize,
    mmap_local: bool,
    fetch_chunk: u64,
    max_row_points: Option<usize>,
}

impl ScanWire {
    fn of(o: &PayloadOptions) -> Self {
        Self {
            on_corrupt: o.on_corrupt,
            shard_map: (*o.shard_map).clone(),
            range_bytes: o.range_bytes,
            slab_bytes: o.slab_bytes,
            mmap_local: o.mmap_local,
            fetch_chunk: o.fetch_chunk,
            max_row_points: o.max_row_points,
        }
    }

    fn options(self) -> PayloadOptions {
        let mut o = PayloadOptions::new(Arc::new(self.shard_map));
        o.on_corrupt = self.on_corrupt;
        o.range_bytes = self.range_bytes;
        o.slab_bytes = self.slab_bytes;
        o.mmap_local = self.mmap_local;
        o.fetch_chunk = self.fetch_chunk;
        o.max_row_points = self.max_row_points;
        o.emit_log = true;
        o
    }
}

fn bad(what: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("tailor's plan codec: {what}: {e}"))
}

/// tailor's nodes, then Ballista's.
#[derive(Debug, Default)]
pub struct TailorCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl TailorCodec {
    pub fn new() -> Self {
        Self::default()
    }
}

impl PhysicalExtensionCodec for TailorCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (&tag, body) = buf
            .split_first()
            .ok_or_else(|| bad("decoding", "an empty node"))?;
        let input = || {
            inputs
                .first()
                .cloned()
                .ok_or_else(|| bad("decoding", "a node without its input"))
        };
        match tag {
            BALLISTA => self.ballista.try_decode(body, inputs, ctx, proto_converter),
            PAYLOAD_SCAN => {
                if body.len() < 4 {
                    return Err(bad("decoding a scan", "truncated"));
                }
                let n = u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as usize;
                let opts = body
                    .get(4..4 + n)
                    .ok_or_else(|| bad("decoding a scan", "truncated options"))?;
                let wire: ScanWire = serde_json::from_slice(opts)
                    .map_err(|e| bad("decoding a scan's options", e))?;
                let conf = FileScanExecConf::decode(&body[4 + n..])
                    .map_err(|e| bad("decoding a scan's files", e))?;
                let source = Arc::new(PayloadSource::new(
                    payload_schema(),
                    wire.options(),
                    ScanLog::new(),
                ));
                let decode_ctx = PhysicalPlanDecodeContext::new(ctx, self);
                let config =
                    parse_protobuf_file_scan_config(&conf, &decode_ctx, proto_converter, source)?;
                Ok(DataSourceExec::from_data_source(config))
            }
            SHUFFLE_ROWS => {
                let parts = body
                    .try_into()
                    .map(u32::from_le_bytes)
                    .map_err(|_| bad("decoding ShuffleRowsExec", "not 4 bytes"))?;
                Ok(Arc::new(ShuffleRowsExec::new(input()?, parts)))
            }
            SHARD_WRITE => {
                let params: WriteParams =
                    serde_json::from_slice(body).map_err(|e| bad("decoding ShardWriteExec", e))?;
                Ok(Arc::new(ShardWriteExec::new(input()?, Arc::new(params))))
            }
            t => Err(bad("decoding", format!("unknown node tag {t}"))),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(scan) = node.downcast_ref::<DataSourceExec>()
            && let Some((config, source)) = scan.downcast_to_file_source::<PayloadSource>()
        {
            let opts = serde_json::to_vec(&ScanWire::of(source.options())).expect("json");
            let conf = serialize_file_scan_config(config, self, proto_converter)?;
            buf.push(PAYLOAD_SCAN);
            buf.extend_from_slice(&(opts.len() as u32).to_le_bytes());
            buf.extend_from_slice(&opts);
            conf.encode(buf).map_err(|e| bad("encoding a scan", e))?;
            return Ok(());
        }
        if let Some(rows) = node.downcast_ref::<ShuffleRowsExec>() {
            buf.push(SHUFFLE_ROWS);
            buf.extend_from_slice(&rows.parts().to_le_bytes());
            return Ok(());
        }
        if let Some(w) = node.downcast_ref::<ShardWriteExec>() {
            buf.push(SHARD_WRITE);
            buf.extend_from_slice(&serde_json::to_vec(w.params().as_ref()).expect("json"));
            return Ok(());
        }
        buf.push(BALLISTA);
        self.ballista.try_encode(node, buf, proto_converter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Schema;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::prelude::SessionContext;
    use datafusion_proto::physical_plan::AsExecutionPlan;
    use datafusion_proto::protobuf::PhysicalPlanNode;

    fn round_trip(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        let codec = TailorCodec::new();
        let node = PhysicalPlanNode::try_from_physical_plan(plan, &codec).unwrap();
        let ctx = SessionContext::new();
        node.try_into_physical_plan(&ctx.task_ctx(), &codec)
            .unwrap()
    }

    #[test]
    fn tailor_nodes_round_trip() {
        let empty: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(payload_schema()));
        let rows: Arc<dyn ExecutionPlan> = Arc::new(ShuffleRowsExec::new(empty, 7));
        let params = WriteParams {
            output: "s3://b/out".into(),
            location: "org-mod-1/2024-01-01T00_2024-01-01T00".into(),
            token: "t".into(),
            parts: 7,
            max_file_bytes: 1 << 20,
            block_points: 4096,
            zstd_level: 3,
            round_points: 1 << 20,
            objects: vec!["a".into(), "b".into()],
            stage_dir: None,
            store_retries: 3,
            single_put_max: 1 << 20,
        };
        let w: Arc<dyn ExecutionPlan> =
            Arc::new(ShardWriteExec::new(rows, Arc::new(params.clone())));
        let back = round_trip(w);
        let back_w = back
            .downcast_ref::<ShardWriteExec>()
            .expect("ShardWriteExec");
        assert_eq!(back_w.params().as_ref(), &params);
        let child = back.children()[0];
        assert_eq!(child.downcast_ref::<ShuffleRowsExec>().unwrap().parts(), 7);
        let _ = Schema::empty();
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let codec = TailorCodec::new();
        let ctx = SessionContext::new();
        let conv = datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {};
        for buf in [
            &[][..],
            &[1u8, 9, 0][..],
            &[2u8, 1][..],
            &[3u8, b'{'][..],
            &[9u8][..],
        ] {
            assert!(codec.try_decode(buf, &[], &ctx.task_ctx(), &conv).is_err());
        }
    }
}
