//! Decode buffers and zero-copy record batches.
//!
//! zstd decompresses every payload of a batch into one *slab*: a pooled,
//! zeroed array of 8-byte words ([`Slab`]). When the batch is emitted, the slab becomes an
//! arrow [`Buffer`] (through [`Buffer::from_custom_allocation`]) that the
//! `timestamps` and `values` list views and the `metadata` string views all
//! point into; no point is copied. When the last array referencing the slab
//! is dropped, the slab goes back to its [`SlabPool`] and is reused by the
//! next batch, so a scan in steady state allocates per batch, never per
//! payload.

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, ListViewArray, RecordBatch, StringViewArray,
    UInt8Array, UInt32Array, UInt64Array, make_view,
};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, ScalarBuffer};
use datafusion::arrow::error::ArrowError;

use crate::datasource::schema::{payload_schema, ts_item, value_item};
use crate::format::payload::PayloadHeader;

/// Default slab size: 2 MiB of decompressed payloads per batch (a bigger
/// payload gets a slab of its own size).
pub const DEFAULT_SLAB_BYTES: usize = 2 << 20;
/// Slabs kept for reuse per pool by default; more are freed when they
/// come back.
const POOL_KEEP: usize = 2;

/// The `shard` of a log row (see
/// [`PayloadOptions::emit_log`](crate::datasource::options::PayloadOptions::emit_log)):
/// no shard is named so. A log row is also `misrouted`, so that a consumer
/// that does not look for log rows skips it with the misrouted ones; its
/// `metadata` is the range's log, its `object_key` the range's object.
pub const LOG_ROW_SHARD: &str = "\u{1}tailor-scan-log";

/// A batch of one log row of the payload schema.
pub fn log_row_batch(key: &str, log: &str) -> Result<RecordBatch, ArrowError> {
    let empty = |item| -> ArrayRef {
        let child: ArrayRef = match item {
            0 => Arc::new(Int64Array::from(Vec::<i64>::new())),
            _ => Arc::new(Float64Array::from(Vec::<f64>::new())),
        };
        Arc::new(ListViewArray::new(
            if item == 0 { ts_item() } else { value_item() },
            ScalarBuffer::from(vec![0i32]),
            ScalarBuffer::from(vec![0i32]),
            child,
            None,
        ))
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![0u64])),
        Arc::new(UInt64Array::from(vec![0u64])),
        Arc::new(UInt8Array::from(vec![0u8])),
        Arc::new(UInt32Array::from(vec![0u32])),
        Arc::new(StringViewArray::from(vec![log])),
        empty(0),
        empty(1),
        Arc::new(UInt32Array::from(vec![0u32])),
        Arc::new(UInt8Array::from(vec![0u8])),
        Arc::new(StringViewArray::from(vec![key])),
        Arc::new(UInt64Array::from(vec![u64::MAX])),
        Arc::new(StringViewArray::from(vec![LOG_ROW_SHARD])),
        Arc::new(BooleanArray::from(vec![true])),
        Arc::new(UInt32Array::from(vec![0u32])),
    ];
    RecordBatch::try_new(payload_schema(), cols)
}

/// A pool of aligned decode buffers shared by the batches of a scan.
#[derive(Debug)]
pub struct SlabPool {
    free: Mutex<Vec<Slab>>,
    slab_bytes: usize,
    keep: AtomicUsize,
}

impl SlabPool {
    pub fn new(slab_bytes: usize) -> Arc<Self> {
        Self::keeping(slab_bytes, POOL_KEEP)
    }

