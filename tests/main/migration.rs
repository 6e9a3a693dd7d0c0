//! Migrations around their cutover timestamps: each scenario runs the job
//! three times over the same input (shadow, old, new) one hourly window
//! at a time, then checks that
//!
//! - the old output holds exactly the points before each org's cutover
//!   (all of an unlisted org), the new one exactly those from it on;
//! - the merged view (`export --old --new --migration`) is byte for byte
//!   the shadow output's export (every point, order, value bits, series
//!   attributes);
//! - the handover diff with the shadow finds nothing, and finds a planted
//!   leak (a system that still writes what it gave away) and a planted gap
//!   (a side run with a later or earlier cutover) with the exact counts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tailor::datasource::listing::{Hour, Window};
use tailor::datasource::store::StoreRoot;
use tailor::format::payload::Kind;
use tailor::job::config::RunConfig;
use tailor::job::diff::{Category, DiffConfig, DiffReport, diff};
use tailor::job::export::{ExportFormat, export_merged};
use tailor::job::manifest::read_manifest;
use tailor::job::migration::{Migration, Role};
use tailor::job::output::{MergedSeries, SeriesData, WindowSeries};

use crate::common::{
    P, Rng, S, export_csv, file_of, read_series, rt_multi as rt, run_job, shard_map, tempdir,
};

/// Epoch ms of an hour (`YYYY-MM-DDTHH`).
fn ms(hour: &str) -> i64 {
    Hour::parse(hour).unwrap().start_ms()
}

const H13: &str = "2026-11-21T13";
const H14: &str = "2026-11-21T14";
const MIN: i64 = 60_000;

/// A payload of `org`/`metric` (a gauge, interval 10 s).
fn p(org: u64, metric: u64, ts: &[i64], vals: &[u64]) -> P {
    assert_eq!(ts.len(), vals.len());
    P {
        version: 2,
        org,
        metric,
        kind: Kind::Gauge,
        interval_s: 10,
        ts: ts.to_vec(),
        vals: vals.to_vec(),
        meta: format!("host:h{metric}"),
    }
}

/// Values 1.0, 2.0, ... as bits.
fn vals(n: usize, base: f64) -> Vec<u64> {
    (0..n).map(|i| (base + i as f64).to_bits()).collect()
}

/// One payload file: the hour the sink wrote it in, and its payloads.
struct InFile {
    hour: &'static str,
    payloads: Vec<P>,
}

fn file(hour: &'static str, payloads: Vec<P>) -> InFile {
    InFile { hour, payloads }
}

/// A migration file's text from (org, cutover ms).
fn migration_text(cutovers: &[(u64, i64)]) -> String {
    let mut s = String::from("version = 1\n");
    for (org, at) in cutovers {
        s.push_str(&format!("\n[[cutover]]\norg = {org}\nat = {at}\n"));
    }
    s
}

/// A scenario's input, written and run.
struct Runs {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    input: PathBuf,
    shard: String,
    hours: Vec<&'static str>,
    migration: PathBuf,
}

impl Runs {
    fn out(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn url(&self, name: &str) -> String {
        self.out(name).to_str().unwrap().to_string()
    }

    /// Writes a migration file named `name`.
    fn migration_file(&self, name: &str, cutovers: &[(u64, i64)]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, migration_text(cutovers)).unwrap();
        path
    }

    /// Runs every hour of the scenario into `out` as `role` under
    /// `migration`; the runs' reports, hour by hour.
    fn run(
        &self,
        out: &str,
        role: Role,
        migration: Option<&Path>,
    ) -> Vec<tailor::job::run::RunStats> {
        self.hours
            .iter()
            .map(|h| {
                let mut c =
                    RunConfig::new(self.input.to_str().unwrap(), self.url(out), &self.shard);
                c.shard_map = shard_map();
                c.target_partitions = 2;
                c.window = Window {
                    from: Hour::parse(h),
                    to: Hour::parse(h),
                };
                c.role = role;
                c.migration = migration.map(|m| Arc::new(Migration::load(m).unwrap()));
                run_job(&c).unwrap()
            })
            .collect()
    }

