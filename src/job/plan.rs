//! `tailor plan`: which (shard, hour) windows must run or rerun.
//!
//! For every shard of the map (or those named) and every hour in range, the
//! state of its hourly window, by comparing the input listed now with the
//! input the committed manifest records:
//!
//! ```text
//! pending    input exists, no commit
//! stale      committed, but objects were added, removed, or changed in
//!            size or ETag since (counts and bytes of each)
//! done       committed, and the input is the one the commit read
//! settling   would be pending, stale or empty, but the hour ended less
//!            than --settle ago: the sink may still be writing it
//! empty      no input and no commit
//! orphaned   committed, but none of its input is there any more
//! ```
//!
//! A window committed with another migration role, or other cutovers for
//! its shard's orgs, than the plan's (`--role`, `--migration`) is stale
//! too, whatever its input: its points are not the ones a run would keep.
//!
//! Inputs are compared by their key below the input root
//! (`<shard>/dt=…/hour=…/<file>`), size and ETag (when both sides have one).
//! Where a store's ETags identify content (S3, GCS) only a change of bytes
//! counts; where they are versions (local files: inode and mtime; Azure), a
//! rewrite with the same bytes counts too, which errs on the side of a
//! rerun that gives the same bytes. Windows committed with other bounds
//! than one hour (replays) are listed apart, with their own state, and so
//! are misplaced objects (payload-named objects outside the layout).
//!
//! Cost: one LIST per shard of the input and one of the output, one GET per
//! committed manifest; shards are planned concurrently.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::datasource::listing::{Hour, Ignored, InputObject, Window, list_inputs};
use crate::datasource::store::StoreRoot;
use crate::format::shard::ShardMap;
use crate::job::error::JobError;
use crate::job::manifest::{Manifest, ManifestInput, read_stored, window_dirs};
use crate::job::migration::{Applied, Migration, Role};

/// `--settle` when none is given: a window is planned once its hour ended
/// at least this long ago (the sink flushes on a time or size trigger of a
/// few minutes; `jobs/hourly.toml`'s schedule starts at :15).
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(10 * 60);

/// The plan's format version (the JSON's `version`).
pub const PLAN_VERSION: u32 = 1;

/// What a plan covers.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub shards: Vec<String>,
    pub map: Arc<ShardMap>,
    /// Hours to plan (inclusive); without both, the hours present in the
    /// input or committed.
    pub from: Option<Hour>,
    pub to: Option<Hour>,
    pub settle: Duration,
    pub now: DateTime<Utc>,
    /// Shards planned at once.
    pub concurrency: usize,
    /// The migration the runs apply (`--role`, `--migration`): a window
    /// committed with another role or other cutovers for its shard is stale.
    pub role: Role,
    pub migration: Option<Arc<Migration>>,
    /// The migration file as the runs are to be given it (in `run_args`).
    pub migration_arg: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Stale,
    Done,
    Settling,
    Empty,
    Orphaned,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Stale => "stale",
            State::Done => "done",
            State::Settling => "settling",
            State::Empty => "empty",
            State::Orphaned => "orphaned",
        }
    }

    /// Whether a scheduler must run the window.
    pub fn needs_run(self) -> bool {
        matches!(self, State::Pending | State::Stale)
    }
}

/// How the input differs from what a commit read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub added: u64,
    pub added_bytes: u64,
    pub removed: u64,
    pub removed_bytes: u64,
    /// Present on both sides with another size or ETag (bytes now).
    pub changed: u64,
    pub changed_bytes: u64,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added + self.removed + self.changed == 0
    }
}

/// The commit of a window, as the plan saw it.
#[derive(Debug, Clone, Serialize)]
pub struct CommitInfo {
    pub run_id: String,
    pub points: u64,
    /// When the manifest was written (store time).
    pub committed_at: DateTime<Utc>,
}

/// One window of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct WindowPlan {
    pub shard: String,
    pub from: String,
    pub to: String,
    /// `<from>_<to>`, the window's directory under the shard.
    pub window: String,
    pub state: State,
    pub input_objects: u64,
    pub input_bytes: u64,
    pub commit: Option<CommitInfo>,
    pub changes: Changes,
    /// Why it is in its state, in words.
    pub reason: String,
    /// The flags of `tailor run` that run this window.
    pub run_args: Vec<String>,
}