    /// A pool that keeps up to `keep` returned slabs for reuse (see
    /// [`Self::set_keep`]).
    fn keeping(slab_bytes: usize, keep: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            slab_bytes: slab_bytes.max(64),
            keep: AtomicUsize::new(keep),
        })
    }

    /// Keeps up to `keep` returned slabs from now on (fewer idle ones are
    /// freed at once). The job raises it when the scan ends, so that the
    /// slabs its resident rows free as they are encoded go to the spooled
    /// buckets decoded next instead of back to the system, to be paged in
    /// again (on the 2 GiB benchmark input at a 4 GiB limit, about 580,000
    /// page faults).
    pub fn set_keep(&self, keep: usize) {
        self.keep.store(keep, Ordering::Relaxed);
        let mut free = self.free.lock().unwrap();
        free.truncate(keep);
    }

    /// A slab of at least `min_bytes` (and at least the pool's slab size).
    fn take(&self, min_bytes: usize) -> Slab {
        let words = min_bytes.max(self.slab_bytes).div_ceil(8);
        let mut free = self.free.lock().unwrap();
        if let Some(i) = free.iter().position(|s| s.len() >= words) {
            // Reused as is: a slab is always fully initialised (its old
            // contents are overwritten by zstd before anything reads them).
            return free.swap_remove(i);
        }
        drop(free);
        Slab::zeroed(words)
    }

    fn give_back(&self, slab: Slab) {
        let mut free = self.free.lock().unwrap();
        if free.len() < self.keep.load(Ordering::Relaxed) {
            free.push(slab);
        }
    }

    /// The size of an ordinary slab.
    pub fn slab_bytes(&self) -> usize {
        self.slab_bytes
    }

    /// Slabs waiting for reuse (tests use it to see slabs come back).
    pub fn idle(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

/// Huge page size of x86-64 and aarch64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// How far ahead of its writes a slab's pages are faulted in (see
/// [`Slab::populate`]).
const POPULATE_STEP: usize = 256 << 10;

/// Whether decode slabs of 2 MiB and more ask for transparent huge pages:
/// `TAILOR_HUGE_PAGES` = `auto` (the default), `on` or `off`.
///
/// `auto` is on, except in a virtual machine whose virtio balloon reports
/// free pages to its host (`VIRTIO_BALLOON_F_REPORTING`). Such a guest
/// hands every free 2 MiB block back to the host, so each huge page is
/// faulted from host memory afresh, while 4 KiB pages are served first from
/// the smaller free blocks the guest kept. Measured on one (2 cores, the
/// 2 GiB benchmark job, five runs each, alternated; `docs/benchmarks.md`):
/// with huge pages 11.3 to 12.6 s of system time and 19.5 to 21.7 s of
/// wall, without 3.7 to 5.4 s and 16.2 to 17.9 s. Without a balloon huge
/// pages saved 3.5% of the wall time. Either way the output is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugePages {
    Auto,
    On,
    Off,
}

impl std::str::FromStr for HugePages {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" | "" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "TAILOR_HUGE_PAGES={other:?}: expected auto, on or off"
            )),
        }
    }
}

impl HugePages {
    /// The policy `TAILOR_HUGE_PAGES` names (`auto` when unset).
    pub fn from_env() -> Result<Self, String> {
        Self::from_value(std::env::var_os("TAILOR_HUGE_PAGES").as_deref())
    }

    /// The policy a value of `TAILOR_HUGE_PAGES` names (`None`: unset).
    fn from_value(value: Option<&std::ffi::OsStr>) -> Result<Self, String> {
        match value.map(|v| v.to_str().ok_or(v)) {
            None => Ok(Self::Auto),
            Some(Ok(v)) => v.parse(),
            Some(Err(v)) => Err(format!("TAILOR_HUGE_PAGES={v:?} is not UTF-8")),
        }
    }

    /// Whether slabs ask for huge pages on this machine, whose virtio
    /// devices are listed under `devices` (`/sys/bus/virtio/devices`).
    fn resolve(self, devices: &std::path::Path) -> bool {
        match self {
            Self::On => true,
            Self::Off => false,
            Self::Auto => !balloon_reports_free_pages(devices),
        }
    }
}

/// Whether a virtio balloon (device id 5) under `devices` negotiated free
/// page reporting (feature bit 5; sysfs prints a device's feature bits as
/// `0`s and `1`s, bit 0 first). No virtio devices (bare metal, another
/// hypervisor, no sysfs): false.
fn balloon_reports_free_pages(devices: &std::path::Path) -> bool {
    const VIRTIO_ID_BALLOON: &str = "0x0005";
    const VIRTIO_BALLOON_F_REPORTING: usize = 5;
    let Ok(entries) = std::fs::read_dir(devices) else {
        return false;
    };
    entries.flatten().any(|d| {
        let read = |name| std::fs::read_to_string(d.path().join(name)).unwrap_or_default();
        read("device").trim() == VIRTIO_ID_BALLOON
            && read("features").as_bytes().get(VIRTIO_BALLOON_F_REPORTING) == Some(&b'1')
    })
}

