//! [`PayloadOpener`]: opens one byte range of one object and reads it
//! (`RangeScan`).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileOpenFuture, FileOpener};
use datafusion::physical_plan::metrics::{Count, Time};
use futures::{Stream, StreamExt};
use object_store::ObjectStore;

use crate::datasource::batch::{BatchBuilder, chunk_len};
use crate::datasource::error::StoreOpError;
use crate::datasource::options::{CorruptPolicy, split_above};
use crate::datasource::reader::{CursorError, FrameCursor, ObjectBytes, Step};
use crate::datasource::scan_log::{CorruptRecord, LocalLog, MisroutedRecord, RangeRecord};
use crate::datasource::source::PayloadSource;
use crate::format::payload::{
    BodyInfo, Decoder, FormatError, FrameError, Payload, PayloadHeader, check_body, parse_payload,
};
use crate::format::shard::Shard;

/// The shard directory an object key was found under: the path component
/// before `dt=…`.
pub fn shard_of_key(key: &str) -> Option<&str> {
    let parts: Vec<&str> = key.split('/').collect();
    let dt = parts.iter().rposition(|p| p.starts_with("dt="))?;
    (dt > 0).then(|| parts[dt - 1])
}

/// Opens one byte range of one payload file.
pub struct PayloadOpener {
    pub(super) source: Arc<PayloadSource>,
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) file_indices: Vec<usize>,
    pub(super) frames: Count,
    pub(super) points: Count,
    pub(super) bytes_fetched: Count,
    pub(super) corrupt: Count,
    pub(super) decode_time: Time,
}

impl FileOpener for PayloadOpener {
    fn open(&self, file: PartitionedFile) -> Result<FileOpenFuture> {
        let source = Arc::clone(&self.source);
        let store = Arc::clone(&self.store);
        let file_indices = self.file_indices.clone();
        let counters = [
            self.frames.clone(),
            self.points.clone(),
            self.bytes_fetched.clone(),
            self.corrupt.clone(),
        ];
        let decode_time = self.decode_time.clone();
        Ok(Box::pin(async move {
            let key = file.object_meta.location.to_string();
            let size = file.object_meta.size;
            let (start, end) = file.range();
            let bytes = if source.options.mmap_local {
                let path = crate::datasource::store::local_file(&file.object_meta.location);
                // An I/O error (retried by the scheduler, exit code 74),
                // never corruption.
                ObjectBytes::map_file(&path).map_err(|e| {
                    DataFusionError::IoError(std::io::Error::new(
                        e.kind(),
                        format!("memory-mapping {key:?} ({}): {e}", path.display()),
                    ))
                })?
            } else {
                ObjectBytes::Store {
                    store,
                    location: file.object_meta.location.clone(),
                    e_tag: file.object_meta.e_tag.clone(),
                }
            };
            let scan = RangeScan::new(source, key, size, start..end, bytes, file_indices, counters);
            let stream = futures::stream::try_unfold(scan, |mut scan| async move {
                let batch = scan.next_batch().await?;
                Ok(batch.map(|b| (b, scan)))
            });
            Ok(Timed {
                inner: stream.boxed(),
                time: decode_time,
            }
            .boxed())
        }))
    }
}

/// A stream whose polls are timed into `time` (the scan's
/// `elapsed_compute`): what a poll does is compute, whereas waiting for a
/// store's bytes happens between polls. Timed per poll, not per frame:
/// two clock reads a frame were 0.5% of the job's CPU.
struct Timed<S> {
    inner: S,
    time: Time,
}

impl<S: Stream + Unpin> Stream for Timed<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let start = std::time::Instant::now();
        let r = self.inner.poll_next_unpin(cx);
        self.time.add_duration(start.elapsed());
        r
    }
}

