//! Commit: the last step of the shard job (see `run.rs`). The staged data
//! files are moved to their final paths (each with an atomic put or
//! rename), then the manifest is written with one conditional put: that
//! put *is* the commit. Data of other runs of the window is removed after
//! it, best effort.
//!
//! The put is conditional on the manifest the run found when it started
//! ([`Base`]): `PutMode::Create` when there was none, `PutMode::Update`
//! with its ETag and version otherwise. When two runs of one window race,
//! the first to commit wins; the other's put fails its precondition and
//! the run fails with [`JobError::LostRace`] (exit 75), removing nothing.
//! A local filesystem has no conditional update: there the run holds an
//! exclusive lock (`flock(2)`) on the window's directory while it checks
//! that the manifest is still the one it started from and renames its own
//! into place.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use tokio::io::AsyncReadExt;

use crate::datasource::store::{StoreRoot, local_file};
use crate::job::encode::Staged;
use crate::job::error::{IoContext, JobError, StoreContext};
use crate::job::faults::fail_point;
use crate::job::manifest::{MANIFEST_NAME, Manifest, read_manifest, read_stored};

/// Uploads one staged file: one put, or a multipart upload that completes
/// atomically. A failed multipart upload is aborted, so that no incomplete
/// upload is left to be billed until a lifecycle rule finds it.
pub(crate) async fn put_file(
    root: &StoreRoot,
    path: &Path,
    local: &std::path::Path,
    single_put_max: u64,
) -> Result<(), JobError> {
    let shown = root.display_of(path);
    let reading = format_args!("reading staged file {}", local.display()).to_string();
    let len = std::fs::metadata(local).at(&reading)?.len();
    if len <= single_put_max {
        let bytes = std::fs::read(local).at(&reading)?;
        root.store
            .put(path, PutPayload::from(Bytes::from(bytes)))
            .await
            .op("PUT", &shown)?;
        return Ok(());
    }
    // Parts of 10 MiB (S3 takes 5 MiB and more), or of the single-put
    // limit when that is smaller; four in flight.
    let part = (single_put_max.max(1) as usize).min(10 << 20);
    let mut upload = root
        .store
        .put_multipart(path)
        .await
        .op("PUT (multipart)", &shown)?;
    let mut f = tokio::fs::File::open(local).await.at(&reading)?;
    let uploaded: Result<(), JobError> = async {
        let mut inflight = futures::stream::FuturesUnordered::new();
        loop {
            let mut buf = Vec::with_capacity(part);
            let n = (&mut f)
                .take(part as u64)
                .read_to_end(&mut buf)
                .await
                .at(&reading)?;
            if n == 0 {
                break;
            }
            inflight.push(upload.put_part(PutPayload::from(buf)));
            while inflight.len() >= 4 {
                if let Some(r) = inflight.next().await {
                    r.op("PUT (multipart)", &shown)?;
                }
            }
        }
        while let Some(r) = inflight.next().await {
            r.op("PUT (multipart)", &shown)?;
        }
        upload.complete().await.op("PUT (multipart)", &shown)?;
        Ok(())
    }
    .await;
    // A failed upload is aborted, so that its parts are not left to be
    // billed until a lifecycle rule finds them.
    if let Err(e) = uploaded {
        return Err(match upload.abort().await {
            Ok(()) => e,
            Err(abort) => JobError::io(
                e,
                std::io::Error::other(format!(
                    "aborting the multipart upload of {shown} failed too ({abort}): an \
                     incomplete upload is left for the bucket's lifecycle rule"
                )),
            ),
        });
    }
    Ok(())
}

/// Moves the staged data files to their final paths, each one atomically.
/// A local output on the staging directory's filesystem takes a rename (no
/// copy: the default staging directory, the system's temporary directory,
/// is usually on the same filesystem); otherwise each file is uploaded (one
/// put, or a multipart upload that completes atomically, for files over
/// `single_put_max` bytes).
pub async fn upload_files(
    root: &StoreRoot,
    m: &Manifest,
    staged: &Staged,
    single_put_max: u64,
) -> Result<(), JobError> {
    for (k, (f, s)) in m.files.iter().zip(&staged.files).enumerate() {
        fail_point(&format!("upload.{k}"))?;
        let path = root.child(&format!("{}/{}", m.location, f.path));
        if let Some(pending) = &s.remote {
            // Uploaded by a cluster's executor: moved within the store (a
            // rename on a filesystem, or a swap for a file in place as for
            // a staged file; a server-side copy on S3), atomic for readers
            // as a put is.
            let from = root.child(pending);
            if root.local && swap_into_place(local_file(&from), &path).await {
                continue;
            }
            root.store
                .rename(&from, &path)
                .await
                .op("RENAME (copy)", root.display_of(&from))?;
            continue;
        }
        if root.local && rename_local(root, &s.local, &path).await {
            continue;
        }
        put_file(root, &path, &s.local, single_put_max).await?;
    }
    Ok(())
}

