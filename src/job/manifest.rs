//! The manifest: the commit record of one shard window (what was read,
//! what was written, what was dropped, with which settings), its run id,
//! the checks a reader makes before trusting it, and where manifests live.
//!
//! ```text
//! <output root>/<shard>/<from>_<to>/_manifest.json                 the commit
//! <output root>/<shard>/<from>_<to>/data/<run_id>/part-00000.tsf   data files (docs/output-format.md)
//! ```
//!
//! `<from>` and `<to>` are the window's first and last hour (`YYYY-MM-DDTHH`,
//! inclusive). Data files are written first, each with an atomic put, under
//! a directory named by the run id, a hash of everything the output depends
//! on (input objects with sizes and ETags, output settings, tailor version)
//! and of the data written (names, sizes, CRC32Cs): the same input gives the
//! same run id, paths and bytes, and different bytes never land on a path a
//! committed manifest names. The manifest is written last with one atomic
//! put: it *is* the commit. Readers read the manifest and only the files it
//! lists, so a job killed at any moment leaves the previous commit (or
//! nothing) visible. Writing and cleaning up is `commit.rs`; reading the
//! data files back is `output.rs`.

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::datasource::listing::{InputObject, Window};
use crate::datasource::options::CorruptPolicy;
use crate::datasource::store::StoreRoot;
use crate::format::shard::ShardMap;
use crate::format::tsf::WriterOptions;
use crate::job::encode::Staged;
use crate::job::error::{JobError, StoreContext};
use crate::job::migration::{Applied, Cutover, Role};

pub const MANIFEST_NAME: &str = "_manifest.json";
pub const MANIFEST_FORMAT: &str = "tailor-manifest";
pub const MANIFEST_VERSION: u32 = 1;

/// A data file as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the manifest's directory.
    pub path: String,
    pub bytes: u64,
    pub crc32c: u32,
    pub series: u64,
    pub points: u64,
    /// (org_id, metric_id) of the file's first and last series.
    pub first_series: [u64; 2],
    pub last_series: [u64; 2],
    /// The series part the file holds, when the window is written in
    /// parts (`settings.parts` over 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<u32>,
}

/// An input object as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestInput {
    pub key: String,
    pub size: u64,
    pub e_tag: Option<String>,
}

impl ManifestInput {
    /// A listed input object, as the manifest records it.
    pub fn of(o: &InputObject) -> Self {
        Self {
            key: o.key.clone(),
            size: o.size,
            e_tag: o.e_tag.clone(),
        }
    }
}

/// The settings the output bytes depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputSettings {
    pub tailor_version: String,
    pub shard_map_modulus: u64,
    pub shard_map_dedicated: Vec<u64>,
    pub max_file_bytes: u64,
    pub block_points: usize,
    pub zstd_level: i32,
    pub on_corrupt: CorruptPolicy,
    /// The run's side of a migration (absent: shadow, every point).
    #[serde(default, skip_serializing_if = "is_shadow")]
    pub role: Role,
    /// The cutovers of the shard's orgs the run applied (absent: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migration: Vec<Cutover>,
    /// The series parts the window is written in (absent: 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub parts: u32,
}

fn is_shadow(r: &Role) -> bool {
    *r == Role::Shadow
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl OutputSettings {
    /// The migration the window was written with.
    pub fn applied(&self) -> Applied {
        Applied {
            role: self.role,
            cutovers: self.migration.clone(),
        }
    }

    /// Records the migration a run applies.
    pub fn apply(&mut self, a: Applied) {
        self.role = a.role;
        self.migration = a.cutovers;
    }
}

impl OutputSettings {
    /// The settings of this build of tailor, with these output options.
    pub fn new(
        map: &ShardMap,
        max_file_bytes: u64,
        writer: WriterOptions,
        on_corrupt: CorruptPolicy,
    ) -> Self {
        Self {
            tailor_version: env!("CARGO_PKG_VERSION").to_string(),
            shard_map_modulus: map.modulus,
            shard_map_dedicated: map.dedicated.iter().copied().collect(),
            max_file_bytes,
            block_points: writer.block_points,
            zstd_level: writer.zstd_level,
            on_corrupt,
            role: Role::Shadow,
            migration: Vec::new(),
            parts: 1,
        }
    }
}

/// What the job dropped, by reason (deterministic for a given input).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub duplicate_points: u64,
    pub conflicting_duplicate_points: u64,
    pub misrouted_payloads: u64,
    pub corrupt_frames: u64,
}

