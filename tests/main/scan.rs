//! The payload table through DataFusion: SQL, projection and filter
//! pushdown, zero-copy decode buffers, misrouted payloads, files > 4 GiB.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, ListViewArray};
use datafusion::arrow::datatypes::{Int64Type, UInt64Type};
use datafusion::prelude::{SessionConfig, SessionContext};
use tailor::datasource::batch::{BatchBuilder, SlabPool};
use tailor::datasource::listing::{Window, list_inputs};
use tailor::datasource::options::PayloadOptions;
use tailor::datasource::scan_log::ScanLog;
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

/// Runs `sql` and sums the scan's `frames` and `points` metrics.
async fn scan_metrics(ctx: &SessionContext, sql: &str) -> (u64, u64) {
    use datafusion::physical_plan::ExecutionPlan;
    fn sum(plan: &Arc<dyn ExecutionPlan>, name: &str) -> u64 {
        let own = plan
            .metrics()
            .and_then(|m| m.sum_by_name(name))
            .map_or(0, |v| v.as_usize() as u64);
        own + plan.children().iter().map(|c| sum(c, name)).sum::<u64>()
    }
    let plan = ctx
        .sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx())
        .await
        .unwrap();
    (sum(&plan, "frames"), sum(&plan, "points"))
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
            // Every frame's bytes count in the progress, and every frame
            // and point in the scan's metrics (reported once a megabyte,
            // the rest at each range's end).
            let (ctx, log) = table(&root, None, partitions, range).await;
            let (frames, points) = scan_metrics(&ctx, "SELECT count(*) FROM payloads").await;
            assert_eq!((frames, points), (s.frames, s.points));
            assert_eq!(log.progress_bytes(), s.bytes);
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
        // Only the selected column leaves the scan (the filter's column is
        // read inside it).
        let scan = text
            .lines()
            .find(|l| l.contains("DataSourceExec"))
            .unwrap_or_else(|| panic!("no scan in\n{text}"));
        assert!(
            scan.contains("projection=[metric_id],"),
            "projection pushed into the scan: {scan}"
        );
        // Through SQL, with a filter, the point arrays still view the decode
        // slab: timestamps and values of a batch are one allocation, never
        // copied out by the filter.
        let batches = ctx
            .sql("SELECT timestamps, \"values\" FROM payloads WHERE org_id = 71")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut rows = 0;
        for b in &batches {
            let (ts, vals, ts_child, val_child) = point_columns(b, 0);
            assert_eq!(ts_child, val_child, "one slab behind both columns");
            for i in 0..b.num_rows() {
                // Timestamps then values of a payload, side by side in the slab.
                let n = ts.value_sizes()[i] as usize;
                assert_eq!(
                    vals.value_offsets()[i] as usize,
                    ts.value_offsets()[i] as usize + n
                );
            }
            rows += b.num_rows();
        }
        assert_eq!(rows, payloads.iter().filter(|p| p.org == 71).count());
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

/// The timestamps and values list columns at `first` and `first + 1`, and
/// where each one's child values start in memory.
fn point_columns(
    b: &datafusion::arrow::array::RecordBatch,
    first: usize,
) -> (&ListViewArray, &ListViewArray, usize, usize) {
    let list = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<ListViewArray>()
            .unwrap()
    };
    let (ts, vals) = (list(first), list(first + 1));
    let ts_child = ts.values().as_primitive::<Int64Type>().values().as_ptr() as usize;
    let val_child = vals
        .values()
        .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
        .values()
        .as_ptr() as usize;
    (ts, vals, ts_child, val_child)
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
    let (ts, vals, ts_child, val_child) = point_columns(&batch, 5);
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

#[test]
fn a_payload_that_fails_to_decode_never_overflows_the_slab() {
    // A reservation that is not committed (the payload failed to decode)
    // leaves an empty batch holding a small slab; a bigger payload next used
    // to hit the "slab overflow" assertion.
    let pool = SlabPool::new(64);
    let mut b = BatchBuilder::new(Arc::clone(&pool), 1024, "k.tsp", "org-mod-7");
    b.reserve(80).unwrap();
    assert!(b.fits(4096));
    assert!(b.finish().unwrap().is_none());
    assert_eq!(b.reserve(4096).unwrap().len(), 4096);
    // A batch with rows refuses (an error, not a panic) what does not fit.
    let mut rng = Rng(1);
    let (file, _) = file_of(&[random_payload(&mut rng, 7, 3)]);
    let body = &file[4..];
    let info = check_body(body, 0).unwrap();
    let mut dec = Decoder::new();
    let mut b = BatchBuilder::new(Arc::clone(&pool), 1024, "k.tsp", "org-mod-7");
    let dst = b.reserve(info.content_size).unwrap();
    dec.decompress_into(body, info, dst, 0).unwrap();
    let h = parse_payload(dst, 0).unwrap().header;
    b.commit(&h, 0, false);
    assert!(!b.fits(1 << 20));
    let e = b.reserve(1 << 20).unwrap_err();
    assert!(e.to_string().contains("decode slab overflow"), "{e}");
}

