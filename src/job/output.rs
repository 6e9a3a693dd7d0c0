//! Reading committed outputs back: a manifest's data files (checked
//! against it) and their series, in key order. Used by `export`, `diff`
//! and `inspect`.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::datasource::store::StoreRoot;
use crate::format::shard::Shard;
use crate::format::tsf;
use crate::job::error::{IoContext, JobError, StoreContext};
use crate::job::manifest::{Manifest, ManifestFile};

/// A format error found in the data file at `path`, naming it.
pub fn data_file_error(path: impl std::fmt::Display, e: tsf::TsfError) -> JobError {
    JobError::BadOutput(format!("data file {path}: {e}"))
}

/// One data file of a committed output, checked against its manifest.
pub struct DataFile {
    pub bytes: Bytes,
    /// Where it was read from, for errors.
    pub path: String,
    map: Option<Arc<memmap2::Mmap>>,
    released: u64,
}

impl DataFile {
    /// A format error found in this file, naming it.
    pub fn error(&self, e: tsf::TsfError) -> JobError {
        data_file_error(&self.path, e)
    }

    /// Tells the file that everything before `offset` has been read: a
    /// mapped file hands those pages back, so reading a file many times
    /// the memory limit keeps a small resident set.
    pub fn release_before(&mut self, offset: u64) {
        if let Some(map) = &self.map
            && offset >= self.released + crate::datasource::reader::RELEASE_STEP
        {
            crate::datasource::reader::release_pages(map, self.released, offset);
            self.released = offset;
        }
    }
}

/// Opens one data file of a manifest (memory-mapped when local, one
/// streamed GET into a mapped temp file otherwise) and checks its size and CRC32C against the manifest.
pub async fn read_data_file(
    root: &StoreRoot,
    m: &Manifest,
    f: &ManifestFile,
) -> Result<DataFile, JobError> {
    let path = root.child(&format!("{}/{}", m.location, f.path));
    // A file the manifest names and the store does not have: the output is
    // incomplete (an error in the data, not one to retry).
    let missing = |e: &dyn std::fmt::Display| {
        JobError::BadOutput(format!(
            "data file {path} named by the manifest of {} cannot be read: {e}",
            m.location
        ))
    };
    let map = if root.local {
        let local = crate::datasource::store::local_file(&path);
        if local.is_dir() {
            return Err(missing(&"it is a directory"));
        }
        crate::datasource::reader::map(&local).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => missing(&e),
            _ => JobError::io(format_args!("reading data file {}", local.display()), e),
        })?
    } else {
        // Streamed into an unlinked temp file and mapped, so that a data
        // file of up to the size cap never sits on the heap and its pages
        // can be handed back as it is read, as for a local file.
        let shown = root.display_of(&path);
        let spooling = "spooling a data file into an unlinked temporary file";
        let temp = tempfile::tempfile().at(spooling)?;
        let mut spool = std::io::BufWriter::with_capacity(1 << 20, temp);
        let mut body = match root.store.get(&path).await {
            Ok(r) => r.into_stream(),
            Err(e @ object_store::Error::NotFound { .. }) => return Err(missing(&e)),
            Err(e) => return Err(e).op("GET", &shown),
        };
        while let Some(chunk) = body.try_next().await.op("GET", &shown)? {
            spool.write_all(&chunk).at(spooling)?;
        }
        let file = spool
            .into_inner()
            .map_err(|e| JobError::io(spooling, e.into_error()))?;
        if file.metadata().at(spooling)?.len() == 0 {
            None
        } else {
            // SAFETY: the file is private to this process (unlinked) and
            // is not written again.
            Some(Arc::new(unsafe { memmap2::Mmap::map(&file) }.at(spooling)?))
        }
    };
    let bytes = match &map {
        Some(m) => Bytes::from_owner(crate::datasource::reader::MapOwner(Arc::clone(m))),
        None => Bytes::new(),
    };
    if bytes.len() as u64 != f.bytes {
        return Err(JobError::BadOutput(format!(
            "data file {path} is {} bytes, the manifest says {}",
            bytes.len(),
            f.bytes
        )));
    }
    // The CRC in steps, releasing what it has read.
    let mut file = DataFile {
        bytes,
        path: path.to_string(),
        map,
        released: 0,
    };
    let mut crc = 0u32;
    let step = crate::datasource::reader::RELEASE_STEP as usize;
    for (i, chunk) in file.bytes.clone().chunks(step).enumerate() {
        crc = crc32c::crc32c_append(crc, chunk);
        file.release_before(((i + 1) * step) as u64);
    }
    file.release_before(u64::MAX / 2);
    file.released = 0;
    if crc != f.crc32c {
        return Err(JobError::BadOutput(format!(
            "data file {path} has CRC32C {crc:08x}, the manifest says {:08x}",
            f.crc32c
        )));
    }
    Ok(file)
}

