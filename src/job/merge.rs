//! Merge: the third step of the shard job (see `run.rs`). The grouping
//! sort hands over payload rows ordered by series and then by input
//! position; [`SeriesMerger`] gathers one series' rows into a
//! [`SeriesInput`], and [`SeriesInput::merge`] applies the spec's rules
//! (points sorted by timestamp, one per timestamp, the last in input order
//! wins; kind, interval and metadata of the last payload) and counts what
//! it dropped.

use datafusion::arrow::buffer::ScalarBuffer;

/// One series, merged: sorted, deduplicated, with its last payload's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedSeries {
    pub org_id: u64,
    pub metric_id: u64,
    pub kind: u8,
    pub interval_s: u32,
    pub metadata: String,
    pub timestamps: Vec<i64>,
    pub values: Vec<u64>,
}

/// Counts of what merging dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MergeCounts {
    pub input_points: u64,
    /// Points dropped because a later point of the series had the same timestamp.
    pub duplicates_dropped: u64,
    /// Of those, points whose value bits differed from the winner's.
    pub conflicting_duplicates: u64,
}

/// A run of one payload's points, in place in a decode buffer (the
/// buffers are reference-counted: the chunk keeps its slab alive).
#[derive(Debug, Clone, PartialEq)]
pub struct PointChunk {
    pub ts: ScalarBuffer<i64>,
    /// Value bits.
    pub vals: ScalarBuffer<u64>,
}

/// One series' points as they arrived, in input order, with the metadata
/// of its last payload: what [`SeriesInput::merge`] turns into a
/// [`MergedSeries`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesInput {
    pub org_id: u64,
    pub metric_id: u64,
    pub kind: u8,
    pub interval_s: u32,
    pub metadata: String,
    /// Payload chunks in input order, still in their decode buffers (the
    /// job's grouping); their points come before `points`.
    pub chunks: Vec<PointChunk>,
    /// (timestamp, value bits) in input order.
    pub points: Vec<(i64, u64)>,
}

/// Buffers a thread reuses from series to series while merging (so that
/// merging allocates nothing in the steady state).
#[derive(Debug, Default)]
pub struct MergeBuffers {
    points: Vec<(i64, u64)>,
    /// The chunks' spans and a cluster's chunks (`merge_chunks`).
    spans: Vec<Span>,
    cluster: Vec<u32>,
    /// The merged series' timestamps and value bits.
    pub timestamps: Vec<i64>,
    pub values: Vec<u64>,
}

impl SeriesInput {
    /// Applies the spec's rules: points sorted by timestamp, one point per
    /// timestamp, the last in input order wins. A pure function of the
    /// series, so series merge on any thread.
    pub fn merge(self) -> (MergedSeries, MergeCounts) {
        let mut bufs = MergeBuffers::default();
        let (mut merged, counts) = self.merge_into(&mut bufs);
        merged.timestamps = bufs.timestamps;
        merged.values = bufs.values;
        (merged, counts)
    }

    /// [`Self::merge`] into `bufs.timestamps` and `bufs.values` (replaced);
    /// the series returned has the attributes and no points.
    pub fn merge_into(mut self, bufs: &mut MergeBuffers) -> (MergedSeries, MergeCounts) {
        let mut counts = MergeCounts {
            input_points: self.n_points() as u64,
            ..Default::default()
        };
        let merged = MergedSeries {
            org_id: self.org_id,
            metric_id: self.metric_id,
            kind: self.kind,
            interval_s: self.interval_s,
            metadata: std::mem::take(&mut self.metadata),
            timestamps: Vec::new(),
            values: Vec::new(),
        };
        bufs.timestamps.clear();
        bufs.values.clear();
        if self.points.is_empty() {
            merge_chunks(&self.chunks, bufs, &mut counts);
            return (merged, counts);
        }
        let points = &mut bufs.points;
        points.clear();
        for c in &self.chunks {
            points.extend(c.ts.iter().copied().zip(c.vals.iter().copied()));
        }
        points.extend_from_slice(&self.points);
        sort_dedup(points, &mut bufs.timestamps, &mut bufs.values, &mut counts);
        (merged, counts)
    }
}

