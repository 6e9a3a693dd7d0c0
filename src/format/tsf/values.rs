//! Value encodings and zstd sections.

use super::bits::{BitReader, BitWriter, Cur, unzz, varint_len, zz};
use super::codec;
use super::error::{Result, TsfError, corrupt};

const MAX_DECIMALS: u8 = 15;
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
const TWO_POW_53: f64 = 9_007_199_254_740_992.0;
const TWO_POW_52: f64 = 4_503_599_627_370_496.0;

fn gorilla_encode(vals: &[u64], out: &mut Vec<u8>) {
    let mut bw = BitWriter {
        buf: std::mem::take(out),
        ..Default::default()
    };
    if let Some((&first, rest)) = vals.split_first() {
        bw.write(first, 64);
        let mut prev = first;
        let mut win: Option<(u32, u32)> = None;
        for &v in rest {
            let x = v ^ prev;
            prev = v;
            if x == 0 {
                bw.write(0, 1);
                continue;
            }
            bw.write(1, 1);
            let lz = x.leading_zeros().min(31);
            let tz = x.trailing_zeros();
            if let Some((plz, ptz)) = win
                && lz >= plz
                && tz >= ptz
            {
                bw.write(0, 1);
                bw.write(x >> ptz, 64 - plz - ptz);
            } else {
                let sig = 64 - lz - tz;
                bw.write(1, 1);
                bw.write(u64::from(lz), 5);
                bw.write(u64::from(sig - 1), 6);
                bw.write(x >> tz, sig);
                win = Some((lz, tz));
            }
        }
    }
    *out = bw.finish();
}

fn gorilla_decode(data: &[u8], n: usize, base: u64, out: &mut Vec<u64>) -> Result<()> {
    let mut br = BitReader::new(data, base);
    if n == 0 {
        return br.expect_end();
    }
    let mut prev = br.read(64)?;
    out.push(prev);
    let mut win: Option<(u32, u32)> = None;
    for _ in 1..n {
        if br.read(1)? == 1 {
            let x = if br.read(1)? == 0 {
                let Some((plz, ptz)) = win else {
                    return Err(corrupt(base, "gorilla window reused before being set"));
                };
                br.read(64 - plz - ptz)? << ptz
            } else {
                let lz = br.read(5)? as u32;
                let sig = br.read(6)? as u32 + 1;
                if lz + sig > 64 {
                    return Err(corrupt(base, "gorilla window exceeds 64 bits"));
                }
                let tz = 64 - lz - sig;
                win = Some((lz, tz));
                br.read(sig)? << tz
            };
            prev ^= x;
        }
        out.push(prev);
    }
    br.expect_end()
}

fn shuffle_encode(words: impl ExactSizeIterator<Item = u64>, out: &mut Vec<u8>) {
    let n = words.len();
    out.clear();
    out.resize(n * 8, 0);
    for (i, w) in words.enumerate() {
        for (k, b) in w.to_le_bytes().into_iter().enumerate() {
            out[k * n + i] = b;
        }
    }
}

fn shuffle_decode(data: &[u8], n: usize, base: u64) -> Result<impl Iterator<Item = u64> + '_> {
    if data.len() as u64 != (n as u64) * 8 {
        return Err(TsfError::CountMismatch {
            offset: base,
            what: "shuffled value stream length",
            expected: (n as u64) * 8,
            found: data.len() as u64,
        });
    }
    Ok((0..n).map(move |i| {
        let mut b = [0u8; 8];
        for (k, byte) in b.iter_mut().enumerate() {
            *byte = data[k * n + i];
        }
        u64::from_le_bytes(b)
    }))
}

/// The parameters of a decimal value stream: `d` digits and divisor `q`;
/// a regular value is `(k / 10^d) / q` (`q = 1`: no division).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DecimalParams {
    pub(super) d: u8,
    pub(super) q: u8,
}

/// Flag in the decimal stream's first byte: a divisor byte follows.
const DECIMAL_DIVIDED: u8 = 0x80;