/// The state of one range being read.
struct RangeScan {
    source: Arc<PayloadSource>,
    key: String,
    range: Range<u64>,
    cursor: FrameCursor,
    builder: BatchBuilder,
    /// Batches made and not yet returned (a split payload makes several).
    pending: std::collections::VecDeque<RecordBatch>,
    /// Decode buffer of payloads that are split into rows (reused).
    scratch: Vec<u64>,
    decoder: Decoder,
    found_shard: Option<Shard>,
    found_shard_name: String,
    /// The object's index in input order, when the scan routes payloads.
    object: Option<u32>,
    file_indices: Vec<usize>,
    local: LocalLog,
    counters: [Count; 4],
    /// Frames, their input bytes and their points not yet added to
    /// `counters` and the log's progress: added once per [`REPORT_BYTES`]
    /// of input and at the range's end, not per frame (the progress is one
    /// atomic both scan threads wrote for every frame).
    unreported: Unreported,
    done: bool,
    /// The range's log row, once the range is read (`emit_log`).
    log_row: Option<RecordBatch>,
    log_error: Option<String>,
}

/// Spools a payload (`payload` decoded, `body` its frame body) instead of
/// emitting it, if the scan routes payloads and this one's bucket is not
/// kept; returns whether it did. `object` is the index of the object `key`
/// in input order.
fn spool(
    source: &PayloadSource,
    object: Option<u32>,
    key: &str,
    header: &PayloadHeader,
    offset: u64,
    payload: &[u8],
    body: &[u8],
) -> Result<bool> {
    let Some(router) = &source.options.router else {
        return Ok(false);
    };
    if router.keeps(header.org_id, header.metric_id) {
        return Ok(false);
    }
    let object = object.ok_or_else(|| {
        DataFusionError::Internal(format!(
            "routing a payload of {key}, which is not among the scan's objects"
        ))
    })?;
    router
        .spool(object, offset, header, payload, body)
        .map_err(DataFusionError::IoError)?;
    Ok(true)
}

/// See [`RangeScan::unreported`].
#[derive(Debug, Default)]
struct Unreported {
    bytes: u64,
    frames: usize,
    points: usize,
}

/// Input bytes read between two reports of a range's progress.
const REPORT_BYTES: u64 = 1 << 20;

impl RangeScan {
    fn new(
        source: Arc<PayloadSource>,
        key: String,
        size: u64,
        range: Range<u64>,
        bytes: ObjectBytes,
        file_indices: Vec<usize>,
        counters: [Count; 4],
    ) -> Self {
        let skip = source.options.on_corrupt == CorruptPolicy::Skip;
        let cursor = FrameCursor::new(bytes, size, range.clone(), skip)
            .with_chunk(source.options.fetch_chunk);
        let shard_name = shard_of_key(&key).unwrap_or("").to_string();
        let builder = BatchBuilder::new(
            Arc::clone(&source.pool),
            source.batch_size,
            &key,
            &shard_name,
        );
        let object = source
            .options
            .router
            .as_ref()
            .and_then(|r| r.object_index(&key));
        Self {
            object,
            found_shard: Shard::parse(&shard_name),
            found_shard_name: shard_name,
            key,
            range,
            cursor,
            builder,
            pending: Default::default(),
            scratch: Vec::new(),
            decoder: Decoder::new(),
            file_indices,
            local: LocalLog::default(),
            counters,
            unreported: Unreported::default(),
            done: false,
            log_row: None,
            log_error: None,
            source,
        }
    }

    /// Corruption in a frame: fails, or is recorded under the skip policy.
    fn corrupt(&mut self, error: FormatError, skipped: u64, open: bool) -> Result<()> {
        if self.source.options.on_corrupt == CorruptPolicy::Fail {
            return Err(DataFusionError::External(Box::new(FrameError::new(
                self.key.clone(),
                error,
            ))));
        }
        self.counters[3].add(1);
        self.local.totals.corrupt_frames += 1;
        self.local.corrupt.push(CorruptRecord {
            key: self.key.clone(),
            offset: error.offset,
            reason: error.kind.to_string(),
            skipped_bytes: skipped,
            open,
        });
        Ok(())
    }

    fn is_misrouted(&self, h: &PayloadHeader) -> bool {
        match self.found_shard {
            Some(found) => self.source.options.shard_map.shard_of(h.org_id) != found,
            None => true,
        }
    }

