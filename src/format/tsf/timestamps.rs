//! Timestamp encodings.

use super::bits::{BitReader, BitWriter, Cur, put_varint, unzz, zz};
use super::codec;
use super::error::{Result, TsfError, corrupt};

/// How a timestamp encoding predicts each timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TsModel {
    /// Delta of delta (Gorilla).
    Dod,
    /// Delta minus the block's median delta `D`.
    Median,
    /// Steps and offset from a grid of pitch `D` that follows the points.
    Grid,
}

impl TsModel {
    pub(super) fn of(enc: u8) -> Self {
        match enc {
            codec::TS_DELTA_BITS | codec::TS_DELTA_VARINT => TsModel::Median,
            codec::TS_GRID_BITS | codec::TS_GRID_VARINT => TsModel::Grid,
            _ => TsModel::Dod,
        }
    }
}

/// Residual codes for timestamps (excluding the first timestamp, which is the
/// block's `min_ts` from the footer). `scratch` is reused for the median.
/// Returns `false` (and leaves `out` unspecified) when the model cannot
/// encode these timestamps: only the grid can fail, when a code would not
/// fit 64 bits.
pub(super) fn ts_codes(
    ts: &[i64],
    model: TsModel,
    scratch: &mut Vec<u64>,
    out: &mut Vec<u64>,
) -> bool {
    let d = match model {
        TsModel::Dod => 0,
        _ => median_delta(ts, scratch),
    };
    ts_codes_with(ts, model, d, out)
}

/// [`ts_codes`] with the block's median delta `d` already computed.
#[inline(always)]
pub(super) fn ts_codes_with(ts: &[i64], model: TsModel, d: i64, out: &mut Vec<u64>) -> bool {
    out.clear();
    match model {
        TsModel::Median => {
            out.push(zz(d));
            out.extend(
                ts.windows(2)
                    .map(|w| zz(w[1].wrapping_sub(w[0]).wrapping_sub(d))),
            );
            true
        }
        TsModel::Dod => {
            let mut prev = 0i64;
            out.extend(ts.windows(2).map(|w| {
                let delta = w[1].wrapping_sub(w[0]);
                let code = zz(delta.wrapping_sub(prev));
                prev = delta;
                code
            }));
            true
        }
        TsModel::Grid => grid_codes(ts, d, out),
    }
}

/// The lower median of the block's deltas taken as u64 (0 for one point).
#[inline(always)]
pub(super) fn median_delta(ts: &[i64], scratch: &mut Vec<u64>) -> i64 {
    if ts.len() < 2 {
        return 0;
    }
    // Usually most deltas are the series' interval, and a value held by
    // more than half of them is the median (its run in sorted order covers
    // the middle): found by a majority vote and a count, two passes without
    // the copy and selection below (which were 2% of the job's CPU).
    let deltas = || ts.windows(2).map(|w| w[1].wrapping_sub(w[0]) as u64);
    let (mut candidate, mut votes) = (0u64, 0usize);
    for x in deltas() {
        if votes == 0 {
            candidate = x;
        }
        votes = if x == candidate { votes + 1 } else { votes - 1 };
    }
    if deltas().filter(|&x| x == candidate).count() * 2 > ts.len() - 1 {
        return candidate as i64;
    }
    scratch.clear();
    scratch.extend(deltas());
    let k = (scratch.len() - 1) / 2;
    *scratch.select_nth_unstable(k).1 as i64
}

/// Grid codes (see `docs/output-format.md`, ts_enc 5 and 6): the first code
/// is `zz(D)`; then, for each further timestamp, with `g` the grid point of
/// the previous one (`t[0]` for the first), `m` the number of grid steps to
/// the grid point nearest `t` and `j = t - (g + m*D)`, the code
/// `zz(m - 1) * D + zz(j)`. A regular point is code 0, a late or early
/// point a small code, a skipped interval `2*D`.
fn grid_codes(ts: &[i64], d: i64, out: &mut Vec<u64>) -> bool {
    if d < 1 {
        return false;
    }
    out.push(zz(d));
    if grid_fast(ts, d) {
        let mut g = GridFast::new(ts[0], d);
        out.extend(ts[1..].iter().map(|&t| g.code(t)));
        return true;
    }
    let dd = i128::from(d);
    let half = dd / 2;
    let mut g = i128::from(ts[0]);
    for &t in &ts[1..] {
        let diff = i128::from(t) - g;
        let m = (diff + half).div_euclid(dd);
        let j = diff - m * dd;
        let (Ok(m1), Ok(j)) = (i64::try_from(m - 1), i64::try_from(j)) else {
            return false;
        };
        let Some(code) = zz(m1)
            .checked_mul(d as u64)
            .and_then(|q| q.checked_add(zz(j)))
        else {
            return false;
        };
        out.push(code);
        g += m * dd;
    }
    true
}