    fn series(&self, out: &str) -> Vec<S> {
        let root = StoreRoot::open(&self.url(out)).unwrap();
        rt().block_on(read_series(&root, &self.shard))
    }

    /// The export of one output (CSV: value bits and attributes included).
    fn export(&self, out: &str) -> Vec<u8> {
        let root = StoreRoot::open(&self.url(out)).unwrap();
        export_csv(&root, &self.shard, &self.dir.join(format!("{out}.csv")))
    }

    /// The merged view of `old` and `new` under `migration`, exported.
    fn merged(&self, old: &str, new: &str, migration: &Path) -> Vec<u8> {
        let file = self.dir.join(format!("merged-{old}-{new}.csv"));
        let (o, n) = (
            StoreRoot::open(&self.url(old)).unwrap(),
            StoreRoot::open(&self.url(new)).unwrap(),
        );
        let m = Arc::new(Migration::load(migration).unwrap());
        rt().block_on(export_merged(
            &o,
            &n,
            m,
            &self.shard,
            None,
            None,
            ExportFormat::Csv,
            &file,
        ))
        .unwrap();
        std::fs::read(file).unwrap()
    }

    /// The handover diff of `old` and `new` under `migration`, against
    /// `shadow` if given.
    fn handover(&self, old: &str, new: &str, migration: &Path, shadow: Option<&str>) -> DiffReport {
        rt().block_on(diff(&DiffConfig {
            old: self.url(old),
            new: self.url(new),
            shards: vec![self.shard.clone()],
            from: None,
            to: None,
            orgs: vec![],
            examples: 3,
            out: None,
            memory_limit: None,
            migration: Some(Arc::new(Migration::load(migration).unwrap())),
            shadow: shadow.map(|s| self.url(s)),
        }))
        .unwrap()
    }
}

/// Writes `files` under a fresh input root (one object per file, in input
/// order within each hour) and runs shadow, old and new over it under the
/// cutovers given.
fn scenario(shard: &str, files: Vec<InFile>, cutovers: &[(u64, i64)]) -> Runs {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let input = dir.join("in");
    let mut hours: Vec<&'static str> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let (date, hh) = f.hour.split_once('T').unwrap();
        let d = input
            .join(shard)
            .join(format!("dt={date}"))
            .join(format!("hour={hh}"));
        std::fs::create_dir_all(&d).unwrap();
        let (bytes, _) = file_of(&f.payloads);
        std::fs::write(d.join(format!("points+0+{:010}.tsp", i * 100)), bytes).unwrap();
        if !hours.contains(&f.hour) {
            hours.push(f.hour);
        }
    }
    hours.sort();
    let mut runs = Runs {
        _tmp: tmp,
        dir,
        input,
        shard: shard.to_string(),
        hours,
        migration: PathBuf::new(),
    };
    runs.migration = runs.migration_file("migration.toml", cutovers);
    let m = runs.migration.clone();
    runs.run("shadow", Role::Shadow, None);
    runs.run("old", Role::Old, Some(&m));
    runs.run("new", Role::New, Some(&m));
    runs
}

/// Points (org, metric, ts, bits) of some series.
fn points(series: &[S]) -> Vec<(u64, u64, i64, u64)> {
    series
        .iter()
        .flat_map(|s| {
            s.ts.iter()
                .zip(&s.vals)
                .map(move |(t, v)| (s.org, s.metric, *t, *v))
        })
        .collect()
}

fn count(r: &DiffReport, c: Category) -> u64 {
    r.totals.get(&c).copied().unwrap_or(0)
}