/// A misplaced object of a shard.
#[derive(Debug, Clone, Serialize)]
pub struct Misplaced {
    pub shard: String,
    pub key: String,
    pub size: u64,
    pub reason: String,
}

/// The plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub format: &'static str,
    pub version: u32,
    pub generated_at: DateTime<Utc>,
    pub input: String,
    pub output: String,
    pub settle_seconds: u64,
    /// Windows by state.
    pub summary: BTreeMap<&'static str, u64>,
    /// Hourly windows, by shard then hour.
    pub windows: Vec<WindowPlan>,
    /// Windows committed with other bounds than one hour (replays).
    pub other_windows: Vec<WindowPlan>,
    pub misplaced: Vec<Misplaced>,
}

impl Plan {
    /// The windows a scheduler must run, hourly ones first.
    pub fn to_run(&self) -> impl Iterator<Item = &WindowPlan> {
        self.windows
            .iter()
            .chain(&self.other_windows)
            .filter(|w| w.state.needs_run())
    }

    /// Hours since the oldest pending or stale window's hour ended (0 when
    /// there is none).
    pub fn oldest_to_run_age(&self) -> Duration {
        self.to_run()
            .filter_map(|w| Hour::parse(&w.to))
            .map(|h| {
                let end = h.start_ms() + 3_600_000;
                let age = self.generated_at.timestamp_millis() - end;
                Duration::from_millis(age.max(0) as u64)
            })
            .max()
            .unwrap_or_default()
    }
}

/// The key of an input below the input root: the layout's last four
/// segments, so that the same tree read under another root compares equal.
fn below_root(k: &str) -> &str {
    k.rmatch_indices('/').nth(3).map_or(k, |(i, _)| &k[i + 1..])
}

/// What the input of a window now is against what its commit read.
pub fn compare(now: &[InputObject], read: &[ManifestInput]) -> Changes {
    let before: BTreeMap<&str, &ManifestInput> =
        read.iter().map(|i| (below_root(&i.key), i)).collect();
    let mut seen = BTreeSet::new();
    let mut c = Changes::default();
    for o in now {
        let key = below_root(&o.key);
        seen.insert(key);
        match before.get(key) {
            None => {
                c.added += 1;
                c.added_bytes += o.size;
            }
            Some(b) => {
                let etag_differs = matches!((&b.e_tag, &o.e_tag), (Some(x), Some(y)) if x != y);
                if b.size != o.size || etag_differs {
                    c.changed += 1;
                    c.changed_bytes += o.size;
                }
            }
        }
    }
    for (key, b) in before {
        if !seen.contains(key) {
            c.removed += 1;
            c.removed_bytes += b.size;
        }
    }
    c
}

/// The state of a window whose hours end at `end_ms`, with `inputs` listed
/// now and `commit` (the manifest, if any).
pub fn state_of(
    inputs: &[InputObject],
    commit: Option<&Manifest>,
    expect: &Applied,
    end_ms: i64,
    settle: Duration,
    now: DateTime<Utc>,
) -> (State, Changes, String) {
    let young = now.timestamp_millis() < end_ms + settle.as_millis() as i64;
    let (state, changes, reason) = match commit {
        None if inputs.is_empty() => (
            State::Empty,
            Changes::default(),
            "no input, no commit".into(),
        ),
        None => (
            State::Pending,
            Changes::default(),
            format!("{} input objects, no commit", inputs.len()),
        ),
        Some(m) => {
            let changes = compare(inputs, &m.inputs);
            if inputs.is_empty() && !m.inputs.is_empty() {
                (
                    State::Orphaned,
                    changes,
                    format!(
                        "committed, but its {} input objects are gone",
                        m.inputs.len()
                    ),
                )
            } else if let Some(why) = expect.change_from(&m.settings.applied()) {
                // Another migration: the points kept differ, whatever the input.
                let input = if changes.is_empty() {
                    "input unchanged".to_string()
                } else {
                    format!(
                        "{} objects added, {} removed, {} changed",
                        changes.added, changes.removed, changes.changed
                    )
                };
                (State::Stale, changes, format!("{why}; {input}"))
            } else if changes.is_empty() {
                (State::Done, changes, "committed, input unchanged".into())
            } else {
                let reason = format!(
                    "committed, then {} objects added ({} bytes), {} removed ({} bytes), {} changed ({} bytes)",
                    changes.added,
                    changes.added_bytes,
                    changes.removed,
                    changes.removed_bytes,
                    changes.changed,
                    changes.changed_bytes
                );
                (State::Stale, changes, reason)
            }
        }
    };
    if young && matches!(state, State::Pending | State::Stale | State::Empty) {
        let reason = format!(
            "{reason}; the hour ended less than {} s ago (--settle)",
            settle.as_secs()
        );
        return (State::Settling, changes, reason);
    }
    (state, changes, reason)
}