/// `Some(i)` if `f64::from_bits(v) == (i / 10^d) / q` bit for bit (no
/// division when `q == 1`), `|i| < 2^53`.
fn decimal_exact(v: u64, p: DecimalParams) -> Option<i64> {
    let f = f64::from_bits(v);
    if !f.is_finite() {
        return None;
    }
    let scale = POW10[usize::from(p.d)];
    let q = f64::from(p.q);
    let s = if p.q == 1 { f * scale } else { f * q * scale };
    if s.abs() >= TWO_POW_53 {
        return None;
    }
    // Round half away from zero without a libm call; the check below
    // decides whether `i` represents `v`.
    let i = if s.abs() >= TWO_POW_52 {
        s as i64 // already an integer
    } else {
        (s + 0.5f64.copysign(s)) as i64
    };
    (decimal_value(i, scale, p.q) == v).then_some(i)
}

/// The bits of regular decimal value `k`: `(k / scale) / q`.
#[inline]
fn decimal_value(k: i64, scale: f64, q: u8) -> u64 {
    let f = (k as f64) / scale;
    if q == 1 {
        f.to_bits()
    } else {
        (f / f64::from(q)).to_bits()
    }
}

/// Writes the decimal stream with parameters `p`; returns the number of
/// exceptions (values written as raw bits).
pub(super) fn decimal_encode_with(vals: &[u64], p: DecimalParams, out: &mut Vec<u8>) -> usize {
    decimal_encode_upto(vals, p, usize::MAX, usize::MAX, out).unwrap_or(usize::MAX)
}

/// [`decimal_encode_with`], giving up (`None`, `out` incomplete) as soon
/// as more than `max_exceptions` values are exceptions or the stream is
/// `max_len` bytes long: the block encoder never writes a decimal stream
/// of more than a quarter exceptions, nor a second one that is not
/// shorter than the first, so it need not finish them (a block of
/// arbitrary doubles stops after a quarter of its values).
#[inline(always)]
pub(super) fn decimal_encode_upto(
    vals: &[u64],
    p: DecimalParams,
    max_exceptions: usize,
    max_len: usize,
    out: &mut Vec<u8>,
) -> Option<usize> {
    out.clear();
    if p.q == 1 {
        out.push(p.d);
    } else {
        out.push(p.d | DECIMAL_DIVIDED);
        out.push(p.q);
    }
    // Written by index into room for the longest stream (a token is at
    // most 8 bytes: |i| < 2^53; an exception 9), then cut to length. The
    // values go a chunk at a time in two passes: the first finds every
    // value's integer without a branch, so the divisions that check them
    // overlap (a division's latency was half of this function's time when
    // each value was checked and written in turn); the second writes the
    // tokens, each varint as one 8-byte store.
    let start = out.len();
    out.resize(start + vals.len() * 9, 0);
    let end = if p.q == 1 {
        decimal_tokens::<false>(vals, p, max_exceptions, max_len, out.as_mut_slice(), start)
    } else {
        decimal_tokens::<true>(vals, p, max_exceptions, max_len, out.as_mut_slice(), start)
    };
    let (o, exceptions) = end?;
    out.truncate(o);
    Some(exceptions)
}

/// The tokens of [`decimal_encode_upto`] written into `buf` from `o`:
/// the end and the number of exceptions, or `None` when it gives up.
/// `DIVIDED` is `p.q != 1`, so that the common undivided stream has no
/// second division nor a branch on it.
#[inline(always)]
fn decimal_tokens<const DIVIDED: bool>(
    vals: &[u64],
    p: DecimalParams,
    max_exceptions: usize,
    max_len: usize,
    buf: &mut [u8],
    mut o: usize,
) -> Option<(usize, usize)> {
    let scale = POW10[usize::from(p.d)];
    let q = if DIVIDED { p.q } else { 1 };
    let mut prev = 0i64;
    let mut exceptions = 0;
    let mut ks = [0i64; DECIMAL_CHUNK];
    let mut regular = [false; DECIMAL_CHUNK];
    for chunk in vals.chunks(DECIMAL_CHUNK) {
        for ((&v, k), r) in chunk.iter().zip(&mut ks).zip(&mut regular) {
            (*k, *r) = decimal_integer(v, scale, q);
            exceptions += usize::from(!*r);
        }
        if exceptions > max_exceptions {
            return None;
        }
        for ((&v, &k), &r) in chunk.iter().zip(&ks).zip(&regular) {
            if r {
                o += put_token(buf, o, zz(k - prev) << 1);
                prev = k;
            } else {
                buf[o] = 1;
                buf[o + 1..o + 9].copy_from_slice(&v.to_le_bytes());
                o += 9;
            }
        }
        if o >= max_len {
            return None;
        }
    }
    (o < max_len).then_some((o, exceptions))
}