/// Whether the grid codes of `ts` can be computed in (wrapping) i64
/// arithmetic: a pitch of at most 2^61 and every gap under 2^62, so that
/// every difference and code fits.
fn grid_fast(ts: &[i64], d: i64) -> bool {
    (1..=1 << 61).contains(&d)
        && ts
            .windows(2)
            .all(|w| w[1].checked_sub(w[0]).is_some_and(|x| x < 1 << 62))
}

/// The grid model in i64 arithmetic, valid when [`grid_fast`] holds. The
/// grid point may lie just outside i64 near its ends: it is kept modulo
/// 2^64, which the true differences fit.
struct GridFast {
    g: i64,
    d: i64,
    half: i64,
}

impl GridFast {
    fn new(t0: i64, d: i64) -> Self {
        GridFast {
            g: t0,
            d,
            half: d / 2,
        }
    }

    #[inline]
    fn code(&mut self, t: i64) -> u64 {
        let diff = t.wrapping_sub(self.g);
        // The common case, one step with a small offset, needs no division.
        let m = if diff >= self.d - self.half && diff < 2 * self.d - self.half {
            1
        } else {
            (diff + self.half).div_euclid(self.d)
        };
        let j = diff - m * self.d;
        self.g = self.g.wrapping_add(m * self.d);
        zz(m - 1) * self.d as u64 + zz(j)
    }
}

/// Bits of the bit packing and bytes of the varint packing, for a code of
/// bit width `w` (0..=64).
const CODE_COST: [(u8, u8); 65] = {
    let mut t = [(0u8, 0u8); 65];
    let mut w: usize = 0;
    while w <= 64 {
        let bits = match w {
            0 => 1,
            1..=6 => 8,
            7..=13 => 16,
            14..=20 => 24,
            21..=32 => 37,
            _ => 69,
        };
        let varint = if w == 0 { 1 } else { w.div_ceil(7) };
        t[w] = (bits as u8, varint as u8);
        w += 1;
    }
    t
};

/// The exact plain sizes of the six bit / varint timestamp encodings,
/// computed in one pass without writing codes: `[(bits, varint bytes)]`
/// for delta of delta, median delta and grid (`None` when the grid
/// cannot encode the block). When the grid can, `codes` holds its codes
/// (those of [`ts_codes_with`]): the writer then need not compute them
/// again (that second pass was 2.5% of the job's CPU).
#[inline(always)]
pub(super) fn ts_costs(ts: &[i64], d: i64, codes: &mut Vec<u64>) -> [Option<(u64, usize)>; 3] {
    let mut bits = [0u64; 3];
    let mut varints = [0usize; 3];
    // Adds the cost of `n` codes `z` to model `i`.
    let mut add = |i: usize, z: u64, n: usize| {
        let (b, v) = CODE_COST[(64 - z.leading_zeros()) as usize];
        bits[i] += u64::from(b) * n as u64;
        varints[i] += usize::from(v) * n;
    };
    add(1, zz(d), 1);
    let fast = grid_fast(ts, d);
    codes.clear();
    if fast {
        add(2, zz(d), 1);
        codes.push(zz(d));
    }
    let mut grid = GridFast::new(ts[0], d.max(1));
    let mut prev = 0i64;
    let mut i = 0;
    while i + 1 < ts.len() {
        let delta = ts[i + 1].wrapping_sub(ts[i]);
        if delta == d && prev == d && (!fast || grid.g == ts[i]) {
            // A run of regular points: code 0 in every model (the delta
            // repeats, it is the median, and the grid point is the previous
            // point), counted at once, as the loop below would one by one.
            let mut j = i + 1;
            while j + 1 < ts.len() && ts[j + 1].wrapping_sub(ts[j]) == d {
                j += 1;
            }
            let run = j - i;
            add(0, 0, run);
            add(1, 0, run);
            if fast {
                add(2, 0, run);
                codes.resize(codes.len() + run, 0);
                grid.g = ts[j];
            }
            i = j;
            continue;
        }
        add(0, zz(delta.wrapping_sub(prev)), 1);
        prev = delta;
        add(1, zz(delta.wrapping_sub(d)), 1);
        if fast {
            let z = grid.code(ts[i + 1]);
            add(2, z, 1);
            codes.push(z);
        }
        i += 1;
    }
    let grid = if fast {
        Some((bits[2], varints[2]))
    } else {
        grid_codes(ts, d, codes).then(|| {
            codes.iter().fold((0u64, 0usize), |(b, v), &z| {
                let (cb, cv) = CODE_COST[(64 - z.leading_zeros()) as usize];
                (b + u64::from(cb), v + usize::from(cv))
            })
        })
    };
    [
        Some((bits[0], varints[0])),
        Some((bits[1], varints[1])),
        grid,
    ]
}

