//! What a scan observed beyond its rows ([`ScanLog`]), and the check,
//! after the scan, that the ranges of every object tiled it.

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::datasource::options::CorruptPolicy;
use crate::datasource::reader::FrameCursor;
use crate::format::payload::{ErrorKind, FormatError, FrameError, Rejected};

/// A corrupt frame skipped under [`CorruptPolicy::Skip`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptRecord {
    pub key: String,
    pub offset: u64,
    pub reason: String,
    /// Bytes skipped: from `offset` to the next frame start that the sync
    /// rule accepts (or the object's end), whatever ranges they lie in.
    pub skipped_bytes: u64,
    /// While the scan runs: the region ran past the end of the range that
    /// reported it; [`ScanLog::corrupt`] extends it over the next ranges.
    #[serde(skip)]
    pub open: bool,
}

/// A payload found under a shard its org does not belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MisroutedRecord {
    pub key: String,
    pub offset: u64,
    pub org_id: u64,
    pub metric_id: u64,
    pub points: u64,
    pub found_shard: String,
    pub expected_shard: String,
}

/// One range read to its end: where its frames began, where it stopped and
/// where it handed the frame chain over to the next range. (A range whose
/// stream was dropped early, as under `LIMIT`, is not recorded.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRecord {
    pub key: String,
    pub start: u64,
    pub end: u64,
    pub first_frame: Option<u64>,
    pub stop: u64,
    /// See [`FrameCursor::handover`](crate::datasource::reader::FrameCursor::handover).
    pub handover: Option<u64>,
    pub bytes_fetched: u64,
    /// See [`FrameCursor::rejected`](crate::datasource::reader::FrameCursor::rejected).
    #[serde(skip)]
    pub rejected: Vec<Rejected>,
}

impl RangeRecord {
    /// The record of `range` of object `key`, read to its end by `cursor`.
    pub fn of(key: &str, range: std::ops::Range<u64>, cursor: &FrameCursor) -> Self {
        RangeRecord {
            key: key.to_string(),
            start: range.start,
            end: range.end,
            first_frame: cursor.first_frame(),
            stop: cursor.stop(),
            handover: cursor.handover(),
            bytes_fetched: cursor.bytes_fetched(),
            rejected: cursor.rejected().to_vec(),
        }
    }
}

/// Where a corrupt region that reached `reach` ends: at the first frame
/// the ranges from `reach` on found, passing over ranges that found none.
/// `ranges` are in (key, start) order.
fn region_end(ranges: &[RangeRecord], key: &str, mut reach: u64) -> u64 {
    let from = ranges.partition_point(|r| r.key.as_str() < key);
    let object = &ranges[from..];
    let object = &object[..object.partition_point(|r| r.key == key)];
    while let Some(r) = object.iter().find(|r| r.start <= reach && reach < r.end) {
        match r.first_frame {
            // A frame the range found before `reach` belongs to a chain
            // that the tiling check follows; nothing to add here.
            Some(f) => return f.max(reach),
            None => reach = r.end,
        }
    }
    reach
}

/// Totals of a scan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanTotals {
    pub frames: u64,
    pub payloads: u64,
    pub points: u64,
    pub bytes_fetched: u64,
    pub corrupt_frames: u64,
    pub misrouted_payloads: u64,
    pub misrouted_points: u64,
}

#[derive(Debug, Default)]
struct ScanLogInner {
    totals: ScanTotals,
    corrupt: Vec<CorruptRecord>,
    misrouted: Vec<MisroutedRecord>,
    ranges: Vec<RangeRecord>,
}

/// What a scan observed beyond its rows: totals, skipped corrupt frames,
/// misrouted payloads and the ranges read. Shared by all partitions of a
/// scan; read it after the plan has run.
#[derive(Debug, Default)]
pub struct ScanLog {
    inner: Mutex<ScanLogInner>,
    pub(super) progress: AtomicU64,
}