/// The commit record of one shard window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub shard: String,
    pub window_from: String,
    pub window_to: String,
    /// `<shard>/<from>_<to>`, relative to the output root.
    pub location: String,
    pub run_id: String,
    pub series: u64,
    pub points: u64,
    pub files: Vec<ManifestFile>,
    pub dropped: Dropped,
    pub inputs: Vec<ManifestInput>,
    pub settings: OutputSettings,
}

/// The run's data directory name: 128 bits of SHA-256 over what the run
/// read (each input's key below the input root, and size), its output
/// settings and what it wrote
/// (each data file's name, size and CRC32C). The same input and settings
/// give the same bytes and so the same paths, and a rerun rewrites
/// identical objects; any difference in the data written (a new tailor
/// build, other settings) gives new paths, so data files a committed
/// manifest refers to are never overwritten with other bytes. ETags are in
/// the manifest but not in the id: a local file's ETag is its inode and
/// mtime, which a copy of the same bytes changes.
fn run_id(
    shard: &str,
    from: &str,
    to: &str,
    inputs: &[ManifestInput],
    settings: &OutputSettings,
    staged: &Staged,
) -> String {
    let files: Vec<(&str, u64, u32)> = staged
        .files
        .iter()
        .map(|f| (f.name.as_str(), f.bytes, f.crc32c))
        .collect();
    // Keys are relative to the store; the layout puts four segments
    // (<shard>/dt=/hour=/<file>) below the input root.
    fn below_root(k: &str) -> &str {
        k.rmatch_indices('/').nth(3).map_or(k, |(i, _)| &k[i + 1..])
    }
    let inputs: Vec<(&str, u64)> = inputs
        .iter()
        .map(|i| (below_root(&i.key), i.size))
        .collect();
    let ident = serde_json::to_vec(&(shard, from, to, inputs, settings, files)).expect("json");
    let digest = ring::digest::digest(&ring::digest::SHA256, &ident);
    hex::encode(&digest.as_ref()[..16])
}

/// The directory name of a window.
pub fn window_dir(from: &str, to: &str) -> String {
    format!("{from}_{to}")
}

