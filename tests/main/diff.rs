//! `tailor diff`: a self-diff is identical; hand-made changes give exactly
//! the expected counts; different file-size caps do not count.

use std::path::Path;

use tailor::datasource::store::StoreRoot;
use tailor::job::config::RunConfig;
use tailor::job::diff::{Category, DiffConfig, diff};
use tailor::job::generate::{GenerateOptions, generate};
use tailor::job::manifest::Manifest;

use crate::common::{S, read_windows, rt_multi as rt, shard_map, tempdir, write_window};

/// (shard, window, manifest, series) of every committed window.
async fn read_all(root: &StoreRoot) -> Vec<(String, String, Manifest, Vec<S>)> {
    let mut out = Vec::new();
    let mut shards: Vec<String> = std::fs::read_dir(Path::new("/").join(root.prefix.as_ref()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    shards.sort();
    for shard in shards {
        for (w, m, series) in read_windows(root, &shard).await {
            out.push((shard.clone(), w, m, series));
        }
    }
    out
}

struct Fixture {
    _tmp: tempfile::TempDir,
    old: std::path::PathBuf,
    base: Vec<(String, String, Manifest, Vec<S>)>,
    dir: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let old = tmp.path().join("old");
    let rt = rt();
    let base = rt.block_on(async {
        let root = StoreRoot::open(input.to_str().unwrap()).unwrap();
        let s = generate(
            &root,
            &shard_map(),
            &GenerateOptions {
                target_bytes: 1 << 20,
                orgs: 12,
                hours: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        for shard in s.shards.iter().take(3) {
            let mut c = RunConfig::new(input.to_str().unwrap(), old.to_str().unwrap(), shard);
            c.shard_map = shard_map();
            let (_, r) = tailor::job::run::run_shard(&c).await;
            r.unwrap();
        }
        read_all(&StoreRoot::open(old.to_str().unwrap()).unwrap()).await
    });
    let dir = tmp.path().to_path_buf();
    Fixture {
        _tmp: tmp,
        old,
        base,
        dir,
    }
}

fn run_diff(old: &Path, new: &Path, orgs: Vec<u64>) -> tailor::job::diff::DiffReport {
    diff_with(old, new, orgs, None, None).unwrap()
}

/// The diff of two output roots, narrowed to `orgs` and `--from`/`--to`
/// (hours, `YYYY-MM-DDTHH`), writing its differing points beside `old`.
fn diff_with(
    old: &Path,
    new: &Path,
    orgs: Vec<u64>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<tailor::job::diff::DiffReport, tailor::job::JobError> {
    let hour = |h: Option<&str>| h.map(|h| tailor::datasource::listing::Hour::parse(h).unwrap());
    rt().block_on(diff(&DiffConfig {
        old: old.to_str().unwrap().into(),
        new: new.to_str().unwrap().into(),
        shards: vec![],
        from: hour(from),
        to: hour(to),
        orgs,
        examples: 3,
        memory_limit: Some(64 << 20),
        migration: None,
        shadow: None,
        out: Some(
            old.parent()
                .unwrap()
                .join(format!("diff-{}.parquet", rand_suffix())),
        ),
    }))
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Writes a new side from the base with `edit` applied to the first window's series.
fn new_side(f: &Fixture, name: &str, cap: u64, edit: impl Fn(&mut Vec<S>)) -> std::path::PathBuf {
    new_side_at(f, name, cap, 0, edit)
}

/// Writes a new side from the base with `edit` applied to window `at`'s series.
fn new_side_at(
    f: &Fixture,
    name: &str,
    cap: u64,
    at: usize,
    edit: impl Fn(&mut Vec<S>),
) -> std::path::PathBuf {
    let new = f.dir.join(name);
    for (i, (shard, w, m, series)) in f.base.iter().enumerate() {
        let mut s = series.clone();
        if i == at {
            edit(&mut s);
        }
        write_window(&new, shard, w, m, &s, cap);
    }
    new
}

/// One row of the differing-points Parquet file.
#[derive(Debug, PartialEq)]
struct Row {
    side: String,
    shard: String,
    win: String,
    org: u64,
    metric: u64,
    ts: i64,
    old_bits: Option<u64>,
    new_bits: Option<u64>,
    category: String,
}

/// The rows of a report's Parquet file; checks that the value columns hold
/// the bits of the bits columns.
fn differing_rows(r: &tailor::job::diff::DiffReport) -> Vec<Row> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float64Type, Int64Type, UInt64Type};
    let path = r.differing_points_file.as_ref().expect("a Parquet file");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut rows = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let u = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<UInt64Type>()
                .clone()
        };
        let f = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone()
        };
        let (side, shard, win, cat) = (s("side"), s("shard"), s("win"), s("category"));
        let (org, metric, ob, nb) = (u("org_id"), u("metric_id"), u("old_bits"), u("new_bits"));
        let (ov, nv) = (f("old_value"), f("new_value"));
        let ts = b
            .column_by_name("ts")
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone();
        for i in 0..b.num_rows() {
            use datafusion::arrow::array::Array;
            let get =
                |a: &datafusion::arrow::array::UInt64Array| (!a.is_null(i)).then(|| a.value(i));
            let bits = |a: &datafusion::arrow::array::Float64Array| {
                (!a.is_null(i)).then(|| a.value(i).to_bits())
            };
            assert_eq!(bits(&ov), get(&ob), "old value keeps its bits");
            assert_eq!(bits(&nv), get(&nb), "new value keeps its bits");
            rows.push(Row {
                side: side.value(i).into(),
                shard: shard.value(i).into(),
                win: win.value(i).into(),
                org: org.value(i),
                metric: metric.value(i),
                ts: ts.value(i),
                old_bits: get(&ob),
                new_bits: get(&nb),
                category: cat.value(i).into(),
            });
        }
    }
    rows
}

fn counts(r: &tailor::job::diff::DiffReport) -> Vec<(Category, u64)> {
    r.totals
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| (*c, *n))
        .collect()
}