impl ScanLog {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Input bytes whose frames have been read so far (for progress bars).
    pub fn progress_bytes(&self) -> u64 {
        self.progress.load(AtomicOrdering::Relaxed)
    }
    pub fn totals(&self) -> ScanTotals {
        self.inner.lock().unwrap().totals.clone()
    }
    /// Skipped corrupt frames, in input order.
    ///
    /// A range counts only the skipped bytes inside it; a corrupt region
    /// that runs on past its end ends where a later range's sync finds its
    /// first frame (the same rule a range covering both would apply), so
    /// `skipped_bytes` does not depend on how the object was split. Ranges
    /// that were not read to their end end the region where they begin.
    pub fn corrupt(&self) -> Vec<CorruptRecord> {
        let mut v = self.inner.lock().unwrap().corrupt.clone();
        v.sort_by(|a, b| (&a.key, a.offset).cmp(&(&b.key, b.offset)));
        if v.iter().any(|c| c.open) {
            let ranges = self.ranges();
            for c in v.iter_mut().filter(|c| c.open) {
                let end = region_end(&ranges, &c.key, c.offset + c.skipped_bytes);
                c.skipped_bytes = end - c.offset;
                c.open = false;
            }
        }
        v
    }
    /// Misrouted payloads, in input order.
    pub fn misrouted(&self) -> Vec<MisroutedRecord> {
        let mut v = self.inner.lock().unwrap().misrouted.clone();
        v.sort_by(|a, b| (&a.key, a.offset).cmp(&(&b.key, b.offset)));
        v
    }
    /// Ranges read, in (key, start) order.
    pub fn ranges(&self) -> Vec<RangeRecord> {
        let mut v = self.inner.lock().unwrap().ranges.clone();
        v.sort_by(|a, b| (&a.key, a.start).cmp(&(&b.key, b.start)));
        v
    }

    /// Checks that the ranges of every object tile it, after the scan: each
    /// range's first frame is where the previous range handed the frame
    /// chain over ([`RangeRecord::handover`]).
    ///
    /// A range's sync never takes a frame whose body is not a well-formed
    /// zstd frame (see `find_frame_start`), so when the previous range hands
    /// over at such a frame, the next range starts further on. The frames in
    /// between are the sync candidates that range rejected: they are
    /// returned here with their real reason (the [`check_body`](crate::format::payload::check_body) error), as a
    /// reader from byte 0 would have reported them. Anything else between a
    /// hand-over and the next range's first frame is returned as
    /// [`ErrorKind::Unreadable`], and a range that starts before the
    /// previous one's hand-over as [`ErrorKind::RangesOverlap`]. Ranges not
    /// read to their end (a stream dropped early, as under `LIMIT`) are
    /// unknown territory: nothing is concluded across them.
    pub fn tiling_errors(&self) -> Vec<FrameError> {
        self.tiling_problems()
            .into_iter()
            .map(|(e, _, _)| e)
            .collect()
    }

    /// [`Self::tiling_errors`] with the bytes each one covers.
    /// The bool: the region runs on past the range it was found in.
    fn tiling_problems(&self) -> Vec<(FrameError, u64, bool)> {
        let mut ranges = self.ranges();
        // A log shared by several scans of the same files holds each range
        // once per scan.
        ranges.dedup_by(|a, b| (&a.key, a.start, a.end) == (&b.key, b.start, b.end));
        let corrupt = self.corrupt();
        let known = |key: &str, off: u64| corrupt.iter().any(|c| c.key == key && c.offset == off);
        let mut out = Vec::new();
        for object in ranges.chunk_by(|a, b| a.key == b.key) {
            let key = object[0].key.as_str();
            let rejected: std::collections::BTreeMap<u64, &Rejected> = object
                .iter()
                .flat_map(|r| r.rejected.iter())
                .map(|x| (x.offset, x))
                .collect();
            let mut push = |error: FormatError, skipped: u64, open: bool| {
                if !known(key, error.offset) {
                    out.push((FrameError::new(key, error), skipped, open));
                }
            };
            // Where the next frame must start (None: unknown).
            let mut expect: Option<u64> = None;
            let mut prev_end = 0;
            for r in object {
                if r.start != prev_end {
                    // A range before this one was not read to its end.
                    expect = None;
                }
                prev_end = r.end;
                let mut carry = None;
                if let Some(mut cur) = expect {
                    loop {
                        if r.first_frame == Some(cur) {
                            break;
                        }
                        if let Some(f) = r.first_frame.filter(|&f| f < cur) {
                            push(
                                FormatError {
                                    offset: f,
                                    kind: ErrorKind::RangesOverlap { next: cur },
                                },
                                0,
                                false,
                            );
                            break;
                        }
                        if cur >= r.end {
                            // The chain passes over this range.
                            carry = Some(cur);
                            break;
                        }
                        if let Some(x) = rejected.get(&cur) {
                            push(x.error.clone(), x.next - x.offset, false);
                            cur = x.next;
                            continue;
                        }
                        let next = r.first_frame.unwrap_or(r.end);
                        push(
                            FormatError {
                                offset: cur,
                                kind: ErrorKind::Unreadable { next },
                            },
                            next - cur,
                            r.first_frame.is_none(),
                        );
                        break;
                    }
                }
                expect = if r.first_frame.is_some() {
                    r.handover
                } else {
                    carry
                };
            }
        }
        out
    }

