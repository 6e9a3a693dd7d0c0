//! Scratch directories on the local disk: where a run stages its output
//! files before upload and where the grouping sort spills. Each is
//! `tailor-stage-*` / `tailor-spill-*` under `--stage-dir` / `--spill-dir`
//! (created if missing; the system's temporary directory by default), and
//! the run holds an exclusive `flock(2)` on it from its creation to its
//! removal. A run that is killed cannot remove its directories, but the
//! kernel drops its lock: every run first removes the directories under
//! its parents that nobody holds, so killed runs' scratch space does not
//! pile up.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::job::error::{IoContext, JobError};

/// A scratch directory this process holds; removed when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    _lock: File,
}

impl ScratchDir {
    /// Creates `<parent>/tailor-<kind>-<random>`, locked. `flag` names the
    /// setting the parent came from, for errors: a parent that does not
    /// exist is created, and one that cannot be is a usage error naming it.
    pub fn create(parent: Option<&Path>, kind: &str, flag: &str) -> Result<Self, JobError> {
        let parent = match parent {
            Some(p) => {
                std::fs::create_dir_all(p).map_err(|e| {
                    JobError::Config(format!(
                        "{flag} {} does not exist and cannot be created: {e}",
                        p.display()
                    ))
                })?;
                p.to_path_buf()
            }
            None => std::env::temp_dir(),
        };
        // Born under a name the reclaiming sweep ignores, locked, then
        // renamed (the lock stays with the directory): no other run can
        // take it for a dead one's in between.
        let fresh = tempfile::Builder::new()
            .prefix(".tailor-new-")
            .tempdir_in(&parent)
            .map_err(|e| scratch_error(flag, &parent, e))?;
        let lock =
            File::open(fresh.path()).at(format_args!("opening {}", fresh.path().display()))?;
        lock.try_lock().map_err(|e| {
            JobError::io(
                format_args!("locking {}", fresh.path().display()),
                std::io::Error::other(e.to_string()),
            )
        })?;
        let suffix = fresh
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(".tailor-new-"))
            .unwrap_or("x")
            .to_string();
        let path = parent.join(format!("tailor-{kind}-{suffix}"));
        let fresh = fresh.keep();
        std::fs::rename(&fresh, &path).at(format_args!(
            "renaming {} to {}",
            fresh.display(),
            path.display()
        ))?;
        Ok(Self { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Bytes available to an unprivileged user on the file system of `dir`
/// (`statvfs`; `None` when it cannot be asked).
pub fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `st` is written by a
    // successful call before it is read.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    #[allow(clippy::unnecessary_cast)] // the field types differ by platform
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn scratch_error(flag: &str, parent: &Path, e: std::io::Error) -> JobError {
    JobError::io(
        format_args!(
            "creating a scratch directory in {flag} {}",
            parent.display()
        ),
        e,
    )
}

/// Removes the scratch directories under `parent` that no live run holds
/// (those of killed runs); returns how many. Directories that cannot be
/// removed are left for a later run.
pub fn reclaim(parent: Option<&Path>) -> usize {
    let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with("tailor-stage-") || name.starts_with("tailor-spill-");
        // One killed between its creation and its rename (microseconds).
        let orphan_new = name.starts_with(".tailor-new-")
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 3600));
        if !(ours || orphan_new) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        let Ok(dir) = File::open(&path) else {
            continue;
        };
        // Held: a live run's. Free: its owner is gone.
        if dir.try_lock().is_ok() && std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_asked_of_the_file_system() {
        assert!(free_space(Path::new(".")).unwrap() > 0);
        assert_eq!(free_space(Path::new("/no/such/dir")), None);
    }

    #[test]
    fn a_held_directory_is_kept_and_a_dead_ones_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("not/yet");
        let live = ScratchDir::create(Some(&parent), "stage", "--stage-dir").unwrap();
        assert!(live.path().is_dir(), "the parent is created");
        // A killed run's: present, nobody holds it.
        let dead = parent.join("tailor-spill-killed");
        std::fs::create_dir_all(dead.join("sub")).unwrap();
        std::fs::write(dead.join("sub/f"), b"x").unwrap();
        let other = parent.join("unrelated");
        std::fs::create_dir(&other).unwrap();
        assert_eq!(reclaim(Some(&parent)), 1);
        assert!(!dead.exists() && other.exists() && live.path().exists());
        let path = live.path().to_path_buf();
        drop(live);
        assert!(!path.exists(), "removed when dropped");
    }

    #[test]
    fn a_parent_that_cannot_be_created_is_a_usage_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = ScratchDir::create(Some(&file.join("d")), "stage", "--stage-dir").unwrap_err();
        assert!(
            matches!(&e, JobError::Config(m) if m.starts_with(&format!("--stage-dir {}/d does not exist and cannot be created", file.display()))),
            "{e}"
        );
    }
}