impl SeriesInput {
    /// The points of the series, before merging.
    pub fn n_points(&self) -> usize {
        self.points.len() + self.chunks.iter().map(|c| c.ts.len()).sum::<usize>()
    }
}

/// A chunk's place in time: its smallest and largest timestamp, its index
/// in input order, and whether its timestamps increase strictly.
#[derive(Debug, Clone, Copy)]
struct Span {
    min: i64,
    max: i64,
    chunk: u32,
    strict: bool,
}

/// The merge of a series' chunks (the general path's result, bit for bit;
/// tested against the plain rules). Series arrive as payloads that each
/// cover a stretch of time, in order inside (most of them), but not in
/// time order across objects, and now and then overlapping: a re-delivered
/// payload, a late one. So the chunks are put in order of their first
/// timestamp, and chunks whose stretches overlap (or touch) are gathered
/// into clusters: clusters do not overlap, so the result is the clusters
/// in time order; a cluster of one chunk in order is copied as it is, a
/// cluster of a few chunks each in order is merged ([`merge_strict`]), any
/// other has its points sorted (stably, in input order) and deduplicated.
/// In the usual case (payloads in order, in time order) that is the
/// concatenation of the chunks. Hand-written, not one stable sort of every
/// point (which the largest cluster falls back to): sorting the points of
/// drifting series was the largest cost of merging, and most of their
/// points need no sort.
fn merge_chunks(chunks: &[PointChunk], bufs: &mut MergeBuffers, counts: &mut MergeCounts) {
    let spans = &mut bufs.spans;
    spans.clear();
    for (i, c) in chunks.iter().enumerate() {
        let ts: &[i64] = &c.ts;
        let (Some(&first), Some(&last)) = (ts.first(), ts.last()) else {
            continue;
        };
        let strict = ts.windows(2).all(|w| w[0] < w[1]);
        let (min, max) = if strict {
            (first, last)
        } else {
            let min = ts.iter().copied().min().unwrap_or(first);
            (min, ts.iter().copied().max().unwrap_or(last))
        };
        spans.push(Span {
            min,
            max,
            chunk: i as u32,
            strict,
        });
    }
    spans.sort_unstable_by_key(|s| (s.min, s.chunk));
    let (timestamps, values) = (&mut bufs.timestamps, &mut bufs.values);
    let mut i = 0;
    while i < spans.len() {
        let mut j = i + 1;
        let mut max = spans[i].max;
        while j < spans.len() && spans[j].min <= max {
            max = max.max(spans[j].max);
            j += 1;
        }
        if j == i + 1 && spans[i].strict {
            let c = &chunks[spans[i].chunk as usize];
            timestamps.extend_from_slice(&c.ts);
            values.extend_from_slice(&c.vals);
        } else {
            let cluster = &mut bufs.cluster;
            cluster.clear();
            cluster.extend(spans[i..j].iter().map(|s| s.chunk));
            cluster.sort_unstable();
            if cluster.len() <= MAX_MERGED_CHUNKS && spans[i..j].iter().all(|s| s.strict) {
                merge_strict(chunks, cluster, timestamps, values, counts);
                i = j;
                continue;
            }
            let points = &mut bufs.points;
            points.clear();
            for &k in cluster.iter() {
                let c = &chunks[k as usize];
                points.extend(c.ts.iter().copied().zip(c.vals.iter().copied()));
            }
            sort_dedup(points, timestamps, values, counts);
        }
        i = j;
    }
}

/// Most chunks in a cluster merged by [`merge_strict`] (it looks at every
/// chunk's next point at each step); larger clusters are sorted.
const MAX_MERGED_CHUNKS: usize = 8;

