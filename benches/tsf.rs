//! The output format: series encode and decode in points/s, and bytes/point,
//! on gauge-like, counter-like and constant series.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tailor::format::tsf::{FileReader, FileWriter, SeriesHeader, WriterOptions};

fn series(n_series: usize, n: usize) -> Vec<(Vec<i64>, Vec<u64>)> {
    let mut x = 3u64;
    (0..n_series)
        .map(|s| {
            let mut t = 1_700_000_000_000i64;
            let mut v = 100.0f64;
            let mut ts = Vec::with_capacity(n);
            let mut vals = Vec::with_capacity(n);
            for k in 0..n {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                t += 10_000
                    + if x.is_multiple_of(10) {
                        (x >> 50) as i64 % 500
                    } else {
                        0
                    };
                ts.push(t);
                vals.push(match s % 3 {
                    0 => {
                        v += ((x >> 33) as f64 / (1u64 << 31) as f64) - 0.5;
                        ((v * 100.0).round() / 100.0).to_bits()
                    }
                    1 => ((k * 3) as f64).to_bits(),
                    _ => 42.0f64.to_bits(),
                });
            }
            (ts, vals)
        })
        .collect()
}

fn encode(data: &[(Vec<i64>, Vec<u64>)]) -> Vec<u8> {
    let mut w = FileWriter::new(Vec::new(), WriterOptions::default()).unwrap();
    for (i, (ts, vals)) in data.iter().enumerate() {
        w.add_series(
            &SeriesHeader {
                org_id: 1,
                metric_id: i as u64,
                kind: 0,
                interval_s: 10,
                metadata: "host:web-1",
            },
            ts,
            vals,
        )
        .unwrap();
    }
    w.finish().unwrap().0
}

fn bench(c: &mut Criterion) {
    let data = series(60, 20_000);
    let points: u64 = data.iter().map(|s| s.0.len() as u64).sum();
    let file = encode(&data);
    eprintln!("tsf: {:.3} bytes/point", file.len() as f64 / points as f64);
    let mut g = c.benchmark_group("tsf");
    g.throughput(Throughput::Elements(points));
    g.sample_size(10);
    g.bench_function("encode", |b| b.iter(|| encode(&data)));
    g.bench_function("decode", |b| {
        b.iter(|| {
            let r = FileReader::open(&file).unwrap();
            let mut n = 0;
            for e in r.footer().series() {
                n += r.read_series(e).unwrap().0.len();
            }
            assert_eq!(n as u64, points);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