/// The bucket of the timestamp bit packing that holds `z`: its prefix
/// length, prefix bits and payload width.
#[inline]
fn bucket(z: u64) -> (u32, u64, u32) {
    const BUCKETS: [(u32, u64, u32); 6] = [
        (1, 0b0, 0),
        (2, 0b10, 6),
        (3, 0b110, 13),
        (4, 0b1110, 20),
        (5, 0b11110, 32),
        (5, 0b11111, 64),
    ];
    let width = 64 - z.leading_zeros();
    let i = match width {
        0 => 0,
        1..=6 => 1,
        7..=13 => 2,
        14..=20 => 3,
        21..=32 => 4,
        _ => 5,
    };
    BUCKETS[i]
}

#[inline]
fn pack_bucket(bw: &mut BitWriter, z: u64) {
    let (p, prefix, w) = bucket(z);
    if w <= 32 {
        bw.write((prefix << w) | z, p + w);
    } else {
        bw.write(prefix, p);
        bw.write(z, w);
    }
}

#[inline]
fn unpack_bucket(br: &mut BitReader<'_>) -> Result<u64> {
    const WIDTHS: [u32; 6] = [0, 6, 13, 20, 32, 64];
    let mut ones = 0usize;
    while ones < 5 && br.read(1)? == 1 {
        ones += 1;
    }
    br.read(WIDTHS[ones])
}

/// Whether a timestamp encoding packs its codes as bits (else varints).
pub(super) fn ts_bits(enc: u8) -> bool {
    matches!(
        enc,
        codec::TS_DOD_BITS | codec::TS_DELTA_BITS | codec::TS_GRID_BITS
    )
}

/// Packs timestamp codes as bit buckets or varints into `out`.
#[inline(always)]
pub(super) fn pack_codes(bits: bool, codes: &[u64], out: &mut Vec<u8>) {
    out.clear();
    if bits {
        let mut bw = BitWriter {
            buf: std::mem::take(out),
            ..Default::default()
        };
        // Runs of code 0 (a regular point: one 0 bit each) are written up
        // to 64 at a time, the same bits as one by one: most codes of a
        // regular series are 0, and this packing was 5% of the job's CPU.
        let mut i = 0;
        while i < codes.len() {
            if codes[i] == 0 {
                let run = codes[i..].iter().take(64).take_while(|&&z| z == 0).count();
                bw.write(0, run as u32);
                i += run;
            } else {
                pack_bucket(&mut bw, codes[i]);
                i += 1;
            }
        }
        *out = bw.finish();
    } else {
        for &z in codes {
            put_varint(out, z);
        }
    }
}

pub(super) fn encode_ts(
    enc: u8,
    ts: &[i64],
    scratch: &mut Vec<u64>,
    codes: &mut Vec<u64>,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    if enc == codec::TS_RAW {
        for t in ts {
            out.extend_from_slice(&t.to_le_bytes());
        }
        return true;
    }
    if !ts_codes(ts, TsModel::of(enc), scratch, codes) {
        return false;
    }
    pack_codes(ts_bits(enc), codes, out);
    true
}

