//! Helpers shared by the TSF tests: a deterministic generator, random
//! series and files, and round-trip checks.

use super::error::Result;
use super::{FileReader, FileSummary, FileWriter, SeriesHeader, WriterOptions};

pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Approximately normal(0,1).
    pub(crate) fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.f64()).sum::<f64>() - 6.0
    }
}

pub(crate) type Series = (u64, u64, u8, u32, String, Vec<i64>, Vec<u64>);

pub(crate) fn write_file(series: &[Series], opts: WriterOptions) -> (Vec<u8>, FileSummary) {
    let mut w = FileWriter::new(Vec::new(), opts).unwrap();
    for (o, m, k, iv, meta, ts, vs) in series {
        let h = SeriesHeader {
            org_id: *o,
            metric_id: *m,
            kind: *k,
            interval_s: *iv,
            metadata: meta,
        };
        w.add_series(&h, ts, vs).unwrap();
    }
    let (bytes, s) = w.finish().unwrap();
    assert_eq!(s.bytes, bytes.len() as u64);
    (bytes, s)
}

pub(crate) fn special_values() -> Vec<u64> {
    vec![
        f64::NAN.to_bits(),
        0x7ff0_0000_0000_0001, // signalling NaN with payload
        0xfff8_dead_beef_0001, // negative quiet NaN with payload
        (-0.0f64).to_bits(),
        0.0f64.to_bits(),
        f64::INFINITY.to_bits(),
        f64::NEG_INFINITY.to_bits(),
        f64::MIN_POSITIVE.to_bits() - 1, // largest subnormal
        1,                               // smallest subnormal
        f64::MAX.to_bits(),
        f64::MIN.to_bits(),
        u64::MAX,
        0.1f64.to_bits(),
        (-1.5f64).to_bits(),
    ]
}

pub(crate) fn random_series(rng: &mut Rng, n: usize) -> (Vec<i64>, Vec<u64>) {
    let style = rng.below(7);
    let q = [3u8, 7, 15, 60][rng.below(4) as usize];
    let mut ts = Vec::with_capacity(n);
    let mut t: i64 = match rng.below(4) {
        0 => i64::MIN + rng.below(1000) as i64,
        1 => -(rng.below(1 << 40) as i64),
        _ => 1_700_000_000_000 + rng.below(1 << 30) as i64,
    };
    let step = [10_000i64, 15_000, 60_000, 1][rng.below(4) as usize];
    for _ in 0..n {
        ts.push(t);
        let inc = match rng.below(20) {
            0 => 1 + rng.below(1 << 40) as i64, // huge gap
            1 => 1 + rng.below(1000) as i64,
            _ => step + rng.below(50) as i64,
        };
        t = match t.checked_add(inc) {
            Some(x) => x,
            None => break,
        };
    }
    if rng.below(10) == 0 && ts.first().is_some_and(|&f| f >= 0) {
        // End exactly at i64::MAX.
        let shift = i64::MAX - *ts.last().unwrap();
        for x in &mut ts {
            *x += shift;
        }
    }
    let n = ts.len();
    let specials = special_values();
    let mut v = 100.0f64;
    let vals = (0..n)
        .map(|i| match style {
            0 => rng.next(),
            1 => {
                v += rng.normal();
                v.to_bits()
            }
            2 => ((i as u64 / 3) as f64).to_bits(),
            3 => specials[rng.below(specials.len() as u64) as usize],
            4 => 42.5f64.to_bits(),
            // A rate: a short decimal divided by a small integer.
            5 => {
                v += rng.normal();
                ((v * 100.0).round() / 100.0 / f64::from(q)).to_bits()
            }
            _ => {
                if rng.below(10) == 0 {
                    specials[rng.below(specials.len() as u64) as usize]
                } else {
                    v += rng.normal();
                    ((v * 100.0).round() / 100.0).to_bits()
                }
            }
        })
        .collect();
    (ts, vals)
}

pub(crate) fn random_file(seed: u64, nseries: usize) -> Vec<Series> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut org = rng.below(5);
    let mut metric = 0;
    for _ in 0..nseries {
        if rng.below(3) == 0 {
            org += 1 + rng.below(1 << 20);
            metric = rng.below(10);
        } else {
            metric += 1 + rng.below(1000);
        }
        let n = match rng.below(5) {
            0 => 1,
            1 => 2 + rng.below(10) as usize,
            2 => 5000 + rng.below(3000) as usize,
            _ => 10 + rng.below(500) as usize,
        };
        let (ts, vs) = random_series(&mut rng, n);
        let meta = "x".repeat(rng.below(40) as usize) + "é";
        out.push((
            org,
            metric,
            rng.below(3) as u8,
            rng.below(100) as u32,
            meta,
            ts,
            vs,
        ));
    }
    out
}

pub(crate) fn check_roundtrip(series: &[Series], bytes: &[u8]) {
    let r = FileReader::open(bytes).unwrap();
    assert_eq!(r.footer().series().len(), series.len());
    for (o, m, k, iv, meta, ts, vs) in series {
        let e = r.find(*o, *m).expect("series present");
        assert_eq!((e.kind, e.interval_s, &e.metadata), (*k, *iv, meta));
        assert_eq!(e.n_points, ts.len() as u64);
        assert_eq!((e.min_ts, e.max_ts), (ts[0], ts[ts.len() - 1]));
        let (rts, rvs) = r.read_series(e).unwrap();
        assert_eq!(&rts, ts);
        assert_eq!(&rvs, vs);
    }
}

pub(crate) fn small_file() -> (Vec<Series>, Vec<u8>) {
    let mut rng = Rng(11);
    let (ts, vs) = random_series(&mut rng, 300);
    let series = vec![(1, 2, 0, 10, "meta".to_string(), ts, vs)];
    let (bytes, _) = write_file(&series, WriterOptions::default());
    (series, bytes)
}

pub(crate) fn read_all(bytes: &[u8]) -> Result<usize> {
    let r = FileReader::open(bytes)?;
    let mut n = 0;
    for e in r.footer().series() {
        n += r.read_series(e)?.0.len();
    }
    Ok(n)
}