    /// Records a decoded payload (totals, and the misrouted list); returns
    /// whether it is misrouted.
    fn record_payload(&mut self, header: &PayloadHeader, offset: u64) -> bool {
        let misrouted = self.is_misrouted(header);
        if misrouted {
            self.local.totals.misrouted_payloads += 1;
            self.local.totals.misrouted_points += header.n_points as u64;
            self.local.misrouted.push(MisroutedRecord {
                key: self.key.clone(),
                offset,
                org_id: header.org_id,
                metric_id: header.metric_id,
                points: header.n_points as u64,
                found_shard: self.found_shard_name.clone(),
                expected_shard: self
                    .source
                    .options
                    .shard_map
                    .shard_of(header.org_id)
                    .to_string(),
            });
        }
        self.local.totals.payloads += 1;
        self.local.totals.points += header.n_points as u64;
        self.unreported.points += header.n_points as usize;
        misrouted
    }

    /// Finishes the builder's batch, if it has rows, into `pending`.
    fn flush(&mut self) -> Result<()> {
        if let Some(b) = self.builder.finish()? {
            self.pending.push_back(b);
        }
        Ok(())
    }

    /// Decodes one frame into the builder (batches it fills go to
    /// `pending`).
    fn decode_frame(&mut self, offset: u64, body: &[u8]) -> Result<()> {
        let info = match check_body(body, offset) {
            Ok(i) => i,
            Err(e) => {
                let len = body.len() as u64 + 4;
                self.corrupt(e, len, false)?;
                return Ok(());
            }
        };
        if let Some(rows) = self.source.options.max_row_points
            && info.content_size > split_above(rows)
        {
            return self.decode_split(offset, body, info, rows);
        }
        if !self.builder.fits(info.content_size) {
            self.flush()?;
        }
        let dst = self.builder.reserve(info.content_size)?;
        let header = match self
            .decoder
            .decompress_into(body, info, dst, offset)
            .and_then(|_| parse_payload(dst, offset).map(|p| p.header))
        {
            Ok(h) => h,
            Err(e) => {
                self.corrupt(e, body.len() as u64 + 4, false)?;
                return Ok(());
            }
        };
        let misrouted = self.record_payload(&header, offset);
        if !misrouted {
            let payload = &self.builder.reserved()[..info.content_size];
            if spool(
                &self.source,
                self.object,
                &self.key,
                &header,
                offset,
                payload,
                body,
            )? {
                // The bytes reserved for it are taken by the next payload.
                return Ok(());
            }
        }
        self.builder.commit(&header, offset, misrouted);
        Ok(())
    }

