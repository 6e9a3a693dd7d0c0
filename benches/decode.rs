//! Payload decode: check + zstd + in-place validation, in MB/s of compressed
//! input and points/s, next to a plain zstd decompression of the same frames
//! into one reused buffer (the floor).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tailor::format::payload::{
    Decoder, Kind, PayloadSpec, PayloadWriter, check_body, parse_frame_prefix, parse_payload,
};

fn frames() -> (Vec<u8>, Vec<(usize, usize)>, u64) {
    let mut out = Vec::new();
    let mut w = PayloadWriter::new(1);
    let mut spans = Vec::new();
    let mut points = 0;
    let mut x = 1u64;
    for i in 0..2000 {
        let n = 64 + (i % 7) * 100;
        let ts: Vec<i64> = (0..n as i64)
            .map(|k| 1_700_000_000_000 + k * 10_000)
            .collect();
        let vals: Vec<u64> = (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (100.0 + (x >> 40) as f64 / 1e6).to_bits()
            })
            .collect();
        let start = out.len();
        w.write_frame(
            &PayloadSpec {
                version: 2,
                org_id: 7,
                metric_id: i as u64,
                kind: Kind::Gauge,
                interval_s: 10,
                timestamps: &ts,
                values: &vals,
                metadata: "host:web-1,env:prod",
            },
            &mut out,
        );
        spans.push((start, out.len()));
        points += n as u64;
    }
    (out, spans, points)
}

fn bench(c: &mut Criterion) {
    let (file, spans, points) = frames();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(file.len() as u64));
    let mut buf = vec![0u64; tailor::format::payload::MAX_PAYLOAD_LEN / 8];
    g.bench_function("zstd_floor", |b| {
        let mut d = zstd_safe::DCtx::create();
        b.iter(|| {
            for &(s, e) in &spans {
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, buf.len() * 8)
                };
                d.decompress(dst, &file[s + 4..e]).unwrap();
            }
        })
    });
    g.bench_function("payload_decode", |b| {
        let mut d = Decoder::new();
        b.iter(|| {
            let mut n = 0u64;
            for &(s, e) in &spans {
                let len =
                    parse_frame_prefix(&file[s..e], s as u64, (e - s) as u64).unwrap() as usize;
                let body = &file[s + 4..s + 4 + len];
                let info = check_body(body, s as u64).unwrap();
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, info.content_size)
                };
                d.decompress_into(body, info, dst, s as u64).unwrap();
                n += parse_payload(dst, s as u64).unwrap().header.n_points as u64;
            }
            assert_eq!(n, points);
        })
    });
    g.finish();
    let mut g = c.benchmark_group("decode_points");
    g.throughput(Throughput::Elements(points));
    g.bench_function("payload_decode", |b| {
        let mut d = Decoder::new();
        b.iter(|| {
            for &(s, e) in &spans {
                let body = &file[s + 4..e];
                let info = check_body(body, s as u64).unwrap();
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, info.content_size)
                };
                d.decompress_into(body, info, dst, s as u64).unwrap();
                parse_payload(dst, s as u64).unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
