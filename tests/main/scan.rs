//! The payload table through DataFusion: SQL, projection and filter
//! pushdown, zero-copy decode buffers, misrouted payloads, files > 4 GiB.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, ListViewArray};
use datafusion::arrow::datatypes::{Int64Type, UInt64Type};
use datafusion::prelude::{SessionConfig, SessionContext};
use tailor::datasource::batch::{BatchBuilder, SlabPool};
use tailor::datasource::listing::{Window, list_inputs};
use tailor::datasource::source::{PayloadOptions, ScanLog};
use tailor::datasource::store::StoreRoot;
use tailor::datasource::table::PayloadTable;
use tailor::format::payload::{Decoder, check_body, parse_frame_prefix, parse_payload};
use tailor::job::generate::{GenerateOptions, generate};

use crate::common::{P, Rng, file_of, random_payload, rt, shard_map, tempdir};

async fn table(
    root: &StoreRoot,
    shard: Option<&str>,
    partitions: usize,
    range_bytes: u64,
) -> (SessionContext, Arc<ScanLog>) {
    let listing = list_inputs(root, shard, &Window::default()).await.unwrap();
    let mut opts = PayloadOptions::new(shard_map());
    opts.range_bytes = range_bytes;
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_target_partitions(partitions)
            .with_repartition_file_min_size(range_bytes as usize),
    );
    let log = PayloadTable::new(root, listing.objects, opts, ScanLog::new())
        .register(&ctx, root, "payloads")
        .unwrap();
    (ctx, log)
}

async fn scalar(ctx: &SessionContext, sql: &str) -> u64 {
    let b = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let c = b[0].column(0);
    match c.data_type() {
        datafusion::arrow::datatypes::DataType::Int64 => {
            c.as_primitive::<Int64Type>().value(0) as u64
        }
        datafusion::arrow::datatypes::DataType::UInt64 => c.as_primitive::<UInt64Type>().value(0),
        t => panic!("unexpected type {t}"),
    }
}

#[test]
fn sql_over_a_generated_tree_sees_every_frame_and_point() {
    let tmp = tempdir();
    let rt = rt();
    rt.block_on(async {
        let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
        let opts = GenerateOptions {
            target_bytes: 2 << 20,
            orgs: 30,
            hours: 2,
            partitions: 3,
            ..Default::default()
        };
        let s = generate(&root, &shard_map(), &opts).await.unwrap();
        for (partitions, range) in [(1, 1 << 30), (2, 4096), (3, 100_000)] {
            let (ctx, log) = table(&root, None, partitions, range).await;
            assert_eq!(
                scalar(&ctx, "SELECT count(*) FROM payloads").await,
                s.frames
            );
            assert_eq!(
                scalar(&ctx, "SELECT sum(n_points) FROM payloads").await,
                s.points
            );
            assert_eq!(
                scalar(
                    &ctx,
                    "SELECT count(*) FROM (SELECT unnest(timestamps) FROM payloads)"
                )
                .await,
                s.points
            );
            assert_eq!(
                scalar(&ctx, "SELECT count(*) FROM payloads WHERE misrouted").await,
                s.misrouted
            );
            assert!(log.tiling_errors().is_empty());
            let (ctx, log) = table(&root, None, partitions, range).await;
            assert_eq!(
                scalar(&ctx, "SELECT count(*) FROM payloads").await,
                s.frames
            );
            assert_eq!(log.totals().misrouted_payloads, s.misrouted);
            assert_eq!(log.misrouted().len() as u64, s.misrouted);
            assert_eq!(log.totals().frames, s.frames);
        }
    });
}

#[test]
fn filters_run_inside_the_scan_and_projection_is_pushed_down() {
    let tmp = tempdir();
    let rt = rt();
    rt.block_on(async {
        let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
        let mut rng = Rng(3);
        let payloads: Vec<P> = (0..200)
            .map(|i| random_payload(&mut rng, 7 + 64 * (i % 3), 20))
            .collect();
        let (file, _) = file_of(&payloads);
        let dir = tmp.path().join("org-mod-7/dt=2026-11-21/hour=05");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t+0+0000000000.tsp"), file).unwrap();
        let (ctx, _) = table(&root, Some("org-mod-7"), 2, 1 << 30).await;
        let plan = ctx
            .sql("EXPLAIN SELECT metric_id FROM payloads WHERE org_id = 71")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
            .unwrap()
            .to_string();
        assert!(
            text.contains("predicate=org_id"),
            "filter pushed into the scan:\n{text}"
        );
        let want = payloads.iter().filter(|p| p.org == 71).count() as u64;
        assert!(want > 0);
        assert_eq!(
            scalar(
                &ctx,
                "SELECT count(metric_id) FROM payloads WHERE org_id = 71"
            )
            .await,
            want
        );
        let pts: u64 = payloads
            .iter()
            .filter(|p| p.org == 71 && p.metric < 10)
            .map(|p| p.ts.len() as u64)
            .sum();
        assert_eq!(
            scalar(
                &ctx,
                "SELECT sum(n_points) FROM payloads WHERE org_id = 71 AND metric_id < 10"
            )
            .await,
            pts
        );
    });
}