/// Whether slabs ask for huge pages, settled once per process.
static HUGE_PAGES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Settles [`HUGE_PAGES`] under `policy` (if it is not settled yet).
fn settle_huge_pages(policy: HugePages) -> bool {
    *HUGE_PAGES.get_or_init(|| policy.resolve(std::path::Path::new("/sys/bus/virtio/devices")))
}

/// Settles whether slabs ask for huge pages, from `TAILOR_HUGE_PAGES` and
/// the machine, before the first slab is made: the command line calls it
/// first, so that a bad value is a usage error.
pub fn init_huge_pages() -> Result<(), String> {
    settle_huge_pages(HugePages::from_env()?);
    Ok(())
}

/// Whether slabs ask for huge pages (settled on first use if
/// [`init_huge_pages`] was not called: a bad value then counts as `auto`).
fn huge_pages() -> bool {
    settle_huge_pages(HugePages::from_env().unwrap_or(HugePages::Auto))
}

/// A slab's memory: `words` zeroed 8-byte words. Not a `Vec<u64>` because
/// a slab of at least [`HUGE_PAGE`] bytes is allocated aligned to it and
/// marked for transparent huge pages (`madvise(MADV_HUGEPAGE)`, which
/// systems whose THP mode is `madvise` need; see [`HugePages`] for when it
/// is not): the decoded input of a job
/// without a memory limit is gigabytes of fresh slabs, and faulting them in
/// 4 KiB pages took about 8% of its CPU time (page faults, zeroing, memory
/// cgroup charges); in 2 MiB pages the faults are 512 times fewer. Only
/// memory is affected, never a byte of output.
pub(crate) struct Slab {
    ptr: NonNull<u64>,
    words: usize,
    align: usize,
    /// Bytes from the start known to be faulted in (see [`Slab::populate`]).
    populated: usize,
}

// SAFETY: a Slab owns its memory, as a Vec<u64> does.
unsafe impl Send for Slab {}
unsafe impl Sync for Slab {}

impl std::fmt::Debug for Slab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slab({} bytes)", self.words * 8)
    }
}

impl Default for Slab {
    fn default() -> Self {
        Slab {
            ptr: NonNull::dangling(),
            words: 0,
            align: 8,
            populated: 0,
        }
    }
}