/// Calls `f` for every series of a committed output, file after file (in
/// key order within each part; [`WindowSeries`] merges parts by key).
pub async fn for_each_series(
    root: &StoreRoot,
    m: &Manifest,
    mut f: impl FnMut(&tsf::SeriesEntry, &[i64], &[u64]) -> Result<(), JobError>,
) -> Result<(), JobError> {
    let mut ts = Vec::new();
    let mut vals = Vec::new();
    for file in &m.files {
        let mut data = read_data_file(root, m, file).await?;
        let bytes = data.bytes.clone();
        let reader = open_data_file(m, file, &data, &bytes)?;
        for entry in reader.footer().series() {
            data.release_before(entry.byte_range().start);
            ts.clear();
            vals.clear();
            reader
                .read_series_into(entry, &mut ts, &mut vals)
                .map_err(|e| data.error(e))?;
            f(entry, &ts, &vals)?;
        }
    }
    Ok(())
}

/// Opens `bytes` (those of `data`, the file `f` of manifest `m`, size and
/// CRC32C checked by [`read_data_file`]) and checks its footer against what
/// the manifest says of it: series and point counts, first and last
/// series, and that every series belongs to the manifest's shard.
pub fn open_data_file<'a>(
    m: &Manifest,
    f: &ManifestFile,
    data: &DataFile,
    bytes: &'a [u8],
) -> Result<tsf::FileReader<'a>, JobError> {
    let reader = tsf::FileReader::open(bytes).map_err(|e| data.error(e))?;
    let series = reader.footer().series();
    let points: u64 = series
        .iter()
        .map(|e| e.n_points)
        .fold(0, u64::saturating_add);
    let key = |e: &tsf::SeriesEntry| [e.org_id, e.metric_id];
    let (first, last) = (series.first().map(key), series.last().map(key));
    if series.len() as u64 != f.series
        || points != f.points
        || first != Some(f.first_series)
        || last != Some(f.last_series)
    {
        let name = |k: Option<[u64; 2]>| k.map_or("none".into(), |[o, m]| format!("{o}/{m}"));
        return Err(JobError::BadOutput(format!(
            "data file {}: holds {} series and {points} points, series {} to {}; the manifest says {} series and {} points, {} to {}",
            data.path,
            series.len(),
            name(first),
            name(last),
            f.series,
            f.points,
            name(Some(f.first_series)),
            name(Some(f.last_series))
        )));
    }
    let map = m.shard_map();
    if let Some(part) = f.part
        && let Some(e) = series
            .iter()
            .find(|e| crate::format::part::part_of(e.org_id, e.metric_id, m.settings.parts) != part)
    {
        return Err(JobError::BadOutput(format!(
            "data file {}: series {}/{} belongs to part {} of {}, not {part}",
            data.path,
            e.org_id,
            e.metric_id,
            crate::format::part::part_of(e.org_id, e.metric_id, m.settings.parts),
            m.settings.parts
        )));
    }
    let shard = Shard::parse(&m.shard);
    if let Some(e) = series
        .iter()
        .find(|e| Some(map.shard_of(e.org_id)) != shard)
    {
        return Err(JobError::BadOutput(format!(
            "data file {}: series {}/{} belongs to shard {}, not {}",
            data.path,
            e.org_id,
            e.metric_id,
            map.shard_of(e.org_id),
            m.shard
        )));
    }
    Ok(reader)
}