/// Writes `file` as the one payload file of shard org-mod-7 under `tmp`.
fn put_file(tmp: &tempfile::TempDir, file: &[u8]) -> std::path::PathBuf {
    let dir = tmp.path().join("org-mod-7/dt=2026-11-21/hour=00");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t+0+0000000000.tsp");
    std::fs::write(&path, file).unwrap();
    path
}

#[test]
fn corrupt_payloads_mid_batch_under_the_skip_policy_never_panic() {
    use tailor::format::payload::{PayloadWriter, encode_payload};
    // Small slabs: every batch outgrows its slab; a payload that fails to
    // decode sits before a bigger one, at the start of a batch and inside it.
    let mut rng = Rng(31);
    let mut file = Vec::new();
    let mut good = 0;
    let mut w = PayloadWriter::new(1);
    for i in 0..40 {
        let p = random_payload(&mut rng, 7, if i % 2 == 0 { 4 } else { 400 });
        if i % 5 == 0 {
            let mut raw = Vec::new();
            encode_payload(&p.spec(), &mut raw);
            raw[0] = b'X';
            w.write_raw_frame(&raw, &mut file);
        } else {
            w.write_frame(&p.spec(), &mut file);
            good += 1;
        }
    }
    let tmp = tempdir();
    put_file(&tmp, &file);
    let rt = rt();
    rt.block_on(async {
        let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
        let listing = list_inputs(&root, None, &Window::default()).await.unwrap();
        let mut opts = PayloadOptions::new(shard_map());
        opts.on_corrupt = tailor::datasource::options::CorruptPolicy::Skip;
        opts.slab_bytes = 64;
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_batch_size(3));
        let log = PayloadTable::new(&root, listing.objects, opts, ScanLog::new())
            .register(&ctx, &root, "payloads")
            .unwrap();
        assert_eq!(scalar(&ctx, "SELECT count(*) FROM payloads").await, good);
        assert_eq!(log.totals().corrupt_frames, 8);
    });
}

#[test]
fn a_limit_is_not_taken_for_corruption() {
    let mut rng = Rng(12);
    let payloads: Vec<P> = (0..200).map(|_| random_payload(&mut rng, 7, 30)).collect();
    let (file, _) = file_of(&payloads);
    let tmp = tempdir();
    put_file(&tmp, &file);
    let rt = rt();
    rt.block_on(async {
        let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
        for sql in [
            "SELECT frame_offset FROM payloads LIMIT 1",
            "SELECT * FROM payloads LIMIT 3",
        ] {
            let (ctx, log) = table(&root, None, 3, 1000).await;
            let b = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            assert!(b.iter().map(|b| b.num_rows()).sum::<usize>() >= 1);
            assert!(
                log.tiling_errors().is_empty(),
                "{sql}: {:?}",
                log.tiling_errors()
            );
            assert!(log.corrupt().is_empty());
            assert_eq!(log.totals().corrupt_frames, 0);
        }
    });
}

/// Scans the one file under `root` (listed before `damage` runs) and
/// returns the error or the corrupt frames counted.
async fn scan_after(
    root: &StoreRoot,
    range: u64,
    policy: tailor::datasource::options::CorruptPolicy,
    damage: impl FnOnce(),
) -> (
    Result<u64, datafusion::error::DataFusionError>,
    Arc<ScanLog>,
) {
    let listing = list_inputs(root, None, &Window::default()).await.unwrap();
    damage();
    let mut opts = PayloadOptions::new(shard_map());
    opts.on_corrupt = policy;
    opts.range_bytes = range;
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_target_partitions(2)
            .with_repartition_file_min_size(range as usize),
    );
    let log = PayloadTable::new(root, listing.objects, opts, ScanLog::new())
        .register(&ctx, root, "payloads")
        .unwrap();
    let r = ctx
        .sql("SELECT count(*) FROM payloads")
        .await
        .unwrap()
        .collect()
        .await
        .map(|b| b[0].column(0).as_primitive::<Int64Type>().value(0) as u64);
    (r, log)
}

