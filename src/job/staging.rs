//! Staging: how the groups of a job that spooled reach the data files.
//! Each group's encoded series (a group of resident buckets, then each
//! spooled bucket, each in key order) go to an encoded spool, except the
//! last group's: a k-way merge by series key of the spooled groups, on a
//! thread of its own, takes the last group's series as they are encoded
//! and writes the files (see `buckets.rs`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::format::tsf::{self, SeriesHeader};
use crate::job::encode::{Files, Sink, joined};
use crate::job::error::{IoContext, JobError};

/// One group's encoded series, in key order, in a scratch file: what a
/// group of series the job encodes apart (a spooled bucket) leaves for the
/// final merge into the data files.
///
/// Record (little-endian; this module's own, never read elsewhere):
/// `org u64 | metric u64 | kind u8 | interval u32 | meta_len u32 | meta |
/// points u64 | blocks u32 | (codec u8 | n_points u32 | min_ts i64 |
/// max_ts i64 | len u32 | bytes)*`.
pub struct EncodedSpool {
    path: PathBuf,
    w: std::io::BufWriter<std::fs::File>,
    pub series: u64,
    pub bytes: u64,
    /// Where the current group began, and the groups written so far (each
    /// in key order; one k-way merge takes them all).
    start: u64,
    segments: Vec<std::ops::Range<u64>>,
}

impl EncodedSpool {
    pub fn create(path: PathBuf, buffer: usize) -> Result<Self, JobError> {
        let f = std::fs::File::create(&path)
            .at(format_args!("creating spool file {}", path.display()))?;
        Ok(Self {
            w: std::io::BufWriter::with_capacity(buffer.max(4096), f),
            path,
            series: 0,
            bytes: 0,
            start: 0,
            segments: Vec::new(),
        })
    }

    /// Ends the current group and flushes the file; returns the groups'
    /// byte ranges so far.
    fn flush_groups(&mut self) -> Result<Vec<std::ops::Range<u64>>, JobError> {
        self.mark()?;
        self.w
            .flush()
            .at(format_args!("writing spool file {}", self.path.display()))?;
        Ok(self.segments.clone())
    }

    /// Flushes the file; returns its path and its groups' byte ranges.
    pub fn close(mut self) -> Result<(PathBuf, Vec<std::ops::Range<u64>>), JobError> {
        self.mark()?;
        self.w
            .flush()
            .at(format_args!("writing spool file {}", self.path.display()))?;
        Ok((self.path, self.segments))
    }
}

impl Sink for EncodedSpool {
    fn append(&mut self, h: &SeriesHeader<'_>, e: tsf::EncodedSeries) -> Result<(), JobError> {
        let mut rec = Vec::with_capacity(40 + h.metadata.len() + e.blocks.len() * 32);
        rec.extend_from_slice(&h.org_id.to_le_bytes());
        rec.extend_from_slice(&h.metric_id.to_le_bytes());
        rec.push(h.kind);
        rec.extend_from_slice(&h.interval_s.to_le_bytes());
        rec.extend_from_slice(&(h.metadata.len() as u32).to_le_bytes());
        rec.extend_from_slice(h.metadata.as_bytes());
        rec.extend_from_slice(&e.points.to_le_bytes());
        rec.extend_from_slice(&(e.blocks.len() as u32).to_le_bytes());
        let what = format_args!("writing spool file {}", self.path.display());
        self.w.write_all(&rec).at(what)?;
        self.bytes += rec.len() as u64;
        for b in &e.blocks {
            let mut head = [0u8; 25];
            head[0] = b.codec;
            head[1..5].copy_from_slice(&b.n_points.to_le_bytes());
            head[5..13].copy_from_slice(&b.min_ts.to_le_bytes());
            head[13..21].copy_from_slice(&b.max_ts.to_le_bytes());
            head[21..25].copy_from_slice(&(b.bytes.len() as u32).to_le_bytes());
            self.w.write_all(&head).at(what)?;
            self.w.write_all(&b.bytes).at(what)?;
            self.bytes += 25 + b.bytes.len() as u64;
        }
        self.series += 1;
        Ok(())
    }

    fn mark(&mut self) -> Result<(), JobError> {
        if self.bytes > self.start {
            self.segments.push(self.start..self.bytes);
            self.start = self.bytes;
        }
        Ok(())
    }
}

/// One series read back from an encoded spool.
struct SpooledSeries {
    org_id: u64,
    metric_id: u64,
    kind: u8,
    interval_s: u32,
    metadata: String,
    encoded: tsf::EncodedSeries,
}