/// Everything a scenario must show; returns the shadow's points.
fn check(runs: &Runs) -> Vec<(u64, u64, i64, u64)> {
    let m = Migration::load(&runs.migration).unwrap();
    let owner = |org: u64, ts: i64| match m.cutover(org) {
        Some(c) if ts >= c => Role::New,
        _ => Role::Old,
    };
    let shadow = points(&runs.series("shadow"));
    assert!(!shadow.is_empty());
    let want = |role: Role| -> Vec<_> {
        shadow
            .iter()
            .copied()
            .filter(|(o, _, t, _)| owner(*o, *t) == role)
            .collect()
    };
    // Each side wrote exactly its share (the shadow's points, by bits).
    assert_eq!(points(&runs.series("old")), want(Role::Old), "old side");
    assert_eq!(points(&runs.series("new")), want(Role::New), "new side");

    // The merged view is the shadow output, byte for byte.
    let expected = runs.export("shadow");
    let merged = runs.merged("old", "new", &runs.migration);
    assert!(
        merged == expected,
        "merged view differs from the shadow output:\n{}\n---\n{}",
        String::from_utf8_lossy(&merged),
        String::from_utf8_lossy(&expected)
    );

    // The handover diff: clean, with and without the shadow.
    let r = runs.handover("old", "new", &runs.migration, Some("shadow"));
    assert!(r.identical(), "{}", r.summary());
    assert_eq!(r.compared_points, shadow.len() as u64);
    let r = runs.handover("old", "new", &runs.migration, None);
    assert!(r.identical(), "{}", r.summary());

    // A planted leak: the shadow output as the old system (it kept
    // writing migrated orgs), then as the new one.
    let new_owned = want(Role::New).len() as u64;
    let old_owned = want(Role::Old).len() as u64;
    let r = runs.handover("shadow", "new", &runs.migration, Some("shadow"));
    assert_eq!(
        count(&r, Category::OldWroteNewOwned),
        new_owned,
        "{}",
        r.summary()
    );
    assert_eq!(r.identical(), new_owned == 0, "{}", r.summary());
    // The merged view takes nothing of the old side from a cutover on:
    // the leak does not reach dependents.
    assert_eq!(count(&r, Category::PointOldOnly), 0);
    assert_eq!(count(&r, Category::PointNewOnly), 0);
    let r = runs.handover("old", "shadow", &runs.migration, None);
    assert_eq!(
        count(&r, Category::NewWroteOldOwned),
        old_owned,
        "{}",
        r.summary()
    );

    // A planted gap: one side run with a cutover moved past the nearest
    // point (the new side later when it owns points, else the old side
    // earlier); the points in between are in neither output.
    let mut moved: Vec<(u64, i64)> = m.cutovers.iter().map(|(o, c)| (*o, *c)).collect();
    let mut lost = 0u64;
    let mut gap_side = "new";
    for (org, c) in moved.iter_mut() {
        let first_new = shadow
            .iter()
            .filter(|(o, _, t, _)| o == org && t >= c)
            .map(|p| p.2)
            .min();
        let last_old = shadow
            .iter()
            .filter(|(o, _, t, _)| o == org && t < c)
            .map(|p| p.2)
            .max();
        let (from, to) = match (first_new, last_old) {
            (Some(t), _) => (*c, t + 1),
            (None, Some(t)) => {
                gap_side = "old";
                (t, *c)
            }
            (None, None) => continue,
        };
        lost += shadow
            .iter()
            .filter(|(o, _, t, _)| o == org && (from..to).contains(t))
            .count() as u64;
        *c = if gap_side == "new" { to } else { from };
        break;
    }
    assert!(lost > 0, "the scenario has a point next to a cutover");
    let gap = runs.migration_file("gap.toml", &moved);
    let r = if gap_side == "new" {
        runs.run("new-gap", Role::New, Some(&gap));
        runs.handover("old", "new-gap", &runs.migration, Some("shadow"))
    } else {
        runs.run("old-gap", Role::Old, Some(&gap));
        runs.handover("old-gap", "new", &runs.migration, Some("shadow"))
    };
    assert_eq!(count(&r, Category::PointOldOnly), lost, "{}", r.summary());
    assert_eq!(count(&r, Category::PointNewOnly), 0, "{}", r.summary());
    assert_eq!(
        count(&r, Category::CutoversDiffer),
        runs.hours.len() as u64,
        "every window of the gap side was written with the moved cutover: {}",
        r.summary()
    );
    shadow
}

/// The points of one output of `org`/`metric`: ts -> bits.
fn of(runs: &Runs, out: &str, org: u64, metric: u64) -> BTreeMap<i64, u64> {
    points(&runs.series(out))
        .into_iter()
        .filter(|p| p.0 == org && p.1 == metric)
        .map(|p| (p.2, p.3))
        .collect()
}