impl Slab {
    /// `words` zeroed words (the allocator hands out fresh pages, which the
    /// kernel zeroes lazily, without writing them).
    fn zeroed(words: usize) -> Slab {
        let bytes = words.checked_mul(8).expect("slab size overflows");
        if bytes == 0 {
            return Slab::default();
        }
        let align = if bytes >= HUGE_PAGE { HUGE_PAGE } else { 8 };
        let layout = Layout::from_size_align(bytes, align).expect("slab layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw as *mut u64) else {
            handle_alloc_error(layout)
        };
        #[cfg(target_os = "linux")]
        if align == HUGE_PAGE && huge_pages() {
            // SAFETY: the range is this allocation's whole huge pages; the
            // advice changes how pages are backed, not their contents. A
            // kernel without THP refuses it harmlessly.
            unsafe {
                libc::madvise(
                    raw as *mut libc::c_void,
                    bytes / HUGE_PAGE * HUGE_PAGE,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
        Slab {
            ptr,
            words,
            align,
            populated: 0,
        }
    }

    /// Faults in the slab's pages up to byte `upto` (and on to the next
    /// [`POPULATE_STEP`]) with one call, before they are written: the scan
    /// decodes into a slab front to back, and without huge pages (see
    /// [`HugePages`]) each 4 KiB page it reached was a trap of its own.
    /// On the 2 GiB benchmark job that was about 1.1 million page faults,
    /// 6% of its CPU time, a quarter of it the traps themselves. Pages are
    /// populated a step ahead of the writes, not the whole slab at once:
    /// the last slab of each object is partly used, and populating those
    /// whole raised the job's peak RSS by 200 MiB.
    ///
    /// Only how pages are faulted in changes, never a byte of the slab. A
    /// kernel before 5.14 refuses the advice (EINVAL), and one short of
    /// memory fails it: the pages then fault in on first write, as before.
    fn populate(&mut self, upto: usize) {
        let end = upto.next_multiple_of(POPULATE_STEP).min(self.words * 8);
        // Nothing new to fault in: populated that far already, or empty.
        if end <= self.populated {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            const PAGE: usize = 4096;
            let base = self.ptr.as_ptr() as usize;
            let from = (base + self.populated) / PAGE * PAGE;
            // SAFETY: `from..base + end` lies within this allocation's
            // pages (`from` is rounded down to the page holding byte
            // `populated`, which is inside the allocation); populating
            // writes no byte.
            unsafe {
                libc::madvise(
                    from as *mut libc::c_void,
                    base + end - from,
                    libc::MADV_POPULATE_WRITE,
                );
            }
        }
        self.populated = end;
    }
}

impl std::ops::Deref for Slab {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        // SAFETY: `words` initialised words at `ptr` (dangling and empty
        // for the default slab).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.words) }
    }
}

impl std::ops::DerefMut for Slab {
    fn deref_mut(&mut self) -> &mut [u64] {
        // SAFETY: as above; the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.words) }
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        if self.words > 0 {
            let layout = Layout::from_size_align(self.words * 8, self.align).expect("slab layout");
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { dealloc(self.ptr.as_ptr() as *mut u8, layout) };
        }
    }
}

/// Owns a slab while arrow buffers point into it; returns it on drop.
struct SlabOwner {
    slab: Slab,
    pool: Arc<SlabPool>,
}

impl Drop for SlabOwner {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.slab));
    }
}

/// Where one row's data lies in the slab, and what it is.
struct Row<'a> {
    header: &'a PayloadHeader,
    frame_offset: u64,
    misrouted: bool,
    first_point: u32,
    points: usize,
    /// Byte offset of the timestamps in the slab.
    ts_at: usize,
    meta_len: usize,
}

/// Collects payloads decoded in place into a slab and emits them as one
/// [`RecordBatch`] of the payload schema.
pub struct BatchBuilder {
    pool: Arc<SlabPool>,
    slab: Slab,
    /// Bytes of the slab in use (always a multiple of 8).
    used: usize,
    max_rows: usize,
    org: Vec<u64>,
    metric: Vec<u64>,
    kind: Vec<u8>,
    interval: Vec<u32>,
    version: Vec<u8>,
    n_points: Vec<u32>,
    frame_offset: Vec<u64>,
    misrouted: Vec<bool>,
    first_point: Vec<u32>,
    ts_offsets: Vec<i32>,
    val_offsets: Vec<i32>,
    sizes: Vec<i32>,
    meta_views: Vec<u128>,
    // Per object: the key and shard, one buffer each, every row viewing it.
    key: Buffer,
    key_view: u128,
    shard: Buffer,
    shard_view: u128,
    points: u64,
}

