//! Range sync: finding the first frame of a range by the zstd-magic + chain
//! rule, in frames/s, and walking a whole range's frames.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tailor::datasource::reader::{FrameCursor, ObjectBytes, Step};
use tailor::format::payload::{Kind, PayloadSpec, PayloadWriter, Sync, find_frame_start};

fn file() -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    let mut w = PayloadWriter::new(1);
    let mut x = 7u64;
    let mut frames = 0;
    for i in 0..3000 {
        let n = 16 + i % 200;
        let ts: Vec<i64> = (0..n as i64).collect();
        let vals: Vec<u64> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
            .collect();
        w.write_frame(
            &PayloadSpec {
                version: 1,
                org_id: 1,
                metric_id: i as u64,
                kind: Kind::Gauge,
                interval_s: 0,
                timestamps: &ts,
                values: &vals,
                metadata: "",
            },
            &mut out,
        );
        frames += 1;
    }
    (out, frames)
}

fn bench(c: &mut Criterion) {
    let (f, frames) = file();
    let len = f.len() as u64;
    let starts: Vec<u64> = (0..1000).map(|i| i * (len / 1000)).collect();
    let mut g = c.benchmark_group("sync");
    g.throughput(Throughput::Elements(starts.len() as u64));
    g.bench_function("find_frame_start", |b| {
        b.iter(|| {
            for &s in &starts {
                let r = find_frame_start(&f[s as usize..], s, s, len, len);
                assert!(matches!(r, Sync::Found(_) | Sync::None));
            }
        })
    });
    g.finish();
    let mut g = c.benchmark_group("walk");
    g.throughput(Throughput::Elements(frames));
    let bytes = Bytes::from(f.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    g.bench_function("frame_cursor_mmap", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut c =
                    FrameCursor::new(ObjectBytes::Mapped(bytes.clone()), len, 0..len, false);
                let mut n = 0;
                while let Some(Step::Frame(_)) = c.next().await.unwrap() {
                    n += 1;
                }
                assert_eq!(n, frames);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
