//! Commit: the last step of the shard job (see `run.rs`). The staged data
//! files are moved to their final paths (each with an atomic put or
//! rename), then the manifest is written with one conditional put: that
//! put *is* the commit. Data of other runs of the window is removed after
//! it, best effort.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::AsyncWriteExt;

use crate::datasource::store::StoreRoot;
use crate::job::encode::Staged;
use crate::job::error::JobError;
use crate::job::manifest::{MANIFEST_NAME, Manifest, read_manifest, read_manifest_at};

async fn put_file(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    local: &std::path::Path,
) -> Result<(), JobError> {
    let len = std::fs::metadata(local)?.len();
    if len <= 32 << 20 {
        let bytes = std::fs::read(local)?;
        store
            .put(path, PutPayload::from(Bytes::from(bytes)))
            .await?;
        return Ok(());
    }
    // Multipart: the object appears atomically when the upload completes.
    // A failed upload is aborted, so that no incomplete multipart upload
    // is left to be billed until a lifecycle rule finds it.
    let mut w = BufWriter::new(Arc::clone(store), path.clone());
    let copied = async {
        let mut f = tokio::fs::File::open(local).await?;
        tokio::io::copy(&mut f, &mut w).await?;
        w.shutdown().await
    }
    .await;
    if let Err(e) = copied {
        let _ = w.abort().await;
        return Err(e.into());
    }
    Ok(())
}

/// Moves the staged data files to their final paths, each one atomically.
/// A local output on the staging directory's filesystem takes a rename (no
/// copy: the default staging directory, the system's temporary directory,
/// is usually on the same filesystem); otherwise each file is uploaded (one
/// put, or a multipart upload that completes atomically).
pub async fn upload_files(root: &StoreRoot, m: &Manifest, staged: &Staged) -> Result<(), JobError> {
    for (f, s) in m.files.iter().zip(&staged.files) {
        let path = root.child(&format!("{}/{}", m.location, f.path));
        if root.local && rename_local(root, &s.local, &path).await {
            continue;
        }
        put_file(&root.store, &path, &s.local).await?;
    }
    Ok(())
}

/// Renames a staged file into a local store; false when that is not
/// possible (another filesystem, a path the store cannot name), so the
/// caller copies it instead. The rename replaces an existing file
/// atomically, as a put does.
async fn rename_local(root: &StoreRoot, local: &std::path::Path, to: &Path) -> bool {
    let Ok(abs) = std::path::absolute(local) else {
        return false;
    };
    let Ok(from) = Path::from_absolute_path(&abs) else {
        return false;
    };
    root.store.rename(&from, to).await.is_ok()
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

/// Writes the manifest (the commit), then removes data of other runs: at
/// once the files of the commit it replaces, and those of runs no manifest
/// names once they are older than `grace`. Only writing the manifest can
/// fail the commit; the cleanup after it is best effort and reported.
pub async fn commit(
    root: &StoreRoot,
    m: &Manifest,
    grace: std::time::Duration,
) -> Result<Committed, JobError> {
    let (shard, window) = m
        .location
        .split_once('/')
        .ok_or_else(|| JobError::Internal(format!("bad location {}", m.location)))?;
    // The commit this one replaces, and when it was written (none, or
    // unreadable: then its files wait for the grace period like any
    // other run's).
    let replaced = read_manifest_at(root, shard, window)
        .await
        .ok()
        .filter(|(p, _)| p.run_id != m.run_id)
        .map(|(p, at)| Replaced {
            dir: format!("{}/data/{}/", m.location, p.run_id),
            committed_at_ms: at,
        });
    let path = root.child(&format!("{}/{MANIFEST_NAME}", m.location));
    root.store
        .put(
            &path,
            PutPayload::from(Bytes::from(m.to_json().into_bytes())),
        )
        .await?;
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
    let objects: Vec<_> = root.store.list(Some(&data)).try_collect().await?;
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
    while removed.try_next().await?.is_some() {
        done.stale_removed += 1;
    }
    Ok(())
}
