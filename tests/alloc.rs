//! Heap allocations per payload in a steady-state scan: the decode path
//! reuses its slabs and zstd context, so allocations happen per batch, not
//! per payload, on one decoding thread or several. (Its own test binary: it
//! installs a counting allocator, which counts the allocations of every
//! thread of the process.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use tailor::datasource::listing::{Window, list_inputs};
use tailor::datasource::options::PayloadOptions;
use tailor::datasource::scan_log::ScanLog;
use tailor::datasource::store::StoreRoot;
use tailor::datasource::table::PayloadTable;
use tailor::format::payload::{Kind, PayloadSpec, PayloadWriter};
use tailor::format::shard::ShardMap;

struct Counting;

/// Allocations by every thread: the scan decodes on the runtime's workers.
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

/// The tests of this binary count process-wide: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes `files` files of `n` small payloads each and returns the
/// allocations made by all threads while scanning them with `threads`
/// decoding threads (all columns, every batch consumed).
fn scan_allocations(n: usize, files: usize, threads: usize) -> u64 {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("org-mod-7/dt=2026-11-21/hour=00");
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = Vec::new();
    let mut w = PayloadWriter::new(1);
    let ts: Vec<i64> = (0..16).map(|i| i * 10_000).collect();
    let vals: Vec<u64> = (0..16).map(|i| (i as f64).to_bits()).collect();
    for i in 0..n {
        w.write_frame(
            &PayloadSpec {
                version: 2,
                org_id: 7,
                metric_id: i as u64 % 100,
                kind: Kind::Gauge,
                interval_s: 10,
                timestamps: &ts,
                values: &vals,
                metadata: "host:web-1,env:prod",
            },
            &mut out,
        );
    }
    for f in 0..files {
        std::fs::write(dir.join(format!("t+{f}+0000000000.tsp")), &out).unwrap();
    }
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap()
    };
    rt.block_on(async {
        let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
        let listing = list_inputs(&root, None, &Window::default()).await.unwrap();
        let map = Arc::new(ShardMap::parse("modulus = 64").unwrap());
        let ctx =
            SessionContext::new_with_config(SessionConfig::new().with_target_partitions(threads));
        PayloadTable::new(
            &root,
            listing.objects,
            PayloadOptions::new(map),
            ScanLog::new(),
        )
        .register(&ctx, &root, "payloads")
        .unwrap();
        let df = ctx.sql("SELECT * FROM payloads").await.unwrap();
        let mut stream = df.execute_stream().await.unwrap();
        let before = allocs();
        let mut rows = 0;
        while let Some(b) = stream.next().await {
            rows += b.unwrap().num_rows();
        }
        assert_eq!(rows, n * files);
        allocs() - before
    })
}

fn per_payload(files: usize, threads: usize) -> f64 {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let small = scan_allocations(20_000, files, threads);
    let large = scan_allocations(100_000, files, threads);
    let per_payload = (large.saturating_sub(small)) as f64 / (80_000 * files) as f64;
    eprintln!(
        "{threads} threads, {files} files: {small} allocations for 20k payloads per file, {large} for 100k: {per_payload:.4} per payload"
    );
    per_payload
}

#[test]
fn steady_state_scan_allocates_per_batch_not_per_payload() {
    let p = per_payload(1, 1);
    assert!(p < 0.02, "{p} allocations per payload");
}

#[test]
fn steady_state_scan_on_several_threads_allocates_per_batch_not_per_payload() {
    // One allocation per payload would be >= 1.0 here. Batches of 8192 rows
    // cost ~150 allocations each on a multi-threaded runtime (channels and
    // wakers between the partitions included): ~0.02 per payload.
    let p = per_payload(2, 2);
    assert!(p < 0.05, "{p} allocations per payload on 2 threads");
}