/// [`sort_dedup`]'s result for a cluster of chunks whose timestamps each
/// increase strictly (`cluster`: their indices, in input order), without
/// sorting: a merge of the chunks, each of which holds at most one point
/// per timestamp, so the point kept at a timestamp is that of the last
/// chunk (in input order) that has it, and every other chunk's point there
/// is dropped. Where one chunk alone has points, up to the others' next
/// one, they are copied as a run. The usual cluster is a re-delivered or
/// late payload over one already read: sorting them took 2.3% of the
/// benchmark job's CPU samples, against 3.8% for the rest of merging (1.6%
/// once most of them were merged here; the rest have a payload out of
/// order inside).
fn merge_strict(
    chunks: &[PointChunk],
    cluster: &[u32],
    timestamps: &mut Vec<i64>,
    values: &mut Vec<u64>,
    counts: &mut MergeCounts,
) {
    let mut runs: [(&[i64], &[u64]); MAX_MERGED_CHUNKS] = [(&[], &[]); MAX_MERGED_CHUNKS];
    for (r, &k) in runs.iter_mut().zip(cluster) {
        let c = &chunks[k as usize];
        *r = (&c.ts, &c.vals);
    }
    let runs = &mut runs[..cluster.len()];
    loop {
        // The smallest next timestamp, the chunks there, and the next
        // timestamp after it.
        let (mut t, mut at, mut after) = (i64::MAX, 0, i64::MAX);
        for (ts, _) in runs.iter() {
            match ts.first() {
                Some(&x) if x < t => (after, t, at) = (t, x, 1),
                Some(&x) if x == t => at += 1,
                Some(&x) => after = after.min(x),
                None => {}
            }
        }
        if at == 0 {
            return;
        }
        if at == 1 {
            // One chunk alone up to `after`: its run is copied.
            let (ts, vs) = runs
                .iter_mut()
                .find(|(ts, _)| ts.first() == Some(&t))
                .expect("the chunk at the smallest timestamp");
            let end = ts.partition_point(|&x| x < after);
            timestamps.extend_from_slice(&ts[..end]);
            values.extend_from_slice(&vs[..end]);
            (*ts, *vs) = (&ts[end..], &vs[end..]);
            continue;
        }
        // The last chunk at `t` wins; the others' points there are dropped.
        let mut winner: Option<u64> = None;
        for (ts, vs) in runs.iter_mut().rev() {
            if ts.first() == Some(&t) {
                match winner {
                    None => winner = Some(vs[0]),
                    Some(w) => {
                        counts.duplicates_dropped += 1;
                        counts.conflicting_duplicates += u64::from(vs[0] != w);
                    }
                }
                (*ts, *vs) = (&ts[1..], &vs[1..]);
            }
        }
        timestamps.push(t);
        values.push(winner.expect("two chunks or more at the smallest timestamp"));
    }
}

/// Sorts `points` by timestamp (stably: input order among equal ones) and
/// appends one point per timestamp, the last in input order, counting
/// what it drops.
fn sort_dedup(
    points: &mut [(i64, u64)],
    timestamps: &mut Vec<i64>,
    values: &mut Vec<u64>,
    counts: &mut MergeCounts,
) {
    points.sort_by_key(|p| p.0);
    for run in points.chunk_by(|a, b| a.0 == b.0) {
        let (t, winner) = run[run.len() - 1];
        timestamps.push(t);
        values.push(winner);
        let dropped = &run[..run.len() - 1];
        counts.duplicates_dropped += dropped.len() as u64;
        counts.conflicting_duplicates += dropped.iter().filter(|p| p.1 != winner).count() as u64;
    }
}

