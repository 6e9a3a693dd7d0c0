//! A shard job on an Apache DataFusion Ballista cluster (`tailor run
//! --engine ballista`): the steps scan to encode of `run.rs` as one
//! distributed plan, list, manifest and commit on the client as before.
//!
//! ```text
//! client     lists, plans the scan (byte ranges), submits the plan    client.rs
//! stage 1    executors: DataSourceExec(PayloadSource) per range ->
//!            ShuffleRowsExec (compact rows, part key) -> Ballista's
//!            hash shuffle into K partitions, one per part            nodes.rs
//! stage 2    executors: ShardWriteExec per part: group, merge,
//!            encode (the single-machine code), upload to
//!            <location>/data/_parts/<token>/                          nodes.rs
//! client     scan logs settled, every part once; files moved to
//!            data/<run_id>/, then the manifest put: the commit          client.rs, run.rs
//! ```
//!
//! Plans travel as protobuf with tailor's codec (codec.rs); the scheduler
//! and executors are tailor's own binary (`tailor scheduler`, `tailor
//! executor`, services.rs). The output is byte for byte the single-machine
//! run's at the same `--parts`: a part holds the same series, each
//! series' rows are merged in the same input order, the same code
//! encodes them and the run id is computed from the same files.

pub mod client;
pub mod codec;
pub mod nodes;
pub mod services;
