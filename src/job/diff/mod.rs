//! `tailor diff`: compares the logical content of two committed outputs,
//! point by point, for a migration's side-by-side run.
//!
//! Each side becomes two DataFusion tables read straight from its committed
//! files, in the order the files already have: `points` (part, org_id,
//! metric_id, ts, bits) and `series` (part, org_id, metric_id, kind,
//! interval_s, metadata, n_points), both declared sorted by their keys.
//! `part` numbers the (shard, window directory name) pairs of both sides in
//! their sorted order, so an integer stands for the two strings in every
//! row and every key comparison of the joins. A FULL OUTER
//! sort-merge join (DataFusion's `SortMergeJoinExec`) of old against new on
//! those keys streams without sorting or hashing either side, so two outputs
//! larger than memory are compared in bounded memory. Only content counts: file
//! layout, size caps, codecs and file counts may differ.
//!
//! Windows are compared by name (`<from>_<to>`); a window committed on one
//! side only shows up as series and points present on that side only.
//! Values are compared by their bits (a NaN equals a NaN only when the bits
//! match).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{Field, Int64Type, Schema, UInt8Type, UInt32Type, UInt64Type};
use futures::StreamExt;
use serde::Serialize;

use crate::datasource::listing::Hour;
use crate::datasource::store::StoreRoot;
use crate::job::error::JobError;
use crate::job::handover::{Finding, check_side};
use crate::job::manifest::Manifest;
use crate::job::migration::{Cutover, Migration, Role};

mod join;
mod sides;

use join::{DiffWriter, differing_points, join, join_plan, series_rows, session};
use sides::{Side, Source, merged_side, number_parts, shards_of, side};

/// What to compare.
#[derive(Debug, Clone)]
pub struct DiffConfig {
    pub old: String,
    pub new: String,
    /// Shards to compare (default: every shard either side has).
    pub shards: Vec<String>,
    pub from: Option<Hour>,
    pub to: Option<Hour>,
    /// Only these orgs (default: all).
    pub orgs: Vec<u64>,
    /// Examples kept per category and shard for the summary.
    pub examples: usize,
    /// Where to write every differing point (Parquet), if anywhere.
    pub out: Option<std::path::PathBuf>,
    /// A memory pool for the joins (they stream, so little is needed).
    pub memory_limit: Option<u64>,
    /// A migration: `old` and `new` are its two systems, each checked for
    /// points it wrote outside what it owns; with `shadow`, the merged
    /// view of the two is compared with it (instead of old with new).
    pub migration: Option<Arc<Migration>>,
    /// An output of one system that wrote every point (`--role shadow`).
    pub shadow: Option<String>,
}

/// Difference categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    SeriesOldOnly,
    SeriesNewOnly,
    KindDiffers,
    IntervalDiffers,
    MetadataDiffers,
    PointOldOnly,
    PointNewOnly,
    ValueDiffers,
    /// Points the old system wrote that the migration gives the new one.
    OldWroteNewOwned,
    /// Points the new system wrote that the migration leaves to the old one.
    NewWroteOldOwned,
    /// Windows written with a role or cutovers other than the migration
    /// file's.
    CutoversDiffer,
}

const CATEGORIES: [Category; 11] = [
    Category::SeriesOldOnly,
    Category::SeriesNewOnly,
    Category::KindDiffers,
    Category::IntervalDiffers,
    Category::MetadataDiffers,
    Category::PointOldOnly,
    Category::PointNewOnly,
    Category::ValueDiffers,
    Category::OldWroteNewOwned,
    Category::NewWroteOldOwned,
    Category::CutoversDiffer,
];

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::SeriesOldOnly => "series_old_only",
            Category::SeriesNewOnly => "series_new_only",
            Category::KindDiffers => "kind_differs",
            Category::IntervalDiffers => "interval_differs",
            Category::MetadataDiffers => "metadata_differs",
            Category::PointOldOnly => "point_old_only",
            Category::PointNewOnly => "point_new_only",
            Category::ValueDiffers => "value_differs",
            Category::OldWroteNewOwned => "old_wrote_new_owned",
            Category::NewWroteOldOwned => "new_wrote_old_owned",
            Category::CutoversDiffer => "cutovers_differ",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One difference, as shown in the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    pub window: String,
    pub org_id: u64,
    pub metric_id: u64,
    pub ts: Option<i64>,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// Per-shard results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardDiff {
    pub counts: BTreeMap<Category, u64>,
    pub examples: BTreeMap<Category, Vec<Example>>,
    pub old_points: u64,
    pub new_points: u64,
}

