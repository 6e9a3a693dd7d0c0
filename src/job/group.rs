//! Group: the second step of the shard job (see `run.rs`). Payload rows
//! arrive from the scan's partitions in no particular order; [`Grouper`]
//! files each under its series (a hash map of row references, the rows
//! staying in their decode slabs) and hands the series out in key order as
//! [`SeriesInput`]s whose points are still in place ([`PointChunk`]s), each
//! series' rows in input order (object, frame offset, first point), with
//! the kind, interval and metadata of its last row.
//!
//! Spooled buckets (see `datasource/route.rs`) come back through
//! [`decode_spooled`]: their payloads are unpacked (or their frames
//! decoded again), on all cores, into batches of the same shape as the
//! scan's, and grouped the same way.

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::buffer::ScalarBuffer;
use datafusion::arrow::datatypes::{Float64Type, Int64Type, UInt8Type, UInt32Type, UInt64Type};
use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::datasource::batch::{BatchBuilder, SlabPool, slab_len};
use crate::datasource::route::{SpooledFrame, unpack_payload};
use crate::datasource::schema::{
    FIRST_POINT, FRAME_OFFSET, INTERVAL_S, KIND, METADATA, METRIC_ID, MISROUTED, ORG_ID,
    TIMESTAMPS, VALUES,
};
use crate::format::payload::{Decoder, check_body, parse_payload};
use crate::job::error::JobError;
use crate::job::merge::{PointChunk, SeriesInput};

/// The object (index in input order) of a batch's rows.
#[derive(Debug, Clone)]
pub enum Objects {
    /// Every row is of this object (a scan batch).
    One(u32),
    /// One per row (a batch of spooled frames).
    PerRow(Vec<u32>),
}

impl Objects {
    fn of(&self, row: usize) -> u32 {
        match self {
            Objects::One(o) => *o,
            Objects::PerRow(v) => v[row],
        }
    }
}