#[test]
fn a_file_truncated_after_listing_is_reported_not_a_panic() {
    use tailor::datasource::options::CorruptPolicy;
    use tailor::datasource::source::frame_error;
    use tailor::format::payload::ErrorKind;
    let mut rng = Rng(13);
    let payloads: Vec<P> = (0..30).map(|_| random_payload(&mut rng, 7, 30)).collect();
    let (file, offsets) = file_of(&payloads);
    let len = file.len() as u64;
    let rt = rt();
    // Truncated at a frame boundary, then inside a frame.
    for (cut, kind) in [
        (
            offsets[20],
            ErrorKind::ObjectShorter {
                listed: len,
                found: offsets[20],
            },
        ),
        (
            offsets[20] + 10,
            ErrorKind::Truncated {
                needed: offsets[21] - offsets[20],
                available: 10,
            },
        ),
    ] {
        for range in [len, 1000, 97] {
            let tmp = tempdir();
            let path = put_file(&tmp, &file);
            let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
            let truncate = || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(cut)
                    .unwrap()
            };
            let (r, log) = rt.block_on(scan_after(&root, range, CorruptPolicy::Fail, truncate));
            let e = r.expect_err("a truncated file fails the scan");
            let fe = frame_error(&e).unwrap_or_else(|| panic!("not a frame error: {e}"));
            assert_eq!(
                (fe.offset(), fe.kind()),
                (offsets[20], &kind),
                "range {range}"
            );
            assert!(fe.key.ends_with("t+0+0000000000.tsp"));
            assert!(log.tiling_errors().is_empty());
            std::fs::write(&path, &file).unwrap();
            let (r, log) = rt.block_on(scan_after(&root, range, CorruptPolicy::Skip, truncate));
            assert_eq!(r.unwrap(), 20, "range {range}");
            assert!(log.tiling_errors().is_empty());
            let corrupt = log.corrupt();
            assert_eq!(corrupt.len(), 1, "range {range}: {corrupt:?}");
            assert_eq!(corrupt[0].offset, offsets[20]);
            assert_eq!(corrupt[0].reason, kind.to_string());
        }
    }
}

/// A remote object replaced after the listing, by one as long or shorter:
/// every ranged GET is conditional on the listed ETag, so the scan fails
/// with an I/O error naming the object instead of reading two versions.
#[test]
fn a_remote_object_replaced_after_listing_fails_the_scan() {
    use object_store::{ObjectStoreExt, PutPayload};
    use tailor::datasource::options::CorruptPolicy;
    use tailor::datasource::source::frame_error;
    let mut rng = Rng(32);
    let payloads: Vec<P> = (0..30).map(|_| random_payload(&mut rng, 7, 30)).collect();
    let (file, offsets) = file_of(&payloads);
    let rel = "org-mod-7/dt=2026-11-21/hour=00/t+0+0000000000.tsp";
    let mut same_size = file.clone();
    same_size[offsets[25] as usize + 9] ^= 0x40;
    let shorter = file[..offsets[20] as usize + 10].to_vec();
    let rt = rt();
    for replacement in [same_size, shorter] {
        for policy in [CorruptPolicy::Fail, CorruptPolicy::Skip] {
            let root = StoreRoot::open("memory:///in").unwrap();
            let at = root.child(rel);
            rt.block_on(root.store.put(&at, PutPayload::from(file.clone())))
                .unwrap();
            let (r, _) = rt.block_on(scan_after(&root, 4096, policy, || {
                futures::executor::block_on(
                    root.store.put(&at, PutPayload::from(replacement.clone())),
                )
                .unwrap();
            }));
            let e = r.expect_err("a replaced object fails the scan");
            assert!(frame_error(&e).is_none(), "not corruption: {e}");
            assert!(e.to_string().contains("t+0+0000000000.tsp"), "{e}");
            let job = tailor::job::JobError::DataFusion(e);
            assert_eq!(
                tailor::cli::exit_code(&job),
                tailor::cli::EXIT_IO,
                "{policy:?}: {job}"
            );
        }
    }
}

