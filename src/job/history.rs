//! Run history: every run's report (successful or failed) is kept under
//! the output root, where the next run and `tailor report` find it:
//!
//! ```text
//! <output>/_history/<shard>/<from>_<to>/<ended at, YYYYMMDDTHHMMSS.mmmZ>-<status>.json
//! ```
//!
//! `_history` is not a shard: no reader takes it for data (shards are
//! named `org-…`). Growth is bounded by a retention setting: after each
//! write, a window keeps its newest `keep` reports, and a shard's reports
//! older than `max_age` go. Recording is best effort: a run's outcome does
//! not depend on it (a failure to record is reported, not fatal).

pub use crate::job::config::Retention;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload};

use crate::datasource::store::StoreRoot;
use crate::job::error::{JobError, StoreContext};
use crate::job::report::Report;

/// The directory of the history under the output root.
pub const HISTORY_DIR: &str = "_history";

/// One recorded run.
#[derive(Debug, Clone)]
pub struct Entry {
    pub shard: String,
    pub window: String,
    pub ended_at: DateTime<Utc>,
    pub status: String,
    /// The report, as written.
    pub report: serde_json::Value,
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

fn parse_stamp(s: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%S%.3fZ")
        .ok()
        .map(|t| t.and_utc())
}

/// Records `report` (ended at `at`) and applies `retention` to its shard.
/// Returns how many old reports were removed.
pub async fn record(
    output: &StoreRoot,
    report: &Report,
    at: DateTime<Utc>,
    retention: Retention,
) -> Result<usize, JobError> {
    let shard = &report.config.shard;
    let window = match &report.run.window {
        Some(w) => format!(
            "{}_{}",
            w.from.as_ref().map_or("", |h| h.as_str()),
            w.to.as_ref().map_or("", |h| h.as_str())
        ),
        // A run that failed before it knew its window.
        None => "unknown".to_string(),
    };
    let path = output.child(&format!(
        "{HISTORY_DIR}/{shard}/{window}/{}-{}.json",
        stamp(at),
        report.status
    ));
    output
        .store
        .put(&path, PutPayload::from(Bytes::from(report.to_json())))
        .await
        .op("PUT", output.display_of(&path))?;
    prune(output, shard, at, retention).await
}

/// Applies `retention` to the history of `shard`, as of `now`.
pub async fn prune(
    output: &StoreRoot,
    shard: &str,
    now: DateTime<Utc>,
    retention: Retention,
) -> Result<usize, JobError> {
    let prefix = output.child(&format!("{HISTORY_DIR}/{shard}"));
    let shown = format!("{}/", output.display_of(&prefix));
    let objects: Vec<object_store::ObjectMeta> = output
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .op("LIST", &shown)?;
    // (window, stamp, location), newest first within a window.
    let mut entries: Vec<(String, String, object_store::path::Path)> = objects
        .into_iter()
        .filter_map(|o| {
            let rel = output.relative(&o.location)?.to_string();
            let mut parts = rel.rsplitn(3, '/');
            let (name, window) = (parts.next()?, parts.next()?);
            let stamp = name.split_once('-')?.0.to_string();
            Some((window.to_string(), stamp, o.location))
        })
        .collect();
    entries.sort_by(|a, b| (&a.0, &b.1).cmp(&(&b.0, &a.1)));
    let cutoff =
        now - chrono::Duration::from_std(retention.max_age).unwrap_or(chrono::TimeDelta::MAX);
    let mut old = Vec::new();
    for window in entries.chunk_by(|a, b| a.0 == b.0) {
        for (i, (_, stamp, loc)) in window.iter().enumerate() {
            let too_old = parse_stamp(stamp).is_some_and(|t| t < cutoff);
            if i >= retention.keep || too_old {
                old.push(Ok(loc.clone()));
            }
        }
    }
    let n = old.len();
    let mut removed = output
        .store
        .delete_stream(futures::stream::iter(old).boxed());
    while removed.try_next().await.op("DELETE", &shown)?.is_some() {}
    Ok(n)
}

/// The recorded runs of `shards` (all shards when empty) whose window lies
/// inside `[from, to]` (hours; either open), oldest first.
pub async fn read(
    output: &StoreRoot,
    shards: &[String],
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<Entry>, JobError> {
    let prefix = output.child(HISTORY_DIR);
    let shown = format!("{}/", output.display_of(&prefix));
    let objects: Vec<object_store::ObjectMeta> = output
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .op("LIST", &shown)?;
    let wanted: Vec<(
        String,
        String,
        DateTime<Utc>,
        String,
        object_store::path::Path,
    )> = objects
        .into_iter()
        .filter_map(|o| {
            let rel = output.relative(&o.location)?.to_string();
            let parts: Vec<&str> = rel.split('/').collect();
            let [_, shard, window, name] = parts.as_slice() else {
                return None;
            };
            let (stamp, status) = name.strip_suffix(".json")?.split_once('-')?;
            let (wf, wt) = window.split_once('_').unwrap_or((window, window));
            let inside = from.is_none_or(|f| wf >= f) && to.is_none_or(|t| wt <= t);
            let chosen = shards.is_empty() || shards.iter().any(|s| s == shard);
            (inside && chosen).then(|| {
                (
                    shard.to_string(),
                    window.to_string(),
                    parse_stamp(stamp).unwrap_or_default(),
                    status.to_string(),
                    o.location,
                )
            })
        })
        .collect();
    let mut out: Vec<Entry> = futures::stream::iter(wanted)
        .map(|(shard, window, ended_at, status, loc)| async move {
            let shown = output.display_of(&loc);
            let bytes = output
                .store
                .get(&loc)
                .await
                .op("GET", &shown)?
                .bytes()
                .await
                .op("GET", &shown)?;
            let report = serde_json::from_slice(&bytes).map_err(|e| {
                JobError::BadOutput(format!("history entry {shown} is not a report: {e}"))
            })?;
            Ok::<_, JobError>(Entry {
                shard,
                window,
                ended_at,
                status,
                report,
            })
        })
        .buffered(16)
        .try_collect()
        .await?;
    out.sort_by(|a, b| (a.ended_at, &a.shard, &a.window).cmp(&(b.ended_at, &b.shard, &b.window)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasource::listing::{Hour, Window};
    use crate::job::config::RunConfig;
    use crate::job::run::RunStats;

    fn report(shard: &str, hour: &str) -> Report {
        let cfg = RunConfig::new("in", "out", shard);
        let stats = RunStats {
            window: Some(Window {
                from: Hour::parse(hour),
                to: Hour::parse(hour),
            }),
            committed: true,
            ..Default::default()
        };
        Report::new(&cfg, stats, None)
    }

    #[tokio::test]
    async fn history_keeps_the_newest_reports_and_drops_the_old() {
        let out = StoreRoot::open("memory:///out").unwrap();
        let t0 = DateTime::parse_from_rfc3339("2026-11-21T14:00:00Z")
            .unwrap()
            .to_utc();
        let keep = Retention {
            keep: 3,
            max_age: std::time::Duration::from_secs(10 * 24 * 3600),
        };
        for i in 0..5 {
            let at = t0 + chrono::Duration::minutes(i);
            record(&out, &report("org-mod-1", "2026-11-21T13"), at, keep)
                .await
                .unwrap();
        }
        record(&out, &report("org-mod-2", "2026-11-21T13"), t0, keep)
            .await
            .unwrap();
        let all = read(&out, &[], None, None).await.unwrap();
        let one: Vec<_> = all.iter().filter(|e| e.shard == "org-mod-1").collect();
        assert_eq!(one.len(), 3, "the newest three");
        assert_eq!(one[0].ended_at, t0 + chrono::Duration::minutes(2));
        assert_eq!(one[0].status, "committed");
        assert_eq!(one[0].report["config"]["shard"], "org-mod-1");
        // Eleven days on, org-mod-2's report is too old.
        let later = t0 + chrono::Duration::days(11);
        assert_eq!(prune(&out, "org-mod-2", later, keep).await.unwrap(), 1);
        assert!(
            read(&out, &["org-mod-2".into()], None, None)
                .await
                .unwrap()
                .is_empty()
        );
        // Windows outside the hours asked for are left out.
        assert!(
            read(&out, &[], Some("2026-11-21T14"), None)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