/// Values checked a pass at a time by [`decimal_encode_upto`]: small
/// enough to stay on the stack and to give up early on arbitrary doubles.
const DECIMAL_CHUNK: usize = 64;

/// [`decimal_exact`] without branches: the integer and whether it
/// represents `v` (the integer is meaningless when it does not). Two
/// forms on purpose: over a block's values the divisions of this one
/// overlap; in the digit and divisor search, where most checks fail
/// before the division, the branching one is cheaper (with it defined by
/// this one, the job took 5.7% more CPU in A/B).
#[inline(always)]
fn decimal_integer(v: u64, scale: f64, q: u8) -> (i64, bool) {
    let f = f64::from_bits(v);
    let s = if q == 1 {
        f * scale
    } else {
        f * f64::from(q) * scale
    };
    let a = s.abs();
    // Round half away from zero (see decimal_exact); `as` saturates, and
    // NaN becomes 0, so every input gives some integer.
    let r = if a >= TWO_POW_52 {
        s
    } else {
        s + 0.5f64.copysign(s)
    };
    let i = r as i64;
    let ok = f.is_finite() & (a < TWO_POW_53) & (decimal_value(i, scale, q) == v);
    (i, ok)
}

/// Writes varint `z` (< 2^56, so at most 8 bytes) at `buf[o..]` as one
/// 8-byte store (`buf` has room for it) and returns its length: the bytes
/// of [`put_varint`](super::bits::put_varint) without a branch per byte.
#[inline(always)]
fn put_token(buf: &mut [u8], o: usize, z: u64) -> usize {
    debug_assert!(z < 1 << 56);
    // The 7-bit groups of `z` spread into bytes, halving the groups' size
    // at each step: 28-bit halves, 14-bit quarters, 7-bit bytes.
    let x = (z & 0x0FFF_FFFF) | ((z & 0x00FF_FFFF_F000_0000) << 4);
    let x = (x & 0x0000_3FFF_0000_3FFF) | ((x & 0x0FFF_C000_0FFF_C000) << 2);
    let x = (x & 0x007F_007F_007F_007F) | ((x & 0x3F80_3F80_3F80_3F80) << 1);
    let len = varint_len(z);
    // The high bit of every byte but the last.
    let more = 0x8080_8080_8080_8080u64 & ((1u64 << (8 * (len - 1))) - 1);
    buf[o..o + 8].copy_from_slice(&(x | more).to_le_bytes());
    len
}

/// The smallest digit count at which `v` is regular with divisor `q`.
fn min_digits(v: u64, q: u8) -> Option<u8> {
    min_digits_upto(v, q, MAX_DECIMALS)
}

/// The smallest digit count up to `max` at which `v` is regular with
/// divisor `q`.
fn min_digits_upto(v: u64, q: u8, max: u8) -> Option<u8> {
    (0..=max).find(|&d| decimal_exact(v, DecimalParams { d, q }).is_some())
}

/// Most digits the writer tries with a divisor: more would rarely be
/// smaller than the XOR streams, and each try costs a division.
pub(super) const MAX_DIVIDED_DIGITS: u8 = 6;

/// The digit count a block's decimal stream uses with divisor `q`: the
/// largest minimal digit count among the first [`DECIMAL_SAMPLE`] values
/// that have one (values that need more digits, or are not finite, become
/// exceptions). `None` when none of them is a short decimal.
pub(super) fn decimal_digits(vals: &[u64], q: u8) -> Option<u8> {
    vals.iter()
        .take(DECIMAL_SAMPLE)
        .filter_map(|&v| min_digits(v, q))
        .max()
}