pub(super) fn decode_ts(
    enc: u8,
    data: &[u8],
    n: usize,
    first: i64,
    base: u64,
    out: &mut Vec<i64>,
) -> Result<()> {
    if enc == codec::TS_RAW {
        if data.len() as u64 != (n as u64) * 8 {
            return Err(TsfError::CountMismatch {
                offset: base,
                what: "raw timestamp stream length",
                expected: (n as u64) * 8,
                found: data.len() as u64,
            });
        }
        out.extend(
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))),
        );
        return Ok(());
    }
    let model = TsModel::of(enc);
    let bits = ts_bits(enc);
    let mut br = BitReader::new(data, base);
    let mut cur = Cur::new(data, base);
    let mut next = |bits: bool| -> Result<u64> {
        if bits {
            unpack_bucket(&mut br)
        } else {
            cur.varint()
        }
    };
    let d = if model == TsModel::Dod {
        0
    } else {
        unzz(next(bits)?)
    };
    if model == TsModel::Grid && d < 1 {
        return Err(corrupt(base, "grid pitch below 1"));
    }
    let mut t = first;
    let mut g = first;
    let mut prev_delta = 0i64;
    out.push(t);
    for _ in 1..n {
        let code = next(bits)?;
        t = match model {
            TsModel::Dod => {
                prev_delta = prev_delta.wrapping_add(unzz(code));
                t.wrapping_add(prev_delta)
            }
            TsModel::Median => t.wrapping_add(d.wrapping_add(unzz(code))),
            TsModel::Grid => {
                let (q, r) = (code / d as u64, code % d as u64);
                let m = unzz(q).wrapping_add(1);
                g = g.wrapping_add(m.wrapping_mul(d));
                g.wrapping_add(unzz(r))
            }
        };
        out.push(t);
    }
    if bits {
        br.expect_end()
    } else {
        cur.expect_end("trailing bytes after timestamp varints")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tsf::block::{BlockEntry, Encoder, decode_block};
    use crate::format::tsf::test_util::{Rng, random_series};

    /// `ts_costs` as it was written first: every code computed and costed.
    fn ts_costs_one_by_one(ts: &[i64], d: i64) -> [Option<(u64, usize)>; 3] {
        let cost = |codes: &[u64]| {
            codes.iter().fold((0u64, 0usize), |(b, v), &z| {
                let (cb, cv) = CODE_COST[(64 - z.leading_zeros()) as usize];
                (b + u64::from(cb), v + usize::from(cv))
            })
        };
        let mut codes = Vec::new();
        let mut out = [None; 3];
        for (k, model) in [TsModel::Dod, TsModel::Median, TsModel::Grid]
            .into_iter()
            .enumerate()
        {
            let dm = if model == TsModel::Dod { 0 } else { d };
            if ts_codes_with(ts, model, dm, &mut codes) {
                out[k] = Some(cost(&codes));
            }
        }
        out
    }

    #[test]
    fn timestamp_costs_with_regular_runs_are_the_codes_costs() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut scratch = Vec::new();
        let mut codes = Vec::new();
        for case in 0..3000 {
            let n = rng.random_range(1..200);
            let step = [0i64, 1, 10, 1000][case % 4];
            let odd = rng.random_range(0..=100);
            let mut t = rng.random::<i64>() / 4;
            let ts: Vec<i64> = (0..n)
                .map(|_| {
                    t = t.wrapping_add(if rng.random_range(0..100) < odd {
                        step + rng.random_range(-3..20)
                    } else {
                        step
                    });
                    t
                })
                .collect();
            for d in [median_delta(&ts, &mut scratch), step, step + 1] {
                let costs = ts_costs(&ts, d, &mut codes);
                assert_eq!(
                    costs,
                    ts_costs_one_by_one(&ts, d),
                    "case {case} d {d}: {ts:?}"
                );
                // The grid's codes are left behind, runs included.
                let mut grid = Vec::new();
                if ts_codes_with(&ts, TsModel::Grid, d, &mut grid) {
                    assert_eq!(codes, grid, "case {case} d {d}: {ts:?}");
                }
            }
        }
    }

    #[test]
    fn zero_runs_pack_as_the_same_bits_one_by_one() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..2000 {
            let n = rng.random_range(0..300);
            let zeros = rng.random_range(0..=100);
            let codes: Vec<u64> = (0..n)
                .map(|_| {
                    if rng.random_range(0..100) < zeros {
                        0
                    } else {
                        rng.random::<u64>() >> rng.random_range(0..64)
                    }
                })
                .collect();
            let mut bw = BitWriter::default();
            for &z in &codes {
                pack_bucket(&mut bw, z);
            }
            let mut out = vec![1, 2, 3];
            pack_codes(true, &codes, &mut out);
            assert_eq!(out, bw.finish(), "{codes:?}");
        }
    }

    #[test]
    fn the_median_delta_is_the_lower_median_with_or_without_a_majority() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut scratch = Vec::new();
        for case in 0..3000 {
            let n = rng.random_range(1..60);
            let step = rng.random_range(1..4i64);
            let noisy = rng.random_range(0..=100);
            let mut t = rng.random::<i64>() / 2;
            let ts: Vec<i64> = (0..n)
                .map(|_| {
                    t = t.wrapping_add(if rng.random_range(0..100) < noisy {
                        rng.random_range(-5..9)
                    } else {
                        step
                    });
                    t
                })
                .collect();
            let mut d: Vec<u64> = ts
                .windows(2)
                .map(|w| w[1].wrapping_sub(w[0]) as u64)
                .collect();
            d.sort();
            let want = d
                .get(d.len().saturating_sub(1) / 2)
                .map_or(0, |&x| x as i64);
            assert_eq!(median_delta(&ts, &mut scratch), want, "case {case}: {ts:?}");
        }
    }

    #[test]
    fn grid_timestamps_cost_one_code_per_late_point() {
        // A 10 s grid with one late point and one skipped interval.
        let mut ts: Vec<i64> = (0..100).map(|k| 1_700_000_000_000 + k * 10_000).collect();
        ts[40] += 437;
        ts.remove(70);
        let mut codes = Vec::new();
        assert!(ts_codes(&ts, TsModel::Grid, &mut Vec::new(), &mut codes));
        let nonzero: Vec<u64> = codes[1..].iter().copied().filter(|&c| c != 0).collect();
        assert_eq!(codes[0], zz(10_000));
        assert_eq!(nonzero, vec![zz(437), zz(1) * 10_000]);
        // Delta of delta needs three codes for the late point, two for the gap.
        ts_codes(&ts, TsModel::Dod, &mut Vec::new(), &mut codes);
        assert_eq!(codes[1..].iter().filter(|&&c| c != 0).count(), 5);
        // Round trip through both packings, and the extremes.
        let mut enc = Encoder::new(3).unwrap();
        for ts in [
            ts.clone(),
            vec![i64::MIN, i64::MIN + 1, 0, i64::MAX - 1, i64::MAX],
            vec![i64::MIN, -5, i64::MAX],
            vec![-3, -2, 7, 8, 1 << 62],
        ] {
            let vals = vec![0u64; ts.len()];
            for c in [codec::TS_GRID_BITS, codec::TS_GRID_VARINT] {
                let Some(block) = enc.encode_with(c, &ts, &vals).unwrap() else {
                    continue;
                };
                let entry = BlockEntry {
                    offset: 0,
                    len: block.len() as u64,
                    n_points: ts.len() as u32,
                    min_ts: ts[0],
                    max_ts: ts[ts.len() - 1],
                    crc: crc32c::crc32c(&block),
                    codec: c,
                };
                let (mut rt, mut rv) = (Vec::new(), Vec::new());
                decode_block(&entry, &block, &mut rt, &mut rv).unwrap();
                assert_eq!(rt, ts);
            }
        }
    }

    #[test]
    fn timestamp_costs_are_the_packed_sizes() {
        let mut rng = Rng(11);
        let mut inputs: Vec<Vec<i64>> = (0..200)
            .map(|i| random_series(&mut rng, [1, 2, 3, 17, 300, 4096][i % 6]).0)
            .collect();
        inputs.push(vec![i64::MIN, i64::MIN + 1, 0, i64::MAX - 1, i64::MAX]);
        inputs.push(vec![i64::MIN, -5, i64::MAX]);
        inputs.push(vec![i64::MAX - 3, i64::MAX]);
        let (mut scratch, mut codes, mut out) = (Vec::new(), Vec::new(), Vec::new());
        for ts in &inputs {
            let d = median_delta(ts, &mut scratch);
            let costs = ts_costs(ts, d, &mut codes);
            let grid = costs[2].is_some().then(|| codes.clone());
            for (i, model) in [TsModel::Dod, TsModel::Median, TsModel::Grid]
                .into_iter()
                .enumerate()
            {
                let ok = ts_codes(ts, model, &mut scratch, &mut codes);
                assert_eq!(ok, costs[i].is_some(), "{model:?}");
                let Some((bits, varints)) = costs[i] else {
                    continue;
                };
                if model == TsModel::Grid {
                    assert_eq!(grid.as_ref(), Some(&codes), "grid codes left {ts:?}");
                }
                pack_codes(true, &codes, &mut out);
                assert_eq!(out.len() as u64, bits.div_ceil(8), "{model:?} bits {ts:?}");
                pack_codes(false, &codes, &mut out);
                assert_eq!(out.len(), varints, "{model:?} varints");
            }
        }
    }
}