/// Renames a staged file into a local store; false when that is not
/// possible (another filesystem, a path the store cannot name), so the
/// caller copies it instead. It replaces an existing file atomically, as a
/// put does (swapped in for it, see [`swap_into_place`]).
async fn rename_local(root: &StoreRoot, local: &std::path::Path, to: &Path) -> bool {
    let Ok(abs) = std::path::absolute(local) else {
        return false;
    };
    if swap_into_place(abs.clone(), to).await {
        return true;
    }
    let Ok(from) = Path::from_absolute_path(&abs) else {
        return false;
    };
    root.store.rename(&from, to).await.is_ok()
}

/// [`exchange_into_place`] of local file `from` with object `to` of a local
/// root, off the async threads; false (the caller renames) where it does
/// not apply, and on systems without the swap.
async fn swap_into_place(from: std::path::PathBuf, to: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        let to = local_file(to);
        tokio::task::spawn_blocking(move || exchange_into_place(&from, &to))
            .await
            .unwrap_or(false)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (from, to);
        false
    }
}

/// Puts file `from` in place of an existing file `to` by swapping the two
/// atomically (`renameat2(RENAME_EXCHANGE)`), then deletes the old one,
/// now at `from`; false, changing nothing, when there is no regular file
/// at `to` (nothing, a directory or a symlink: a swap would put those in
/// the staging directory, which is deleted) or the filesystem cannot
/// swap: the caller renames, as before.
///
/// A rerun of the same input with the same settings writes the same paths
/// (the run id follows the bytes written), so its files replace files that
/// are there. Replacing one by a plain rename made ext4 write the new
/// file's cached pages out first (`auto_da_alloc`, for programs that
/// rewrite a file through a rename and never sync it): on the 2 GiB
/// benchmark job's rerun the rename of its 403 MiB file took 0.28 s, all
/// of it waiting for the disk. A swap is as atomic for readers (the path
/// names the old file, then the new one) and waits for nothing; a first
/// run's rename never waited either (nothing is replaced).
#[cfg(target_os = "linux")]
fn exchange_into_place(from: &std::path::Path, to: &std::path::Path) -> bool {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    if !std::fs::symlink_metadata(to).is_ok_and(|m| m.file_type().is_file()) {
        return false;
    }
    let swapped = renameat_with(CWD, from, CWD, to, RenameFlags::EXCHANGE).is_ok();
    if swapped {
        // The old file, at the staged path: should this fail, it goes
        // with the staging directory (a cluster's pending upload, under
        // `data/`, with the cleanup of files no manifest names).
        let _ = std::fs::remove_file(from);
    }
    swapped
}

/// The commit a run found when it started, and will replace.
#[derive(Debug, Clone)]
pub enum Base {
    /// No manifest: the run's put must create it.
    Absent,
    /// A manifest: the run's put must replace exactly this version of it.
    Present {
        version: UpdateVersion,
        /// Its run id (`None`: its bytes are not a manifest).
        run_id: Option<String>,
        /// When it was written (store time, ms since the epoch).
        committed_at_ms: i64,
    },
}

impl Base {
    /// Reads the commit of `location` (`<shard>/<window>`) as it is now.
    /// A manifest that cannot be read is an error; one whose bytes do not
    /// parse is a commit of an unknown run (replaced, its files left to
    /// the grace period), reported by the caller.
    pub async fn read(
        root: &StoreRoot,
        location: &str,
    ) -> Result<(Base, Option<String>), JobError> {
        let (shard, window) = split_location(location)?;
        Ok(match read_stored(root, shard, window).await? {
            None => (Base::Absent, None),
            Some(s) => {
                let (run_id, warning) = match s.manifest {
                    Ok(m) => (Some(m.run_id), None),
                    Err(e) => (
                        None,
                        Some(format!(
                            "the committed manifest of {location} does not parse ({e}); \
                             it is replaced, and its data files are left to the grace period"
                        )),
                    ),
                };
                (
                    Base::Present {
                        version: UpdateVersion {
                            e_tag: s.meta.e_tag,
                            version: s.meta.version,
                        },
                        run_id,
                        committed_at_ms: s.meta.last_modified.timestamp_millis(),
                    },
                    warning,
                )
            }
        })
    }