#[test]
fn a_file_gone_after_listing_is_an_io_error() {
    use tailor::datasource::options::CorruptPolicy;
    use tailor::datasource::source::frame_error;
    let mut rng = Rng(14);
    let (file, _) = file_of(&[random_payload(&mut rng, 7, 30)]);
    let tmp = tempdir();
    let path = put_file(&tmp, &file);
    let rt = rt();
    let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
    for policy in [CorruptPolicy::Fail, CorruptPolicy::Skip] {
        std::fs::write(&path, &file).unwrap();
        let (r, log) = rt.block_on(scan_after(&root, 1 << 30, policy, || {
            std::fs::remove_file(&path).unwrap()
        }));
        let e = r.expect_err("a vanished file fails the scan, whatever the policy");
        assert!(frame_error(&e).is_none(), "not corruption: {e}");
        assert!(e.to_string().contains("t+0+0000000000.tsp"), "{e}");
        assert_eq!(log.totals().corrupt_frames, 0);
        let job = tailor::job::JobError::DataFusion(e);
        assert_eq!(tailor::cli::exit_code(&job), tailor::cli::EXIT_IO, "{job}");
    }
}

fn query_args(input: &str, sql: &str) -> tailor::cli::query::QueryArgs {
    tailor::cli::query::QueryArgs {
        input: input.into(),
        shard: None,
        from: None,
        to: None,
        format: tailor::cli::query::OutputFormat::Csv,
        on_corrupt: tailor::cli::OnCorrupt::Fail,
        shard_map: None,
        target_partitions: Some(2),
        range_bytes: None,
        out: None,
        sql: sql.into(),
    }
}

#[test]
fn query_fails_on_a_corrupt_frame_at_a_range_boundary_with_its_real_reason() {
    use tailor::format::payload::ErrorKind;
    let mut rng = Rng(15);
    let mut payloads: Vec<P> = (0..12)
        .map(|_| random_payload(&mut rng, 7, 60))
        .filter(|p| p.ts.len() > 4)
        .collect();
    // Frame 0 holds one point: smaller than any other.
    payloads[0].ts.truncate(1);
    payloads[0].vals.truncate(1);
    payloads[0].meta.clear();
    let (mut file, offsets) = file_of(&payloads);
    // Frame 6's body replaced by frame 0's, zero-padded: the length prefix
    // and the chain are intact, the body is not one zstd frame.
    let (a, b) = (offsets[6] as usize, offsets[7] as usize);
    let small = offsets[1] as usize - 4;
    assert!(small < b - a - 4);
    let body0 = file[4..4 + small].to_vec();
    file[a + 4..a + 4 + small].copy_from_slice(&body0);
    file[a + 4 + small..b].fill(0);
    let tmp = tempdir();
    put_file(&tmp, &file);
    let input = tmp.path().to_str().unwrap().to_string();
    let rt = rt();
    // Ranges of offsets[6] bytes: frame 6 is where the first range hands over.
    for range in [offsets[6], offsets[6] - 1, 1 << 30] {
        let mut args = query_args(&input, "SELECT count(*) FROM payloads");
        args.range_bytes = Some(range.to_string());
        let e = rt
            .block_on(tailor::cli::query::main(args))
            .expect_err("the fail policy fails the query");
        assert_eq!(
            tailor::cli::exit_code(&e),
            tailor::cli::EXIT_DATA,
            "range {range}: {e}"
        );
        let tailor::job::JobError::DataFusion(d) = &e else {
            panic!("range {range}: {e}");
        };
        let fe = tailor::datasource::source::frame_error(d).expect("a frame error");
        assert_eq!(fe.offset(), offsets[6], "range {range}");
        assert!(
            matches!(fe.kind(), ErrorKind::BodyNotOneFrame { .. }),
            "range {range}: the real reason, not {:?}",
            fe.kind()
        );
    }
}

#[test]
fn query_flags_are_checked_before_anything_is_read() {
    // An input whose only file is corrupt: reading it would fail with 65.
    let tmp = tempdir();
    put_file(&tmp, b"garbage garbage garbage");
    let input = tmp.path().to_str().unwrap().to_string();
    let rt = rt();
    let sql = "SELECT count(*) FROM payloads";
    let mut bad = Vec::new();
    let mut a = query_args(&input, sql);
    a.shard = Some("org-mod-x".into());
    bad.push(("bad shard name", a));
    let mut a = query_args(&input, sql);
    a.shard = Some("org-mod-64".into());
    bad.push(("shard not in the map", a));
    let mut a = query_args(&input, sql);
    a.format = tailor::cli::query::OutputFormat::Parquet;
    bad.push(("parquet without --out", a));
    let mut a = query_args(&input, sql);
    a.range_bytes = Some("lots".into());
    bad.push(("bad range size", a));
    let mut a = query_args(&input, sql);
    a.from = Some(tailor::datasource::listing::Hour::parse("2026-11-21T05").unwrap());
    a.to = Some(tailor::datasource::listing::Hour::parse("2026-11-21T04").unwrap());
    bad.push(("--from after --to", a));
    let mut a = query_args("nosuchscheme://x/y", sql);
    a.input = "nosuchscheme://x/y".into();
    bad.push(("bad URL", a));
    for (what, args) in bad {
        let e = rt.block_on(tailor::cli::query::main(args)).expect_err(what);
        assert_eq!(
            tailor::cli::exit_code(&e),
            tailor::cli::EXIT_USAGE,
            "{what}: {e}"
        );
    }
    // The input itself is read only once the flags are fine.
    let e = rt
        .block_on(tailor::cli::query::main(query_args(&input, sql)))
        .unwrap_err();
    assert_eq!(tailor::cli::exit_code(&e), tailor::cli::EXIT_DATA, "{e}");
}

