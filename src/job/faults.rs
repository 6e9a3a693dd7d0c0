//! Named fail points, for tests that need a process stopped or failed at
//! an exact step of the job: SIGKILLed mid-commit, or a disk that fails
//! between two uploads. A test starts `tailor` with
//!
//! ```text
//! TAILOR_FAIL_POINTS=<name>=<action>[,<name>=<action>...]
//! ```
//!
//! where `<action>` is `stall` (print `tailor: fail point <name> reached`
//! on stderr, then block forever: the test kills the process there),
//! `wait-for:<path>` (print the same, then wait until the file `<path>`
//! exists and go on: a test lets another process pass first), `error`
//! (fail the step with an I/O error naming the point) or `panic` (a bug
//! at that step, on whatever thread runs it). Points:
//! `scan.batch` (the first sorted batch reached the merge), `upload.<k>`
//! (before the k-th data file, from 0, is uploaded), `commit.put` (every
//! data file is uploaded, the manifest not yet written), `commit.cleanup`
//! (the manifest is written, the cleanup not started), `cleanup.deleted`
//! (after each object the cleanup removed), `encode.round` (a round of
//! series on the encoder's worker threads; `panic` only).
//!
//! They exist in debug builds (what the tests run) and compile to nothing
//! in release builds. tikv's `fail` crate has the same shape, but its
//! actions cannot tell another process that the point was reached before
//! they block, which is what a kill test waits for.

use crate::job::error::JobError;

/// Runs the fail point `name`, if the environment arms it.
#[cfg(debug_assertions)]
pub fn fail_point(name: &str) -> Result<(), JobError> {
    use std::sync::LazyLock;
    static POINTS: LazyLock<Vec<(String, String)>> = LazyLock::new(|| {
        std::env::var("TAILOR_FAIL_POINTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(n, a)| (n.trim().to_string(), a.trim().to_string()))
            .collect()
    });
    let Some((_, action)) = POINTS.iter().find(|(n, _)| n == name) else {
        return Ok(());
    };
    match action.as_str() {
        "stall" => {
            eprintln!("tailor: fail point {name} reached");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        a if a.starts_with("wait-for:") => {
            eprintln!("tailor: fail point {name} reached");
            let path = std::path::Path::new(&a["wait-for:".len()..]);
            while !path.exists() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(())
        }
        "panic" => panic!("fail point {name}: injected by TAILOR_FAIL_POINTS"),
        "error" => Err(JobError::io(
            format_args!("fail point {name}"),
            std::io::Error::other("injected by TAILOR_FAIL_POINTS"),
        )),
        other => Err(JobError::Config(format!(
            "TAILOR_FAIL_POINTS: unknown action {other:?} for {name} (stall, wait-for:<path>, error or panic)"
        ))),
    }
}

/// Test hook: `TAILOR_DECODED_ESTIMATE=<bytes>` makes the job plan its
/// buckets for that decoded size instead of its estimate (a short one
/// makes the scan demote its resident buckets, or leaves spooled buckets
/// to be split). Debug builds only.
#[cfg(debug_assertions)]
pub fn decoded_estimate() -> Option<u64> {
    std::env::var("TAILOR_DECODED_ESTIMATE").ok()?.parse().ok()
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn decoded_estimate() -> Option<u64> {
    None
}

/// Test hook: `TAILOR_SPOOL_ALLOWANCE=<bytes>` sets the bytes the packed
/// spool form may take beyond the compressed one, instead of what the
/// spill disk's free space gives (0: every payload spooled compressed).
/// Debug builds only.
#[cfg(debug_assertions)]
pub fn spool_allowance() -> Option<u64> {
    std::env::var("TAILOR_SPOOL_ALLOWANCE").ok()?.parse().ok()
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn spool_allowance() -> Option<u64> {
    None
}

/// Release builds have no fail points.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fail_point(_name: &str) -> Result<(), JobError> {
    Ok(())
}
