//! Reading the frames of one byte range of one object.
//!
//! A range `[start, end)` owns exactly the frames whose length prefix starts
//! in it (spec section 2). The [`FrameCursor`] finds the first of them with
//! the spec's zstd-magic + chain rule ([`find_frame_start`]) without reading
//! the object from byte 0, then walks the chain frame by frame. Bytes are
//! fetched in bounded chunks that never go past `end + 8` except for what the
//! last frame needs: its body and an 8-byte look-ahead at the frame after it,
//! whose own chain is checked with one more 8-byte read. A sync candidate's
//! chain is checked the same way before its body is fetched. So an intact
//! range fetches at most the range, one frame and a few 8-byte look-aheads.
//!
//! Every range reads the object as one reader from byte 0 would (the
//! canonical walk: follow the chain, a frame with a sound length prefix
//! but a corrupt body being skipped by its length; on a bad length prefix
//! report it and resynchronise at the first frame start after it. A length
//! prefix is sound when it is within the limits and the object and either
//! the chain goes on after it or the body is one well-formed zstd frame:
//! a length that satisfies neither is not trusted to skip bytes that may
//! hold good frames), so
//! what is read and
//! reported does not depend on how the object is split. Edge cases, each
//! tested in `tests/main/ranges.rs` or `tests/main/scan.rs`:
//! * a range that starts at 0 does not search: byte 0 must be a frame;
//! * a range inside one large frame owns no frame and yields nothing;
//! * the frame the chain reaches at or after `end` (the hand-over) belongs
//!   to a later range, which finds it by the sync rule only if it chains
//!   and its body is well formed. The 8 bytes there must look like a frame
//!   (else this range reports them, once, and the next range resyncs by
//!   itself); when that frame does not chain, no later range will take it,
//!   so this range reads it (and reports what follows it). A hand-over
//!   frame that chains but whose body is corrupt is rejected by the next
//!   range's sync, which records it ([`FrameCursor::rejected`]); the scan
//!   log turns it into a report with the real reason after the scan;
//! * under the skip policy, a corrupt frame is reported and the cursor
//!   resynchronises with the same rule a range start uses, from the byte
//!   after the corrupt frame's offset; a skipped region that runs past
//!   `end` is extended after the scan to the first frame a later range
//!   found ([`ScanLog::corrupt`](crate::datasource::scan_log::ScanLog::corrupt));
//! * the one case no local rule can settle: a corrupt body (skipped by its
//!   length) that holds a well-formed frame which chains. A range starting
//!   inside that body takes the inner frame. The scan log sees it after
//!   the scan (the range's first frame lies before the previous range's
//!   hand-over, [`ErrorKind::RangesOverlap`]) and the fail policy fails.
//!   The skip policy never splits objects
//!   ([`whole_files_spread`](crate::datasource::partitions::whole_files_spread)),
//!   so under it every object is one range from byte 0;
//! * a local file shorter than the listed size (truncated after listing)
//!   is read up to its real end and its missing tail reported as corruption.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use object_store::ObjectStore;
use object_store::path::Path;

#[cfg(doc)]
use crate::format::payload::find_frame_start;
use crate::format::payload::{
    ErrorKind, FRAME_PROBE_LEN, FormatError, PREFIX_LEN, Rejected, Sync, chains_at, check_body,
    find_frame_start_with, parse_frame_prefix,
};

/// Where an object's bytes come from.
#[derive(Clone)]
pub enum ObjectBytes {
    /// The whole object, already in memory.
    Mapped(Bytes),
    /// A memory-mapped local file: zero-copy like `Mapped`, and the cursor
    /// hands the pages it has read back to the kernel as it goes, so a scan
    /// of a big file does not keep it all resident.
    MappedFile(Bytes, Arc<memmap2::Mmap>),
    /// Ranged GETs against an object store. With the ETag the object was
    /// listed with, every GET is conditional on it (`If-Match`), so an
    /// object replaced after the listing fails the scan instead of mixing
    /// two versions.
    Store {
        store: Arc<dyn ObjectStore>,
        location: Path,
        e_tag: Option<String>,
    },
}