impl SpooledSeries {
    fn append_to(self, files: &mut Files) -> Result<(), JobError> {
        let Self {
            org_id,
            metric_id,
            kind,
            interval_s,
            metadata,
            encoded,
        } = self;
        let h = SeriesHeader {
            org_id,
            metric_id,
            kind,
            interval_s,
            metadata: &metadata,
        };
        files.append(&h, encoded)
    }
}

/// Reads an encoded spool's series in order.
struct SpoolReader {
    path: PathBuf,
    r: std::io::BufReader<std::io::Take<std::fs::File>>,
    block_points: usize,
}

impl SpoolReader {
    fn open(
        path: &std::path::Path,
        segment: std::ops::Range<u64>,
        buffer: usize,
        block_points: usize,
    ) -> Result<Self, JobError> {
        use std::io::{Read, Seek};
        let what = format_args!("reading spool file {}", path.display());
        let mut f = std::fs::File::open(path).at(what)?;
        f.seek(std::io::SeekFrom::Start(segment.start)).at(what)?;
        Ok(Self {
            r: std::io::BufReader::with_capacity(
                buffer.max(4096),
                f.take(segment.end - segment.start),
            ),
            path: path.to_path_buf(),
            block_points,
        })
    }

    fn next(&mut self) -> Result<Option<SpooledSeries>, JobError> {
        use std::io::Read;
        let what = format_args!("reading spool file {}", self.path.display());
        let mut head = [0u8; 25];
        // The end of the file, or a whole record.
        match self.r.read(&mut head[..1]).at(what)? {
            0 => return Ok(None),
            _ => self.r.read_exact(&mut head[1..25]).at(what)?,
        }
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
        let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
        let (org_id, metric_id, kind) = (u64_at(&head, 0), u64_at(&head, 8), head[16]);
        let interval_s = u32_at(&head, 17);
        let meta_len = u32_at(&head, 21) as usize;
        let mut meta = vec![0u8; meta_len];
        self.r.read_exact(&mut meta).at(what)?;
        let metadata = String::from_utf8(meta).map_err(|_| {
            JobError::Internal(format!(
                "spool file {}: metadata not UTF-8",
                self.path.display()
            ))
        })?;
        let mut tail = [0u8; 12];
        self.r.read_exact(&mut tail).at(what)?;
        let points = u64_at(&tail, 0);
        let n_blocks = u32_at(&tail, 8) as usize;
        let mut blocks = Vec::with_capacity(n_blocks);
        for _ in 0..n_blocks {
            let mut b = [0u8; 25];
            self.r.read_exact(&mut b).at(what)?;
            let mut bytes = vec![0u8; u32_at(&b, 21) as usize];
            self.r.read_exact(&mut bytes).at(what)?;
            blocks.push(tsf::EncodedBlock {
                codec: b[0],
                n_points: u32_at(&b, 1),
                min_ts: u64_at(&b, 5) as i64,
                max_ts: u64_at(&b, 13) as i64,
                bytes,
            });
        }
        Ok(Some(SpooledSeries {
            org_id,
            metric_id,
            kind,
            interval_s,
            metadata,
            encoded: tsf::EncodedSeries {
                block_points: self.block_points,
                points,
                blocks,
            },
        }))
    }
}

/// Where a series goes in the files: [`Files::order`].
type SeriesOrder = (u32, u64, u64);

/// A k-way merge by series key of an encoded spool's groups (disjoint
/// series, each group in key order) into the files, together with the
/// series of a last group that is not spooled, appended as they come.
struct SpoolMerge {
    readers: Vec<SpoolReader>,
    heads: Vec<Option<SpooledSeries>>,
    /// The next key of each group that has one, and the group.
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(SeriesOrder, usize)>>,
    /// The key last appended to the files.
    last: Option<SeriesOrder>,
    parts: u32,
}

impl SpoolMerge {
    fn open(
        path: &std::path::Path,
        segments: &[std::ops::Range<u64>],
        buffer: usize,
        files: &Files,
    ) -> Result<Self, JobError> {
        let block_points = files.options().writer.block_points;
        let mut m = Self {
            readers: Vec::with_capacity(segments.len()),
            heads: Vec::with_capacity(segments.len()),
            heap: std::collections::BinaryHeap::new(),
            last: None,
            parts: files.options().parts,
        };
        for (i, s) in segments.iter().enumerate() {
            let mut r = SpoolReader::open(path, s.clone(), buffer, block_points)?;
            let head = r.next()?;
            if let Some(h) = &head {
                m.heap
                    .push(std::cmp::Reverse((m.order(h.org_id, h.metric_id), i)));
            }
            m.readers.push(r);
            m.heads.push(head);
        }
        Ok(m)
    }