#[test]
fn arrays_point_into_the_decode_buffer_and_slabs_return_to_the_pool() {
    let mut rng = Rng(8);
    let payloads: Vec<P> = (0..50).map(|_| random_payload(&mut rng, 7, 100)).collect();
    let (file, offsets) = file_of(&payloads);
    let pool = SlabPool::new(1 << 20);
    let mut b = BatchBuilder::new(Arc::clone(&pool), 1024, "k.tsp", "org-mod-7");
    let mut dec = Decoder::new();
    let mut ts_ptrs = Vec::new();
    for &off in &offsets {
        let o = off as usize;
        let len = parse_frame_prefix(&file[o..], off, (file.len() - o) as u64).unwrap() as usize;
        let body = &file[o + 4..o + 4 + len];
        let info = check_body(body, off).unwrap();
        assert!(b.fits(info.content_size));
        let dst = b.reserve(info.content_size).unwrap();
        dec.decompress_into(body, info, dst, off).unwrap();
        let p = parse_payload(dst, off).unwrap();
        ts_ptrs.push(p.timestamps.as_ptr() as usize);
        let h = p.header;
        b.commit(&h, off, false);
    }
    let batch = b.finish().unwrap().unwrap();
    let ts = batch
        .column(5)
        .as_any()
        .downcast_ref::<ListViewArray>()
        .unwrap();
    let vals = batch
        .column(6)
        .as_any()
        .downcast_ref::<ListViewArray>()
        .unwrap();
    let ts_child = ts.values().as_primitive::<Int64Type>().values().as_ptr() as usize;
    let val_child = vals
        .values()
        .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
        .values()
        .as_ptr() as usize;
    assert_eq!(ts_child, val_child, "timestamps and values share one slab");
    for (i, &p) in ts_ptrs.iter().enumerate() {
        // The row's list starts exactly where zstd wrote the timestamps.
        assert_eq!(ts_child + ts.value_offsets()[i] as usize * 8, p, "row {i}");
        let got: Vec<i64> = ts.value(i).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(got, payloads[i].ts);
        let bits: Vec<u64> = vals
            .value(i)
            .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
            .values()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(bits, payloads[i].vals, "values bit for bit");
    }
    assert_eq!(pool.idle(), 0);
    drop(batch);
    assert_eq!(
        pool.idle(),
        1,
        "the slab went back to the pool when the last array dropped"
    );
}

#[test]
fn a_file_over_4_gib_is_read_whole_and_in_ranges() {
    // One maximal incompressible payload (~16.8 MB), framed once and written
    // 260 times: a 4.4 GiB file in a few seconds.
    let tmp = tempdir();
    let mut rng = Rng(77);
    let n = 1 << 20;
    let p = P {
        version: 2,
        org: 7,
        metric: 1,
        kind: tailor::format::payload::Kind::Gauge,
        interval_s: 1,
        ts: (0..n as i64).collect(),
        vals: (0..n).map(|_| rng.next_u64()).collect(),
        meta: "x:y".into(),
    };
    let (frame, _) = file_of(&[p]);
    let copies = ((4u64 << 30) / frame.len() as u64) + 4;
    let dir = tmp.path().join("org-mod-7/dt=2026-11-21/hour=00");
    std::fs::create_dir_all(&dir).unwrap();
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(dir.join("big+0+0000000000.tsp")).unwrap(),
        );
        for _ in 0..copies {
            f.write_all(&frame).unwrap();
        }
    }
    let size = frame.len() as u64 * copies;
    assert!(size > 4 << 30);
    let rt = rt();
    rt.block_on(async {
        let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
        for (parts, range) in [(1, 1u64 << 40), (2, 1 << 30)] {
            let (ctx, log) = table(&root, None, parts, range).await;
            assert_eq!(
                scalar(&ctx, "SELECT max(frame_offset) FROM payloads").await,
                size - frame.len() as u64
            );
            assert!(log.tiling_errors().is_empty());
            assert_eq!(log.totals().frames, copies);
            let ranges = log.ranges();
            assert!(ranges.len() as u64 >= size.div_ceil(range.min(size)));
            assert!(
                ranges.iter().all(|r| r.end - r.start <= range),
                "no range above the range size"
            );
            assert!(ranges.iter().any(|r| r.start > 4 << 30 || r.end > 4 << 30));
        }
    });
}
