//! Merge: the third step of the shard job (see `run.rs`). The grouping
//! sort hands over payload rows ordered by series and then by input
//! position; [`SeriesMerger`] gathers one series' rows into a
//! [`SeriesInput`], and [`SeriesInput::merge`] applies the spec's rules
//! (points sorted by timestamp, one per timestamp, the last in input order
//! wins; kind, interval and metadata of the last payload) and counts what
//! it dropped.

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{UInt8Type, UInt32Type, UInt64Type};

use crate::job::error::JobError;

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MergeCounts {
    pub input_points: u64,
    /// Points dropped because a later point of the series had the same timestamp.
    pub duplicates_dropped: u64,
    /// Of those, points whose value bits differed from the winner's.
    pub conflicting_duplicates: u64,
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
    /// (timestamp, value bits) in input order.
    pub points: Vec<(i64, u64)>,
}

impl SeriesInput {
    /// Applies the spec's rules: points sorted by timestamp, one point per
    /// timestamp, the last in input order wins. A pure function of the
    /// series, so series merge on any thread.
    pub fn merge(mut self) -> (MergedSeries, MergeCounts) {
        let mut counts = MergeCounts {
            input_points: self.points.len() as u64,
            ..Default::default()
        };
        // Stable: among equal timestamps, input order is kept, so the last
        // of each run is the last in input order.
        self.points.sort_by_key(|p| p.0);
        let mut timestamps = Vec::with_capacity(self.points.len());
        let mut values: Vec<u64> = Vec::with_capacity(self.points.len());
        for run in self.points.chunk_by(|a, b| a.0 == b.0) {
            let (t, winner) = run[run.len() - 1];
            timestamps.push(t);
            values.push(winner);
            let dropped = &run[..run.len() - 1];
            counts.duplicates_dropped += dropped.len() as u64;
            counts.conflicting_duplicates +=
                dropped.iter().filter(|p| p.1 != winner).count() as u64;
        }
        let merged = MergedSeries {
            org_id: self.org_id,
            metric_id: self.metric_id,
            kind: self.kind,
            interval_s: self.interval_s,
            metadata: self.metadata,
            timestamps,
            values,
        };
        (merged, counts)
    }
}

impl MergeCounts {
    pub fn add(&mut self, o: &MergeCounts) {
        self.input_points += o.input_points;
        self.duplicates_dropped += o.duplicates_dropped;
        self.conflicting_duplicates += o.conflicting_duplicates;
    }
}

/// Gathers the payload rows of one series (they arrive together, in input
/// order) into a [`SeriesInput`].
#[derive(Default)]
pub struct SeriesMerger {
    current: Option<SeriesInput>,
}

impl SeriesMerger {
    pub fn current(&self) -> Option<(u64, u64)> {
        self.current.as_ref().map(|s| (s.org_id, s.metric_id))
    }

    /// Adds one payload row of series `key` (must be the current series or
    /// a new one after [`Self::take`]).
    pub fn push(
        &mut self,
        key: (u64, u64),
        kind: u8,
        interval_s: u32,
        metadata: &str,
        ts: &[i64],
        vals: &[u64],
    ) {
        let s = self.current.get_or_insert_with(|| SeriesInput {
            org_id: key.0,
            metric_id: key.1,
            ..Default::default()
        });
        debug_assert_eq!((s.org_id, s.metric_id), key);
        s.kind = kind;
        s.interval_s = interval_s;
        if s.metadata != metadata {
            s.metadata.clear();
            s.metadata.push_str(metadata);
        }
        s.points
            .extend(ts.iter().copied().zip(vals.iter().copied()));
    }

    /// Like [`Self::push`], with the points as `raw_points` gives them:
    /// `n` timestamps then `n` value bits, 8 bytes each, little-endian.
    pub fn push_raw(
        &mut self,
        key: (u64, u64),
        kind: u8,
        interval_s: u32,
        metadata: &str,
        raw: &[u8],
    ) -> Result<(), JobError> {
        if !raw.len().is_multiple_of(16) {
            return Err(JobError::Internal(format!(
                "series ({}, {}): a payload row has {} point bytes, not a multiple of 16",
                key.0,
                key.1,
                raw.len()
            )));
        }
        self.push(key, kind, interval_s, metadata, &[], &[]);
        let s = self.current.as_mut().expect("pushed above");
        let (ts, vals) = raw.split_at(raw.len() / 2);
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
        s.points.extend(
            ts.chunks_exact(8)
                .zip(vals.chunks_exact(8))
                .map(|(t, v)| (word(t) as i64, word(v))),
        );
        Ok(())
    }

    /// Finishes the current series.
    pub fn take(&mut self) -> Option<SeriesInput> {
        self.current.take()
    }
}

impl SeriesMerger {
    /// Feeds one batch of the grouping sort's output (columns as
    /// [`GROUP_SQL`] selects them) into the merger, handing each finished
    /// series to `done`.
    pub fn feed(
        &mut self,
        batch: &RecordBatch,
        mut done: impl FnMut(SeriesInput) -> Result<(), JobError>,
    ) -> Result<(), JobError> {
        let org = batch.column(0).as_primitive::<UInt64Type>();
        let metric = batch.column(1).as_primitive::<UInt64Type>();
        let kind = batch.column(2).as_primitive::<UInt8Type>();
        let interval = batch.column(3).as_primitive::<UInt32Type>();
        let meta = batch.column(4).as_string::<i32>();
        let points = batch.column(5).as_binary_view();
        for i in 0..batch.num_rows() {
            let key = (org.value(i), metric.value(i));
            if self.current().is_some_and(|k| k != key)
                && let Some(s) = self.take()
            {
                done(s)?;
            }
            self.push_raw(
                key,
                kind.value(i),
                interval.value(i),
                meta.value(i),
                points.value(i),
            )?;
        }
        Ok(())
    }
}

/// The SQL of the group step: payload rows in series order, each series'
/// rows in input order (object key, frame offset, and the first point of
/// a payload split into rows). Metadata is copied out of the slab (it is
/// small) so that the points are the rows' only view into it: the sort
/// counts a slab once per view column.
pub const GROUP_SQL: &str = "SELECT org_id, metric_id, kind, interval_s, arrow_cast(metadata, 'Utf8') AS metadata, \
     raw_points(timestamps, \"values\") AS points \
     FROM payloads WHERE NOT misrouted \
     ORDER BY org_id, metric_id, object_key, frame_offset, first_point";

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

    #[test]
    fn point_bytes_that_are_not_whole_points_are_an_error() {
        let mut g = SeriesMerger::default();
        let raw: Vec<u8> = [1i64, 2, 10, 20]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        g.push_raw((1, 2), 0, 10, "m", &raw).unwrap();
        let e = g.push_raw((1, 2), 0, 10, "m", &raw[..24]).unwrap_err();
        assert!(e.to_string().contains("24 point bytes"), "{e}");
        assert_eq!(g.take().unwrap().points, vec![(1, 10), (2, 20)]);
    }

    #[test]
    fn the_gatherer_keeps_the_last_payloads_metadata() {
        let mut g = SeriesMerger::default();
        g.push((1, 2), 0, 10, "a:1", &[1, 2], &[5, 6]);
        g.push((1, 2), 2, 60, "b:2", &[2], &[7]);
        let s = g.take().unwrap();
        assert_eq!((s.kind, s.interval_s, s.metadata.as_str()), (2, 60, "b:2"));
        assert_eq!(s.points, vec![(1, 5), (2, 6), (2, 7)]);
        assert!(g.take().is_none());
    }
}