impl BatchBuilder {
    pub fn new(pool: Arc<SlabPool>, max_rows: usize, key: &str, shard: &str) -> Self {
        let key_buf = Buffer::from(key.as_bytes().to_vec());
        let shard_buf = Buffer::from(shard.as_bytes().to_vec());
        let max_rows = max_rows.max(1);
        Self {
            slab: Slab::default(),
            pool,
            used: 0,
            max_rows,
            org: Vec::with_capacity(max_rows),
            metric: Vec::with_capacity(max_rows),
            kind: Vec::with_capacity(max_rows),
            interval: Vec::with_capacity(max_rows),
            version: Vec::with_capacity(max_rows),
            n_points: Vec::with_capacity(max_rows),
            frame_offset: Vec::with_capacity(max_rows),
            misrouted: Vec::with_capacity(max_rows),
            first_point: Vec::with_capacity(max_rows),
            ts_offsets: Vec::with_capacity(max_rows),
            val_offsets: Vec::with_capacity(max_rows),
            sizes: Vec::with_capacity(max_rows),
            meta_views: Vec::with_capacity(max_rows),
            key_view: make_view(key.as_bytes(), 0, 0),
            key: key_buf,
            shard_view: make_view(shard.as_bytes(), 0, 0),
            shard: shard_buf,
            points: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.org.len()
    }

    pub fn points(&self) -> u64 {
        self.points
    }

    /// Whether a payload of `len` bytes still fits in this batch. An empty
    /// batch takes any payload (its slab is replaced by a big enough one).
    pub fn fits(&self, len: usize) -> bool {
        let len = slab_len(len);
        self.rows() < self.max_rows
            && (self.rows() == 0 || self.used + len <= self.slab.len() * 8)
            // list-view offsets are i32 element indexes
            && (self.used + len) / 8 <= i32::MAX as usize
    }

    /// The next `len` bytes of the slab, 8-byte aligned, for zstd to write
    /// into (the slab space taken is `len` rounded up to 8). Call
    /// [`Self::fits`] first (and [`Self::finish`] when it does not). Bytes
    /// reserved but not [`Self::commit`]ted (a payload that failed to
    /// decode) are simply reused by the next reservation.
    ///
    /// Errors (instead of panicking) when the payload does not fit in a
    /// batch that already has rows.
    pub fn reserve(&mut self, len: usize) -> Result<&mut [u8], ArrowError> {
        let padded = slab_len(len);
        if self.used + padded > self.slab.len() * 8 {
            if self.rows() > 0 {
                return Err(ArrowError::ComputeError(format!(
                    "decode slab overflow: {padded} bytes do not fit after {} of {} (finish the batch first)",
                    self.used,
                    self.slab.len() * 8
                )));
            }
            // Nothing in this slab is referenced yet: swap it for a big
            // enough one.
            let old = std::mem::replace(&mut self.slab, self.pool.take(padded));
            if !old.is_empty() {
                self.pool.give_back(old);
            }
            self.used = 0;
        }
        let used = self.used;
        self.slab.populate(used + len);
        let bytes: &mut [u8] = bytemuck_bytes_mut(&mut self.slab);
        Ok(&mut bytes[used..used + len])
    }

    /// The bytes of the last [`Self::reserve`] on (the payload decoded into
    /// them, until it is committed or the next reservation takes them).
    pub fn reserved(&self) -> &[u8] {
        &bytemuck_bytes(&self.slab)[self.used..]
    }

    /// Adds the payload just decoded into the reserved bytes as a row.
    pub fn commit(&mut self, h: &PayloadHeader, frame_offset: u64, misrouted: bool) {
        let base = self.used;
        let row = Row {
            header: h,
            frame_offset,
            misrouted,
            first_point: 0,
            points: h.n_points as usize,
            ts_at: base + h.ts_offset(),
            meta_len: h.meta_len as usize,
        };
        self.push_row(row, base + h.payload_len());
    }

    /// Adds points `first_point..first_point + ts.len()` of a payload
    /// decoded elsewhere as one row, copying them and the metadata into
    /// the slab (in [`chunk_len`] bytes: timestamps, values, metadata).
    /// Call [`Self::fits`] with that length first.
    #[allow(clippy::too_many_arguments)]
    pub fn push_chunk(
        &mut self,
        h: &PayloadHeader,
        frame_offset: u64,
        misrouted: bool,
        first_point: u32,
        ts: &[i64],
        values: &[u64],
        metadata: &str,
    ) -> Result<(), ArrowError> {
        let k = ts.len();
        assert_eq!(k, values.len(), "one value per timestamp");
        debug_assert!(k > 0, "a row has points");
        let len = chunk_len(k, metadata.len());
        // (May swap in a fresh slab and start over at 0.)
        self.reserve(len)?;
        let base = self.used;
        let dst = &mut bytemuck_bytes_mut(&mut self.slab)[base..base + len];
        // SAFETY: i64 and u64 are plain 8-byte integers without padding.
        let (ts_bytes, val_bytes) = unsafe {
            (
                std::slice::from_raw_parts(ts.as_ptr() as *const u8, 8 * k),
                std::slice::from_raw_parts(values.as_ptr() as *const u8, 8 * k),
            )
        };
        dst[..8 * k].copy_from_slice(ts_bytes);
        dst[8 * k..16 * k].copy_from_slice(val_bytes);
        dst[16 * k..16 * k + metadata.len()].copy_from_slice(metadata.as_bytes());
        let row = Row {
            header: h,
            frame_offset,
            misrouted,
            first_point,
            points: k,
            ts_at: base,
            meta_len: metadata.len(),
        };
        self.push_row(row, base + len);
        Ok(())
    }

    /// Adds a row whose points lie in the slab as a payload lays them out
    /// (timestamps at `ts_at`, values right after, then the metadata), and
    /// marks the slab used up to `used`.
    fn push_row(&mut self, r: Row<'_>, used: usize) {
        let h = r.header;
        self.org.push(h.org_id);
        self.metric.push(h.metric_id);
        self.kind.push(h.kind as u8);
        self.interval.push(h.interval_s);
        self.version.push(h.version as u8);
        self.n_points.push(r.points as u32);
        self.frame_offset.push(r.frame_offset);
        self.misrouted.push(r.misrouted);
        self.first_point.push(r.first_point);
        self.ts_offsets.push((r.ts_at / 8) as i32);
        self.val_offsets.push(((r.ts_at + 8 * r.points) / 8) as i32);
        self.sizes.push(r.points as i32);
        let meta_start = r.ts_at + 16 * r.points;
        let meta = &bytemuck_bytes(&self.slab)[meta_start..meta_start + r.meta_len];
        self.meta_views.push(make_view(meta, 0, meta_start as u32));
        self.used = used;
        self.points += r.points as u64;
    }

    /// Emits the rows collected so far as a batch (`None` when empty) and
    /// starts a new one. An empty batch keeps its slab.
    pub fn finish(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        if self.rows() == 0 {
            self.used = 0;
            return Ok(None);
        }
        let slab = std::mem::take(&mut self.slab);
        let used = self.used;
        self.used = 0;
        self.points = 0;
        let ptr = NonNull::new(slab.as_ptr() as *mut u8).expect("slab pointer");
        let owner = Arc::new(SlabOwner {
            slab,
            pool: Arc::clone(&self.pool),
        });
        // SAFETY: the owner keeps the slab alive and unmoved (a slab's
        // memory does not move when the Slab itself is moved) for as long as
        // the buffer exists; `used` bytes are initialised.
        let slab_buf = unsafe { Buffer::from_custom_allocation(ptr, used, owner) };
        let words = used / 8;
        let ts_child = Arc::new(Int64Array::new(
            ScalarBuffer::new(slab_buf.clone(), 0, words),
            None,
        ));
        let val_child = Arc::new(Float64Array::new(
            ScalarBuffer::new(slab_buf.clone(), 0, words),
            None,
        ));
        let sizes: ScalarBuffer<i32> = std::mem::take(&mut self.sizes).into();
        let timestamps = ListViewArray::try_new(
            ts_item(),
            std::mem::take(&mut self.ts_offsets).into(),
            sizes.clone(),
            ts_child,
            None,
        )?;
        let values = ListViewArray::try_new(
            value_item(),
            std::mem::take(&mut self.val_offsets).into(),
            sizes,
            val_child,
            None,
        )?;
        let rows = self.org.len();
        // SAFETY: every view was made by `make_view` over bytes of the
        // respective buffer that were validated as UTF-8 (metadata by
        // `parse_payload`, key and shard are `&str`).
        let metadata = unsafe {
            StringViewArray::new_unchecked(
                std::mem::take(&mut self.meta_views).into(),
                vec![slab_buf],
                None,
            )
        };
        let key_views: Vec<u128> = vec![self.key_view; rows];
        let shard_views: Vec<u128> = vec![self.shard_view; rows];
        let object_key = unsafe {
            StringViewArray::new_unchecked(key_views.into(), vec![self.key.clone()], None)
        };
        let shard = unsafe {
            StringViewArray::new_unchecked(shard_views.into(), vec![self.shard.clone()], None)
        };
        let misrouted = BooleanArray::new(
            BooleanBuffer::from(std::mem::take(&mut self.misrouted)),
            None,
        );
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(std::mem::take(&mut self.org))),
            Arc::new(UInt64Array::from(std::mem::take(&mut self.metric))),
            Arc::new(UInt8Array::from(std::mem::take(&mut self.kind))),
            Arc::new(UInt32Array::from(std::mem::take(&mut self.interval))),
            Arc::new(metadata),
            Arc::new(timestamps),
            Arc::new(values),
            Arc::new(UInt32Array::from(std::mem::take(&mut self.n_points))),
            Arc::new(UInt8Array::from(std::mem::take(&mut self.version))),
            Arc::new(object_key),
            Arc::new(UInt64Array::from(std::mem::take(&mut self.frame_offset))),
            Arc::new(shard),
            Arc::new(misrouted),
            Arc::new(UInt32Array::from(std::mem::take(&mut self.first_point))),
        ];
        self.reserve_rows();
        RecordBatch::try_new(payload_schema(), columns).map(Some)
    }

    fn reserve_rows(&mut self) {
        let n = self.max_rows;
        self.org.reserve(n);
        self.metric.reserve(n);
        self.kind.reserve(n);
        self.interval.reserve(n);
        self.version.reserve(n);
        self.n_points.reserve(n);
        self.frame_offset.reserve(n);
        self.misrouted.reserve(n);
        self.first_point.reserve(n);
        self.ts_offsets.reserve(n);
        self.val_offsets.reserve(n);
        self.sizes.reserve(n);
        self.meta_views.reserve(n);
    }
}

