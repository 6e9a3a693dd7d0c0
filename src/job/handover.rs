//! The handover check of a migration (`tailor diff --migration`): what
//! each system wrote outside what the migration file gives it.
//!
//! Each committed window of a side is read point by point; for every
//! series, the points its role does not own (the old system's from the
//! org's cutover on; the new system's before it, and all of an unlisted
//! org's) are counted as a leak, with the first such point as the example.
//! A series whose timestamps lie wholly on one side of the cutover is
//! decided from its footer entry (`min_ts`, `max_ts`) without decoding it.
//!
//! A window whose manifest records a role (`tailor run --role`) must also
//! have been written with the cutovers the file gives its shard now; one
//! written with others (an old copy of the file, an org moved since) can
//! hold or miss points the file says it should not, so it is reported
//! whether or not its points show it yet. A window without a recorded
//! role (a shadow run, another writer of the format) is checked by its
//! points only.

use std::sync::Arc;

use crate::datasource::store::StoreRoot;
use crate::job::error::JobError;
use crate::job::manifest::Manifest;
use crate::job::migration::{Cutover, Migration, Role};
use crate::job::output::{SeriesData, WindowSeries};

/// What the check found in one window.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// `points` points of one series the side does not own; `ts` and
    /// `bits` are the first of them.
    Leak {
        org_id: u64,
        metric_id: u64,
        points: u64,
        ts: i64,
        bits: u64,
    },
    /// The window was written with a role or cutovers other than the
    /// migration file gives its shard.
    CutoversDiffer {
        recorded_role: Role,
        recorded: Vec<Cutover>,
        expected: Vec<Cutover>,
    },
}

/// Checks the windows of one side, written as `role` (`Old` or `New`),
/// against `migration`; `found(shard, window, finding)` is called for each
/// finding, in window and series order. Only `orgs` are checked when it is
/// not empty. Returns the points read.
pub async fn check_side(
    root: &StoreRoot,
    windows: &[(String, String, Manifest)],
    role: Role,
    migration: &Arc<Migration>,
    orgs: &[u64],
    mut found: impl FnMut(&str, &str, Finding),
) -> Result<u64, JobError> {
    let mut read = 0u64;
    let mut s = SeriesData::default();
    for (shard, window, m) in windows {
        if m.settings.role != Role::Shadow {
            let expected = migration.entries_for(shard, &m.shard_map());
            if m.settings.role != role || m.settings.migration != expected {
                found(
                    shard,
                    window,
                    Finding::CutoversDiffer {
                        recorded_role: m.settings.role,
                        recorded: m.settings.migration.clone(),
                        expected,
                    },
                );
            }
        }
        let mut reader = WindowSeries::new(root, m.clone()).lazy_points();
        while reader.next(&mut s).await? {
            if !orgs.is_empty() && !orgs.contains(&s.org_id) {
                continue;
            }
            read += s.n_points;
            let owned = |ts: i64| owns(role, migration.cutover(s.org_id), ts);
            let (lo, hi) = reader.ts_range();
            if owned(lo) && owned(hi) {
                // Ownership is one interval of time: both ends in it, all in it.
                continue;
            }
            reader.read_points(&mut s)?;
            let kept = migration.kept(role, s.org_id, &s.ts);
            let leaked = s.ts.len() - kept.len();
            if leaked == 0 {
                continue;
            }
            let first = if kept.start > 0 { 0 } else { kept.end };
            found(
                shard,
                window,
                Finding::Leak {
                    org_id: s.org_id,
                    metric_id: s.metric_id,
                    points: leaked as u64,
                    ts: s.ts[first],
                    bits: s.vals[first],
                },
            );
        }
    }
    Ok(read)
}

/// Whether `role` owns a point at `ts` of an org with cutover `cut`.
fn owns(role: Role, cut: Option<i64>, ts: i64) -> bool {
    match (role, cut) {
        (Role::Shadow, _) => true,
        (Role::Old, None) => true,
        (Role::New, None) => false,
        (Role::Old, Some(c)) => ts < c,
        (Role::New, Some(c)) => ts >= c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_matches_what_a_run_keeps() {
        let m = Migration {
            cutovers: [(7, 100)].into(),
            source: String::new(),
        };
        let ts: Vec<i64> = vec![-5, 0, 99, 100, 101, i64::MAX];
        for role in [Role::Old, Role::New, Role::Shadow] {
            for org in [7, 8] {
                let kept = m.kept(role, org, &ts);
                for (i, t) in ts.iter().enumerate() {
                    assert_eq!(
                        kept.contains(&i),
                        owns(role, m.cutover(org), *t),
                        "{role:?} org {org} ts {t}"
                    );
                }
            }
        }
    }
}