    fn order(&self, org_id: u64, metric_id: u64) -> SeriesOrder {
        Files::order(self.parts, org_id, metric_id)
    }

    /// Records that `key` reaches the files next: an error unless it is
    /// past the last key appended.
    fn next_key(&mut self, key: SeriesOrder) -> Result<(), JobError> {
        if self.last.is_some_and(|l| l >= key) {
            return Err(JobError::Internal(format!(
                "series {}/{} is in two groups, or out of order",
                key.1, key.2
            )));
        }
        self.last = Some(key);
        Ok(())
    }

    /// Appends the spooled series before `until` (all of them: `None`) to
    /// `files`, in key order.
    fn append_until(
        &mut self,
        until: Option<SeriesOrder>,
        files: &mut Files,
    ) -> Result<(), JobError> {
        while let Some(&std::cmp::Reverse((key, i))) = self.heap.peek() {
            if until.is_some_and(|u| key >= u) {
                break;
            }
            self.heap.pop();
            self.next_key(key)?;
            let s = self.heads[i].take().expect("a head for every heap entry");
            s.append_to(files)?;
            let next = self.readers[i].next()?;
            if let Some(n) = &next {
                let key = self.order(n.org_id, n.metric_id);
                self.heap.push(std::cmp::Reverse((key, i)));
            }
            self.heads[i] = next;
        }
        Ok(())
    }
}

/// The sink of a job that encodes its series in groups (a group of
/// resident buckets, then each spooled bucket): each group's series go to
/// an encoded spool, except the last group's, which a thread of its own
/// merges with the spooled groups straight into the files as they are
/// encoded. The merge then overlaps the last group's encoding instead of
/// following it on one thread with the other core idle (it was the job's
/// last 0.4 s on the 2 GiB benchmark input), and the last group is never
/// written to the spool and read back.
pub struct Staging {
    spool: EncodedSpool,
    /// The files, until the last group's merge thread takes them.
    files: Option<Files>,
    last_group: Option<LastGroup>,
    /// The read buffer of each group's reader, by the number of groups.
    read_buffer: Box<dyn Fn(usize) -> usize + Send>,
    /// Groups merged into the files, the last one included.
    groups: u64,
}

/// The thread that merges the last group's series with the spooled groups
/// into the files.
struct LastGroup {
    tx: Option<SyncSender<SpooledSeries>>,
    handle: Option<JoinHandle<Result<Files, JobError>>>,
    /// Set when the job stopped early: the thread stops instead of
    /// writing out the rest of the spooled groups.
    abandoned: Arc<AtomicBool>,
}

impl LastGroup {
    /// Waits for the merge; returns the files.
    fn join(&mut self) -> Result<Files, JobError> {
        drop(self.tx.take());
        joined(self.handle.take(), "merging")
    }
}

impl Drop for LastGroup {
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::Relaxed);
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What staging a job's groups did: the encoded spool's bytes and the
/// groups merged.
pub struct StagingSummary {
    pub encoded_spool_bytes: u64,
    pub groups: u64,
}

/// Series of the last group queued for its merging thread at most.
const LAST_GROUP_QUEUE: usize = 256;

impl Staging {
    pub fn new(
        spool: EncodedSpool,
        files: Files,
        read_buffer: impl Fn(usize) -> usize + Send + 'static,
    ) -> Self {
        Self {
            spool,
            files: Some(files),
            last_group: None,
            read_buffer: Box::new(read_buffer),
            groups: 0,
        }
    }

    /// The merge of the groups spooled so far.
    fn start_merge(&mut self, files: &Files) -> Result<SpoolMerge, JobError> {
        let segments = self.spool.flush_groups()?;
        self.groups += segments.len() as u64;
        let buffer = (self.read_buffer)(segments.len() + 1);
        SpoolMerge::open(&self.spool.path, &segments, buffer, files)
    }

    fn take_files(&mut self) -> Result<Files, JobError> {
        self.files
            .take()
            .ok_or_else(|| JobError::Internal("the staged files are gone".into()))
    }