    fn e_tag(&self) -> Option<&str> {
        match self {
            Base::Absent => None,
            Base::Present { version, .. } => version.e_tag.as_deref(),
        }
    }
}

fn split_location(location: &str) -> Result<(&str, &str), JobError> {
    location
        .split_once('/')
        .ok_or_else(|| JobError::Internal(format!("bad location {location}")))
}

/// What a commit did after the manifest was written.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    /// Objects of other runs removed: the run this commit replaced, and
    /// runs no manifest names that are older than the grace period.
    pub stale_removed: u64,
    /// Objects of other runs left in place: younger than the grace period
    /// and not the replaced commit's, so possibly a run of this window
    /// still uploading. A later commit removes them once they are older.
    pub young_left: u64,
    /// Why the cleanup stopped, if it did. The commit stands: readers
    /// trust the manifest, and the next run of the window cleans up.
    pub cleanup_error: Option<String>,
}

/// Writes the manifest (the commit) if the window's commit is still
/// `base`, then removes data of other runs: at once the files of the commit
/// it replaced, and those of runs no manifest names once they are older
/// than `grace`. Only writing the manifest can fail the commit; the
/// cleanup after it is best effort and reported.
pub async fn commit(
    root: &StoreRoot,
    m: &Manifest,
    base: &Base,
    grace: std::time::Duration,
) -> Result<Committed, JobError> {
    let (shard, window) = split_location(&m.location)?;
    let path = root.child(&format!("{}/{MANIFEST_NAME}", m.location));
    let shown = root.display_of(&path);
    let payload = PutPayload::from(Bytes::from(m.to_json().into_bytes()));
    fail_point("commit.put")?;
    let mode = match base {
        Base::Absent => PutMode::Create,
        Base::Present { version, .. } => PutMode::Update(version.clone()),
    };
    match root
        .store
        .put_opts(&path, payload.clone(), mode.into())
        .await
    {
        Ok(_) => {}
        Err(object_store::Error::NotImplemented { .. }) if root.filesystem => {
            // A local filesystem has no conditional update.
            locked_local_put(root, m, base, &path, payload).await?;
        }
        Err(
            e @ (object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }),
        ) => return Err(lost_race(&m.location, &shown, &e)),
        Err(e) => return Err(e).op("PUT (conditional)", &shown),
    }
    fail_point("commit.cleanup")?;
    let replaced = match base {
        Base::Present {
            run_id: Some(id),
            committed_at_ms,
            ..
        } if *id != m.run_id => Some(Replaced {
            dir: format!("{}/data/{id}/", m.location),
            committed_at_ms: *committed_at_ms,
        }),
        _ => None,
    };
    let mut done = Committed::default();
    if let Err(e) = cleanup(
        root,
        (shard, window),
        m,
        replaced.as_ref(),
        grace,
        &mut done,
    )
    .await
    {
        done.cleanup_error = Some(format!(
            "committed, but removing other runs' files under {} failed: {e}",
            m.location
        ));
    }
    Ok(done)
}

fn lost_race(location: &str, shown: &str, e: &dyn std::fmt::Display) -> JobError {
    JobError::LostRace(format!(
        "another run of {location} committed while this one ran: its commit stands and \
         nothing of this run is visible (the conditional put of {shown} failed: {e}); \
         rerun only if the window's input changed after that commit"
    ))
}

/// The conditional put on a local filesystem: under an exclusive lock on
/// the window's directory (held by every tailor commit of the window, and
/// released by the kernel if the process dies), checks that the manifest is
/// still the one the run started from, then renames its own into place.
async fn locked_local_put(
    root: &StoreRoot,
    m: &Manifest,
    base: &Base,
    path: &Path,
    payload: PutPayload,
) -> Result<(), JobError> {
    let shown = root.display_of(path);
    let dir = local_file(&root.child(&m.location));
    std::fs::create_dir_all(&dir).at(format_args!("creating {}", dir.display()))?;
    let lock = std::fs::File::open(&dir).at(format_args!("opening {}", dir.display()))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|e| JobError::Internal(format!("locking the window directory: {e}")))?
        .at(format_args!("locking {}", dir.display()))?;
    let now = match root.store.head(path).await {
        Ok(meta) => meta.e_tag,
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(e).op("HEAD", &shown),
    };
    let expected = base.e_tag().map(str::to_string);
    let unchanged = match base {
        Base::Absent => now.is_none(),
        Base::Present { .. } => now.is_some() && now == expected,
    };
    if !unchanged {
        return Err(lost_race(
            &m.location,
            &shown,
            &format_args!("the manifest is no longer the one this run started from"),
        ));
    }
    root.store.put(path, payload).await.op("PUT", &shown)?;
    drop(lock);
    Ok(())
}