impl Manifest {
    /// The manifest of a run of `shard` over `window` with `settings`,
    /// that read `inputs` (in input order) and staged `staged`.
    pub fn build(
        shard: &str,
        window: &Window,
        settings: OutputSettings,
        inputs: Vec<ManifestInput>,
        staged: &Staged,
        dropped: Dropped,
    ) -> Self {
        let hour = |h: &Option<crate::datasource::listing::Hour>| {
            h.as_ref().map(|h| h.to_string()).unwrap_or_default()
        };
        let (from, to) = (hour(&window.from), hour(&window.to));
        let location = format!("{shard}/{}", window_dir(&from, &to));
        let run_id = run_id(shard, &from, &to, &inputs, &settings, staged);
        let files = staged
            .files
            .iter()
            .map(|f| ManifestFile {
                path: format!("data/{run_id}/{}", f.name),
                bytes: f.bytes,
                crc32c: f.crc32c,
                series: f.series,
                points: f.points,
                first_series: f.first_series,
                last_series: f.last_series,
                part: f.part,
            })
            .collect();
        Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            shard: shard.to_string(),
            window_from: from,
            window_to: to,
            location,
            run_id,
            series: staged.series,
            points: staged.points,
            files,
            dropped,
            inputs,
            settings,
        }
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serialises");
        s.push('\n');
        s
    }

    pub fn parse(bytes: &[u8], key: &str) -> Result<Self, JobError> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| JobError::BadOutput(format!("manifest {key} is not valid: {e}")))?;
        if m.format != MANIFEST_FORMAT || m.version != MANIFEST_VERSION {
            return Err(JobError::BadOutput(format!(
                "manifest {key}: format {:?} version {} (expected {MANIFEST_FORMAT:?} version {MANIFEST_VERSION})",
                m.format, m.version
            )));
        }
        Ok(m)
    }

    /// Checks, before its data is used, that the manifest read from
    /// `<shard>/<window>/` is that window's and adds up (see `check`).
    pub fn verify(&self, root: &StoreRoot, shard: &str, window: &str) -> Result<(), JobError> {
        let key = root.child(&format!("{shard}/{window}/{MANIFEST_NAME}"));
        if self.location != format!("{shard}/{window}") {
            return Err(JobError::BadOutput(format!(
                "manifest {key} is the manifest of {}, not of {shard}/{window}",
                self.location
            )));
        }
        self.check()
            .map_err(|e| JobError::BadOutput(format!("manifest {key}: {e}")))
    }

    /// What a manifest says about itself must add up: its location is its
    /// shard and window, its totals are the sums over its files, and its
    /// files are named once, relative to it, in series order without
    /// overlap (each file's series range is checked against the file when
    /// it is read: [`open_data_file`]).
    fn check(&self) -> Result<(), String> {
        let location = format!(
            "{}/{}",
            self.shard,
            window_dir(&self.window_from, &self.window_to)
        );
        if self.location != location {
            return Err(format!(
                "location {:?} is not its shard and window ({location:?})",
                self.location
            ));
        }
        if self.settings.shard_map_modulus == 0 {
            return Err("shard_map_modulus is 0".into());
        }
        let (mut series, mut points) = (0u64, 0u64);
        let parts = self.settings.parts;
        if parts == 0 || parts > crate::format::part::MAX_PARTS {
            return Err(format!(
                "parts is {parts} (1 to {})",
                crate::format::part::MAX_PARTS
            ));
        }
        // The last file of each part so far: files are in series order,
        // without overlap, within a part.
        let mut prev_of: std::collections::HashMap<u32, &ManifestFile> = Default::default();
        for f in &self.files {
            let part = match (parts, f.part) {
                (1, None) => 0,
                (p, Some(i)) if p > 1 && i < p => i,
                _ => {
                    return Err(format!(
                        "file {} has part {:?}, the window {} parts",
                        f.path,
                        f.part,
                        if parts == 1 {
                            "is not in".to_string()
                        } else {
                            format!("is in {parts}")
                        }
                    ));
                }
            };
            let prev = prev_of.get(&part).copied();
            if f.path.is_empty()
                || f.path.starts_with('/')
                || f.path
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(format!(
                    "file path {:?} is not relative to the manifest",
                    f.path
                ));
            }
            if f.series == 0 || f.points < f.series || f.first_series > f.last_series {
                return Err(format!(
                    "file {}: {} series, {} points, series {:?} to {:?} do not make a file",
                    f.path, f.series, f.points, f.first_series, f.last_series
                ));
            }
            if let Some(p) = prev
                && p.last_series >= f.first_series
            {
                return Err(format!(
                    "file {} (series {}/{} to {}/{}) does not follow file {} (to {}/{}): files (of a part) must be in series order, without overlap",
                    f.path,
                    f.first_series[0],
                    f.first_series[1],
                    f.last_series[0],
                    f.last_series[1],
                    p.path,
                    p.last_series[0],
                    p.last_series[1]
                ));
            }
            prev_of.insert(part, f);
            series = series.saturating_add(f.series);
            points = points.saturating_add(f.points);
        }
        if (series, points) != (self.series, self.points) {
            return Err(format!(
                "its files hold {series} series and {points} points, it says {} and {}",
                self.series, self.points
            ));
        }
        Ok(())
    }

    /// The shard map the output was written with.
    pub fn shard_map(&self) -> ShardMap {
        ShardMap {
            modulus: self.settings.shard_map_modulus.max(1),
            dedicated: self.settings.shard_map_dedicated.iter().copied().collect(),
        }
    }
}

/// The committed windows of a shard (directory names), sorted.
pub async fn list_windows(root: &StoreRoot, shard: &str) -> Result<Vec<String>, JobError> {
    Ok(window_dirs(root, shard).await?.0)
}