#[test]
fn a_cutover_exactly_on_a_point_gives_that_point_to_the_new_system() {
    let t0 = ms(H13);
    let ts: Vec<i64> = (0..20).map(|k| t0 + k * 10_000).collect();
    let cut = ts[10];
    let runs = scenario(
        "org-1001",
        vec![file(
            H13,
            vec![
                p(1001, 1, &ts, &vals(20, 1.0)),
                p(1001, 2, &ts[5..15], &vals(10, 100.0)),
            ],
        )],
        &[(1001, cut)],
    );
    check(&runs);
    assert_eq!(of(&runs, "old", 1001, 1).len(), 10);
    assert_eq!(of(&runs, "new", 1001, 1).keys().next(), Some(&cut));
    // The report counts what each side left to the other, per org.
    let stats = runs.run("old-again", Role::Old, Some(&runs.migration));
    assert_eq!(stats[0].left_to_other, BTreeMap::from([(1001, 10 + 5)]));
    let stats = runs.run("new-again", Role::New, Some(&runs.migration));
    assert_eq!(stats[0].left_to_other, BTreeMap::from([(1001, 10 + 5)]));
}

#[test]
fn a_cutover_between_two_points_of_one_payload_splits_the_payload() {
    let t0 = ms(H13);
    let ts: Vec<i64> = (0..20).map(|k| t0 + k * 10_000).collect();
    let runs = scenario(
        "org-1001",
        vec![file(H13, vec![p(1001, 1, &ts, &vals(20, 0.5))])],
        &[(1001, ts[10] - 5_000)],
    );
    check(&runs);
    assert_eq!(of(&runs, "old", 1001, 1).len(), 10);
    assert_eq!(of(&runs, "new", 1001, 1).len(), 10);
}

#[test]
fn a_cutover_inside_a_window_and_one_on_a_window_boundary() {
    let (t13, t14) = (ms(H13), ms(H14));
    // Org 66 moves at 13:30 (inside the 13:00 window), org 130 at 14:00
    // exactly (the boundary of two windows). Each hour's file holds points
    // of its hour, and the 14:00 file a late point of 13:59:59.999.
    let files = vec![
        file(
            H13,
            vec![
                p(
                    66,
                    1,
                    &[
                        t13,
                        t13 + 29 * MIN,
                        t13 + 30 * MIN - 1,
                        t13 + 30 * MIN,
                        t13 + 59 * MIN,
                    ],
                    &vals(5, 1.0),
                ),
                p(130, 1, &[t13 + MIN, t14 - 1], &vals(2, 10.0)),
            ],
        ),
        file(
            H14,
            vec![
                p(66, 1, &[t14, t14 + 30 * MIN], &vals(2, 20.0)),
                p(130, 1, &[t14 - 1, t14, t14 + 1], &vals(3, 30.0)),
            ],
        ),
    ];
    let runs = scenario("org-mod-2", files, &[(66, t13 + 30 * MIN), (130, t14)]);
    check(&runs);
    // The late point (13:59:59.999, in the 14:00 window) stays old.
    let old: Vec<i64> = points(&runs.series("old"))
        .iter()
        .filter(|p| p.0 == 130)
        .map(|p| p.2)
        .collect();
    assert_eq!(old, vec![t13 + MIN, t14 - 1, t14 - 1]);
    assert_eq!(
        of(&runs, "new", 130, 1).keys().copied().collect::<Vec<_>>(),
        vec![t14, t14 + 1]
    );
}

#[test]
fn cutovers_before_and_after_all_data() {
    let t13 = ms(H13);
    let ts: Vec<i64> = (0..10).map(|k| t13 + k * 60_000).collect();
    // Org 66 moved a day before its first point: the old system writes
    // none of it. Org 130 moves a day after its last: the new one writes none.
    let runs = scenario(
        "org-mod-2",
        vec![file(
            H13,
            vec![
                p(66, 1, &ts, &vals(10, 1.0)),
                p(130, 1, &ts, &vals(10, 2.0)),
            ],
        )],
        &[(66, t13 - 86_400_000), (130, t13 + 86_400_000)],
    );
    check(&runs);
    assert!(of(&runs, "old", 66, 1).is_empty());
    assert_eq!(of(&runs, "new", 66, 1).len(), 10);
    assert_eq!(of(&runs, "old", 130, 1).len(), 10);
    assert!(of(&runs, "new", 130, 1).is_empty());
}