#[test]
fn query_under_skip_gives_the_same_rows_when_a_range_starts_inside_a_corrupt_body() {
    let mut rng = Rng(16);
    let payloads: Vec<P> = (0..8).map(|_| random_payload(&mut rng, 7, 60)).collect();
    let (file, offsets) = file_of(&payloads);
    // Frame 3 wrapped in a corrupt body: frame 0's body, 5000 zero bytes,
    // then frame 3 whole, which chains to frame 4. A read of the chain
    // skips the body by its length; a range starting in the zeros would
    // take frame 3 for a frame of the file.
    let (a, b) = (offsets[3] as usize, offsets[4] as usize);
    let damaged = [
        &file[..a],
        &crate::common::hidden_in_corrupt_body(&file[4..offsets[1] as usize], 5000, &file[a..b]),
        &file[b..],
    ]
    .concat();
    let tmp = tempdir();
    put_file(&tmp, &damaged);
    let input = tmp.path().to_str().unwrap().to_string();
    let rt = rt();
    let mut outputs = Vec::new();
    for range in [1u64 << 30, 1000, 333] {
        let out = tmp.path().join(format!("rows-{range}.csv"));
        let mut args = query_args(
            &input,
            "SELECT frame_offset, org_id, metric_id, n_points FROM payloads ORDER BY frame_offset",
        );
        args.range_bytes = Some(range.to_string());
        args.on_corrupt = tailor::cli::OnCorrupt::Skip;
        args.format = tailor::cli::query::OutputFormat::Csv;
        args.out = Some(out.clone());
        rt.block_on(tailor::cli::query::main(args)).unwrap();
        outputs.push(std::fs::read_to_string(&out).unwrap());
    }
    // Frames 0-2 and 4-7: the wrapped frame is not read, whatever the split.
    assert_eq!(outputs[0].lines().count(), 1 + 7, "{}", outputs[0]);
    assert_eq!(outputs[1], outputs[0]);
    assert_eq!(outputs[2], outputs[0]);
}

/// `query --out` writes one file of every row, whatever the format: CSV
/// with a header and JSON lines through DataFusion's sinks, Parquet
/// through arrow's writer.
#[test]
fn query_out_writes_every_row_as_csv_json_or_parquet() {
    let mut rng = Rng(41);
    let payloads: Vec<P> = (0..40).map(|_| random_payload(&mut rng, 7, 20)).collect();
    let (file, _) = file_of(&payloads);
    let tmp = tempdir();
    put_file(&tmp, &file);
    let input = tmp.path().to_str().unwrap().to_string();
    let rt = rt();
    let sql = "SELECT frame_offset, org_id, n_points FROM payloads ORDER BY frame_offset";
    let out = |format, name: &str| {
        let path = tmp.path().join(name);
        let mut args = query_args(&input, sql);
        args.format = format;
        args.out = Some(path.clone());
        rt.block_on(tailor::cli::query::main(args)).unwrap();
        path
    };
    use tailor::cli::query::OutputFormat;
    let csv = std::fs::read_to_string(out(OutputFormat::Csv, "rows.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some("frame_offset,org_id,n_points"));
    assert_eq!(csv.lines().count(), 1 + payloads.len());
    let json = std::fs::read_to_string(out(OutputFormat::Json, "rows.json")).unwrap();
    assert_eq!(json.lines().count(), payloads.len());
    assert!(
        json.starts_with("{\"frame_offset\":0,\"org_id\":7,"),
        "{json}"
    );
    let pq = std::fs::File::open(out(OutputFormat::Parquet, "rows.parquet")).unwrap();
    let rows: usize = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(pq)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(rows, payloads.len());
}