struct Held {
    batch: RecordBatch,
    objects: Objects,
    /// Rows filed and not yet handed out.
    rows: u32,
    bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct RowRef {
    held: u32,
    row: u32,
}

/// Payload rows filed by series.
#[derive(Default)]
pub struct Grouper {
    held: Vec<Option<Held>>,
    series: FxHashMap<(u64, u64), Vec<RowRef>>,
    bytes: u64,
    rows: u64,
}

/// Memory a batch holds: its decode slab (the buffer its point lists view)
/// and its own columns.
fn batch_bytes(b: &RecordBatch) -> u64 {
    let slab = b
        .column(TIMESTAMPS)
        .as_list_view_opt::<i32>()
        .map_or(0, |l| l.values().to_data().buffers()[0].capacity());
    (slab + b.num_rows() * 64) as u64
}

impl Grouper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Memory held by the rows filed and not yet handed out.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Rows filed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Files a batch of the payload table's rows (every column, as the
    /// scan emits them; misrouted rows are left out).
    pub fn push(&mut self, batch: RecordBatch, objects: Objects) -> Result<(), JobError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let org = batch.column(ORG_ID).as_primitive::<UInt64Type>();
        let metric = batch.column(METRIC_ID).as_primitive::<UInt64Type>();
        let misrouted = batch.column(MISROUTED).as_boolean();
        let held = u32::try_from(self.held.len())
            .map_err(|_| JobError::Internal("more than 4 G batches held".into()))?;
        let mut rows = 0u32;
        for i in 0..batch.num_rows() {
            if misrouted.value(i) {
                continue;
            }
            self.series
                .entry((org.value(i), metric.value(i)))
                .or_default()
                .push(RowRef {
                    held,
                    row: i as u32,
                });
            rows += 1;
        }
        if rows == 0 {
            return Ok(());
        }
        let bytes = batch_bytes(&batch);
        self.bytes += bytes;
        self.rows += u64::from(rows);
        self.held.push(Some(Held {
            batch,
            objects,
            rows,
            bytes,
        }));
        Ok(())
    }

    /// The keys of the series filed that `pick` selects (in no order).
    pub fn keys(&self, pick: impl Fn(u64, u64) -> bool) -> Vec<(u64, u64)> {
        self.series
            .keys()
            .filter(|(o, m)| pick(*o, *m))
            .copied()
            .collect()
    }

    /// Hands out series `key` (its rows in input order; its attributes
    /// those of its last row), releasing batches no longer needed here
    /// (their slabs live on in the chunks until the series is encoded).
    pub fn take(&mut self, key: (u64, u64)) -> Option<SeriesInput> {
        let mut refs = self.series.remove(&key)?;
        let order = |r: &RowRef| {
            let h = self.held[r.held as usize].as_ref().expect("held batch");
            let b = &h.batch;
            (
                h.objects.of(r.row as usize),
                b.column(FRAME_OFFSET)
                    .as_primitive::<UInt64Type>()
                    .value(r.row as usize),
                b.column(FIRST_POINT)
                    .as_primitive::<UInt32Type>()
                    .value(r.row as usize),
            )
        };
        if refs.len() > 1 {
            refs.sort_by_cached_key(order);
        }
        let mut s = SeriesInput {
            org_id: key.0,
            metric_id: key.1,
            chunks: Vec::with_capacity(refs.len()),
            ..Default::default()
        };
        for (n, r) in refs.iter().enumerate() {
            let h = self.held[r.held as usize].as_ref().expect("held batch");
            let b = &h.batch;
            let row = r.row as usize;
            let ts = b.column(TIMESTAMPS).as_list_view::<i32>();
            let vals = b.column(VALUES).as_list_view::<i32>();
            let (t_off, t_len) = (ts.value_offset(row) as usize, ts.value_size(row) as usize);
            let (v_off, v_len) = (
                vals.value_offset(row) as usize,
                vals.value_size(row) as usize,
            );
            let t_child = ts.values().as_primitive::<Int64Type>().values();
            let v_child = vals.values().as_primitive::<Float64Type>().values();
            s.chunks.push(PointChunk {
                ts: t_child.slice(t_off, t_len),
                vals: ScalarBuffer::new(v_child.inner().clone(), v_off, v_len),
            });
            if n + 1 == refs.len() {
                s.kind = b.column(KIND).as_primitive::<UInt8Type>().value(row);
                s.interval_s = b.column(INTERVAL_S).as_primitive::<UInt32Type>().value(row);
                s.metadata = b.column(METADATA).as_string_view().value(row).to_string();
            }
        }
        for r in &refs {
            let slot = &mut self.held[r.held as usize];
            let h = slot.as_mut().expect("held batch");
            h.rows -= 1;
            if h.rows == 0 {
                self.bytes = self.bytes.saturating_sub(h.bytes);
                *slot = None;
            }
        }
        Some(s)
    }

    /// Whether every row filed was handed out.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// Decodes spooled payloads (their records' bodies in `bytes`: packed
/// payloads or frame bodies) into batches of the payload table's shape, on
/// all cores; each payload whole as one row, with its object and frame
/// offset. One that fails to decode now decoded in the scan: an internal
/// error (the spool is this run's own file).
pub fn decode_spooled(
    bytes: &[u8],
    frames: &[SpooledFrame],
    pool: &Arc<SlabPool>,
) -> Result<Vec<(RecordBatch, Objects)>, JobError> {
    // Rows per batch: about a slab's worth of ordinary payloads (the
    // builder's columns are allocated at this capacity).
    let rows = (pool.slab_bytes() / 1024).clamp(64, 8192);
    let done: Vec<Result<Vec<(RecordBatch, Objects)>, JobError>> =
        slab_tasks(frames, pool.slab_bytes(), rows)
            .into_par_iter()
            .map(|task| {
                let chunk = &frames[task];
                let mut builder = BatchBuilder::new(Arc::clone(pool), rows, "", "");
                let mut decoder = Decoder::new();
                let mut out = Vec::new();
                let mut objects = Vec::new();
                let failed = |f: &SpooledFrame, e: &dyn std::fmt::Display| {
                    JobError::Internal(format!(
                        "a spooled frame (object #{}, offset {}) that decoded in the scan failed \
                     to decode again: {e}",
                        f.object, f.frame_offset
                    ))
                };
                for f in chunk {
                    let body = &bytes[f.body.clone()];
                    let size = f.content_size as usize;
                    if !builder.fits(size)
                        && let Some(b) = builder.finish().map_err(|e| failed(f, &e))?
                    {
                        out.push((b, Objects::PerRow(std::mem::take(&mut objects))));
                    }
                    let dst = builder.reserve(size).map_err(|e| failed(f, &e))?;
                    if f.packed {
                        unpack_payload(body, dst).map_err(|e| failed(f, &e))?;
                    } else {
                        let info = check_body(body, f.frame_offset).map_err(|e| failed(f, &e))?;
                        if info.content_size != size {
                            return Err(failed(f, &"its size is not the one spooled"));
                        }
                        decoder
                            .decompress_into(body, info, dst, f.frame_offset)
                            .map_err(|e| failed(f, &e))?;
                    }
                    let header = parse_payload(dst, f.frame_offset)
                        .map_err(|e| failed(f, &e))?
                        .header;
                    if (header.org_id, header.metric_id) != (f.org_id, f.metric_id) {
                        return Err(failed(f, &"it is of another series than spooled"));
                    }
                    builder.commit(&header, f.frame_offset, false);
                    objects.push(f.object);
                }
                if let Some(b) = builder
                    .finish()
                    .map_err(|e| JobError::Internal(format!("a batch of spooled frames: {e}")))?
                {
                    out.push((b, Objects::PerRow(objects)));
                }
                Ok(out)
            })
            .collect();
    let mut batches = Vec::new();
    for d in done {
        batches.extend(d?);
    }
    Ok(batches)
}