impl ObjectBytes {
    /// Memory-maps a local file.
    pub fn map_file(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(match map(path)? {
            Some(m) => ObjectBytes::MappedFile(Bytes::from_owner(MapOwner(Arc::clone(&m))), m),
            None => ObjectBytes::Mapped(Bytes::new()),
        })
    }

    /// The bytes available locally (`None` for a store: whatever it serves).
    fn local_len(&self) -> Option<u64> {
        match self {
            ObjectBytes::Mapped(b) | ObjectBytes::MappedFile(b, _) => Some(b.len() as u64),
            ObjectBytes::Store { .. } => None,
        }
    }

    pub(crate) async fn fetch(&self, range: Range<u64>) -> Result<Bytes, object_store::Error> {
        match self {
            ObjectBytes::Mapped(b) | ObjectBytes::MappedFile(b, _) => {
                // The cursor never asks past `local_len`; checked anyway so
                // that no input can make this slice panic.
                if range.start > range.end || range.end > b.len() as u64 {
                    return Err(object_store::Error::Generic {
                        store: "mmap",
                        source: format!(
                            "bytes {range:?} are past the end of the {}-byte mapping",
                            b.len()
                        )
                        .into(),
                    });
                }
                Ok(b.slice(range.start as usize..range.end as usize))
            }
            ObjectBytes::Store {
                store,
                location,
                e_tag,
            } => {
                let opts = object_store::GetOptions {
                    range: Some(object_store::GetRange::Bounded(range.clone())),
                    if_match: e_tag.clone(),
                    ..Default::default()
                };
                let got = store.get_opts(location, opts).await?.bytes().await?;
                // A store shortens a range that runs past the object's
                // current end: the object shrank after it was listed.
                if got.len() as u64 != range.end - range.start {
                    return Err(object_store::Error::Generic {
                        store: "object",
                        source: format!(
                            "asked for bytes {range:?} of {location}, got {}: \
                             the object changed after it was listed",
                            got.len()
                        )
                        .into(),
                    });
                }
                Ok(got)
            }
        }
    }
}

/// Memory-maps a local file as [`Bytes`] (zero-copy slices).
pub fn map_file(path: &std::path::Path) -> std::io::Result<Bytes> {
    Ok(match map(path)? {
        Some(m) => Bytes::from_owner(MapOwner(m)),
        None => Bytes::new(),
    })
}

/// Owns a mapping for [`Bytes::from_owner`].
pub struct MapOwner(pub Arc<memmap2::Mmap>);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Maps a file (`None` for an empty one, which cannot be mapped).
pub fn map(path: &std::path::Path) -> std::io::Result<Option<Arc<memmap2::Mmap>>> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: payload and output files are immutable once written (writers
    // replace objects, they never modify them in place). A file truncated
    // before it is mapped is mapped at its real length (the cursor reports
    // the missing tail); one truncated while mapped would fault, as with any
    // mmap reader.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Some(Arc::new(map)))
}

/// Pages of a mapping the cursor has read are released in steps of this size.
pub const RELEASE_STEP: u64 = 4 << 20;

/// Returns the whole pages of `[from, to)` of a mapped file to the kernel:
/// they stay in the page cache, so this only lowers the process's resident
/// set; reading them again refaults the same file contents.
pub fn release_pages(map: &memmap2::Mmap, from: u64, to: u64) {
    const PAGE: u64 = 4096;
    let from = from.div_ceil(PAGE) * PAGE;
    let to = to.min(map.len() as u64) / PAGE * PAGE;
    if to > from {
        // SAFETY: a private read-only file mapping; DONTNEED only drops this
        // process's page table entries and later reads refault the same,
        // immutable, file contents.
        let _ = unsafe {
            map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                from as usize,
                (to - from) as usize,
            )
        };
    }
}

/// Errors of the cursor: corruption (a property of the bytes) or I/O.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error(transparent)]
    Corrupt(FormatError),
    #[error("reading bytes {range:?}: {source}")]
    Io {
        range: Range<u64>,
        #[source]
        source: object_store::Error,
    },
}

/// A frame of the range: its offset and its body (zero-copy from the mapping
/// or from the fetched chunk).
#[derive(Debug, Clone)]
pub struct Frame {
    pub offset: u64,
    pub body: Bytes,
}