/// Every hour from `from` to `to`, inclusive.
pub fn hours(from: &Hour, to: &Hour) -> Vec<Hour> {
    let mut out = Vec::new();
    let mut h = from.clone();
    while &h <= to {
        out.push(h.clone());
        h = h.next();
    }
    out
}

/// Plans the windows of `cfg` against the input and output roots.
pub async fn plan(
    cfg: &PlanConfig,
    input: &StoreRoot,
    output: &StoreRoot,
) -> Result<Plan, JobError> {
    let planned: Vec<(Vec<WindowPlan>, Vec<WindowPlan>, Vec<Misplaced>)> =
        futures::stream::iter(cfg.shards.iter())
            .map(|shard| plan_shard(cfg, input, output, shard))
            .buffered(cfg.concurrency.max(1))
            .try_collect()
            .await?;
    let mut plan = Plan {
        format: "tailor-plan",
        version: PLAN_VERSION,
        generated_at: cfg.now,
        input: input.display.clone(),
        output: output.display.clone(),
        settle_seconds: cfg.settle.as_secs(),
        summary: BTreeMap::new(),
        windows: Vec::new(),
        other_windows: Vec::new(),
        misplaced: Vec::new(),
    };
    for (w, o, m) in planned {
        plan.windows.extend(w);
        plan.other_windows.extend(o);
        plan.misplaced.extend(m);
    }
    for s in [
        State::Pending,
        State::Stale,
        State::Done,
        State::Settling,
        State::Empty,
        State::Orphaned,
    ] {
        plan.summary.insert(s.name(), 0);
    }
    for w in plan.windows.iter().chain(&plan.other_windows) {
        *plan.summary.entry(w.state.name()).or_default() += 1;
    }
    Ok(plan)
}

type ShardPlan = (Vec<WindowPlan>, Vec<WindowPlan>, Vec<Misplaced>);