/// For blocks that are not short decimals: a divisor `q` in 2..=255 at
/// which the block's first [`DECIMAL_SAMPLE`] values are mostly short
/// decimals (at most [`MAX_DIVIDED_DIGITS`] digits) divided by `q` (rates
/// such as `count / 15` or `sum / 3`, written at full precision). A
/// divisor qualifies when the first finite non-zero sampled value and at
/// least three quarters of the sampled values are; the one at which most
/// sampled values are wins, then the one with the fewest digits, then the
/// smallest.
pub(super) fn decimal_divisor(vals: &[u64]) -> Option<DecimalParams> {
    let (sample, first) = divisor_sample(vals)?;
    // (regular sampled values, params)
    let mut best: Option<(usize, DecimalParams)> = None;
    for q in 2..=255u8 {
        let Some(d0) = min_digits_upto(first, q, MAX_DIVIDED_DIGITS) else {
            continue;
        };
        // The sampled values are tried only while `q` can still be taken:
        // its regular values can only fall from `n - missed` and its digit
        // count only rise from `d`. Once `q` can at best tie with the best
        // on regular values, it needs fewer digits than it, so a value is
        // tried only up to those (one that needs more loses either way).
        // (On blocks of rates the search tried every multiple of the true
        // divisor in full: 2% of the job's CPU.)
        let n = sample.len();
        let mut missed = 0;
        let mut d = d0;
        let can_win = |missed: usize, d: u8| beats(best, n, n - missed, d);
        let mut lost = !can_win(0, d);
        for &v in sample {
            if lost {
                break;
            }
            let tie_at_most = best.is_some_and(|(r, _)| n - missed == r);
            let max = match best {
                Some((_, b)) if tie_at_most => b.d - 1, // b.d > d >= 0
                _ => MAX_DIVIDED_DIGITS,
            };
            match min_digits_upto(v, q, max) {
                Some(dv) => d = d.max(dv),
                None if tie_at_most => lost = true,
                None => missed += 1,
            }
            lost = lost || !can_win(missed, d);
        }
        // Not lost: it still can, with every value tried, so it does.
        if !lost {
            best = Some((n - missed, DecimalParams { d, q }));
            if missed == 0 && d == 0 {
                break;
            }
        }
    }
    best.map(|(_, p)| p)
}

/// The values [`decimal_divisor`] samples, and the first finite non-zero
/// one among them (`None`: there is none).
fn divisor_sample(vals: &[u64]) -> Option<(&[u64], u64)> {
    let sample = &vals[..vals.len().min(DECIMAL_SAMPLE)];
    let &first = sample.iter().find(|&&v| {
        let f = f64::from_bits(v);
        f.is_finite() && f != 0.0
    })?;
    Some((sample, first))
}

/// Whether a divisor at which `regular` of the `n` sampled values are
/// regular, with `d` digits, qualifies (three quarters regular) and beats
/// `best`: more regular values, then fewer digits (on a tie the smaller
/// divisor, tried first, stays).
fn beats(best: Option<(usize, DecimalParams)>, n: usize, regular: usize, d: u8) -> bool {
    regular * 4 >= n * 3 && best.is_none_or(|(r, b)| regular > r || (regular == r && d < b.d))
}

/// Values sampled to choose the decimal digit count and divisor.
const DECIMAL_SAMPLE: usize = 16;

/// Writes the decimal stream (divisor 1); returns the number of exceptions.
fn decimal_encode(vals: &[u64], out: &mut Vec<u8>) -> usize {
    let d = decimal_digits(vals, 1).unwrap_or(0);
    decimal_encode_with(vals, DecimalParams { d, q: 1 }, out)
}

fn decimal_decode(data: &[u8], n: usize, base: u64, out: &mut Vec<u64>) -> Result<()> {
    let mut c = Cur::new(data, base);
    let b0 = c.u8()?;
    let d = b0 & !DECIMAL_DIVIDED;
    if d > MAX_DECIMALS {
        return Err(TsfError::ValueOutOfRange {
            offset: base,
            field: "decimal digits",
            found: u64::from(d),
            max: u64::from(MAX_DECIMALS),
        });
    }
    let q = if b0 & DECIMAL_DIVIDED != 0 {
        let off = c.off();
        let q = c.u8()?;
        if q < 2 {
            return Err(corrupt(off, "decimal divisor below 2"));
        }
        q
    } else {
        1
    };
    let scale = POW10[usize::from(d)];
    let mut prev = 0i64;
    for _ in 0..n {
        let off = c.off();
        let tok = c.varint()?;
        if tok & 1 == 0 {
            prev = prev.wrapping_add(unzz(tok >> 1));
            out.push(decimal_value(prev, scale, q));
        } else if tok == 1 {
            out.push(c.u64()?);
        } else {
            return Err(corrupt(off, "invalid decimal token"));
        }
    }
    c.expect_end("trailing bytes after decimal values")
}

