//! Heap allocations per payload in a steady-state scan: the decode path
//! reuses its slabs and zstd context, so allocations happen per batch, not
//! per payload. (Its own test binary: it installs a counting allocator.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use tailor::datasource::listing::{Window, list_inputs};
use tailor::datasource::source::{PayloadOptions, ScanLog};
use tailor::datasource::store::StoreRoot;
use tailor::datasource::table::PayloadTable;
use tailor::format::payload::{Kind, PayloadSpec, PayloadWriter};
use tailor::format::shard::ShardMap;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

/// Writes a file of `n` small payloads and returns the allocations made on
/// this thread while scanning it (all columns, every batch consumed).
fn scan_allocations(n: usize) -> u64 {
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
    std::fs::write(dir.join("t+0+0000000000.tsp"), out).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
        let listing = list_inputs(&root, None, &Window::default()).await.unwrap();
        let map = Arc::new(ShardMap::parse("modulus = 64").unwrap());
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
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
        assert_eq!(rows, n);
        allocs() - before
    })
}

#[test]
fn steady_state_scan_allocates_per_batch_not_per_payload() {
    let small = scan_allocations(20_000);
    let large = scan_allocations(100_000);
    let per_payload = (large - small) as f64 / 80_000.0;
    eprintln!(
        "allocations: {small} for 20k payloads, {large} for 100k: {per_payload:.4} per payload"
    );
    assert!(per_payload < 0.02, "{per_payload} allocations per payload");
}