/// The diff report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffReport {
    pub old: String,
    pub new: String,
    /// The migration file of a handover check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    /// With a migration: the shadow output the merged view was compared
    /// with (`old` in the comparison's categories is then the shadow
    /// output, `new` the merged view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
    pub shards: BTreeMap<String, ShardDiff>,
    pub totals: BTreeMap<Category, u64>,
    pub compared_points: u64,
    pub differing_points_file: Option<String>,
    pub seconds: f64,
}

impl DiffReport {
    pub fn identical(&self) -> bool {
        self.totals.values().all(|&n| n == 0)
    }

    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let verdict = if self.identical() {
            "identical"
        } else {
            "DIFFERENT"
        };
        match (&self.migration, &self.shadow) {
            (None, _) => {
                let _ = writeln!(
                    s,
                    "tailor diff {} -> {}: {verdict} ({} points compared in {:.2}s)",
                    self.old, self.new, self.compared_points, self.seconds
                );
            }
            (Some(m), shadow) => {
                let _ = writeln!(
                    s,
                    "tailor diff handover of {m}: old {}, new {}{}: {verdict} ({} points checked in {:.2}s)",
                    self.old,
                    self.new,
                    shadow
                        .as_ref()
                        .map(|sh| format!(
                            ", merged view against shadow {sh} (old = shadow, new = merged view)"
                        ))
                        .unwrap_or_default(),
                    self.compared_points,
                    self.seconds
                );
            }
        }
        for (shard, d) in &self.shards {
            let counts: Vec<String> = d
                .counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            let _ = writeln!(
                s,
                "  {shard}: {} old points, {} new points{}{}",
                d.old_points,
                d.new_points,
                if counts.is_empty() { "" } else { ": " },
                counts.join(", ")
            );
            for (c, ex) in &d.examples {
                for e in ex {
                    let _ = writeln!(
                        s,
                        "    {c} {} {}:{}{} old={} new={}",
                        e.window,
                        e.org_id,
                        e.metric_id,
                        e.ts.map(|t| format!(" ts={t}")).unwrap_or_default(),
                        e.old.as_deref().unwrap_or("-"),
                        e.new.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        s
    }
}

/// The physical plans of the two joins (tests check that they stream).
pub async fn explain(cfg: &DiffConfig) -> Result<String, JobError> {
    let old = side(&cfg.old, &cfg.shards, cfg).await?;
    let new = side(&cfg.new, &cfg.shards, cfg).await?;
    let parts = number_parts(&old, &new)?;
    let ctx = session(&old, &new, &parts, cfg.memory_limit)?;
    let mut out = String::new();
    for (l, r, keys) in [
        ("old_series", "new_series", 3),
        ("old_points", "new_points", 4),
    ] {
        let plan = join_plan(&ctx, l, r, keys).await?;
        out.push_str(
            &datafusion::physical_plan::displayable(plan.as_ref())
                .indent(true)
                .to_string(),
        );
        out.push('\n');
    }
    Ok(out)
}

/// Runs the diff.
pub async fn diff(cfg: &DiffConfig) -> Result<DiffReport, JobError> {
    let started = std::time::Instant::now();
    if cfg.shadow.is_some() && cfg.migration.is_none() {
        return Err(JobError::Config(
            "--shadow needs --migration (the merged view of old and new is compared with it)"
                .into(),
        ));
    }
    let shards: Vec<String> = if cfg.shards.is_empty() {
        let mut s = Vec::new();
        for url in [Some(&cfg.old), Some(&cfg.new), cfg.shadow.as_ref()]
            .into_iter()
            .flatten()
        {
            s.extend(shards_of(&StoreRoot::open(url)?).await?);
        }
        s.sort();
        s.dedup();
        s
    } else {
        let mut s = cfg.shards.clone();
        s.sort();
        s.dedup();
        s
    };
    let old = side(&cfg.old, &shards, cfg).await?;
    let new = side(&cfg.new, &shards, cfg).await?;
    if let Some(s) = shards
        .iter()
        .find(|s| !old.committed.contains(*s) && !new.committed.contains(*s))
    {
        return Err(JobError::BadOutput(format!(
            "shard {s} has no committed output on either side"
        )));
    }
    if old.manifests.is_empty() && new.manifests.is_empty() {
        return Err(JobError::BadOutput(
            "neither side has a committed window to compare".into(),
        ));
    }
    let mut report = DiffReport {
        old: cfg.old.clone(),
        new: cfg.new.clone(),
        migration: cfg.migration.as_ref().map(|m| m.source.clone()),
        shadow: cfg.shadow.clone(),
        ..Default::default()
    };
    for shard in &shards {
        report.shards.insert(shard.clone(), ShardDiff::default());
    }
    let (old, new) = match (&cfg.migration, &cfg.shadow) {
        (None, _) => (old, new),
        (Some(m), shadow) => {
            handover(&old, &new, m, cfg, &mut report).await?;
            match shadow {
                // The handover check is all there is to do.
                None => return Ok(finish(report, cfg, started)),
                Some(url) => {
                    let shadow = side(url, &shards, cfg).await?;
                    let merged = merged_side(&old, &new, m);
                    (shadow, merged)
                }
            }
        }
    };
    let parts = number_parts(&old, &new)?;
    let ctx = session(&old, &new, &parts, cfg.memory_limit)?;
    // With a shadow, the points counted are those compared (the shadow
    // output's and the merged view's), not those the handover check read.
    for d in report.shards.values_mut() {
        (d.old_points, d.new_points) = (0, 0);
    }

    // Series level: presence, kind, interval, metadata; and point counts.
    let mut stream = join(&ctx, "old_series", "new_series", 3).await?;
    while let Some(b) = stream.next().await {
        let b = b?;
        let cols = series_rows(&b)?;
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(
                cols.iter()
                    .enumerate()
                    .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
                    .collect::<Vec<_>>(),
            )),
            cols,
        )
        .map_err(datafusion::error::DataFusionError::from)?;
        let part = b.column(0).as_primitive::<UInt32Type>();
        let org = b.column(1).as_primitive::<UInt64Type>();
        let metric = b.column(2).as_primitive::<UInt64Type>();
        let (ok, nk) = (
            b.column(3).as_primitive::<UInt8Type>(),
            b.column(4).as_primitive::<UInt8Type>(),
        );
        let (oi, ni) = (
            b.column(5).as_primitive::<UInt32Type>(),
            b.column(6).as_primitive::<UInt32Type>(),
        );
        let (om, nm) = (
            b.column(7).as_string::<i32>(),
            b.column(8).as_string::<i32>(),
        );
        let (on, nn) = (
            b.column(9).as_primitive::<UInt64Type>(),
            b.column(10).as_primitive::<UInt64Type>(),
        );
        for i in 0..b.num_rows() {
            let (shard, window) = &parts[part.value(i) as usize];
            let d = shard_diff(&mut report.shards, shard);
            let ex = |old: Option<String>, new: Option<String>| Example {
                window: window.clone(),
                org_id: org.value(i),
                metric_id: metric.value(i),
                ts: None,
                old,
                new,
            };
            let mut hits = Vec::new();
            if ok.is_null(i) {
                hits.push((
                    Category::SeriesNewOnly,
                    ex(None, Some(format!("{} points", nn.value(i)))),
                ));
            } else if nk.is_null(i) {
                hits.push((
                    Category::SeriesOldOnly,
                    ex(Some(format!("{} points", on.value(i))), None),
                ));
            } else {
                if ok.value(i) != nk.value(i) {
                    hits.push((
                        Category::KindDiffers,
                        ex(Some(ok.value(i).to_string()), Some(nk.value(i).to_string())),
                    ));
                }
                if oi.value(i) != ni.value(i) {
                    hits.push((
                        Category::IntervalDiffers,
                        ex(Some(oi.value(i).to_string()), Some(ni.value(i).to_string())),
                    ));
                }
                if om.value(i) != nm.value(i) {
                    hits.push((
                        Category::MetadataDiffers,
                        ex(
                            Some(format!("{:?}", om.value(i))),
                            Some(format!("{:?}", nm.value(i))),
                        ),
                    ));
                }
            }
            if !on.is_null(i) {
                d.old_points += on.value(i);
            }
            if !nn.is_null(i) {
                d.new_points += nn.value(i);
            }
            for (c, e) in hits {
                record(d, c, cfg.examples, || e);
            }
        }
    }

    // Point level: every differing point, streamed to Parquet.
    let mut writer = match &cfg.out {
        Some(p) => Some(DiffWriter::create(p)?),
        None => None,
    };
    let mut stream = join(&ctx, "old_points", "new_points", 4).await?;
    while let Some(b) = stream.next().await {
        let b = differing_points(&b?)?;
        if b.num_rows() == 0 {
            continue;
        }
        let part = b.column(0).as_primitive::<UInt32Type>();
        let org = b.column(1).as_primitive::<UInt64Type>();
        let metric = b.column(2).as_primitive::<UInt64Type>();
        let ts = b.column(3).as_primitive::<Int64Type>();
        let ob = b.column(4).as_primitive::<UInt64Type>();
        let nb = b.column(5).as_primitive::<UInt64Type>();
        let mut cats = Vec::with_capacity(b.num_rows());
        for i in 0..b.num_rows() {
            let c = if ob.is_null(i) {
                Category::PointNewOnly
            } else if nb.is_null(i) {
                Category::PointOldOnly
            } else {
                Category::ValueDiffers
            };
            cats.push(c);
            let (shard, window) = &parts[part.value(i) as usize];
            let d = shard_diff(&mut report.shards, shard);
            let show = |a: &UInt64Array| {
                (!a.is_null(i))
                    .then(|| format!("{} (0x{:016x})", f64::from_bits(a.value(i)), a.value(i)))
            };
            record(d, c, cfg.examples, || Example {
                window: window.clone(),
                org_id: org.value(i),
                metric_id: metric.value(i),
                ts: Some(ts.value(i)),
                old: show(ob),
                new: show(nb),
            });
        }
        if let Some(w) = writer.as_mut() {
            w.write(&b, &cats, &parts)?;
        }
    }
    if let Some(w) = writer {
        w.close()?;
        report.differing_points_file = cfg.out.as_ref().map(|p| p.display().to_string());
    }
    Ok(finish(report, cfg, started))
}

/// Totals and time of a finished report.
fn finish(mut report: DiffReport, cfg: &DiffConfig, started: std::time::Instant) -> DiffReport {
    for d in report.shards.values() {
        for (c, n) in &d.counts {
            *report.totals.entry(*c).or_default() += n;
        }
        report.compared_points += d.old_points.max(d.new_points);
    }
    for c in CATEGORIES {
        if cfg.migration.is_some() || c < Category::OldWroteNewOwned {
            report.totals.entry(c).or_default();
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// The handover check of both systems (see [`crate::job::handover`]):
/// findings and the points read go into `report`.
async fn handover(
    old: &Side,
    new: &Side,
    migration: &Arc<Migration>,
    cfg: &DiffConfig,
    report: &mut DiffReport,
) -> Result<(), JobError> {
    for (side, role, leak) in [
        (old, Role::Old, Category::OldWroteNewOwned),
        (new, Role::New, Category::NewWroteOldOwned),
    ] {
        let windows: Vec<(String, String, Manifest)> = side
            .manifests
            .iter()
            .filter_map(|(s, w, src)| match src {
                Source::One(_, m) => Some((s.clone(), w.clone(), m.clone())),
                Source::Merged(..) => None,
            })
            .collect();
        for shard in windows
            .iter()
            .map(|(s, _, _)| s.clone())
            .collect::<std::collections::BTreeSet<_>>()
        {
            let of_shard: Vec<_> = windows
                .iter()
                .filter(|(s, _, _)| *s == shard)
                .cloned()
                .collect();
            let shards = &mut report.shards;
            let read = check_side(&side.root, &of_shard, role, migration, &cfg.orgs, |shard, window, f| {
                let d = shard_diff(shards, shard);
                match f {
                    Finding::Leak { org_id, metric_id, points, ts, bits } => {
                        let value = Some(format!("{} (0x{bits:016x})", f64::from_bits(bits)));
                        let (old, new) = if role == Role::Old { (value, None) } else { (None, value) };
                        record_n(d, leak, points, cfg.examples, || Example {
                            window: window.to_string(),
                            org_id,
                            metric_id,
                            ts: Some(ts),
                            old,
                            new,
                        });
                    }
                    Finding::CutoversDiffer { recorded_role, recorded, expected } => {
                        let show = |role: Role, c: &[Cutover]| {
                            let c: Vec<String> = c.iter().map(|c| format!("{}@{}", c.org, c.at_ms)).collect();
                            format!("{} side, written as role {} with cutovers [{}]; the file gives [{}]",
                                if role == Role::Old { "old" } else { "new" },
                                recorded_role.name(), c.join(", "),
                                expected.iter().map(|c| format!("{}@{}", c.org, c.at_ms)).collect::<Vec<_>>().join(", "))
                        };
                        let text = Some(show(role, &recorded));
                        let (old, new) = if role == Role::Old { (text, None) } else { (None, text) };
                        record(d, Category::CutoversDiffer, cfg.examples, || Example {
                            window: window.to_string(),
                            org_id: 0,
                            metric_id: 0,
                            ts: None,
                            old,
                            new,
                        });
                    }
                }
            })
            .await?;
            let d = shard_diff(&mut report.shards, &shard);
            if role == Role::Old {
                d.old_points += read;
            } else {
                d.new_points += read;
            }
        }
    }
    Ok(())
}

/// Counts a difference; keeps the example `make` builds while fewer than
/// `keep` are kept (only then is it built).
fn record(d: &mut ShardDiff, c: Category, keep: usize, make: impl FnOnce() -> Example) {
    record_n(d, c, 1, keep, make)
}

/// Counts `n` differences of one example.
fn record_n(d: &mut ShardDiff, c: Category, n: u64, keep: usize, make: impl FnOnce() -> Example) {
    *d.counts.entry(c).or_default() += n;
    let ex = d.examples.entry(c).or_default();
    if ex.len() < keep {
        ex.push(make());
    }
}

/// A shard's results, without allocating its name when it has some.
fn shard_diff<'a>(shards: &'a mut BTreeMap<String, ShardDiff>, shard: &str) -> &'a mut ShardDiff {
    if !shards.contains_key(shard) {
        shards.insert(shard.to_string(), ShardDiff::default());
    }
    shards.get_mut(shard).expect("inserted above")
}