    /// Merges what is left into the files and deletes the spool; returns
    /// the files.
    pub fn finish(mut self) -> Result<(Files, StagingSummary), JobError> {
        let files = match self.last_group.take() {
            Some(mut last) => last.join()?,
            None => {
                let mut files = self.take_files()?;
                let mut merge = self.start_merge(&files)?;
                merge.append_until(None, &mut files)?;
                files
            }
        };
        let summary = StagingSummary {
            encoded_spool_bytes: self.spool.bytes,
            groups: self.groups,
        };
        let (path, _) = self.spool.close()?;
        let _ = std::fs::remove_file(&path);
        Ok((files, summary))
    }
}

impl Sink for Staging {
    fn append(&mut self, h: &SeriesHeader<'_>, e: tsf::EncodedSeries) -> Result<(), JobError> {
        let Some(last) = &mut self.last_group else {
            return self.spool.append(h, e);
        };
        let s = SpooledSeries {
            org_id: h.org_id,
            metric_id: h.metric_id,
            kind: h.kind,
            interval_s: h.interval_s,
            metadata: h.metadata.to_string(),
            encoded: e,
        };
        let sent = last.tx.as_ref().is_some_and(|tx| tx.send(s).is_ok());
        if sent {
            return Ok(());
        }
        // The merging thread stopped: why.
        match last.join() {
            Err(e) => Err(e),
            Ok(_) => Err(JobError::Internal(
                "the merging thread stopped without an error".into(),
            )),
        }
    }

    fn mark(&mut self) -> Result<(), JobError> {
        match self.last_group {
            Some(_) => Ok(()),
            None => self.spool.mark(),
        }
    }

    fn last(&mut self) -> Result<(), JobError> {
        if self.last_group.is_some() {
            return Ok(());
        }
        let mut files = self.take_files()?;
        let mut merge = self.start_merge(&files)?;
        self.groups += 1;
        let (tx, rx) = sync_channel::<SpooledSeries>(LAST_GROUP_QUEUE);
        let abandoned = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&abandoned);
        let handle = std::thread::Builder::new()
            .name("tailor-merge".into())
            .spawn(move || {
                for s in rx {
                    let key = merge.order(s.org_id, s.metric_id);
                    merge.append_until(Some(key), &mut files)?;
                    merge.next_key(key)?;
                    s.append_to(&mut files)?;
                }
                if stop.load(Ordering::Relaxed) {
                    return Err(JobError::Internal("the merge was abandoned".into()));
                }
                merge.append_until(None, &mut files)?;
                Ok(files)
            })
            .map_err(|e| JobError::io("starting the merging thread", e))?;
        self.last_group = Some(LastGroup {
            tx: Some(tx),
            handle: Some(handle),
            abandoned,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tsf::WriterOptions;
    use crate::job::encode::{EncodeTotals, FileOptions, OutputWriter};
    use crate::job::measure::Phase;
    use crate::job::merge::SeriesInput;

    fn options(parts: u32) -> FileOptions {
        FileOptions {
            // Small files: a group's series cross file boundaries.
            max_file_bytes: 6 << 10,
            writer: WriterOptions {
                block_points: 64,
                ..WriterOptions::default()
            },
            round_points: 500,
            keep: None,
            parts,
        }
    }

    /// A series whose points depend on its key.
    fn series(org_id: u64, metric_id: u64) -> SeriesInput {
        let n = 50 + (org_id * 7 + metric_id * 13) % 200;
        SeriesInput {
            org_id,
            metric_id,
            kind: (metric_id % 2) as u8,
            interval_s: 10,
            metadata: format!("m{metric_id}"),
            points: (0..n as i64)
                .map(|i| (1_700_000_000_000 + i * 10_000, (i as f64 * 0.5).to_bits()))
                .collect(),
            ..Default::default()
        }
    }

    fn sorted(parts: u32, keys: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut keys = keys.to_vec();
        Files::sort_keys(parts, &mut keys);
        keys
    }

    /// Staged files' names and bytes.
    type Contents = Vec<(String, Vec<u8>)>;

    /// The staged files, by name.
    fn contents(files: Files) -> Contents {
        let phase = Phase::measured("encode", Default::default(), Default::default());
        let staged = files.finish(EncodeTotals::default(), phase).unwrap();
        staged
            .files
            .iter()
            .map(|f| (f.name.clone(), std::fs::read(&f.local).unwrap()))
            .collect()
    }

    /// `groups` through an encoded spool and the merge, the last one
    /// merged as it is encoded when `last`.
    fn staged(
        parts: u32,
        groups: &[Vec<(u64, u64)>],
        last: bool,
    ) -> Result<(Contents, StagingSummary), JobError> {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path().join("stage"), options(parts));
        std::fs::create_dir(dir.path().join("stage")).unwrap();
        let spool = EncodedSpool::create(dir.path().join("groups.enc"), 4096)?;
        let mut w = OutputWriter::spawn(Staging::new(spool, files, |_| 4096), options(parts));
        for (i, g) in groups.iter().enumerate() {
            if last && i + 1 == groups.len() {
                w.last()?;
            }
            for &(org, metric) in &sorted(parts, g) {
                w.send(series(org, metric))?;
            }
            w.mark()?;
        }
        let (staging, _) = w.finish()?;
        let (files, summary) = staging.finish()?;
        assert!(!dir.path().join("groups.enc").exists());
        Ok((contents(files), summary))
    }

    /// The same series in one stream, in key order.
    fn direct(parts: u32, groups: &[Vec<(u64, u64)>]) -> Contents {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path().to_path_buf(), options(parts));
        let mut w = OutputWriter::spawn(files, options(parts));
        for (org, metric) in sorted(parts, &groups.concat()) {
            w.send(series(org, metric)).unwrap();
        }
        let (files, _) = w.finish().unwrap();
        contents(files)
    }