async fn plan_shard(
    cfg: &PlanConfig,
    input: &StoreRoot,
    output: &StoreRoot,
    shard: &str,
) -> Result<ShardPlan, JobError> {
    let listing = list_inputs(input, Some(shard), &Window::default()).await?;
    let mut by_hour: BTreeMap<Hour, Vec<InputObject>> = BTreeMap::new();
    for o in &listing.objects {
        by_hour.entry(o.hour.clone()).or_default().push(o.clone());
    }
    let misplaced = listing
        .ignored
        .iter()
        .filter(|o: &&Ignored| o.key.ends_with(".tsp"))
        .map(|o| Misplaced {
            shard: shard.to_string(),
            key: o.key.clone(),
            size: o.size,
            reason: o.reason.clone(),
        })
        .collect();
    // Committed windows of the shard, their manifests read concurrently.
    let (committed, _) = window_dirs(output, shard).await?;
    type Committed = (String, Option<(Manifest, DateTime<Utc>)>);
    let manifests: Vec<Committed> = futures::stream::iter(committed)
        .map(|w| async move {
            let stored = read_stored(output, shard, &w).await?;
            // One whose bytes are not a manifest commits nothing: the
            // window is planned as uncommitted (a run replaces it).
            let m = stored.and_then(|s| Some((s.manifest.ok()?, s.meta.last_modified)));
            Ok::<_, JobError>((w, m))
        })
        .buffered(8)
        .try_collect()
        .await?;
    let mut hourly: BTreeMap<Hour, (Manifest, DateTime<Utc>)> = BTreeMap::new();
    let mut others: Vec<(Manifest, DateTime<Utc>)> = Vec::new();
    for (_, m) in manifests {
        let Some((m, at)) = m else { continue };
        match (Hour::parse(&m.window_from), Hour::parse(&m.window_to)) {
            (Some(f), Some(t)) if f == t => {
                hourly.insert(f, (m, at));
            }
            _ => others.push((m, at)),
        }
    }
    let span: Vec<Hour> = match (&cfg.from, &cfg.to) {
        (Some(f), Some(t)) => hours(f, t),
        _ => {
            let mut all: BTreeSet<Hour> = by_hour.keys().cloned().collect();
            all.extend(hourly.keys().cloned());
            all.into_iter()
                .filter(|h| cfg.from.as_ref().is_none_or(|f| h >= f))
                .filter(|h| cfg.to.as_ref().is_none_or(|t| h <= t))
                .collect()
        }
    };
    let none: Vec<InputObject> = Vec::new();
    let expect = Applied::new(cfg.role, cfg.migration.as_deref(), shard, &cfg.map);
    let mut migration_args: Vec<String> = Vec::new();
    if cfg.role != Role::Shadow {
        migration_args.extend(["--role".to_string(), cfg.role.name().to_string()]);
        if let Some(m) = &cfg.migration_arg {
            migration_args.extend(["--migration".to_string(), m.clone()]);
        }
    }
    let window = |from: &Hour,
                  to: &Hour,
                  inputs: Vec<&InputObject>,
                  commit: Option<&(Manifest, DateTime<Utc>)>| {
        let inputs: Vec<InputObject> = inputs.into_iter().cloned().collect();
        let (state, changes, reason) = state_of(
            &inputs,
            commit.map(|c| &c.0),
            &expect,
            to.start_ms() + 3_600_000,
            cfg.settle,
            cfg.now,
        );
        WindowPlan {
            shard: shard.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            window: format!("{from}_{to}"),
            state,
            input_objects: inputs.len() as u64,
            input_bytes: inputs.iter().map(|o| o.size).sum(),
            commit: commit.map(|(m, at)| CommitInfo {
                run_id: m.run_id.clone(),
                points: m.points,
                committed_at: *at,
            }),
            changes,
            reason,
            run_args: vec![
                "--shard".into(),
                shard.to_string(),
                "--from".into(),
                from.to_string(),
                "--to".into(),
                to.to_string(),
            ]
            .into_iter()
            .chain(migration_args.iter().cloned())
            .collect(),
        }
    };
    let windows = span
        .iter()
        .map(|h| {
            let inputs = by_hour.get(h).unwrap_or(&none).iter().collect();
            window(h, h, inputs, hourly.get(h))
        })
        .collect();
    let other_windows = others
        .iter()
        .filter_map(|c| {
            let (f, t) = (Hour::parse(&c.0.window_from)?, Hour::parse(&c.0.window_to)?);
            let inside = |h: &Hour| {
                cfg.from.as_ref().is_none_or(|x| h >= x) && cfg.to.as_ref().is_none_or(|x| h <= x)
            };
            if !(inside(&f) || inside(&t)) {
                return None;
            }
            let inputs = by_hour
                .range(f.clone()..=t.clone())
                .flat_map(|(_, v)| v)
                .collect();
            Some(window(&f, &t, inputs, Some(c)))
        })
        .collect();
    Ok((windows, other_windows, misplaced))
}

impl Plan {
    /// The plan as a table for a person.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<14} {:<29} {:<9} {:>8} {:>12}  reason",
            "shard", "window", "state", "objects", "bytes"
        );
        for w in self.windows.iter().chain(&self.other_windows) {
            let _ = writeln!(
                s,
                "{:<14} {:<29} {:<9} {:>8} {:>12}  {}",
                w.shard,
                w.window,
                w.state.name(),
                w.input_objects,
                w.input_bytes,
                w.reason
            );
        }
        for m in &self.misplaced {
            let _ = writeln!(s, "misplaced: {} ({} bytes): {}", m.key, m.size, m.reason);
        }
        let summary: Vec<String> = self
            .summary
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let _ = writeln!(s, "{}", summary.join(", "));
        s
    }

    /// The plan as CSV, one window a line.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "shard,from,to,state,input_objects,input_bytes,added,added_bytes,removed,removed_bytes,changed,changed_bytes,run_id\n",
        );
        for w in self.windows.iter().chain(&self.other_windows) {
            let c = &w.changes;
            s.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                w.shard,
                w.from,
                w.to,
                w.state.name(),
                w.input_objects,
                w.input_bytes,
                c.added,
                c.added_bytes,
                c.removed,
                c.removed_bytes,
                c.changed,
                c.changed_bytes,
                w.commit.as_ref().map_or("", |c| c.run_id.as_str())
            ));
        }
        s
    }
}