#[test]
fn many_orgs_with_different_cutovers_in_one_shard() {
    let (t13, t14) = (ms(H13), ms(H14));
    let orgs = [5u64, 69, 133, 197, 261, 325, 389];
    let mut rng = Rng(19);
    let mut files = Vec::new();
    for (hour, start) in [(H13, t13), (H14, t14)] {
        for _ in 0..3 {
            let mut payloads = Vec::new();
            for _ in 0..40 {
                let org = orgs[rng.below(orgs.len() as u64) as usize];
                let n = 1 + rng.below(30) as usize;
                let mut t = start + rng.below(3_600_000) as i64;
                let mut ts = Vec::new();
                for _ in 0..n {
                    ts.push(t);
                    // Steps of 0 to 90 s: repeated and close timestamps.
                    t += (rng.below(10) * 10_000) as i64;
                }
                let v: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
                payloads.push(p(org, rng.below(4), &ts, &v));
            }
            files.push(file(hour, payloads));
        }
    }
    let runs = scenario(
        "org-mod-5",
        files,
        &[
            (5, t13 + 10 * MIN),
            (69, t13 + 45 * MIN + 123),
            (133, t14),
            (197, t13 - 3_600_000),
            (325, t14 + 7_200_000),
            (389, t14 + 20 * MIN + 1),
        ],
    );
    let shadow = check(&runs);
    // Org 261 is not listed: all of it stays old.
    let (old, new) = (points(&runs.series("old")), points(&runs.series("new")));
    assert!(new.iter().all(|p| p.0 != 261));
    assert_eq!(
        old.iter().filter(|p| p.0 == 261).count(),
        shadow.iter().filter(|p| p.0 == 261).count()
    );
    assert!(old.len() > 100 && new.len() > 100, "both sides hold points");
}

#[test]
fn duplicates_that_straddle_a_cutover_keep_the_last_in_input_order() {
    let t = ms(H13) + 30 * MIN;
    let f = |v: f64| v.to_bits();
    // Three files of one hour, in input (key) order. Each timestamp's last
    // value in input order wins on the side that owns it.
    let runs = scenario(
        "org-1001",
        vec![
            file(
                H13,
                vec![p(
                    1001,
                    1,
                    &[t - 10_000, t, t + 10_000],
                    &[f(1.0), f(2.0), f(3.0)],
                )],
            ),
            file(
                H13,
                vec![
                    p(1001, 1, &[t, t + 10_000], &[f(4.0), f(5.0)]),
                    p(1001, 1, &[t - 10_000], &[f(6.0)]),
                ],
            ),
            file(H13, vec![p(1001, 1, &[t + 10_000], &[f(7.0)])]),
        ],
        &[(1001, t)],
    );
    check(&runs);
    assert_eq!(
        of(&runs, "old", 1001, 1),
        BTreeMap::from([(t - 10_000, f(6.0))])
    );
    assert_eq!(
        of(&runs, "new", 1001, 1),
        BTreeMap::from([(t, f(4.0)), (t + 10_000, f(7.0))])
    );
}

#[test]
fn nan_and_other_bit_patterns_at_the_boundary_cross_bit_for_bit() {
    let t = ms(H13) + 17 * MIN + 1;
    let patterns: [u64; 9] = [
        0x7ff8_0000_dead_beef, // quiet NaN with a payload
        0x7ff0_0000_0000_0001, // signalling NaN
        0xfff8_0000_0000_0000, // negative NaN
        (-0.0f64).to_bits(),
        f64::INFINITY.to_bits(),
        f64::NEG_INFINITY.to_bits(),
        1, // the smallest subnormal
        f64::MAX.to_bits(),
        0,
    ];
    let mut payloads = Vec::new();
    for (m, w) in patterns.windows(3).enumerate() {
        payloads.push(p(1001, m as u64, &[t - 1, t, t + 1], w));
    }
    let runs = scenario("org-1001", vec![file(H13, payloads)], &[(1001, t)]);
    check(&runs);
    for (m, w) in patterns.windows(3).enumerate() {
        assert_eq!(
            of(&runs, "old", 1001, m as u64),
            BTreeMap::from([(t - 1, w[0])])
        );
        assert_eq!(
            of(&runs, "new", 1001, m as u64),
            BTreeMap::from([(t, w[1]), (t + 1, w[2])])
        );
    }
}