/// One series read back from a committed output: its attributes and
/// points. The buffers are reused from series to series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesData {
    pub org_id: u64,
    pub metric_id: u64,
    pub kind: u8,
    pub interval_s: u32,
    pub metadata: String,
    pub ts: Vec<i64>,
    pub vals: Vec<u64>,
    /// Points of the series (`ts.len()`, unless only headers were read).
    pub n_points: u64,
}

impl SeriesData {
    pub fn key(&self) -> (u64, u64) {
        (self.org_id, self.metric_id)
    }
}

/// The series of one committed window, in key order, one at a time: each
/// data file checked against the manifest as it is opened, series checked
/// to be in strictly increasing key order and their timestamps strictly
/// increasing (a reader that merges trusts both). A window written in
/// parts is read part by part at once, merged by key: readers see the
/// same series in the same order whatever the part count.
pub struct WindowSeries<'r> {
    root: &'r StoreRoot,
    manifest: Manifest,
    /// One cursor per part (one for a window not in parts).
    cursors: Vec<PartCursor>,
    /// The cursor of the series just read.
    current: Option<usize>,
    last: Option<(u64, u64)>,
    headers_only: bool,
    /// Points are read only when asked ([`Self::read_points`]).
    lazy: bool,
}

/// The files of one part, read one after another.
struct PartCursor {
    /// Indexes into the manifest's files.
    files: Vec<usize>,
    next_file: usize,
    /// The open file, its series and the next one's index.
    open: Option<(DataFile, Vec<tsf::SeriesEntry>, usize)>,
}

impl PartCursor {
    /// The next series' key, opening files as needed (`None` at the end).
    async fn peek(
        &mut self,
        root: &StoreRoot,
        m: &Manifest,
    ) -> Result<Option<(u64, u64)>, JobError> {
        loop {
            if let Some((_, entries, i)) = &self.open
                && let Some(e) = entries.get(*i)
            {
                return Ok(Some((e.org_id, e.metric_id)));
            }
            let Some(&f) = self.files.get(self.next_file) else {
                self.open = None;
                return Ok(None);
            };
            self.next_file += 1;
            let f = &m.files[f];
            let data = read_data_file(root, m, f).await?;
            let bytes = data.bytes.clone();
            let entries = open_data_file(m, f, &data, &bytes)?
                .footer()
                .series()
                .to_vec();
            self.open = Some((data, entries, 0));
        }
    }
}

impl<'r> WindowSeries<'r> {
    pub fn new(root: &'r StoreRoot, manifest: Manifest) -> Self {
        let parts = manifest.settings.parts.max(1);
        let mut cursors: Vec<PartCursor> = (0..parts)
            .map(|_| PartCursor {
                files: Vec::new(),
                next_file: 0,
                open: None,
            })
            .collect();
        for (i, f) in manifest.files.iter().enumerate() {
            let p = f.part.unwrap_or(0).min(parts - 1) as usize;
            cursors[p].files.push(i);
        }
        cursors.retain(|c| !c.files.is_empty());
        Self {
            root,
            manifest,
            cursors,
            current: None,
            last: None,
            headers_only: false,
            lazy: false,
        }
    }

    /// Reads each series' header only; its points when
    /// [`Self::read_points`] asks for them.
    pub fn lazy_points(mut self) -> Self {
        self.lazy = true;
        self
    }