    /// Settles, after the scan, what only shows across ranges
    /// ([`Self::tiling_errors`]). Under the fail policy the first problem
    /// is the error. Under the skip policy they are recorded as skipped
    /// corrupt frames; objects are then read whole ([`whole_files_spread`](crate::datasource::partitions::whole_files_spread)),
    /// so a range that took a false frame boundary
    /// ([`ErrorKind::RangesOverlap`]) cannot occur and is an error if it
    /// does: the scan's rows would hold a frame a read of the chain never
    /// takes.
    pub fn settle(&self, policy: CorruptPolicy) -> Result<(), FrameError> {
        let errors = self.tiling_errors();
        let Some(first) = errors.first() else {
            return Ok(());
        };
        if policy == CorruptPolicy::Fail {
            return Err(first.clone());
        }
        if let Some(e) = errors
            .iter()
            .find(|e| matches!(e.kind(), ErrorKind::RangesOverlap { .. }))
        {
            return Err(e.clone());
        }
        self.record_skipped(&errors);
        Ok(())
    }

    /// Records tiling errors as skipped corrupt frames (skip policy).
    pub fn record_skipped(&self, errors: &[FrameError]) {
        let problems = self.tiling_problems();
        let mut g = self.inner.lock().unwrap();
        for e in errors {
            g.totals.corrupt_frames += 1;
            let (skipped, open) = problems
                .iter()
                .find(|(p, _, _)| p == e)
                .map(|(_, s, open)| (*s, *open))
                .unwrap_or(match e.error.kind {
                    ErrorKind::Unreadable { next } => (next.saturating_sub(e.error.offset), false),
                    _ => (0, false),
                });
            g.corrupt.push(CorruptRecord {
                key: e.key.clone(),
                offset: e.error.offset,
                reason: e.error.kind.to_string(),
                skipped_bytes: skipped,
                open,
            });
        }
    }

    pub(super) fn merge(&self, local: LocalLog) {
        let mut g = self.inner.lock().unwrap();
        let t = &mut g.totals;
        t.frames += local.totals.frames;
        t.payloads += local.totals.payloads;
        t.points += local.totals.points;
        t.bytes_fetched += local.totals.bytes_fetched;
        t.corrupt_frames += local.totals.corrupt_frames;
        t.misrouted_payloads += local.totals.misrouted_payloads;
        t.misrouted_points += local.totals.misrouted_points;
        g.corrupt.extend(local.corrupt);
        g.misrouted.extend(local.misrouted);
        g.ranges.extend(local.range);
    }
}

#[derive(Default)]
pub(super) struct LocalLog {
    pub(super) totals: ScanTotals,
    pub(super) corrupt: Vec<CorruptRecord>,
    pub(super) misrouted: Vec<MisroutedRecord>,
    pub(super) range: Option<RangeRecord>,
}

/// A range's log as it travels from a scan on one machine to the job's
/// client on another (`PayloadOptions::emit_log`): every field, those the
/// report leaves out included.
#[derive(Serialize, Deserialize)]
struct WireLog {
    totals: ScanTotals,
    corrupt: Vec<(CorruptRecord, bool)>,
    misrouted: Vec<MisroutedRecord>,
    range: Option<(RangeRecord, Vec<Rejected>)>,
}

impl LocalLog {
    /// The log as JSON, for [`ScanLog::merge_wire`].
    pub(super) fn to_wire(&self) -> String {
        serde_json::to_string(&WireLog {
            totals: self.totals.clone(),
            corrupt: self.corrupt.iter().map(|c| (c.clone(), c.open)).collect(),
            misrouted: self.misrouted.clone(),
            range: self.range.as_ref().map(|r| (r.clone(), r.rejected.clone())),
        })
        .expect("a scan log serialises")
    }
}

impl ScanLog {
    /// Records a range read to its end by a reader outside a scan (the
    /// frame reader's fuzz target checks reads against the tiling check).
    pub fn record_range(&self, range: RangeRecord) {
        self.merge(LocalLog {
            range: Some(range),
            ..LocalLog::default()
        });
    }

    /// Merges the log of a range scanned elsewhere, as its scan emitted it
    /// ([`LocalLog::to_wire`]).
    pub fn merge_wire(&self, wire: &str) -> Result<(), String> {
        let w: WireLog = serde_json::from_str(wire)
            .map_err(|e| format!("a scan log that does not parse: {e}"))?;
        self.merge(LocalLog {
            totals: w.totals,
            corrupt: w
                .corrupt
                .into_iter()
                .map(|(mut c, open)| {
                    c.open = open;
                    c
                })
                .collect(),
            misrouted: w.misrouted,
            range: w.range.map(|(mut r, rejected)| {
                r.rejected = rejected;
                r
            }),
        });
        Ok(())
    }
}