/// What the cursor yields.
#[derive(Debug)]
pub enum Step {
    Frame(Frame),
    /// Under the skip policy: a corrupt region starting at `error.offset`,
    /// `skipped` bytes of it inside this range, after which the cursor
    /// resynchronised (or stopped). `open`: the region runs on past this
    /// range's end, up to the first frame a later range finds (see
    /// [`ScanLog::corrupt`](crate::datasource::scan_log::ScanLog::corrupt)).
    Skipped {
        error: FormatError,
        skipped: u64,
        open: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for the first frame at or after this offset.
    Seek(u64),
    /// The next frame starts here.
    At(u64),
    Done,
}

/// At most this many rejected sync candidates are kept per range.
const MAX_REJECTED: usize = 1024;

/// Walks the frames of `[start, end)` of an object of `object_len` bytes.
pub struct FrameCursor {
    source: ObjectBytes,
    /// The object's length as listed.
    listed_len: u64,
    /// The bytes that can be read: `listed_len`, or less for a local file
    /// truncated after it was listed.
    object_len: u64,
    end: u64,
    chunk: u64,
    skip_corrupt: bool,
    buf: Bytes,
    buf_start: u64,
    state: State,
    fetched: u64,
    first_frame: Option<u64>,
    stop: u64,
    handover: Option<u64>,
    rejected: Vec<Rejected>,
    released: u64,
}

/// Largest fetch for a remote range read.
pub const DEFAULT_CHUNK: u64 = 8 << 20;

impl FrameCursor {
    pub fn new(
        source: ObjectBytes,
        object_len: u64,
        range: Range<u64>,
        skip_corrupt: bool,
    ) -> Self {
        let listed_len = object_len;
        let object_len = source.local_len().map_or(listed_len, |l| l.min(listed_len));
        let end = range.end.min(object_len);
        let start = range.start.min(end);
        let chunk = match source {
            ObjectBytes::Mapped(_) | ObjectBytes::MappedFile(..) => u64::MAX,
            ObjectBytes::Store { .. } => DEFAULT_CHUNK,
        };
        Self {
            source,
            listed_len,
            object_len,
            end,
            chunk,
            skip_corrupt,
            buf: Bytes::new(),
            buf_start: start,
            // Only the range that starts at 0 reads from 0 without a search
            // (a range past the end of a truncated file is clamped to it).
            state: if range.start == 0 {
                State::At(0)
            } else {
                State::Seek(start)
            },
            fetched: 0,
            first_frame: None,
            stop: end,
            handover: None,
            rejected: Vec::new(),
            released: start,
        }
    }

    /// Sets the largest single fetch of a remote object. A mapped object
    /// is read as one zero-copy slice per range whatever this says: chunks
    /// would only make the cursor copy every frame that straddles two of
    /// them into a fresh buffer.
    pub fn with_chunk(mut self, chunk: u64) -> Self {
        if matches!(self.source, ObjectBytes::Store { .. }) {
            self.chunk = chunk.max(FRAME_PROBE_LEN as u64);
        }
        self
    }

    /// Bytes fetched so far (for a mapped object: bytes touched).
    pub fn bytes_fetched(&self) -> u64 {
        self.fetched
    }

    /// Offset of the first frame this range owns, once known.
    pub fn first_frame(&self) -> Option<u64> {
        self.first_frame
    }

    /// Where this range stopped once done: the offset just after the last
    /// frame it read, the offset of the corruption it reported last, or its
    /// end when it holds no frame.
    pub fn stop(&self) -> u64 {
        self.stop
    }

    /// Once done: the offset at or after `end` where the chain of this
    /// range's frames continues, when this range handed it over intact (the
    /// bytes there look like a frame that chains). A later range must start
    /// exactly there. `None` when the range read no frame, or ended with a
    /// reported corruption (the next range resynchronises by itself), or at
    /// the end of the object.
    pub fn handover(&self) -> Option<u64> {
        self.handover
    }

    /// Sync candidates this range's first search did not take although they
    /// chained, because their body is not one well-formed zstd frame (in
    /// offset order). When the previous range hands over at one of them it
    /// is a real frame with a corrupt body.
    pub fn rejected(&self) -> &[Rejected] {
        &self.rejected
    }

