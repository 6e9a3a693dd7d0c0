//! Scan settings: the corrupt-frame policy, range and row sizes.

use std::sync::Arc;

use serde::Serialize;

use crate::datasource::batch::{DEFAULT_SLAB_BYTES, SlabPool};
use crate::format::shard::ShardMap;

/// What the scan does with a corrupt frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CorruptPolicy {
    /// Fail the scan with the precise error (default).
    #[default]
    Fail,
    /// Skip the frame, count it and record key + offset + reason.
    Skip,
}

/// Default byte-range size for splitting big files (as in Tailor-S).
pub const DEFAULT_RANGE_BYTES: u64 = 1 << 30;

/// Scan settings shared by every range.
#[derive(Debug, Clone)]
pub struct PayloadOptions {
    pub on_corrupt: CorruptPolicy,
    pub shard_map: Arc<ShardMap>,
    /// Largest byte range one opener reads; bigger files are split.
    pub range_bytes: u64,
    /// Decode slab size (bytes of decompressed payloads per batch).
    pub slab_bytes: usize,
    /// The object store is the local filesystem rooted at `/`: objects are
    /// memory-mapped instead of fetched.
    pub mmap_local: bool,
    /// Largest single fetch for remote objects (mapped files are read as
    /// one slice per range).
    pub fetch_chunk: u64,
    /// Split payloads too big for one ordinary row (decoded size over
    /// [`split_above`] of this: more points than this plus the largest
    /// metadata) into rows of at most this many points (copied out of the
    /// decode buffer; only the last row carries the payload's metadata);
    /// `None`: one row per payload, however big. The job sets
    /// [`ROW_POINTS`]. A split payload takes its decoded size twice while
    /// it is split (decode buffer and copies, up to 2 x 16 MiB per
    /// partition), outside DataFusion's pool.
    pub max_row_points: Option<usize>,
    /// Routes payloads by series: those of buckets the router does not
    /// keep are spooled (compressed, as read) instead of emitted as rows.
    /// `None`: every payload is a row.
    pub router: Option<Arc<crate::datasource::route::Router>>,
    /// Emit each range's log (totals, corrupt and misrouted records, where
    /// the range read) as a row of its own at the range's end, instead of
    /// adding it to the scan's [`ScanLog`](crate::datasource::scan_log::ScanLog):
    /// a scan on other machines sends it along with its rows
    /// (see [`LOG_ROW_SHARD`](crate::datasource::batch::LOG_ROW_SHARD)).
    pub emit_log: bool,
    /// The pool of the scan's decode slabs, when the job shares it with
    /// what follows the scan (see [`SlabPool::set_keep`]); `None`: a pool
    /// of the scan's own, of [`Self::slab_bytes`] slabs.
    pub pool: Option<Arc<SlabPool>>,
}

/// The most points of a row when the job splits big payloads: a payload
/// may hold 1 Mi points (16 MiB), but the grouping sort reserves, spills
/// and merges memory by batches of rows and cannot split a row, so one
/// such row needs several times its size of pool at once. Rows of at most
/// 1024 points (16 KiB) are like the biggest of ordinary payloads: two
/// 16 MiB payloads failed a 128 MiB job and forty failed one of 1 GiB as
/// one row each, and run at 128 MiB as rows of 1024 points (4096 still
/// failed at 160 MiB).
pub const ROW_POINTS: usize = 1024;

impl PayloadOptions {
    pub fn new(shard_map: Arc<ShardMap>) -> Self {
        Self {
            on_corrupt: CorruptPolicy::Fail,
            shard_map,
            range_bytes: DEFAULT_RANGE_BYTES,
            slab_bytes: DEFAULT_SLAB_BYTES,
            mmap_local: false,
            fetch_chunk: crate::datasource::reader::DEFAULT_CHUNK,
            max_row_points: None,
            router: None,
            emit_log: false,
            pool: None,
        }
    }
}

/// Payloads whose decompressed size exceeds this certainly hold more than
/// `rows` points (a header, `16 * rows` bytes of points and the largest
/// metadata, padded), and are split into rows; smaller ones stay one row
/// (of at most this size: about 80 KiB for [`ROW_POINTS`]). Decided by the
/// size the zstd frame declares, before decoding.
pub fn split_above(rows: usize) -> usize {
    (crate::format::payload::V2_HEADER_LEN
        + 16 * rows
        + crate::format::payload::MAX_META_LEN as usize)
        .div_ceil(8)
        * 8
}