/// The plan restricted to the windows to run, as `tailor run --plan-file`
/// reads it (the `--plan-index`-th window to run is the task's).
pub fn to_run_only(p: &Plan) -> Plan {
    let mut q = p.clone();
    q.windows.retain(|w| w.state.needs_run());
    q.other_windows.retain(|w| w.state.needs_run());
    q
}

/// `--format k8s`: a Kubernetes `List` of a ConfigMap holding the windows
/// to run (`plan.json`) and the Indexed Job of `template` (a `batch/v1`
/// Job, JSON) with one completion per window, the ConfigMap mounted at
/// `/plan` in every container. Each pod runs the window its
/// `JOB_COMPLETION_INDEX` picks (`tailor run --plan-file /plan/plan.json
/// --plan-index $(JOB_COMPLETION_INDEX)`, in the template). Nothing to
/// run: an empty list.
pub fn k8s_list(p: &Plan, template: &std::path::Path) -> Result<String, JobError> {
    use serde_json::{Value, json};
    let text = std::fs::read_to_string(template).map_err(|e| {
        JobError::Config(format!(
            "reading --k8s-template {}: {e}",
            template.display()
        ))
    })?;
    let mut job: Value = serde_json::from_str(&text)
        .map_err(|e| JobError::Config(format!("--k8s-template {}: {e}", template.display())))?;
    let bad =
        |what: &str| JobError::Config(format!("--k8s-template {}: {what}", template.display()));
    if job["kind"] != "Job" {
        return Err(bad("not a batch/v1 Job"));
    }
    let to_run = to_run_only(p);
    let n = to_run.windows.len() + to_run.other_windows.len();
    if n == 0 {
        return Ok(serde_json::to_string_pretty(
            &json!({"apiVersion": "v1", "kind": "List", "items": []}),
        )
        .expect("json"));
    }
    let stamp = p.generated_at.format("%Y%m%dt%H%M%S").to_string();
    let base = job["metadata"]["name"]
        .as_str()
        .unwrap_or("tailor")
        .to_string();
    let name = format!("{base}-{stamp}");
    let cm_name = format!("{name}-plan");
    job["metadata"]["name"] = json!(name);
    let spec = job
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| bad("no spec"))?;
    spec.insert("completionMode".into(), json!("Indexed"));
    spec.insert("completions".into(), json!(n));
    let parallelism = spec.get("parallelism").and_then(Value::as_u64).unwrap_or(1);
    spec.insert("parallelism".into(), json!(parallelism.min(n as u64)));
    let pod = spec
        .get_mut("template")
        .and_then(|t| t.get_mut("spec"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| bad("no spec.template.spec"))?;
    let volumes = pod.entry("volumes").or_insert_with(|| json!([]));
    let volumes = volumes
        .as_array_mut()
        .ok_or_else(|| bad("volumes is not a list"))?;
    volumes.retain(|v| v["name"] != "plan");
    volumes.push(json!({"name": "plan", "configMap": {"name": cm_name}}));
    let containers = pod
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("no containers"))?;
    for c in containers {
        let mounts = c
            .as_object_mut()
            .ok_or_else(|| bad("a container is not an object"))?
            .entry("volumeMounts")
            .or_insert_with(|| json!([]));
        let mounts = mounts
            .as_array_mut()
            .ok_or_else(|| bad("volumeMounts is not a list"))?;
        mounts.retain(|m| m["name"] != "plan");
        mounts.push(json!({"name": "plan", "mountPath": "/plan", "readOnly": true}));
    }
    let namespace = job["metadata"]["namespace"].clone();
    let mut cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": cm_name, "labels": {"app.kubernetes.io/name": "tailor"}},
        "data": {"plan.json": serde_json::to_string_pretty(&to_run).expect("json")},
    });
    if !namespace.is_null() {
        cm["metadata"]["namespace"] = namespace;
    }
    Ok(serde_json::to_string_pretty(&json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [cm, job],
    }))
    .expect("json"))
}