#[test]
fn an_org_moved_back_is_a_change_of_the_file_that_reruns_and_merges_back() {
    let (t13, t14) = (ms(H13), ms(H14));
    let ts13: Vec<i64> = (0..60).map(|k| t13 + k * MIN).collect();
    let ts14: Vec<i64> = (0..60).map(|k| t14 + k * MIN).collect();
    let runs = scenario(
        "org-mod-2",
        vec![
            file(
                H13,
                vec![
                    p(130, 1, &ts13, &vals(60, 0.0)),
                    p(66, 1, &ts13, &vals(60, 1.0)),
                ],
            ),
            file(
                H14,
                vec![
                    p(130, 1, &ts14, &vals(60, 2.0)),
                    p(66, 1, &ts14, &vals(60, 3.0)),
                ],
            ),
        ],
        &[(130, t13 + 30 * MIN), (66, t13 + 40 * MIN)],
    );
    check(&runs);
    // Org 130 goes back to the old system; org 66's cutover moves an hour later.
    let back = runs.migration_file("back.toml", &[(66, t14 + 40 * MIN)]);
    // Until both sides rerun, the merged view under the new file misses
    // org 130 from its old cutover on and org 66 for the hour in between,
    // and the diff says which windows were written with other cutovers.
    let r = runs.handover("old", "new", &back, Some("shadow"));
    assert_eq!(
        count(&r, Category::PointOldOnly),
        90 + 60,
        "{}",
        r.summary()
    );
    assert_eq!(count(&r, Category::CutoversDiffer), 4, "{}", r.summary());
    // The new system still holds org 130 and org 66 from 13:40: leaks now.
    assert_eq!(
        count(&r, Category::NewWroteOldOwned),
        90 + 60,
        "{}",
        r.summary()
    );
    // The plan marks every window of both sides stale (the input did not
    // change), and says why.
    for (out, role) in [("old", "old"), ("new", "new")] {
        let plan = plan_json(&runs, out, role, &back);
        for w in plan["windows"].as_array().unwrap() {
            assert_eq!(w["state"], "stale", "{w}");
            assert!(w["reason"].as_str().unwrap().contains("now role"), "{w}");
            assert!(
                w["reason"].as_str().unwrap().contains("input unchanged"),
                "{w}"
            );
        }
    }
    let before: Vec<String> = run_ids(&runs, "new");
    runs.run("old", Role::Old, Some(&back));
    runs.run("new", Role::New, Some(&back));
    assert_ne!(
        run_ids(&runs, "new"),
        before,
        "another migration, another commit"
    );
    for (out, role) in [("old", "old"), ("new", "new")] {
        let plan = plan_json(&runs, out, role, &back);
        assert_eq!(plan["summary"]["done"], 2, "{plan}");
    }
    let merged = runs.merged("old", "new", &back);
    assert!(merged == runs.export("shadow"));
    let r = runs.handover("old", "new", &back, Some("shadow"));
    assert!(r.identical(), "{}", r.summary());
    assert_eq!(of(&runs, "new", 130, 1).len(), 0);
    assert_eq!(of(&runs, "new", 66, 1).len(), 20);
}

fn run_ids(runs: &Runs, out: &str) -> Vec<String> {
    let root = StoreRoot::open(&runs.url(out)).unwrap();
    rt().block_on(crate::common::read_windows(&root, &runs.shard))
        .into_iter()
        .map(|(_, m, _)| m.run_id)
        .collect()
}