pub(super) fn encode_vals(enc: u8, vals: &[u64], out: &mut Vec<u8>) {
    out.clear();
    match enc {
        codec::VAL_RAW => {
            for v in vals {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        codec::VAL_GORILLA => gorilla_encode(vals, out),
        codec::VAL_XOR_SHUFFLE => {
            let xs = vals
                .iter()
                .scan(0u64, |p, &v| Some(v ^ std::mem::replace(p, v)));
            shuffle_encode(xs.collect::<Vec<_>>().into_iter(), out)
        }
        codec::VAL_DECIMAL => {
            decimal_encode(vals, out);
        }
        _ => {
            let ds = vals.iter().scan(0u64, |p, &v| {
                Some(zz(v.wrapping_sub(std::mem::replace(p, v)) as i64))
            });
            shuffle_encode(ds.collect::<Vec<_>>().into_iter(), out)
        }
    }
}

pub(super) fn decode_vals(
    enc: u8,
    data: &[u8],
    n: usize,
    base: u64,
    out: &mut Vec<u64>,
) -> Result<()> {
    match enc {
        codec::VAL_RAW => {
            if data.len() as u64 != (n as u64) * 8 {
                return Err(TsfError::CountMismatch {
                    offset: base,
                    what: "raw value stream length",
                    expected: (n as u64) * 8,
                    found: data.len() as u64,
                });
            }
            out.extend(
                data.chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))),
            );
            Ok(())
        }
        codec::VAL_GORILLA => gorilla_decode(data, n, base, out),
        codec::VAL_XOR_SHUFFLE => {
            let mut prev = 0u64;
            out.extend(shuffle_decode(data, n, base)?.map(|x| {
                prev ^= x;
                prev
            }));
            Ok(())
        }
        codec::VAL_DECIMAL => decimal_decode(data, n, base, out),
        _ => {
            let mut prev = 0u64;
            out.extend(shuffle_decode(data, n, base)?.map(|z| {
                prev = prev.wrapping_add(unzz(z) as u64);
                prev
            }));
            Ok(())
        }
    }
}

/// Upper bound of any plain (uncompressed) stream for `n` points; used to
/// bound zstd decompression.
fn plain_stream_bound(n: usize) -> usize {
    16 * n + 64
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses a zstd section (at most the plain bound of `n` points) with
/// this thread's reused context.
pub(super) fn unzstd(data: &[u8], n: usize, base: u64) -> Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        // Exactly one zstd frame: the decompressor would also take several
        // frames back to back, or skippable ones.
        if zstd::zstd_safe::find_frame_compressed_size(data) != Ok(data.len()) {
            return Err(corrupt(base, "section is not exactly one zstd frame"));
        }
        let d = slot.as_mut().expect("set above");
        d.decompress(data, plain_stream_bound(n))
            .map_err(|_| corrupt(base, "zstd decompression failed"))
    })
}

#[cfg(test)]
mod tests {
    use super::super::bits::put_varint;
    use super::*;