/// Slab bytes a payload of `len` decoded bytes takes (rows start at
/// 8-byte boundaries).
pub fn slab_len(len: usize) -> usize {
    len.div_ceil(8) * 8
}

/// Slab bytes a row of `points` points copied by
/// [`BatchBuilder::push_chunk`] takes, with `meta_len` bytes of metadata.
pub fn chunk_len(points: usize, meta_len: usize) -> usize {
    slab_len(16 * points + meta_len)
}

fn bytemuck_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u8 has alignment 1 and every u64 is 8 initialised bytes.
    unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 8) }
}

pub(crate) fn bytemuck_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as above; the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * 8) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_keeps_returned_slabs_up_to_its_keep() {
        let pool = SlabPool::keeping(64, 1);
        let slabs: Vec<Slab> = (0..3).map(|_| pool.take(64)).collect();
        let first = slabs[0].as_ptr();
        for s in slabs {
            pool.give_back(s);
        }
        assert_eq!(pool.idle(), 1);
        // Raised: returned slabs are kept; the kept one is handed out first.
        pool.set_keep(3);
        assert_eq!(pool.take(64).as_ptr(), first);
        for _ in 0..3 {
            let s = pool.take(64);
            pool.give_back(s);
        }
        let (a, b) = (pool.take(64), pool.take(64));
        pool.give_back(a);
        pool.give_back(b);
        assert_eq!(pool.idle(), 2);
        // Lowered: idle slabs beyond it are freed at once.
        pool.set_keep(1);
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn slabs_are_zeroed_words_and_big_ones_huge_page_aligned() {
        for words in [0usize, 1, 1000, HUGE_PAGE / 8, HUGE_PAGE / 8 * 3 + 5] {
            let mut s = Slab::zeroed(words);
            assert_eq!(s.len(), words);
            assert!(s.iter().all(|&w| w == 0));
            if words * 8 >= HUGE_PAGE {
                assert_eq!(s.as_ptr() as usize % HUGE_PAGE, 0);
            }
            if let Some(w) = s.last_mut() {
                *w = u64::MAX;
            }
            let moved = s; // the memory stays where it is
            assert_eq!(moved.last().copied(), (words > 0).then_some(u64::MAX));
        }
        let pool = SlabPool::keeping(HUGE_PAGE, 1);
        let s = pool.take(10);
        assert_eq!(s.len() * 8, HUGE_PAGE);
        let at = s.as_ptr();
        pool.give_back(s);
        assert_eq!(pool.take(HUGE_PAGE).as_ptr(), at, "reused");
    }

    /// Pages are faulted in a step ahead of what is reserved, and never
    /// past the slab's end.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_slab_is_populated_a_step_ahead_of_its_writes() {
        const PAGE: usize = 4096;
        // Pages of `s[..bytes]` the kernel has resident (`mincore`), and
        // pages of `s[..bytes]`.
        let resident = |s: &Slab, bytes: usize| -> (usize, usize) {
            let base = s.as_ptr() as usize;
            let (from, to) = (base / PAGE * PAGE, base + bytes);
            let mut v = vec![0u8; (to - from).div_ceil(PAGE)];
            // SAFETY: the range is this slab's pages; mincore only reads
            // the page tables.
            let rc = unsafe { libc::mincore(from as *mut libc::c_void, to - from, v.as_mut_ptr()) };
            assert_eq!(rc, 0);
            (v.iter().filter(|&&b| b & 1 == 1).count(), v.len())
        };
        let bytes = 4 * POPULATE_STEP + 100;
        let mut s = Slab::zeroed(bytes / 8);
        let bytes = s.len() * 8;
        s.populate(10);
        assert_eq!(s.populated, POPULATE_STEP);
        let (r, pages) = resident(&s, POPULATE_STEP);
        assert_eq!(r, pages, "populated, not written");
        s.populate(POPULATE_STEP - 1);
        assert_eq!(s.populated, POPULATE_STEP, "nothing more to do");
        s.populate(POPULATE_STEP + 1);
        assert_eq!(s.populated, 2 * POPULATE_STEP);
        s.populate(bytes + 5 * POPULATE_STEP);
        assert_eq!(s.populated, bytes, "up to the end, not past it");
        s.populate(bytes + 1);
        assert_eq!(s.populated, bytes);
        let (r, pages) = resident(&s, bytes);
        assert_eq!(r, pages);
        assert!(s.iter().all(|&w| w == 0));
        let mut empty = Slab::default();
        empty.populate(10);
        assert_eq!(empty.populated, 0, "an empty slab has nothing to fault in");
    }

    #[test]
    fn huge_pages_are_off_only_where_a_balloon_reports_free_pages() {
        let dir = tempfile::tempdir().unwrap();
        let device = |name: &str, id: &str, features: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("device"), format!("{id}\n")).unwrap();
            std::fs::write(d.join("features"), format!("{features}\n")).unwrap();
        };
        let auto = || HugePages::Auto.resolve(dir.path());
        assert!(auto(), "no virtio devices");
        assert!(!balloon_reports_free_pages(&dir.path().join("absent")));
        // A disk with bit 5 set, and a balloon without free page reporting
        // (stats and deflate on OOM only).
        device("virtio1", "0x0002", "0010011001");
        device("virtio0", "0x0005", "0110000000");
        assert!(auto());
        // The balloon of the benchmark machine: bits 1, 2, 5 and 7.
        device("virtio0", "0x0005", "0110010100000000000000000000000010");
        assert!(!auto());
        assert!(HugePages::On.resolve(dir.path()));
        assert!(!HugePages::Off.resolve(std::path::Path::new("/nonexistent")));
        assert_eq!("on".parse(), Ok(HugePages::On));
        assert_eq!("off".parse(), Ok(HugePages::Off));
        assert_eq!("auto".parse(), Ok(HugePages::Auto));
        let bad = "yes".parse::<HugePages>().unwrap_err();
        assert!(
            bad.contains("TAILOR_HUGE_PAGES") && bad.contains("auto, on or off"),
            "{bad}"
        );
        // Set but empty, as a manifest may leave it: auto. Not UTF-8: an
        // error naming the variable.
        use std::os::unix::ffi::OsStrExt;
        let value = |v: &[u8]| HugePages::from_value(Some(std::ffi::OsStr::from_bytes(v)));
        assert_eq!(HugePages::from_value(None), Ok(HugePages::Auto));
        assert_eq!(value(b""), Ok(HugePages::Auto));
        assert_eq!(value(b"off"), Ok(HugePages::Off));
        let bad = value(b"o\xffn").unwrap_err();
        assert!(
            bad.contains("TAILOR_HUGE_PAGES") && bad.contains("not UTF-8"),
            "{bad}"
        );
    }
}