    /// The series just read's footer entry.
    fn current(&self) -> Option<(&DataFile, &tsf::SeriesEntry)> {
        let (data, entries, i) = self.cursors.get(self.current?)?.open.as_ref()?;
        Some((data, entries.get(i.checked_sub(1)?)?))
    }

    /// The first and last timestamp of the series just read, as its footer
    /// entry gives them.
    pub fn ts_range(&self) -> (i64, i64) {
        self.current().map_or((0, 0), |(_, e)| (e.min_ts, e.max_ts))
    }

    /// Reads the points of the series just read into `out` (once; for a
    /// reader made with [`Self::lazy_points`]).
    pub fn read_points(&self, out: &mut SeriesData) -> Result<(), JobError> {
        let Some((data, e)) = self.current() else {
            return Err(JobError::Internal("read_points before a series".into()));
        };
        out.ts.clear();
        out.vals.clear();
        for b in &e.blocks {
            let block = tsf::block_bytes(&data.bytes, b).map_err(|err| data.error(err))?;
            tsf::decode_block(b, block, &mut out.ts, &mut out.vals)
                .map_err(|err| data.error(err))?;
        }
        if let Some(w) = out.ts.windows(2).position(|w| w[0] >= w[1]) {
            return Err(JobError::BadOutput(format!(
                "data file {}: series {}/{} has timestamp {} after {}",
                data.path,
                e.org_id,
                e.metric_id,
                out.ts[w + 1],
                out.ts[w]
            )));
        }
        Ok(())
    }

    /// Reads only the series' headers, not their points (`n_points` is
    /// set, `ts` and `vals` stay empty).
    pub fn headers_only(mut self) -> Self {
        self.headers_only = true;
        self
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Reads the next series into `out`; false at the end.
    pub async fn next(&mut self, out: &mut SeriesData) -> Result<bool, JobError> {
        // The part whose next series has the smallest key.
        let mut best: Option<(usize, (u64, u64))> = None;
        for (i, c) in self.cursors.iter_mut().enumerate() {
            if let Some(k) = c.peek(self.root, &self.manifest).await?
                && best.is_none_or(|(_, b)| k < b)
            {
                best = Some((i, k));
            }
        }
        let Some((i, key)) = best else {
            self.current = None;
            return Ok(false);
        };
        let (data, entries, at) = self.cursors[i].open.as_mut().expect("peeked");
        let e = &entries[*at];
        *at += 1;
        data.release_before(e.byte_range().start);
        if let Some(l) = self.last
            && l >= key
        {
            return Err(JobError::BadOutput(format!(
                "data file {}: series {}/{} is out of order (after {}/{})",
                data.path, key.0, key.1, l.0, l.1
            )));
        }
        self.last = Some(key);
        self.current = Some(i);
        out.org_id = e.org_id;
        out.metric_id = e.metric_id;
        out.kind = e.kind;
        out.interval_s = e.interval_s;
        out.metadata.clear();
        out.metadata.push_str(&e.metadata);
        out.ts.clear();
        out.vals.clear();
        out.n_points = e.n_points;
        if !self.headers_only && !self.lazy {
            self.read_points(out)?;
        }
        Ok(true)
    }
}

/// The merged view of a migration for one window: each org's points before
/// its cutover from the old system's output, from its cutover on from the
/// new system's; orgs the migration does not list from the old output
/// only. A series takes the kind, interval and metadata of the new side
/// when the new side gives it at least one point, else those of the old
/// side. A series left with no point is not shown.
pub struct MergedSeries<'r> {
    old: Option<WindowSeries<'r>>,
    new: Option<WindowSeries<'r>>,
    migration: std::sync::Arc<crate::job::migration::Migration>,
    peek_old: Option<SeriesData>,
    peek_new: Option<SeriesData>,
    primed: bool,
}