    #[test]
    fn a_decimal_stream_given_up_is_one_that_would_have_been_refused() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for case in 0..2000 {
            let n = rng.random_range(0..200);
            // Short decimals with a share of arbitrary doubles.
            let odd = rng.random_range(0..=100);
            let vals: Vec<u64> = (0..n)
                .map(|_| {
                    if rng.random_range(0..100) < odd {
                        rng.random::<u64>()
                    } else {
                        (rng.random_range(-99_999i64..99_999) as f64 / 100.0).to_bits()
                    }
                })
                .collect();
            let p = DecimalParams {
                d: rng.random_range(0..4),
                q: if case % 3 == 0 {
                    rng.random_range(2..=255)
                } else {
                    1
                },
            };
            let mut full = Vec::new();
            let exceptions = decimal_encode_with(&vals, p, &mut full);
            let max_exceptions = rng.random_range(0..=n);
            let max_len = if case % 2 == 0 {
                usize::MAX
            } else {
                rng.random_range(0..=full.len() + 2)
            };
            let mut out = vec![7u8; 3];
            match decimal_encode_upto(&vals, p, max_exceptions, max_len, &mut out) {
                Some(e) => {
                    assert_eq!((e, &out), (exceptions, &full), "case {case}");
                    assert!(e <= max_exceptions && full.len() < max_len);
                }
                None => assert!(
                    exceptions > max_exceptions || full.len() >= max_len,
                    "case {case}"
                ),
            }
        }
    }

    /// [`decimal_divisor`] as first written: every divisor tried in full.
    fn divisor_reference(vals: &[u64]) -> Option<DecimalParams> {
        let (sample, first) = divisor_sample(vals)?;
        let mut best: Option<(usize, DecimalParams)> = None;
        for q in 2..=255u8 {
            let Some(d0) = min_digits_upto(first, q, MAX_DIVIDED_DIGITS) else {
                continue;
            };
            let mut regular = 0;
            let mut d = d0;
            for &v in sample {
                if let Some(dv) = min_digits_upto(v, q, MAX_DIVIDED_DIGITS) {
                    regular += 1;
                    d = d.max(dv);
                }
            }
            // The rule written out, not [`beats`]: the test checks it too.
            let better = best.is_none_or(|(r, b)| regular > r || (regular == r && d < b.d));
            if regular * 4 >= sample.len() * 3 && better {
                best = Some((regular, DecimalParams { d, q }));
                if regular == sample.len() && d == 0 {
                    break;
                }
            }
        }
        best.map(|(_, p)| p)
    }

    #[test]
    fn the_divisor_search_picks_what_trying_every_divisor_in_full_picks() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut divided = 0;
        for case in 0..3000 {
            // Blocks of decimals with up to 4 digits divided by one to three
            // divisors, some values off by a bit or arbitrary, of 1 to 20
            // values: ties on regular values and on digits are common.
            let qs: Vec<u8> = (0..rng.random_range(1..=3))
                .map(|_| [3, 6, 7, 12, 15, 60, 150, 255][rng.random_range(0..8)])
                .collect();
            let vals: Vec<u64> = (0..rng.random_range(1..=20))
                .map(|_| {
                    let d = rng.random_range(0..=4u8);
                    let i = rng.random_range(-100_000..100_000i64);
                    let q = qs[rng.random_range(0..qs.len())];
                    match rng.random_range(0..10) {
                        0 => rng.random::<u64>(),
                        1 => decimal_value(i, POW10[usize::from(d)], q) ^ 1,
                        2 => decimal_value(i, POW10[usize::from(d)], 1),
                        _ => decimal_value(i, POW10[usize::from(d)], q),
                    }
                })
                .collect();
            let want = divisor_reference(&vals);
            assert_eq!(decimal_divisor(&vals), want, "case {case}: {vals:?}");
            divided += usize::from(want.is_some());
        }
        assert!(divided > 1000, "{divided}");
    }

    /// The decimal stream as first written, value by value with
    /// [`decimal_exact`] and [`put_varint`]: the reference the two-pass
    /// writer must match byte for byte.
    fn decimal_reference(vals: &[u64], p: DecimalParams) -> (usize, Vec<u8>) {
        let mut out = if p.q == 1 {
            vec![p.d]
        } else {
            vec![p.d | DECIMAL_DIVIDED, p.q]
        };
        let (mut prev, mut exceptions) = (0i64, 0);
        for &v in vals {
            match decimal_exact(v, p) {
                Some(i) => {
                    put_varint(&mut out, zz(i - prev) << 1);
                    prev = i;
                }
                None => {
                    out.push(1);
                    out.extend_from_slice(&v.to_le_bytes());
                    exceptions += 1;
                }
            }
        }
        (exceptions, out)
    }

    #[test]
    fn the_decimal_stream_is_the_reference_byte_for_byte() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let edges = [
            0.0f64,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            -f64::MAX,
            TWO_POW_53,
            -TWO_POW_53,
            TWO_POW_53 - 1.0,
            TWO_POW_52 + 1.0,
            -(TWO_POW_52 + 0.5),
            0.5,
            -0.5,
            2.5,
            1e-15,
            0.1 + 0.2,
        ];
        for case in 0..3000 {
            let n = rng.random_range(0..300);
            let kind = rng.random_range(0..4);
            let digits = rng.random_range(0..=MAX_DECIMALS);
            let vals: Vec<u64> = (0..n)
                .map(|_| match (kind, rng.random_range(0..20)) {
                    (_, 0) => edges[rng.random_range(0..edges.len())].to_bits(),
                    (0, _) => rng.random::<u64>(),
                    (1, _) => {
                        let k = rng.random_range(-(1i64 << 53) + 1..1 << 53);
                        (k as f64 / POW10[usize::from(digits)]).to_bits()
                    }
                    (2, _) => {
                        let k = rng.random_range(-99_999i64..99_999);
                        (k as f64 / 100.0 / f64::from(rng.random_range(2..=255u8))).to_bits()
                    }
                    _ => (rng.random_range(-1e6..1e6f64)).to_bits(),
                })
                .collect();
            let p = DecimalParams {
                d: digits,
                q: if case % 3 == 0 {
                    rng.random_range(2..=255)
                } else {
                    1
                },
            };
            let mut out = vec![9u8; 5];
            let exceptions = decimal_encode_with(&vals, p, &mut out);
            assert_eq!(
                (exceptions, out),
                decimal_reference(&vals, p),
                "case {case}"
            );
        }
    }

    #[test]
    fn a_token_is_the_varint_of_its_value() {
        for bits in 0..56 {
            for z in [
                1u64 << bits,
                (1u64 << bits) - 1,
                (1 << bits) | 1,
                0x55 << bits >> 7,
            ] {
                let z = z & ((1 << 56) - 1);
                let mut want = Vec::new();
                put_varint(&mut want, z);
                let mut buf = [0xaau8; 12];
                let len = put_token(&mut buf, 2, z);
                assert_eq!(&buf[2..2 + len], want.as_slice(), "{z:#x}");
                assert_eq!(buf[..2], [0xaa; 2]);
            }
        }
    }

    #[test]
    fn a_zstd_section_is_exactly_one_frame() {
        let one = zstd::bulk::compress(&[1u8; 64], 3).unwrap();
        assert_eq!(unzstd(&one, 8, 0).unwrap(), vec![1u8; 64]);
        let two = [one.as_slice(), one.as_slice()].concat();
        let skippable = [one.as_slice(), &[0x50, 0x2A, 0x4D, 0x18, 0, 0, 0, 0]].concat();
        for (what, bad) in [("two frames", two), ("a skippable frame after", skippable)] {
            let e = unzstd(&bad, 16, 100).unwrap_err().to_string();
            assert!(e.contains("not exactly one zstd frame"), "{what}: {e}");
        }
    }

    #[test]
    fn divided_decimal_stream_decodes_and_rejects_bad_headers() {
        // d = 2, q = 3: 1234 -> (12.34 / 3), then +1 -> (12.35 / 3), then an
        // exception (NaN bits).
        let nan = f64::NAN.to_bits() | 5;
        let mut data = vec![0x82, 3];
        put_varint(&mut data, zz(1234) << 1);
        put_varint(&mut data, zz(1) << 1);
        data.push(1);
        data.extend_from_slice(&nan.to_le_bytes());
        let mut out = Vec::new();
        decimal_decode(&data, 3, 0, &mut out).unwrap();
        assert_eq!(
            out,
            [(12.34f64 / 3.0).to_bits(), (12.35f64 / 3.0).to_bits(), nan]
        );
        // A divisor below 2 and digits over 15 are corrupt.
        for (bad, want) in [
            (vec![0x82u8, 1, 0], "decimal divisor below 2"),
            (vec![0x82, 0, 0], "decimal divisor below 2"),
            (vec![0x90, 0], "decimal digits"),
            (vec![0xa0, 3, 0], "decimal digits"),
        ] {
            let mut out = Vec::new();
            let e = decimal_decode(&bad, 1, 0, &mut out).unwrap_err();
            assert!(e.to_string().contains(want), "{bad:02x?}: {e}");
        }
        // The writer's stream for the same values round-trips.
        let vals = [out_of(12.34 / 3.0), out_of(12.35 / 3.0), nan];
        let p = DecimalParams { d: 2, q: 3 };
        let mut enc = Vec::new();
        assert_eq!(decimal_encode_with(&vals, p, &mut enc), 1);
        assert_eq!(enc, data);
    }

    fn out_of(f: f64) -> u64 {
        f.to_bits()
    }
}