/// The `index`-th window to run in a plan file (as `tailor plan --out` or
/// the k8s ConfigMap writes it): its shard, first and last hour.
pub fn window_of_plan_file(
    path: &std::path::Path,
    index: usize,
) -> Result<(String, String, String), JobError> {
    let bad = |what: String| JobError::Config(format!("--plan-file {}: {what}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if v["format"] != "tailor-plan" {
        return Err(bad("not a plan (tailor plan --out)".into()));
    }
    let windows: Vec<&serde_json::Value> = ["windows", "other_windows"]
        .iter()
        .filter_map(|k| v[*k].as_array())
        .flatten()
        .filter(|w| matches!(w["state"].as_str(), Some("pending" | "stale")))
        .collect();
    let w = windows.get(index).ok_or_else(|| {
        bad(format!(
            "--plan-index {index}, but the plan has {} windows to run",
            windows.len()
        ))
    })?;
    let field = |k: &str| {
        w[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| bad(format!("window {index} has no {k}")))
    };
    Ok((field("shard")?, field("from")?, field("to")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64, e_tag: &str) -> InputObject {
        InputObject {
            key: format!("root/dir/{key}"),
            size,
            e_tag: Some(e_tag.into()),
            shard: "org-mod-1".into(),
            hour: Hour::parse("2026-11-21T05").unwrap(),
            meta: object_store::ObjectMeta {
                location: object_store::path::Path::from(key),
                last_modified: Utc::now(),
                size,
                e_tag: Some(e_tag.into()),
                version: None,
            },
        }
    }

    fn read(key: &str, size: u64, e_tag: &str) -> ManifestInput {
        ManifestInput {
            key: format!("elsewhere/{key}"),
            size,
            e_tag: Some(e_tag.into()),
        }
    }

    #[test]
    fn inputs_compare_by_key_below_the_root_size_and_etag() {
        let k = |f: &str| format!("org-mod-1/dt=2026-11-21/hour=05/{f}");
        let now = vec![
            obj(&k("a.tsp"), 10, "x"),
            obj(&k("b.tsp"), 20, "y2"),
            obj(&k("c.tsp"), 30, "z"),
        ];
        let before = vec![
            read(&k("a.tsp"), 10, "x"),
            read(&k("b.tsp"), 20, "y1"),
            read(&k("d.tsp"), 40, "w"),
        ];
        let c = compare(&now, &before);
        assert_eq!(
            c,
            Changes {
                added: 1,
                added_bytes: 30,
                removed: 1,
                removed_bytes: 40,
                changed: 1,
                changed_bytes: 20
            }
        );
        assert!(
            compare(&now[..1], &before[..1]).is_empty(),
            "another root, same tree"
        );
    }

    #[test]
    fn young_hours_settle_and_done_ones_stay_done() {
        let h = Hour::parse("2026-11-21T05").unwrap();
        let end = h.start_ms() + 3_600_000;
        let at = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
        let settle = Duration::from_secs(600);
        let k = "org-mod-1/dt=2026-11-21/hour=05/a.tsp";
        let inputs = vec![obj(k, 10, "x")];
        let (s, ..) = state_of(
            &inputs,
            None,
            &Applied::default(),
            end,
            settle,
            at(end + 599_000),
        );
        assert_eq!(s, State::Settling);
        let (s, ..) = state_of(
            &inputs,
            None,
            &Applied::default(),
            end,
            settle,
            at(end + 600_000),
        );
        assert_eq!(s, State::Pending);
        let (s, ..) = state_of(
            &[],
            None,
            &Applied::default(),
            end,
            settle,
            at(end + 600_000),
        );
        assert_eq!(s, State::Empty);
        let (s, ..) = state_of(&[], None, &Applied::default(), end, settle, at(end));
        assert_eq!(
            s,
            State::Settling,
            "an empty young hour may still get input"
        );
    }

    #[test]
    fn the_hours_of_a_range_cross_days() {
        let h = hours(
            &Hour::parse("2026-02-28T22").unwrap(),
            &Hour::parse("2026-03-01T01").unwrap(),
        );
        let names: Vec<&str> = h.iter().map(|h| h.as_str()).collect();
        assert_eq!(
            names,
            [
                "2026-02-28T22",
                "2026-02-28T23",
                "2026-03-01T00",
                "2026-03-01T01"
            ]
        );
    }
}