/// `tailor plan` of one side as JSON.
fn plan_json(runs: &Runs, out: &str, role: &str, migration: &Path) -> serde_json::Value {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tailor"))
        .args(["plan", "--format", "json", "--settle", "0s", "--shard"])
        .arg(&runs.shard)
        .arg("--input")
        .arg(&runs.input)
        .arg("--output")
        .arg(runs.out(out))
        .arg("--shard-map")
        .arg(shard_map_file(runs))
        .args(["--role", role, "--migration"])
        .arg(migration)
        .output()
        .unwrap();
    assert!(
        matches!(o.status.code(), Some(0 | 10)),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn shard_map_file(runs: &Runs) -> PathBuf {
    let p = runs.dir.join("shards.toml");
    std::fs::write(&p, "modulus = 64\ndedicated = [2, 1001]\n").unwrap();
    p
}

#[test]
fn a_shadow_run_is_unchanged_by_a_migration_file_and_a_role_run_records_its_cutovers() {
    let t = ms(H13);
    let ts: Vec<i64> = (0..10).map(|k| t + k * MIN).collect();
    let runs = scenario(
        "org-mod-2",
        vec![file(
            H13,
            vec![
                p(130, 1, &ts, &vals(10, 1.0)),
                p(66, 1, &ts, &vals(10, 1.0)),
            ],
        )],
        &[(130, t + 5 * MIN), (1001, t)],
    );
    runs.run("shadow-with-file", Role::Shadow, Some(&runs.migration));
    let tree = |out: &str| -> BTreeMap<String, Vec<u8>> {
        crate::common::files_under(&runs.out(out))
            .into_iter()
            .filter(|p| !p.to_string_lossy().contains("_history"))
            .map(|p| {
                let rel = p
                    .strip_prefix(runs.out(out))
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                (rel, std::fs::read(&p).unwrap())
            })
            .collect()
    };
    let (a, b) = (tree("shadow"), tree("shadow-with-file"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        if !k.ends_with("_manifest.json") {
            assert!(*v == b[k], "{k}");
        }
    }
    let root = StoreRoot::open(&runs.url("new")).unwrap();
    let windows = rt().block_on(crate::common::read_windows(&root, &runs.shard));
    let s = &windows[0].1.settings;
    assert_eq!(s.role, Role::New);
    // Only the shard's orgs: 1001 has a shard of its own.
    assert_eq!(
        s.migration,
        vec![tailor::job::migration::Cutover {
            org: 130,
            at_ms: t + 5 * MIN
        }]
    );
}

/// A series' attributes in the merged view: the new side's when it gives
/// the series a point, else the old side's. Shown with an old output of
/// another writer whose metadata and kinds differ.
#[test]
fn merged_series_take_the_attributes_of_the_side_that_gives_them_points() {
    let t = ms(H13);
    let ts: Vec<i64> = (0..10).map(|k| t + k * MIN).collect();
    let runs = scenario(
        "org-mod-2",
        vec![file(
            H13,
            vec![
                p(130, 1, &ts, &vals(10, 1.0)),     // straddles the cutover
                p(130, 2, &ts[..3], &vals(3, 1.0)), // before it only
                p(130, 3, &ts[7..], &vals(3, 1.0)), // after it only
                p(66, 1, &ts, &vals(10, 1.0)),      // not migrated
            ],
        )],
        &[(130, t + 5 * MIN)],
    );
    // The old output rewritten by "another writer": every series' kind and
    // metadata changed, its manifest without a role.
    let old_root = StoreRoot::open(&runs.url("old")).unwrap();
    let windows = rt().block_on(crate::common::read_windows(&old_root, &runs.shard));
    let (w, m, series) = &windows[0];
    let other: Vec<S> = series
        .iter()
        .map(|s| S {
            kind: 2,
            meta: format!("writer:legacy,{}", s.meta),
            ..s.clone()
        })
        .collect();
    let legacy = runs.out("legacy");
    let mut base = m.clone();
    base.settings.role = Role::Shadow;
    base.settings.migration.clear();
    crate::common::write_window(&legacy, &runs.shard, w, &base, &other, 1 << 20);

    // Read through the crate's reader of the merged view.
    let legacy_root = StoreRoot::open(&runs.url("legacy")).unwrap();
    let new_root = StoreRoot::open(&runs.url("new")).unwrap();
    let migration = Arc::new(Migration::load(&runs.migration).unwrap());
    let attrs: BTreeMap<(u64, u64), (u8, String)> = rt().block_on(async {
        let old = read_manifest(&legacy_root, &runs.shard, w).await.unwrap();
        let new = read_manifest(&new_root, &runs.shard, w).await.unwrap();
        let mut r = MergedSeries::new(
            Some(WindowSeries::new(&legacy_root, old)),
            Some(WindowSeries::new(&new_root, new)),
            migration,
        );
        let mut s = SeriesData::default();
        let mut out = BTreeMap::new();
        while r.next(&mut s).await.unwrap() {
            out.insert((s.org_id, s.metric_id), (s.kind, s.metadata.clone()));
        }
        out
    });
    let a = |org: u64, metric: u64| attrs[&(org, metric)].clone();
    assert_eq!(a(130, 1), (0, "host:h1".into()), "new gives points: new's");
    assert_eq!(a(130, 3), (0, "host:h3".into()));
    assert_eq!(
        a(130, 2),
        (2, "writer:legacy,host:h2".into()),
        "old only: old's"
    );
    assert_eq!(a(66, 1), (2, "writer:legacy,host:h1".into()));

    // The handover diff reads a writer without roles by its points: no
    // leak; against the shadow, exactly the series whose attributes came
    // from the legacy side differ.
    let r = runs.handover("legacy", "new", &runs.migration, Some("shadow"));
    assert_eq!(count(&r, Category::CutoversDiffer), 0, "{}", r.summary());
    assert_eq!(count(&r, Category::OldWroteNewOwned), 0);
    assert_eq!(count(&r, Category::KindDiffers), 2, "{}", r.summary());
    assert_eq!(count(&r, Category::MetadataDiffers), 2, "{}", r.summary());
    assert_eq!(
        count(&r, Category::PointOldOnly) + count(&r, Category::PointNewOnly),
        0
    );
}

#[test]
fn the_command_line_exports_the_merged_view_and_diff_exits_by_the_handover() {
    let t = ms(H13);
    let ts: Vec<i64> = (0..10).map(|k| t + k * MIN).collect();
    let runs = scenario(
        "org-1001",
        vec![file(H13, vec![p(1001, 1, &ts, &vals(10, 1.0))])],
        &[(1001, t + 5 * MIN)],
    );
    let tailor = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tailor"))
            .args(args)
            .output()
            .unwrap()
    };
    let m = runs.migration.to_str().unwrap().to_string();
    let out = runs.dir.join("cli.csv");
    let o = tailor(&[
        "export",
        "--old",
        &runs.url("old"),
        "--new",
        &runs.url("new"),
        "--migration",
        &m,
        "--shard",
        "org-1001",
        "--format",
        "csv",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == runs.export("shadow"));
    let diff = |old: &str, shadow: bool| {
        let (o, n) = (runs.url(old), runs.url("new"));
        let s = runs.url("shadow");
        let mut args = vec!["diff", "--old", &o, "--new", &n, "--migration", &m];
        if shadow {
            args.extend(["--shadow", &s]);
        }
        tailor(&args)
    };
    let o = diff("old", true);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = diff("shadow", false);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("old_wrote_new_owned 5"), "{text}");
    // --shadow without --migration, and a bad migration file: errors
    // (diff's exit code 2, as for any error of a diff).
    let o = tailor(&["diff", "--old", "a", "--new", "b", "--shadow", "c"]);
    assert_eq!(o.status.code(), Some(2));
    let bad = runs.dir.join("bad.toml");
    std::fs::write(&bad, "[[cutover]]\norg = 1001\nat = \"soon\"\n").unwrap();
    let o = tailor(&[
        "diff",
        "--old",
        &runs.url("old"),
        "--new",
        &runs.url("new"),
        "--migration",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.toml, line 3"), "{err}");
    // A run with a role but no migration file is a usage error.
    let o = tailor(&[
        "run",
        "--input",
        runs.input.to_str().unwrap(),
        "--output",
        &runs.url("x"),
        "--shard",
        "org-1001",
        "--role",
        "new",
    ]);
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--role new needs --migration"));
}