/// The window directories of a shard: (committed, uncommitted), each
/// sorted. An uncommitted one holds files but no manifest: what a run that
/// was stopped before its commit leaves behind, and never rerun.
pub async fn window_dirs(
    root: &StoreRoot,
    shard: &str,
) -> Result<(Vec<String>, Vec<String>), JobError> {
    let prefix = root.child(shard);
    let objects: Vec<_> = root
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .op("LIST", format_args!("{}/", root.display_of(&prefix)))?;
    let mut committed = std::collections::BTreeSet::new();
    let mut all = std::collections::BTreeSet::new();
    for o in &objects {
        let Some(rel) = root.relative(&o.location) else {
            continue;
        };
        let mut parts = rel.split('/');
        let (Some(_), Some(w), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        all.insert(w.to_string());
        if name == MANIFEST_NAME && parts.next().is_none() {
            committed.insert(w.to_string());
        }
    }
    let uncommitted = all.difference(&committed).cloned().collect();
    Ok((committed.into_iter().collect(), uncommitted))
}

/// The most bytes a manifest may have: one lists every input object and
/// data file of its window (about 200 bytes each), so this is millions of
/// objects. A bigger object where a manifest should be is refused before
/// it is read.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// A manifest object as it is in the store: its bytes' metadata (ETag,
/// version, when it was written) and, when they parse, the manifest.
#[derive(Debug)]
pub struct StoredManifest {
    pub meta: object_store::ObjectMeta,
    /// The manifest, or why its bytes are not one.
    pub manifest: Result<Manifest, JobError>,
}

/// Reads the manifest object of `<shard>/<window>`, if there is one.
/// Failing to read it is an error (exit 74), never taken for "absent".
pub async fn read_stored(
    root: &StoreRoot,
    shard: &str,
    window: &str,
) -> Result<Option<StoredManifest>, JobError> {
    let path = root.child(&format!("{shard}/{window}/{MANIFEST_NAME}"));
    let shown = root.display_of(&path);
    let got = match root.store.get(&path).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e).op("GET", &shown),
    };
    let meta = got.meta.clone();
    if meta.size > MAX_MANIFEST_BYTES {
        return Err(JobError::BadOutput(format!(
            "manifest {shown} is {} bytes, over the {MAX_MANIFEST_BYTES}-byte limit of a manifest",
            meta.size
        )));
    }
    let bytes = got.bytes().await.op("GET", &shown)?;
    if bytes.len() as u64 != meta.size {
        return Err(JobError::BadOutput(format!(
            "manifest {shown}: read {} bytes, the store lists {}",
            bytes.len(),
            meta.size
        )));
    }
    Ok(Some(StoredManifest {
        meta,
        manifest: Manifest::parse(&bytes, &shown),
    }))
}

/// Reads a committed manifest.
pub async fn read_manifest(
    root: &StoreRoot,
    shard: &str,
    window: &str,
) -> Result<Manifest, JobError> {
    match read_stored(root, shard, window).await? {
        Some(s) => s.manifest,
        None => Err(JobError::BadOutput(format!(
            "{shard}/{window} has no committed output ({MANIFEST_NAME} not found under {})",
            root.display
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::encode::StagedFile;
    use crate::job::measure::Phase;
    use std::path::PathBuf;

    fn staged(crc: u32) -> Staged {
        Staged {
            files: vec![StagedFile {
                name: "part-00000.tsf".into(),
                local: PathBuf::new(),
                remote: None,
                bytes: 100,
                crc32c: crc,
                series: 1,
                points: 1,
                first_series: [1, 1],
                last_series: [1, 1],
                part: None,
            }],
            series: 1,
            points: 1,
            merge: Default::default(),
            left_to_other: Default::default(),
            encode_phase: Phase::measured("encode", Default::default(), Default::default()),
        }
    }

    #[test]
    fn run_ids_follow_the_data_written() {
        let settings = OutputSettings {
            tailor_version: "0".into(),
            shard_map_modulus: 64,
            shard_map_dedicated: vec![],
            max_file_bytes: 1 << 30,
            block_points: 4096,
            zstd_level: 3,
            on_corrupt: CorruptPolicy::Fail,
            role: Role::Shadow,
            migration: Vec::new(),
            parts: 1,
        };
        let inputs = vec![ManifestInput {
            key: "a.tsp".into(),
            size: 10,
            e_tag: Some("x".into()),
        }];
        let id = |crc| {
            run_id(
                "org-1",
                "2026-11-21T00",
                "2026-11-21T00",
                &inputs,
                &settings,
                &staged(crc),
            )
        };
        assert_eq!(id(7), id(7));
        assert_eq!(id(7).len(), 32);
        // Same input and settings but other bytes (another tailor build):
        // another directory, so a committed file is never overwritten.
        assert_ne!(id(7), id(8));
    }
}