/// The commit a commit replaces.
struct Replaced {
    /// Its data directory (relative to the output root, with a final `/`).
    dir: String,
    /// When its manifest was written (store time, ms since the epoch).
    committed_at_ms: i64,
}

async fn cleanup(
    root: &StoreRoot,
    (shard, window): (&str, &str),
    m: &Manifest,
    replaced: Option<&Replaced>,
    grace: std::time::Duration,
    done: &mut Committed,
) -> Result<(), JobError> {
    // Another run of this window may have committed after us: its files
    // are the visible ones, and its cleanup handles ours.
    if read_manifest(root, shard, window).await?.run_id != m.run_id {
        return Ok(());
    }
    let data = root.child(&format!("{}/data", m.location));
    let keep = format!("{}/data/{}/", m.location, m.run_id);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let cutoff = now.saturating_sub(grace.as_millis().min(i64::MAX as u128) as i64);
    let objects: Vec<_> = root
        .store
        .list(Some(&data))
        .try_collect()
        .await
        .op("LIST", format_args!("{}/", root.display_of(&data)))?;
    let mut stale = Vec::new();
    for o in objects {
        let rel = root.relative(&o.location).unwrap_or_default().to_string();
        if rel.starts_with(&keep) {
            continue;
        }
        // A file of the replaced run written after its commit is a rerun
        // of that run (same inputs, same run id) rewriting it: left alone.
        let written = o.last_modified.timestamp_millis();
        let of_replaced =
            replaced.is_some_and(|r| rel.starts_with(&r.dir) && written <= r.committed_at_ms);
        if of_replaced || written <= cutoff {
            stale.push(Ok(o.location));
        } else {
            done.young_left += 1;
        }
    }
    // One batched delete (S3's DeleteObjects takes 1,000 keys a request).
    let mut removed = root
        .store
        .delete_stream(futures::stream::iter(stale).boxed());
    while removed
        .try_next()
        .await
        .op("DELETE", format_args!("{}/", root.display_of(&data)))?
        .is_some()
    {
        done.stale_removed += 1;
        fail_point("cleanup.deleted")?;
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{exchange_into_place, swap_into_place};

    #[test]
    fn a_staged_file_swaps_in_for_one_in_place_and_is_renamed_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let (staged, target) = (dir.path().join("staged"), dir.path().join("target"));
        // Nothing in place: false, nothing moved (the caller renames).
        std::fs::write(&staged, b"new").unwrap();
        assert!(!exchange_into_place(&staged, &target));
        assert_eq!(std::fs::read(&staged).unwrap(), b"new");
        assert!(!target.exists());
        // A directory in place: left alone (a rename fails on it as well).
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("kept"), b"x").unwrap();
        assert!(!exchange_into_place(&staged, &target));
        assert!(target.join("kept").exists() && staged.exists());
        std::fs::remove_dir_all(&target).unwrap();
        // A file in place: swapped in, the old one deleted.
        std::fs::write(&target, b"old").unwrap();
        assert!(exchange_into_place(&staged, &target));
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert!(!staged.exists());
    }

    /// The commit's entry to it (both the staged and the cluster's pending
    /// files): a local root's object, named by its store path.
    #[tokio::test]
    async fn a_file_swaps_in_for_the_object_in_place_of_a_local_root() {
        let dir = tempfile::tempdir().unwrap();
        let (staged, target) = (dir.path().join("staged"), dir.path().join("target"));
        let object = object_store::path::Path::from_absolute_path(&target).unwrap();
        std::fs::write(&staged, b"new").unwrap();
        assert!(!swap_into_place(staged.clone(), &object).await);
        std::fs::write(&target, b"old").unwrap();
        assert!(swap_into_place(staged.clone(), &object).await);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert!(!staged.exists());
    }
}
