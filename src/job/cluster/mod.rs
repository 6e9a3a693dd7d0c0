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

#[cfg(feature = "cluster")]
pub mod client;
#[cfg(feature = "cluster")]
pub mod codec;
#[cfg(feature = "cluster")]
pub mod nodes;
#[cfg(feature = "cluster")]
pub mod services;

use crate::datasource::scan_log::{CorruptRecord, MisroutedRecord, ScanTotals};
use crate::job::measure::Phase;

/// What a cluster run did besides its files: for the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterSummary {
    pub scheduler: String,
    pub job_session: String,
    /// Partition writers that reported, and rows and bytes they received
    /// through the shuffle (decoded, in memory).
    pub writers: u64,
    pub shuffled_rows: u64,
    pub shuffled_bytes: u64,
    /// The largest peak RSS of an executor process, as its writers saw it.
    pub executor_peak_rss_bytes: u64,
    /// Results that came back twice (a stage run again), counted once.
    pub duplicate_results: u64,
}

/// The scan's figures of a cluster run, filled in as far as it got (the
/// run copies them into its `RunStats`, whether it failed or not).
#[derive(Debug, Clone, Default)]
pub struct ScanFigures {
    pub scan: ScanTotals,
    pub corrupt: Vec<CorruptRecord>,
    pub misrouted: Vec<MisroutedRecord>,
    pub phases: Vec<Phase>,
}