    /// Makes `buf` cover `[from, to)`; fetches at most one chunk beyond
    /// `from` but never past `max(to, end + 8)`.
    async fn ensure(&mut self, from: u64, to: u64) -> Result<(), CursorError> {
        let to = to.min(self.object_len);
        let buf_end = self.buf_start + self.buf.len() as u64;
        if from >= self.buf_start && to <= buf_end {
            return Ok(());
        }
        let cap = (self.end + FRAME_PROBE_LEN as u64)
            .min(self.object_len)
            .max(to);
        let fetch_to = from.saturating_add(self.chunk).min(cap).max(to);
        // Keep what we have of [from, buf_end) and fetch the rest.
        let (keep, fetch_from) = if from >= self.buf_start && from < buf_end {
            (self.buf.slice((from - self.buf_start) as usize..), buf_end)
        } else {
            (Bytes::new(), from)
        };
        let fetched = self.fetch(fetch_from..fetch_to).await?;
        self.buf = if keep.is_empty() {
            fetched
        } else {
            let mut v = Vec::with_capacity(keep.len() + fetched.len());
            v.extend_from_slice(&keep);
            v.extend_from_slice(&fetched);
            Bytes::from(v)
        };
        self.buf_start = from;
        Ok(())
    }

    async fn fetch(&mut self, range: Range<u64>) -> Result<Bytes, CursorError> {
        let fetched = self
            .source
            .fetch(range.clone())
            .await
            .map_err(|source| CursorError::Io {
                range: range.clone(),
                source,
            })?;
        self.fetched += fetched.len() as u64;
        Ok(fetched)
    }

    fn window(&self, from: u64, to: u64) -> &[u8] {
        &self.buf[(from - self.buf_start) as usize..(to - self.buf_start) as usize]
    }

    /// Whether the chain continues at `next`: the object's end, or 8 bytes
    /// that look like a frame start. Reads those 8 bytes on their own when
    /// the buffer does not hold them (no fetch of what lies between).
    async fn chains(&mut self, next: u64) -> Result<bool, CursorError> {
        if next >= self.object_len {
            return Ok(next == self.object_len);
        }
        let probe_end = (next + FRAME_PROBE_LEN as u64).min(self.object_len);
        let buf_end = self.buf_start + self.buf.len() as u64;
        if next >= self.buf_start && probe_end <= buf_end {
            return Ok(chains_at(
                self.window(next, probe_end),
                next,
                self.object_len,
            ));
        }
        let probe = self.fetch(next..probe_end).await?;
        Ok(chains_at(&probe, next, self.object_len))
    }

    /// The first frame start in `[from, until)` by the spec's rule, or `None`.
    /// `record` keeps the candidates rejected on the way.
    async fn seek(
        &mut self,
        from: u64,
        until: u64,
        record: bool,
    ) -> Result<Option<u64>, CursorError> {
        let mut from = from;
        loop {
            if from >= until.min(self.object_len) {
                return Ok(None);
            }
            self.ensure(from, (from + FRAME_PROBE_LEN as u64).min(self.object_len))
                .await?;
            let mut rejected = Vec::new();
            let found = find_frame_start_with(
                self.window(from, self.buf_start + self.buf.len() as u64),
                from,
                from,
                until,
                self.object_len,
                &mut |r| rejected.push(r),
            );
            if record {
                for r in rejected {
                    // A candidate seen again after a longer window is
                    // reported again: keep it once.
                    if self.rejected.len() < MAX_REJECTED
                        && self.rejected.last().is_none_or(|l| l.offset < r.offset)
                    {
                        self.rejected.push(r);
                    }
                }
            }
            match found {
                Sync::Found(p) => return Ok(Some(p)),
                Sync::None => return Ok(None),
                Sync::NeedMore {
                    candidate,
                    need_end,
                } => {
                    self.ensure(candidate, need_end).await?;
                    from = candidate;
                }
                Sync::Candidate { candidate, next } => {
                    if self.chains(next).await? {
                        // Worth fetching its body (at most one frame).
                        let to = (next + FRAME_PROBE_LEN as u64).min(self.object_len);
                        self.ensure(candidate, to).await?;
                        from = candidate;
                    } else {
                        from = candidate + 1;
                    }
                }
            }
        }
    }