#[test]
fn the_joins_stream_without_sorting_or_hashing() {
    let f = fixture();
    let plans = rt()
        .block_on(tailor::job::diff::explain(&DiffConfig {
            old: f.old.to_str().unwrap().into(),
            new: f.old.to_str().unwrap().into(),
            shards: f.base.iter().map(|b| b.0.clone()).collect(),
            from: None,
            to: None,
            orgs: vec![],
            examples: 3,
            memory_limit: None,
            migration: None,
            shadow: None,
            out: None,
        }))
        .unwrap();
    assert!(plans.contains("SortMergeJoin"), "{plans}");
    assert!(
        !plans.contains("SortExec") && !plans.contains("HashJoin"),
        "{plans}"
    );
}

#[test]
fn self_diff_and_different_file_caps_are_identical() {
    let f = fixture();
    let r = run_diff(&f.old, &f.old, vec![]);
    assert!(r.identical(), "{}", r.summary());
    assert!(r.compared_points > 1000);
    let small = new_side(&f, "small-files", 2_000, |_| {});
    let files = tsf_files(&small).len();
    assert!(
        files > 2 * f.base.len(),
        "the small cap really splits windows into several files ({files})"
    );
    let r = run_diff(&f.old, &small, vec![]);
    assert!(r.identical(), "{}", r.summary());

    // Other blocks and codecs: 7-point blocks (so other timestamp and value
    // codecs win) at another zstd level, from the same input.
    let other = f.dir.join("other-codecs");
    rt().block_on(async {
        for (shard, ..) in &f.base {
            let input = f.dir.join("in");
            let mut c = RunConfig::new(input.to_str().unwrap(), other.to_str().unwrap(), shard);
            c.shard_map = shard_map();
            c.block_points = 7;
            c.zstd_level = 19;
            let (_, r) = tailor::job::run::run_shard(&c).await;
            r.unwrap();
        }
    });
    let (a, b) = (tsf_bytes(&f.old), tsf_bytes(&other));
    assert!(
        a.len() == b.len() && a != b,
        "other bytes, same number of files"
    );
    let r = run_diff(&f.old, &other, vec![]);
    assert!(r.identical(), "{}", r.summary());
    assert_eq!(
        r.compared_points,
        run_diff(&f.old, &f.old, vec![]).compared_points
    );
}