    /// A payload of more than `rows` points: decoded into the scratch
    /// buffer, then copied into the builder's slabs as rows of at most
    /// `rows` consecutive points, each with its `first_point`.
    fn decode_split(
        &mut self,
        offset: u64,
        body: &[u8],
        info: BodyInfo,
        rows: usize,
    ) -> Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let words = info.content_size.div_ceil(8);
        if scratch.len() < words {
            scratch.resize(words, 0);
        }
        let buf =
            &mut crate::datasource::batch::bytemuck_bytes_mut(&mut scratch)[..info.content_size];
        let r = self
            .decoder
            .decompress_into(body, info, buf, offset)
            .and_then(|_| parse_payload(buf, offset));
        let payload = match r {
            Ok(p) => p,
            Err(e) => {
                self.scratch = scratch;
                self.corrupt(e, body.len() as u64 + 4, false)?;
                return Ok(());
            }
        };
        let misrouted = self.record_payload(&payload.header, offset);
        let header = payload.header;
        let spooled = !misrouted
            && spool(
                &self.source,
                self.object,
                &self.key,
                &header,
                offset,
                buf,
                body,
            )?;
        let r = if spooled {
            Ok(())
        } else {
            self.push_split(&payload, offset, misrouted, rows.max(1))
        };
        self.scratch = scratch;
        r
    }

    /// The rows of [`Self::decode_split`]: at most `rows` points each, the
    /// metadata (up to 64 KiB) only on the last (a series takes it from its
    /// last row, and the others stay small).
    fn push_split(
        &mut self,
        payload: &Payload<'_>,
        offset: u64,
        misrouted: bool,
        rows: usize,
    ) -> Result<()> {
        let last = (payload.timestamps.len() - 1) / rows;
        let chunks = payload
            .timestamps
            .chunks(rows)
            .zip(payload.values.chunks(rows));
        for (i, (ts, values)) in chunks.enumerate() {
            let meta = if i == last { payload.metadata } else { "" };
            if !self.builder.fits(chunk_len(ts.len(), meta.len())) {
                self.flush()?;
            }
            let first = (i * rows) as u32;
            self.builder
                .push_chunk(&payload.header, offset, misrouted, first, ts, values, meta)?;
        }
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                if let Some(batch) = self.filter_and_project(batch)? {
                    return Ok(Some(batch));
                }
                continue;
            }
            if self.done {
                if let Some(e) = self.log_error.take() {
                    return Err(DataFusionError::Internal(format!(
                        "the scan log of {}: {e}",
                        self.key
                    )));
                }
                // Not filtered nor projected: a log row goes out whole.
                return Ok(self.log_row.take());
            }
            let step = match self.cursor.next().await {
                Ok(s) => s,
                Err(CursorError::Corrupt(e)) => {
                    // Only under the fail policy; `corrupt` turns it into the error.
                    self.corrupt(e, 0, false)?;
                    continue;
                }
                Err(CursorError::Io { range, source }) => {
                    return Err(DataFusionError::External(Box::new(StoreOpError {
                        op: "GET",
                        target: format!("{} bytes {range:?}", self.key),
                        source,
                    })));
                }
            };
            match step {
                Some(Step::Frame(frame)) => {
                    self.unreported.bytes += frame.body.len() as u64 + 4;
                    self.unreported.frames += 1;
                    if self.unreported.bytes >= REPORT_BYTES {
                        self.report();
                    }
                    self.local.totals.frames += 1;
                    self.decode_frame(frame.offset, &frame.body)?;
                }
                Some(Step::Skipped {
                    error,
                    skipped,
                    open,
                }) => self.corrupt(error, skipped, open)?,
                None => {
                    self.done = true;
                    self.finish_range();
                    self.flush()?;
                }
            }
        }
    }

    /// Adds the frames, bytes and points not yet reported to the scan's
    /// counters and progress.
    fn report(&mut self) {
        let u = std::mem::take(&mut self.unreported);
        self.source
            .log
            .progress
            .fetch_add(u.bytes, AtomicOrdering::Relaxed);
        self.counters[0].add(u.frames);
        self.counters[1].add(u.points);
    }

    fn finish_range(&mut self) {
        self.report();
        let fetched = self.cursor.bytes_fetched();
        self.counters[2].add(fetched as usize);
        self.local.totals.bytes_fetched += fetched;
        self.local.range = Some(RangeRecord::of(&self.key, self.range.clone(), &self.cursor));
        let local = std::mem::take(&mut self.local);
        if self.source.options.emit_log {
            // The rows before it first: the log is the range's last row.
            match crate::datasource::batch::log_row_batch(&self.key, &local.to_wire()) {
                Ok(b) => self.log_row = Some(b),
                Err(e) => self.log_error = Some(e.to_string()),
            }
            return;
        }
        self.source.log.merge(local);
    }

    fn filter_and_project(&self, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        let batch = match &self.source.predicate {
            Some(p) => {
                let mask = p.evaluate(&batch)?.into_array(batch.num_rows())?;
                filter_record_batch(&batch, mask.as_boolean())?
            }
            None => batch,
        };
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        Ok(Some(batch.project(&self.file_indices)?))
    }
}

impl Drop for RangeScan {
    /// A range whose stream is dropped before its end (`LIMIT`, an error
    /// elsewhere): what it saw is kept, but no range record, so that stopping
    /// early is never taken for a gap in the object.
    fn drop(&mut self) {
        if !self.done {
            self.report();
            let fetched = self.cursor.bytes_fetched();
            self.counters[2].add(fetched as usize);
            self.local.totals.bytes_fetched += fetched;
            self.source.log.merge(std::mem::take(&mut self.local));
        }
    }
}