    /// Disjoint groups of keys, hashed apart as buckets are.
    fn groups(n: usize, keys: u64) -> Vec<Vec<(u64, u64)>> {
        let mut g = vec![Vec::new(); n];
        for org in 1..=4u64 {
            for metric in 0..keys {
                let h = (org * 0x9E37_79B9 + metric * 0x85EB_CA6B) % 1_000_003;
                g[(h % n as u64) as usize].push((org, metric));
            }
        }
        g
    }

    #[test]
    fn the_last_group_merged_as_it_is_encoded_gives_the_bytes_of_one_stream() {
        for parts in [1, 3] {
            for n in [1, 2, 4] {
                let g = groups(n, 60);
                let want = direct(parts, &g);
                assert!(want.len() > 2, "several files: {}", want.len());
                for last in [false, true] {
                    let (got, summary) = staged(parts, &g, last).unwrap();
                    assert!(got == want, "parts {parts}, {n} groups, last {last}");
                    assert_eq!(summary.groups, n as u64);
                    // The last group streamed is never spooled.
                    let spooled = summary.encoded_spool_bytes;
                    if last {
                        let (_, all) = staged(parts, &g, false).unwrap();
                        assert!(spooled < all.encoded_spool_bytes);
                        if n == 1 {
                            assert_eq!(spooled, 0);
                        }
                    }
                }
            }
        }
        // An empty last group, and an empty spooled one.
        let mut g = groups(3, 40);
        g.push(Vec::new());
        assert!(staged(1, &g, true).unwrap().0 == direct(1, &g));
        g.insert(0, Vec::new());
        assert!(staged(1, &g, true).unwrap().0 == direct(1, &g));
    }

    /// Bytes of the files under `dir`.
    fn bytes_under(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn a_job_stopped_during_the_last_group_does_not_write_out_the_spooled_ones() {
        let g = groups(2, 200);
        let run = |finish: bool| {
            let dir = tempfile::tempdir().unwrap();
            let stage = dir.path().join("stage");
            std::fs::create_dir(&stage).unwrap();
            let files = Files::new(stage.clone(), options(1));
            let spool = EncodedSpool::create(dir.path().join("groups.enc"), 4096).unwrap();
            let mut w = OutputWriter::spawn(Staging::new(spool, files, |_| 4096), options(1));
            for &(org, metric) in &sorted(1, &g[0]) {
                w.send(series(org, metric)).unwrap();
            }
            w.mark().unwrap();
            w.last().unwrap();
            // The last group's first series only.
            let (org, metric) = sorted(1, &g[1])[0];
            w.send(series(org, metric)).unwrap();
            let (staging, _) = w.finish().unwrap();
            if finish {
                staging.finish().unwrap();
            } else {
                // As when the job fails: dropped, not finished.
                drop(staging);
            }
            bytes_under(&stage)
        };
        let whole = run(true);
        let stopped = run(false);
        assert!(stopped * 4 < whole, "{stopped} of {whole} bytes written");
    }

    #[test]
    fn a_series_in_two_groups_is_an_internal_error_not_a_panic() {
        for last in [false, true] {
            let mut g = groups(3, 30);
            let twice = g[0][g[0].len() / 2];
            g[2].push(twice);
            match staged(1, &g, last) {
                Err(JobError::Internal(m)) => {
                    assert!(m.contains(&format!("{}/{}", twice.0, twice.1)), "{m}")
                }
                other => panic!("last {last}: {:?}", other.map(|(f, _)| f.len())),
            }
        }
    }
}