impl MergeCounts {
    pub fn add(&mut self, o: &MergeCounts) {
        self.input_points += o.input_points;
        self.duplicates_dropped += o.duplicates_dropped;
        self.conflicting_duplicates += o.conflicting_duplicates;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge(points: &[(i64, u64)]) -> (Vec<(i64, u64)>, MergeCounts) {
        let (m, c) = SeriesInput {
            points: points.to_vec(),
            ..Default::default()
        }
        .merge();
        (m.timestamps.into_iter().zip(m.values).collect(), c)
    }

    #[test]
    fn the_last_point_in_input_order_wins_and_conflicts_are_counted_against_it() {
        let nan = f64::NAN.to_bits();
        // ts 5: A, B, A -> A wins; only B differs from it.
        // ts 1: A, A, B -> B wins; both As differ from it.
        // ts 3: NaN with two payloads: bits differ, so they conflict.
        let (points, c) = merge(&[
            (5, 10),
            (1, 7),
            (5, 11),
            (3, nan),
            (1, 7),
            (5, 10),
            (3, nan | 1),
            (1, 8),
        ]);
        assert_eq!(points, vec![(1, 8), (3, nan | 1), (5, 10)]);
        assert_eq!(c.input_points, 8);
        assert_eq!(c.duplicates_dropped, 5);
        assert_eq!(c.conflicting_duplicates, 4);
        // Verbatim repeats are duplicates, not conflicts.
        let (_, c) = merge(&[(1, 2), (1, 2), (2, 3)]);
        assert_eq!((c.duplicates_dropped, c.conflicting_duplicates), (1, 0));
    }

    /// The spec's rules written out plainly: a stable sort by timestamp,
    /// the last of each run of equal timestamps kept.
    fn reference(points: &[(i64, u64)]) -> (Vec<(i64, u64)>, MergeCounts) {
        let mut p = points.to_vec();
        p.sort_by_key(|p| p.0);
        let mut c = MergeCounts {
            input_points: p.len() as u64,
            ..Default::default()
        };
        let mut out = Vec::new();
        for run in p.chunk_by(|a, b| a.0 == b.0) {
            let w = run[run.len() - 1];
            out.push(w);
            c.duplicates_dropped += run.len() as u64 - 1;
            c.conflicting_duplicates +=
                run[..run.len() - 1].iter().filter(|q| q.1 != w.1).count() as u64;
        }
        (out, c)
    }

    #[test]
    fn every_path_merges_as_the_plain_rules_say() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for case in 0..4000 {
            let base: i64 = rng.random();
            let mut chunks = Vec::new();
            let mut all = Vec::new();
            let mut push = |ts: Vec<i64>, vals: Vec<u64>, chunks: &mut Vec<PointChunk>| {
                all.extend(ts.iter().copied().zip(vals.iter().copied()));
                chunks.push(chunk(&ts, &vals));
            };
            // Few distinct values: duplicates both verbatim and conflicting.
            let value = |rng: &mut rand_chacha::ChaCha8Rng| {
                rng.random_range(0..3u64) | (f64::NAN.to_bits() * rng.random_range(0..2))
            };
            if case % 2 == 0 {
                // Random points: narrow and wide spans (up to the whole i64
                // range), payloads in order or not.
                let span: u64 = match case % 8 {
                    0 => 16,
                    2 => 3_600_000,
                    4 => 1 << rng.random_range(40..62),
                    _ => u64::MAX,
                };
                for _ in 0..rng.random_range(0..6) {
                    let len = rng.random_range(0..40);
                    let mut ts: Vec<i64> = (0..len)
                        .map(|_| base.wrapping_add((rng.random::<u64>() % span) as i64))
                        .collect();
                    let vals = (0..len).map(|_| value(&mut rng)).collect();
                    if rng.random_bool(0.5) {
                        ts.sort();
                    }
                    push(ts, vals, &mut chunks);
                }
            } else {
                // Drifting series: stretches of a grid (touching now and
                // then) in shuffled order, re-delivered, late, with points
                // swapped or repeated inside a payload.
                let step = rng.random_range(1..4i64);
                let mut stretches: Vec<(i64, usize)> = Vec::new();
                let mut at = base / 2;
                for _ in 0..rng.random_range(1..12) {
                    let len = rng.random_range(1..20);
                    stretches.push((at, len));
                    at += (len as i64 - rng.random_range(0..2)) * step;
                }
                let order: Vec<usize> = {
                    let mut o: Vec<usize> = (0..stretches.len()).collect();
                    for i in (1..o.len()).rev() {
                        if rng.random_bool(0.3) {
                            o.swap(i, rng.random_range(0..=i));
                        }
                    }
                    o
                };
                for k in 0..order.len() + rng.random_range(0..4) {
                    let (start, len) = stretches[if k < order.len() {
                        order[k]
                    } else {
                        rng.random_range(0..stretches.len())
                    }];
                    let mut ts: Vec<i64> = (0..len as i64).map(|j| start + j * step).collect();
                    if len > 2 && rng.random_bool(0.2) {
                        let (x, y) = (rng.random_range(0..len), rng.random_range(0..len));
                        ts.swap(x, y);
                        if rng.random_bool(0.3) {
                            ts[x] = ts[y];
                        }
                    }
                    let vals = (0..len).map(|_| value(&mut rng)).collect();
                    push(ts, vals, &mut chunks);
                }
            }
            let extras = if case % 5 == 0 {
                rng.random_range(1..4)
            } else {
                0
            };
            let extra: Vec<(i64, u64)> = (0..extras)
                .map(|_| (all.first().map_or(base, |p| p.0), rng.random_range(0..3)))
                .collect();
            all.extend_from_slice(&extra);
            let (m, c) = SeriesInput {
                chunks,
                points: extra,
                ..Default::default()
            }
            .merge();
            let got: Vec<(i64, u64)> = m.timestamps.into_iter().zip(m.values).collect();
            assert_eq!((got, c), reference(&all), "case {case}");
        }
    }