/// The frames each task of [`decode_spooled`] decodes: a slab's worth (of
/// decoded bytes and of rows) each, so that every batch fills its slab.
/// A task of a fixed number of frames filled half of each 8 MiB slab
/// (2048 payloads of about 2 KiB), and a bucket took twice its decoded
/// size in slabs.
fn slab_tasks(frames: &[SpooledFrame], slab_bytes: usize, rows: usize) -> Vec<Range<usize>> {
    let mut tasks = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, f) in frames.iter().enumerate() {
        let len = slab_len(f.content_size as usize);
        if i > start && (used + len > slab_bytes || i - start == rows) {
            tasks.push(start..i);
            (start, used) = (i, 0);
        }
        used += len;
    }
    if start < frames.len() {
        tasks.push(start..frames.len());
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasource::route::Router;
    use crate::format::payload::{Kind, PayloadSpec, PayloadWriter, encode_payload, parse_header};

    /// Frames of `payloads` (org, metric, ts, vals, meta) written, spooled
    /// as the scan would, and read back.
    /// (org, metric, timestamps, values, metadata)
    type Spec<'a> = (u64, u64, Vec<i64>, Vec<u64>, &'a str);

    fn spooled(payloads: &[Spec<'_>], allowance: u64) -> (Vec<u8>, Vec<SpooledFrame>) {
        let dir = tempfile::tempdir().unwrap();
        let router = Router::new(
            1,
            0,
            &["a".into(), "b".into()],
            dir.path(),
            1 << 16,
            allowance,
        );
        let mut w = PayloadWriter::new(1);
        let (mut frame, mut decoded) = (Vec::new(), Vec::new());
        for (i, (org, metric, ts, vals, meta)) in payloads.iter().enumerate() {
            let spec = PayloadSpec {
                version: 2,
                org_id: *org,
                metric_id: *metric,
                kind: Kind::Gauge,
                interval_s: 10,
                timestamps: ts,
                values: vals,
                metadata: meta,
            };
            frame.clear();
            w.write_frame(&spec, &mut frame);
            let body = &frame[4..];
            encode_payload(&spec, &mut decoded);
            let header = parse_header(&decoded, 0).unwrap();
            // Objects and offsets out of input order on purpose.
            let (object, offset) = ((i % 2) as u32, 1000 - i as u64 * 10);
            router
                .spool(object, offset, &header, &decoded, body)
                .unwrap();
        }
        router.finish().unwrap();
        crate::datasource::route::read_spool(&router.path(0)).unwrap()
    }

    #[test]
    fn a_spooled_record_that_does_not_read_back_as_spooled_is_an_internal_error() {
        let payloads = vec![(7, 1, vec![30, 40], vec![3, 4], "first")];
        let pool = SlabPool::new(256);
        let fails = |(bytes, frames): &(Vec<u8>, Vec<SpooledFrame>),
                     change: &dyn Fn(&mut SpooledFrame)| {
            let mut f = frames[0].clone();
            change(&mut f);
            match decode_spooled(bytes, &[f], &pool) {
                Err(JobError::Internal(e)) => e,
                other => panic!("{other:?}"),
            }
        };
        for allowance in [0, u64::MAX] {
            let spool = spooled(&payloads, allowance);
            let e = fails(&spool, &|f| f.org_id = 8);
            assert!(
                e.contains("object #0, offset 1000") && e.contains("another series"),
                "{e}"
            );
            let e = fails(&spool, &|f| f.content_size += 8);
            let want = if allowance == 0 {
                "its size is not the one spooled"
            } else {
                "unpacks to"
            };
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn spooled_frames_group_into_series_in_input_order() {
        let payloads = vec![
            (7, 1, vec![30, 40], vec![3, 4], "first"),
            (7, 1, vec![10, 20], vec![1, 2], "second"),
            (5, 9, vec![1], vec![9], "other"),
            (7, 1, vec![50], vec![5], "third"),
        ];
        let compressed = spooled(&payloads, 0);
        let packed = spooled(&payloads, u64::MAX);
        assert!(compressed.1.iter().all(|f| !f.packed));
        assert!(packed.1.iter().all(|f| f.packed));
        // Both forms in one spool: payloads 0 and 2 compressed, 1 and 3 packed.
        let mut mixed = compressed.0.clone();
        mixed.extend_from_slice(&packed.0);
        let shift = compressed.0.len();
        let frames: Vec<SpooledFrame> = (0..4)
            .map(|i| match i % 2 {
                0 => compressed.1[i].clone(),
                _ => SpooledFrame {
                    body: packed.1[i].body.start + shift..packed.1[i].body.end + shift,
                    ..packed.1[i].clone()
                },
            })
            .collect();
        for (bytes, frames) in [compressed, packed, (mixed, frames)] {
            // Input order: object 0 before 1, then offset. Payload i is at
            // (i % 2, 1000 - 10 i): 0 -> (0, 1000), 1 -> (1, 990),
            // 2 -> (0, 980), 3 -> (1, 970). Series 7/1 in input order:
            // payload 0 (0, 1000), payload 3 (1, 970), payload 1 (1, 990).
            let mut g = Grouper::new();
            for (b, o) in decode_spooled(&bytes, &frames, &SlabPool::new(256)).unwrap() {
                g.push(b, o).unwrap();
            }
            let mut keys = g.keys(|_, _| true);
            keys.sort();
            assert_eq!(keys, vec![(5, 9), (7, 1)]);
            let s = g.take((7, 1)).unwrap();
            let ts: Vec<i64> = s.chunks.iter().flat_map(|c| c.ts.iter().copied()).collect();
            assert_eq!(ts, vec![30, 40, 50, 10, 20]);
            assert_eq!(s.metadata, "second", "the last row's");
            assert_eq!(s.n_points(), 5);
            let (m, counts) = s.merge();
            assert_eq!(m.timestamps, vec![10, 20, 30, 40, 50]);
            assert_eq!(m.values, vec![1, 2, 3, 4, 5]);
            assert_eq!(counts.duplicates_dropped, 0);
            assert!(g.bytes() > 0, "series 5/9 still holds its batch");
            let s = g.take((5, 9)).unwrap();
            assert_eq!(s.metadata, "other");
            assert!(g.is_empty());
            assert_eq!(g.bytes(), 0);
            assert!(g.take((5, 9)).is_none());
        }
    }

    #[test]
    fn spooled_frames_are_decoded_a_slab_at_a_time() {
        let frame = |content_size: u32| SpooledFrame {
            object: 0,
            frame_offset: 0,
            org_id: 1,
            metric_id: 1,
            content_size,
            packed: true,
            body: 0..0,
        };
        // 1000-byte payloads take 1000 bytes of a 4000-byte slab, a 1001
        // byte one 1008; a payload bigger than a slab is a task of its own.
        let sizes = [1000, 1000, 1000, 1000, 1001, 1000, 1000, 9000, 8, 8, 8];
        let frames: Vec<_> = sizes.iter().map(|&n| frame(n)).collect();
        assert_eq!(
            slab_tasks(&frames, 4000, 100),
            vec![0..4, 4..7, 7..8, 8..11]
        );
        // At most `rows` frames a task, and every frame in one task, in order.
        assert_eq!(
            slab_tasks(&frames, 4000, 2),
            vec![0..2, 2..4, 4..6, 6..7, 7..8, 8..10, 10..11]
        );
        assert!(slab_tasks(&[], 4000, 2).is_empty());
    }
}