    /// The next frame (or skipped region) of the range; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Step>, CursorError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Seek(from) => match self.seek(from, self.end, true).await? {
                    Some(p) => self.state = State::At(p),
                    None => {
                        self.done_at(self.end);
                        return Ok(None);
                    }
                },
                State::At(p) => {
                    self.release_before(p);
                    if p >= self.object_len {
                        self.done_at(p);
                        if self.object_len < self.listed_len {
                            let e = FormatError {
                                offset: p,
                                kind: ErrorKind::ObjectShorter {
                                    listed: self.listed_len,
                                    found: self.object_len,
                                },
                            };
                            return self.corrupt(e, p).await;
                        }
                        return Ok(None);
                    }
                    let owned = p < self.end;
                    let remaining = self.object_len - p;
                    let probe_end = (p + FRAME_PROBE_LEN as u64).min(self.object_len);
                    self.ensure(p, probe_end).await?;
                    let probe = self.window(p, probe_end);
                    match parse_frame_prefix(probe, p, remaining) {
                        Ok(body_len) => {
                            let body_start = p + PREFIX_LEN as u64;
                            let next = body_start + body_len as u64;
                            if !owned && self.chains(next).await? {
                                // The hand-over: a later range's sync takes
                                // this frame if its body is well formed.
                                self.handover = Some(p);
                                self.done_at(p);
                                return Ok(None);
                            }
                            // Ours, or past our end but not chaining: no
                            // later range would take it, so it is read here.
                            // The body plus the look-ahead at the next frame.
                            let want = (next + FRAME_PROBE_LEN as u64).min(self.object_len);
                            self.ensure(p, want).await?;
                            let body = self.buf.slice(
                                (body_start - self.buf_start) as usize
                                    ..(next - self.buf_start) as usize,
                            );
                            // A corrupt body is skipped by its length only
                            // when the chain goes on after it. When neither
                            // holds, the length prefix is what is wrong:
                            // the bytes it claims may hold good frames, so
                            // the walk resynchronises after `p` instead.
                            if !self.chains(next).await?
                                && let Err(e) = check_body(&body, p)
                            {
                                return self.corrupt(e, p).await;
                            }
                            if owned {
                                self.first_frame.get_or_insert(p);
                            }
                            self.state = State::At(next);
                            self.stop = next;
                            return Ok(Some(Step::Frame(Frame { offset: p, body })));
                        }
                        Err(e) => return self.corrupt(e, p).await,
                    }
                }
            }
        }
    }

    /// Returns the pages of a mapped file below `p` (all read) to the
    /// kernel; they stay in the page cache, so this only lowers the
    /// process's resident set.
    fn release_before(&mut self, p: u64) {
        let ObjectBytes::MappedFile(_, map) = &self.source else {
            return;
        };
        if p < self.released + RELEASE_STEP {
            return;
        }
        release_pages(map, self.released, p);
        self.released = p;
    }

    fn done_at(&mut self, p: u64) {
        self.state = State::Done;
        self.stop = p;
    }

    /// Reports corruption at `p`: an error, or under the skip policy a
    /// skipped region and a resync at the next frame start before `end`.
    /// `skipped` counts the bytes skipped inside this range; past its end a
    /// later range resynchronises by itself, with the same rule, so the
    /// corruption is reported once and the same frames are read whatever
    /// the split.
    async fn corrupt(&mut self, e: FormatError, p: u64) -> Result<Option<Step>, CursorError> {
        self.handover = None;
        if !self.skip_corrupt {
            self.done_at(p);
            return Err(CursorError::Corrupt(e));
        }
        if p >= self.end {
            self.done_at(p);
            return Ok(Some(Step::Skipped {
                error: e,
                skipped: 0,
                open: true,
            }));
        }
        let (skipped, open) = match self.seek(p + 1, self.end, false).await? {
            Some(q) => {
                self.state = State::At(q);
                (q - p, false)
            }
            None => {
                self.done_at(self.end);
                (self.end - p, true)
            }
        };
        Ok(Some(Step::Skipped {
            error: e,
            skipped,
            open,
        }))
    }
}