    /// Clusters of chunks each in order (merged, not sorted) of 2 to 10
    /// chunks (sorted again past [`MAX_MERGED_CHUNKS`]): re-delivered
    /// payloads, late ones inside earlier stretches, payloads that touch,
    /// and runs of one chunk between the others' points.
    #[test]
    fn clusters_of_chunks_in_order_merge_as_the_plain_rules_say() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for case in 0..3000 {
            let n = 2 + case % 9;
            let mut chunks = Vec::new();
            let mut all = Vec::new();
            for _ in 0..n {
                // Strictly increasing: a subset of a small grid, so chunks
                // overlap, touch and interleave.
                let start = rng.random_range(0..40i64);
                let ts: Vec<i64> = (start..start + rng.random_range(1..40))
                    .filter(|_| rng.random_bool(0.6))
                    .collect();
                let vals: Vec<u64> = ts.iter().map(|_| rng.random_range(0..3)).collect();
                all.extend(ts.iter().copied().zip(vals.iter().copied()));
                chunks.push(chunk(&ts, &vals));
            }
            let (m, c) = SeriesInput {
                chunks,
                ..Default::default()
            }
            .merge();
            let got: Vec<(i64, u64)> = m.timestamps.into_iter().zip(m.values).collect();
            assert_eq!((got, c), reference(&all), "case {case}");
        }
        // A whole payload delivered twice, the second time with one value
        // changed: every point a duplicate, one a conflict, the later wins.
        let (m, c) = SeriesInput {
            chunks: vec![chunk(&[1, 2, 3], &[5, 6, 7]), chunk(&[1, 2, 3], &[5, 9, 7])],
            ..Default::default()
        }
        .merge();
        assert_eq!((m.timestamps, m.values), (vec![1, 2, 3], vec![5, 9, 7]));
        assert_eq!((c.duplicates_dropped, c.conflicting_duplicates), (3, 1));
    }

    fn chunk(ts: &[i64], vals: &[u64]) -> PointChunk {
        PointChunk {
            ts: ScalarBuffer::from(ts.to_vec()),
            vals: ScalarBuffer::from(vals.to_vec()),
        }
    }

    #[test]
    fn chunks_in_place_merge_as_the_same_points_copied() {
        let nan = f64::NAN.to_bits();
        let cases: Vec<Vec<(Vec<i64>, Vec<u64>)>> = vec![
            // In order: concatenated as they are.
            vec![(vec![1, 2, 3], vec![1, 2, 3]), (vec![4, 9], vec![4, 9])],
            // Touching at a timestamp: a duplicate, the later wins.
            vec![(vec![1, 2, 3], vec![1, 2, 3]), (vec![3, 4], vec![30, 4])],
            // Out of order inside a payload, and across payloads.
            vec![(vec![5, 1], vec![5, 1]), (vec![2, 2, 0], vec![nan, 7, 0])],
            vec![(vec![10], vec![1]), (vec![5], vec![2]), (vec![10], vec![3])],
            vec![(vec![], vec![]), (vec![7], vec![7])],
        ];
        for c in cases {
            let chunks: Vec<PointChunk> = c.iter().map(|(t, v)| chunk(t, v)).collect();
            let points: Vec<(i64, u64)> = c
                .iter()
                .flat_map(|(t, v)| t.iter().copied().zip(v.iter().copied()))
                .collect();
            let from_chunks = SeriesInput {
                metadata: "m".into(),
                chunks,
                ..Default::default()
            };
            assert_eq!(from_chunks.n_points(), points.len());
            let copied = SeriesInput {
                metadata: "m".into(),
                points,
                ..Default::default()
            };
            assert_eq!(from_chunks.merge(), copied.merge(), "{c:?}");
        }
    }
}