impl<'r> MergedSeries<'r> {
    pub fn new(
        old: Option<WindowSeries<'r>>,
        new: Option<WindowSeries<'r>>,
        migration: std::sync::Arc<crate::job::migration::Migration>,
    ) -> Self {
        Self {
            old,
            new,
            migration,
            peek_old: None,
            peek_new: None,
            primed: false,
        }
    }

    async fn pull(side: &mut Option<WindowSeries<'r>>) -> Result<Option<SeriesData>, JobError> {
        let Some(r) = side else {
            return Ok(None);
        };
        let mut s = SeriesData::default();
        Ok(r.next(&mut s).await?.then_some(s))
    }

    /// Reads the next series of the merged view into `out`; false at the end.
    pub async fn next(&mut self, out: &mut SeriesData) -> Result<bool, JobError> {
        if !self.primed {
            self.peek_old = Self::pull(&mut self.old).await?;
            self.peek_new = Self::pull(&mut self.new).await?;
            self.primed = true;
        }
        loop {
            let key = match (&self.peek_old, &self.peek_new) {
                (None, None) => return Ok(false),
                (Some(o), None) => o.key(),
                (None, Some(n)) => n.key(),
                (Some(o), Some(n)) => o.key().min(n.key()),
            };
            let old = if self.peek_old.as_ref().is_some_and(|o| o.key() == key) {
                let s = self.peek_old.take();
                self.peek_old = Self::pull(&mut self.old).await?;
                s
            } else {
                None
            };
            let new = if self.peek_new.as_ref().is_some_and(|n| n.key() == key) {
                let s = self.peek_new.take();
                self.peek_new = Self::pull(&mut self.new).await?;
                s
            } else {
                None
            };
            let cut = self.migration.cutover(key.0);
            out.ts.clear();
            out.vals.clear();
            let mut from_new = false;
            if let Some(o) = &old {
                let keep = match cut {
                    Some(c) => o.ts.partition_point(|t| *t < c),
                    None => o.ts.len(),
                };
                out.ts.extend_from_slice(&o.ts[..keep]);
                out.vals.extend_from_slice(&o.vals[..keep]);
            }
            if let (Some(n), Some(c)) = (&new, cut) {
                let start = n.ts.partition_point(|t| *t < c);
                from_new = start < n.ts.len();
                // Each side is strictly increasing (checked as read); the
                // two parts must be too where they meet, or a point would
                // be doubled.
                if let (Some(last), Some(first)) = (out.ts.last(), n.ts.get(start))
                    && last >= first
                {
                    return Err(JobError::Internal(format!(
                        "merged series {}/{}: the old side's point at {last} meets the new side's at {first} (cutover {c})",
                        key.0, key.1
                    )));
                }
                out.ts.extend_from_slice(&n.ts[start..]);
                out.vals.extend_from_slice(&n.vals[start..]);
            }
            if out.ts.is_empty() {
                continue;
            }
            out.n_points = out.ts.len() as u64;
            let Some(attrs) = if from_new { new.as_ref() } else { old.as_ref() }.or(new.as_ref())
            else {
                return Err(JobError::Internal(format!(
                    "merged series {}/{} has points from neither side",
                    key.0, key.1
                )));
            };
            out.org_id = key.0;
            out.metric_id = key.1;
            out.kind = attrs.kind;
            out.interval_s = attrs.interval_s;
            out.metadata.clear();
            out.metadata.push_str(&attrs.metadata);
            return Ok(true);
        }
    }
}

/// The series of one window: of one output, or the merged view of two.
// One reader per window read, so the size of the larger variant costs
// nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum WindowReader<'r> {
    One(WindowSeries<'r>),
    Merged(MergedSeries<'r>),
}

impl WindowReader<'_> {
    /// Reads the next series into `out`; false at the end.
    pub async fn next(&mut self, out: &mut SeriesData) -> Result<bool, JobError> {
        match self {
            WindowReader::One(r) => r.next(out).await,
            WindowReader::Merged(r) => r.next(out).await,
        }
    }
}
