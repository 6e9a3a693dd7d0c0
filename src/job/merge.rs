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
        let (timestamps, values) = (&mut bufs.timestamps, &mut bufs.values);
        timestamps.clear();
        values.clear();
        // The usual case: the chunks' timestamps, one after the other,
        // already increase strictly (each payload in order, payloads in time
        // order, no point repeated). Then the merge is their concatenation,
        // with nothing to sort and nothing dropped.
        if self.points.is_empty() && strictly_increasing(&self.chunks) {
            for c in &self.chunks {
                timestamps.extend_from_slice(&c.ts);
                values.extend_from_slice(&c.vals);
            }
            return (merged, counts);
        }
        let points = &mut bufs.points;
        points.clear();
        for c in &self.chunks {
            points.extend(c.ts.iter().copied().zip(c.vals.iter().copied()));
        }
        points.extend_from_slice(&self.points);
        // Stable: among equal timestamps, input order is kept, so the last
        // of each run is the last in input order.
        points.sort_by_key(|p| p.0);
        for run in points.chunk_by(|a, b| a.0 == b.0) {
            let (t, winner) = run[run.len() - 1];
            timestamps.push(t);
            values.push(winner);
            let dropped = &run[..run.len() - 1];
            counts.duplicates_dropped += dropped.len() as u64;
            counts.conflicting_duplicates +=
                dropped.iter().filter(|p| p.1 != winner).count() as u64;
        }
        (merged, counts)
    }
}

impl SeriesInput {
    /// The points of the series, before merging.
    pub fn n_points(&self) -> usize {
        self.points.len() + self.chunks.iter().map(|c| c.ts.len()).sum::<usize>()
    }
}

/// Whether the chunks' timestamps, concatenated, increase strictly.
fn strictly_increasing(chunks: &[PointChunk]) -> bool {
    let mut last: Option<i64> = None;
    for c in chunks {
        let ts: &[i64] = &c.ts;
        if let (Some(l), Some(f)) = (last, ts.first())
            && *f <= l
        {
            return false;
        }
        if ts.windows(2).any(|w| w[1] <= w[0]) {
            return false;
        }
        if let Some(l) = ts.last() {
            last = Some(*l);
        }
    }
    true
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
