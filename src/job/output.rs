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
        let local = std::path::Path::new("/").join(path.as_ref());
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

/// Calls `f` for every series of a committed output, in (org, metric) order.
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