/// The data files under `dir`, in path order.
fn tsf_files(dir: &Path) -> Vec<std::path::PathBuf> {
    crate::common::files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "tsf"))
        .collect()
}

/// The bytes of every data file under `dir`, in path order.
fn tsf_bytes(dir: &Path) -> Vec<Vec<u8>> {
    tsf_files(dir)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

#[test]
fn a_side_whose_series_are_out_of_order_is_an_error() {
    let f = fixture();
    // Two files whose series ranges overlap: the join could not trust the order.
    // One series per file (cap 1), so that each file is valid on its own.
    let new = new_side(&f, "unordered", 1, |s| {
        let n = s.len() - 1;
        s.swap(0, n)
    });
    let e = rt()
        .block_on(diff(&DiffConfig {
            old: f.old.to_str().unwrap().into(),
            new: new.to_str().unwrap().into(),
            shards: vec![],
            from: None,
            to: None,
            orgs: vec![],
            examples: 3,
            memory_limit: None,
            migration: None,
            shadow: None,
            out: None,
        }))
        .unwrap_err();
    // The manifest lists the files' series ranges as they are: it is
    // refused before any file is read.
    assert!(e.to_string().contains("must be in series order"), "{e}");
}

#[test]
fn hand_made_changes_give_exact_counts() {
    let f = fixture();
    let first = &f.base[0].3;
    assert!(first.len() >= 4 && first[1].ts.len() >= 5);
    let dropped_n = first[0].ts.len() as u64;

    let new = new_side(&f, "drop-series", u64::MAX, |s| {
        s.remove(0);
    });
    let r = run_diff(&f.old, &new, vec![]);
    assert_eq!(
        counts(&r),
        vec![
            (Category::SeriesOldOnly, 1),
            (Category::PointOldOnly, dropped_n)
        ]
    );

    let new = new_side(&f, "drop-points", u64::MAX, |s| {
        for _ in 0..3 {
            s[1].ts.remove(1);
            s[1].vals.remove(1);
        }
    });
    assert_eq!(
        counts(&run_diff(&f.old, &new, vec![])),
        vec![(Category::PointOldOnly, 3)]
    );

    let new = new_side(&f, "flip-bit", u64::MAX, |s| s[2].vals[0] ^= 1);
    let r = run_diff(&f.old, &new, vec![]);
    assert_eq!(counts(&r), vec![(Category::ValueDiffers, 1)]);

    // The Parquet file lists each differing point with its shard and
    // window, in whichever window it is (here the last one).
    let (shard, win, _, last) = f.base.last().unwrap();
    assert!(f.base.len() >= 3 && last.len() >= 2 && last[0].ts.len() >= 2);
    let new = new_side_at(&f, "flip-bit-last", u64::MAX, f.base.len() - 1, |s| {
        s[1].vals[0] ^= 1 << 63;
        s[0].ts.remove(0);
        s[0].vals.remove(0);
    });
    let r = run_diff(&f.old, &new, vec![]);
    assert_eq!(
        counts(&r),
        vec![(Category::PointOldOnly, 1), (Category::ValueDiffers, 1)]
    );
    let row = |s: &S, side: &str, old_bits, new_bits, category: &str| Row {
        side: side.into(),
        shard: shard.clone(),
        win: win.clone(),
        org: s.org,
        metric: s.metric,
        ts: s.ts[0],
        old_bits,
        new_bits,
        category: category.into(),
    };
    assert_eq!(
        differing_rows(&r),
        vec![
            row(
                &last[0],
                "old",
                Some(last[0].vals[0]),
                None,
                "point_old_only"
            ),
            row(
                &last[1],
                "both",
                Some(last[1].vals[0]),
                Some(last[1].vals[0] ^ 1 << 63),
                "value_differs"
            ),
        ]
    );

    let new = new_side(&f, "metadata", u64::MAX, |s| {
        s[3].meta.push_str(",changed:yes")
    });
    assert_eq!(
        counts(&run_diff(&f.old, &new, vec![])),
        vec![(Category::MetadataDiffers, 1)]
    );

    let new = new_side(&f, "kind", u64::MAX, |s| s[0].kind = (s[0].kind + 1) % 3);
    assert_eq!(
        counts(&run_diff(&f.old, &new, vec![])),
        vec![(Category::KindDiffers, 1)]
    );
    let new = new_side(&f, "interval", u64::MAX, |s| {
        s[1].interval += 5;
        s[2].interval += 5;
    });
    assert_eq!(
        counts(&run_diff(&f.old, &new, vec![])),
        vec![(Category::IntervalDiffers, 2)]
    );

    // NaN == NaN only when the bits match.
    let nan_a = new_side(&f, "nan-a", u64::MAX, |s| {
        s[1].vals[0] = 0x7ff8_0000_0000_0001
    });
    let nan_a2 = new_side(&f, "nan-a2", 5_000, |s| {
        s[1].vals[0] = 0x7ff8_0000_0000_0001
    });
    let nan_b = new_side(&f, "nan-b", u64::MAX, |s| {
        s[1].vals[0] = 0x7ff8_0000_0000_0002
    });
    assert!(run_diff(&nan_a, &nan_a2, vec![]).identical());
    assert_eq!(
        counts(&run_diff(&nan_a, &nan_b, vec![])),
        vec![(Category::ValueDiffers, 1)]
    );

    // --org narrows the comparison: the change is outside the selected org.
    let changed_org = first[2].org;
    let other = f
        .base
        .iter()
        .flat_map(|b| b.3.iter())
        .map(|s| s.org)
        .find(|&o| o != changed_org)
        .unwrap();
    let new = new_side(&f, "flip-bit-2", u64::MAX, |s| s[2].vals[0] ^= 1);
    assert!(run_diff(&f.old, &new, vec![other]).identical());
    assert_eq!(
        counts(&run_diff(&f.old, &new, vec![changed_org])),
        vec![(Category::ValueDiffers, 1)]
    );
}

#[test]
fn an_uncommitted_side_is_an_error() {
    let f = fixture();
    let broken = f.dir.join("broken");
    let (shard, w, _, _) = &f.base[0];
    std::fs::create_dir_all(broken.join(shard).join(w).join("data/x")).unwrap();
    std::fs::write(
        broken.join(shard).join(w).join("data/x/part-00000.tsf"),
        b"partial",
    )
    .unwrap();
    let e = rt()
        .block_on(diff(&DiffConfig {
            old: f.old.to_str().unwrap().into(),
            new: broken.to_str().unwrap().into(),
            shards: vec![shard.clone()],
            from: None,
            to: None,
            orgs: vec![],
            examples: 3,
            memory_limit: None,
            migration: None,
            shadow: None,
            out: None,
        }))
        .unwrap_err();
    assert!(e.to_string().contains("did not commit"), "{e}");
}

/// Runs the diff over `--from`/`--to` (hours, `YYYY-MM-DDTHH`).
fn run_diff_range(
    old: &Path,
    new: &Path,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<tailor::job::diff::DiffReport, tailor::job::JobError> {
    diff_with(old, new, vec![], from, to)
}

/// `--from`/`--to` select whole windows, and a window only partly inside
/// them is an error rather than left out; points and series only the new
/// side has are counted (and listed with side "new"), per shard too.
#[test]
fn from_and_to_select_whole_windows_and_new_only_data_is_counted() {
    let f = fixture();
    let (shard, _, base, series) = f.base[0].clone();
    assert!(series.len() >= 3 && series[0].ts.len() >= 2);
    let (old, new) = (f.dir.join("hours-old"), f.dir.join("hours-new"));
    let hours = [
        ("2026-11-21T00", "2026-11-21T00"),
        ("2026-11-21T01", "2026-11-21T01"),
        ("2026-11-21T02", "2026-11-21T03"),
    ];
    // The new side: a flipped bit in the second window; in the third, two
    // points after the first series' last and one more series (last in
    // key order) of four points.
    let last = series.last().unwrap().clone();
    let extra = S {
        metric: last.metric + 1,
        ts: vec![10, 20, 30, 40],
        vals: vec![1, 2, 3, 4],
        ..last
    };
    let end = *series[0].ts.last().unwrap();
    for (i, (from, to)) in hours.iter().enumerate() {
        let m = Manifest {
            window_from: (*from).into(),
            window_to: (*to).into(),
            ..base.clone()
        };
        let w = format!("{from}_{to}");
        write_window(&old, &shard, &w, &m, &series, u64::MAX);
        let mut s = series.clone();
        if i == 1 {
            s[1].vals[0] ^= 1;
        }
        if i == 2 {
            s[0].ts.extend([end + 1, end + 2]);
            s[0].vals.extend([7, 8]);
            s.push(extra.clone());
        }
        write_window(&new, &shard, &w, &m, &s, u64::MAX);
    }

    let r = run_diff_range(&old, &new, None, None).unwrap();
    let all = vec![
        (Category::SeriesNewOnly, 1),
        (Category::PointNewOnly, 6),
        (Category::ValueDiffers, 1),
    ];
    assert_eq!(counts(&r), all);
    let per_shard: Vec<(Category, u64)> = r.shards[&shard]
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| (*c, *n))
        .collect();
    assert_eq!(per_shard, all);
    assert_eq!(r.shards[&shard].new_points, r.shards[&shard].old_points + 6);

    let only = |from, to| counts(&run_diff_range(&old, &new, from, to).unwrap());
    assert_eq!(only(Some("2026-11-21T00"), Some("2026-11-21T00")), vec![]);
    assert_eq!(
        only(Some("2026-11-21T01"), Some("2026-11-21T01")),
        vec![(Category::ValueDiffers, 1)]
    );
    let r = run_diff_range(&old, &new, Some("2026-11-21T02"), None).unwrap();
    assert_eq!(
        counts(&r),
        vec![(Category::SeriesNewOnly, 1), (Category::PointNewOnly, 6)]
    );
    let rows = differing_rows(&r);
    assert_eq!(rows.len(), 6);
    for row in &rows {
        assert_eq!(
            (row.side.as_str(), row.old_bits, row.category.as_str()),
            ("new", None, "point_new_only"),
            "{row:?}"
        );
        assert_eq!(row.win, "2026-11-21T02_2026-11-21T03");
    }
    let new_points: Vec<(u64, i64, Option<u64>)> =
        rows.iter().map(|r| (r.metric, r.ts, r.new_bits)).collect();
    let mut want = vec![
        (series[0].metric, end + 1, Some(7)),
        (series[0].metric, end + 2, Some(8)),
    ];
    want.extend(
        extra
            .ts
            .iter()
            .zip(&extra.vals)
            .map(|(t, v)| (extra.metric, *t, Some(*v))),
    );
    assert_eq!(new_points, want);

    // The third window spans T02-T03: a range ending at T02 cuts it.
    for (from, to) in [
        (Some("2026-11-21T01"), Some("2026-11-21T02")),
        (Some("2026-11-21T03"), None),
    ] {
        let e = run_diff_range(&old, &new, from, to).unwrap_err();
        assert!(
            e.to_string().contains("2026-11-21T02_2026-11-21T03")
                && e.to_string().contains("only partly inside"),
            "{e}"
        );
    }
}
