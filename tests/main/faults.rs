//! Faults of the stores, injected at every phase of the job through a
//! store that wraps the real one (`faulty.rs`): each failure ends the run
//! with exit 74 and a message naming the operation and the object, the
//! previous commit stays the visible one, and a rerun gives the bytes of a
//! run that met no fault. A delay is only slower; a failed cleanup after
//! the commit is a warning.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use object_store::local::LocalFileSystem;
use tailor::datasource::store::StoreRoot;
use tailor::job::JobError;
use tailor::job::config::RunConfig;
use tailor::job::run::{RunStats, run_shard_on};

use crate::common::{biggest_shard, files_by_path, files_under, rt, rt_multi, shard_map, tempdir};
use crate::faulty::{Act, FaultyStore, Op, Rule};

/// Faults injected by the tests of this module (for the record).
pub static INJECTED: AtomicUsize = AtomicUsize::new(0);

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    input: PathBuf,
    shard: String,
}

fn setup(seed: u64) -> Setup {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let input = dir.join("in");
    let summary = rt().block_on(async {
        let root = StoreRoot::open(input.to_str().unwrap()).unwrap();
        let opts = tailor::job::generate::GenerateOptions {
            seed,
            target_bytes: 2 << 20,
            orgs: 8,
            hours: 1,
            partitions: 3,
            ..Default::default()
        };
        tailor::job::generate::generate(&root, &shard_map(), &opts)
            .await
            .unwrap()
    });
    // The biggest shard: several files of output.
    let shard = biggest_shard(&input, &summary.shards);
    Setup {
        _tmp: tmp,
        dir,
        input,
        shard,
    }
}

fn cfg(s: &Setup, out: &Path) -> RunConfig {
    let mut c = RunConfig::new(s.input.to_str().unwrap(), out.to_str().unwrap(), &s.shard);
    c.shard_map = shard_map();
    c.target_partitions = 2;
    // Several files, each uploaded in several parts when multipart.
    c.max_file_bytes = 48 << 10;
    c.range_bytes = 64 << 10;
    c.stage_dir = Some(s.dir.join("stage"));
    c.spill_dir = Some(s.dir.join("spill"));
    c
}

/// A local directory reached only through `faults` (no mmap, no rename).
fn faulty_root(path: &Path, faults: &Arc<FaultyStore>) -> StoreRoot {
    std::fs::create_dir_all(path).unwrap();
    let url = format!("file://{}", path.display());
    StoreRoot::with_store(Arc::clone(faults) as _, &url).unwrap()
}

fn faulty_local() -> Arc<FaultyStore> {
    FaultyStore::new(Arc::new(
        LocalFileSystem::new().with_automatic_cleanup(true),
    ))
}

fn run_on(c: &RunConfig, input: &StoreRoot, output: &StoreRoot) -> Result<RunStats, JobError> {
    let (stats, r) = rt_multi().block_on(run_shard_on(c, input, output));
    r.map(|()| stats)
}

/// The manifest and data files under an output root, by relative path.
fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    files_by_path(root).into_iter().collect()
}

/// The committed manifests' bytes under an output root.
fn manifests(root: &Path) -> Vec<(String, Vec<u8>)> {
    tree(root)
        .into_iter()
        .filter(|(p, _)| p.ends_with("_manifest.json"))
        .collect()
}

/// Data files named by the committed manifests, read back through the
/// readers (sizes and CRC32Cs checked): what a reader sees.
fn visible(root: &Path, shard: &str) -> Vec<crate::common::S> {
    let r = StoreRoot::open(root.to_str().unwrap()).unwrap();
    rt().block_on(crate::common::read_series(&r, shard))
}

struct Case {
    name: &'static str,
    /// Faults on the input store (else on the output store).
    on_input: bool,
    rule: Rule,
    /// Texts the error must contain.
    says: Vec<String>,
    /// Upload everything as multipart.
    multipart: bool,
}

fn case(name: &'static str, on_input: bool, rule: Rule, says: &[&str]) -> Case {
    Case {
        name,
        on_input,
        rule,
        says: says.iter().map(|s| s.to_string()).collect(),
        multipart: false,
    }
}

#[test]
fn a_store_fault_in_any_phase_fails_the_run_with_74_and_leaves_the_previous_commit() {
    let s = setup(61);
    // What a run that meets no fault writes.
    let clean = s.dir.join("clean");
    run_on(
        &cfg(&s, &clean),
        &StoreRoot::open(s.input.to_str().unwrap()).unwrap(),
        &StoreRoot::open(clean.to_str().unwrap()).unwrap(),
    )
    .unwrap();
    let want = tree(&clean);
    assert!(
        want.iter().filter(|(p, _)| p.ends_with(".tsf")).count() >= 3,
        "several data files"
    );
    let shard = s.shard.as_str();

    let cases = vec![
        case(
            "listing the input",
            true,
            Rule::new(Op::List, shard, Some(1), Act::Fail("503 Slow Down")),
            &["LIST ", shard, "503 Slow Down"],
        ),
        case(
            "a ranged read",
            true,
            Rule::new(
                Op::Get,
                ".tsp",
                Some(3),
                Act::Fail("connection reset by peer"),
            ),
            &["GET ", ".tsp bytes ", "connection reset"],
        ),
        case(
            "a body shorter than asked for",
            true,
            Rule::new(Op::Get, ".tsp", Some(2), Act::Short(5)),
            &["GET ", ".tsp bytes ", "got "],
        ),
        case(
            "a body longer than asked for",
            true,
            Rule::new(Op::Get, ".tsp", Some(1), Act::Long(7)),
            &["GET ", ".tsp bytes ", "got "],
        ),
        case(
            "reading the commit it replaces",
            false,
            Rule::new(
                Op::Get,
                "_manifest.json",
                Some(1),
                Act::Fail("503 Slow Down"),
            ),
            &["GET ", "_manifest.json", "503"],
        ),
        case(
            "uploading the second data file",
            false,
            Rule::new(
                Op::Put,
                "part-00001.tsf",
                Some(1),
                Act::Fail("503 Slow Down"),
            ),
            &["PUT ", "part-00001.tsf", "503"],
        ),
        Case {
            multipart: true,
            ..case(
                "a part of a multipart upload",
                false,
                Rule::new(
                    Op::PutPart,
                    "part-00000.tsf",
                    Some(2),
                    Act::Fail("connection reset by peer"),
                ),
                &["PUT (multipart) ", "part-00000.tsf", "connection reset"],
            )
        },
        Case {
            multipart: true,
            ..case(
                "completing a multipart upload",
                false,
                Rule::new(
                    Op::Complete,
                    "part-00002.tsf",
                    Some(1),
                    Act::Fail("500 InternalError"),
                ),
                &["PUT (multipart) ", "part-00002.tsf", "500 InternalError"],
            )
        },
        case(
            "the manifest put",
            false,
            Rule::new(Op::Put, "_manifest.json", None, Act::Fail("503 Slow Down")),
            &["PUT (conditional) ", "_manifest.json", "503"],
        ),
    ];
    for c in cases {
        let out = s.dir.join(format!("out-{}", c.name.replace(' ', "-")));
        // The previous commit: other settings, so another run id.
        let mut first = cfg(&s, &out);
        first.max_file_bytes = 1 << 30;
        run_on(
            &first,
            &StoreRoot::open(s.input.to_str().unwrap()).unwrap(),
            &StoreRoot::open(out.to_str().unwrap()).unwrap(),
        )
        .unwrap();
        let before = manifests(&out);
        let before_points = visible(&out, shard);
        assert_eq!(before.len(), 1);

        let (fin, fout) = (faulty_local(), faulty_local());
        let faults = if c.on_input { &fin } else { &fout };
        faults.add(c.rule.clone());
        let mut conf = cfg(&s, &out);
        if c.multipart {
            conf.single_put_max = 1 << 10;
        }
        let e = run_on(
            &conf,
            &faulty_root(&s.input, &fin),
            &faulty_root(&out, &fout),
        )
        .expect_err(c.name);
        INJECTED.fetch_add(faults.injected(), Ordering::Relaxed);
        assert_eq!(
            tailor::cli::exit_code(&e),
            tailor::cli::EXIT_IO,
            "{}: {e}",
            c.name
        );
        let msg = e.to_string();
        for want in &c.says {
            assert!(
                msg.contains(want.as_str()),
                "{}: {msg:?} does not say {want:?}",
                c.name
            );
        }
        // Nothing of the failed run is visible; no DELETE was sent.
        assert_eq!(
            manifests(&out),
            before,
            "{}: the previous commit stays",
            c.name
        );
        assert_eq!(visible(&out, shard), before_points, "{}", c.name);
        assert!(
            fout.calls(Op::Delete).is_empty(),
            "{}: nothing removed",
            c.name
        );
        if c.multipart {
            let aborted = fout.calls(Op::Abort);
            assert_eq!(aborted.len(), 1, "{}: the failed upload is aborted", c.name);
            assert!(aborted[0].ends_with(c.rule.key.as_str()), "{aborted:?}");
        }

        // A rerun without the fault commits what a clean run commits.
        let (fin, fout) = (faulty_local(), faulty_local());
        run_on(
            &conf,
            &faulty_root(&s.input, &fin),
            &faulty_root(&out, &fout),
        )
        .unwrap_or_else(|e| panic!("{}: rerun: {e}", c.name));
        let got: Vec<_> = tree(&out)
            .into_iter()
            .filter(|(p, _)| want.iter().any(|(w, _)| w == p))
            .collect();
        assert_eq!(
            got.len(),
            want.len(),
            "{}: every file of a clean run",
            c.name
        );
        for ((p, a), (_, b)) in got.iter().zip(&want) {
            if p.ends_with(".tsf") {
                assert!(a == b, "{}: {p} differs from a clean run's", c.name);
            }
        }
        assert_eq!(visible(&out, shard), visible(&clean, shard), "{}", c.name);
    }
}

#[test]
fn slow_calls_and_a_failed_abort_are_reported_not_hidden() {
    let s = setup(62);
    let clean = s.dir.join("clean");
    let conf = cfg(&s, &clean);
    run_on(
        &conf,
        &StoreRoot::open(s.input.to_str().unwrap()).unwrap(),
        &StoreRoot::open(clean.to_str().unwrap()).unwrap(),
    )
    .unwrap();

    // Delays everywhere: slower, same bytes.
    let out = s.dir.join("slow");
    let (fin, fout) = (faulty_local(), faulty_local());
    fin.add(Rule::new(
        Op::Get,
        ".tsp",
        None,
        Act::Delay(Duration::from_millis(20)),
    ));
    fin.add(Rule::new(
        Op::List,
        "",
        None,
        Act::Delay(Duration::from_millis(200)),
    ));
    fout.add(Rule::new(
        Op::Put,
        "",
        None,
        Act::Delay(Duration::from_millis(50)),
    ));
    run_on(
        &cfg(&s, &out),
        &faulty_root(&s.input, &fin),
        &faulty_root(&out, &fout),
    )
    .unwrap();
    INJECTED.fetch_add(fin.injected() + fout.injected(), Ordering::Relaxed);
    assert!(fin.injected() > 3 && fout.injected() > 3);
    assert_eq!(visible(&out, &s.shard), visible(&clean, &s.shard));

    // A part fails and so does the abort: the error says both, and that an
    // incomplete upload is left behind.
    let out = s.dir.join("abort");
    let (fin, fout) = (faulty_local(), faulty_local());
    fout.add(Rule::new(
        Op::PutPart,
        "part-00000.tsf",
        Some(1),
        Act::Fail("503 Slow Down"),
    ));
    fout.add(Rule::new(
        Op::Abort,
        "part-00000.tsf",
        Some(1),
        Act::Fail("connection reset by peer"),
    ));
    let mut c = cfg(&s, &out);
    c.single_put_max = 1 << 10;
    let e = run_on(&c, &faulty_root(&s.input, &fin), &faulty_root(&out, &fout)).unwrap_err();
    INJECTED.fetch_add(fout.injected(), Ordering::Relaxed);
    assert_eq!(tailor::cli::exit_code(&e), tailor::cli::EXIT_IO, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("PUT (multipart) ")
            && msg.contains("503 Slow Down")
            && msg.contains("aborting the multipart upload of")
            && msg.contains("incomplete upload is left"),
        "{msg}"
    );
    assert!(manifests(&out).is_empty(), "nothing committed");
}

/// The manifest is the commit: removing the previous run's files after it
/// is best effort. When that fails the run still succeeds, with a warning,
/// readers see the new run only, and later runs remove what was left.
#[test]
fn a_cleanup_that_fails_after_the_commit_is_a_warning_and_later_runs_finish_it() {
    let s = setup(63);
    let out = s.dir.join("out");
    let fout = faulty_local();
    let root = faulty_root(&out, &fout);
    let in_root = StoreRoot::open(s.input.to_str().unwrap()).unwrap();
    let mut c = cfg(&s, &out);
    c.max_file_bytes = 64 << 10;
    // Every object under the output root, by relative path.
    let objects = || -> Vec<String> {
        files_under(&out)
            .into_iter()
            .map(|p| p.strip_prefix(&out).unwrap().to_string_lossy().into_owned())
            .collect()
    };
    let data_of = |run_id: &str| -> Vec<String> {
        objects()
            .into_iter()
            .filter(|p| p.contains(&format!("/data/{run_id}/")))
            .collect()
    };

    let first = run_on(&c, &in_root, &root).unwrap();
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    let first_files = data_of(&first.output.run_id);
    assert!(first_files.len() > 1, "{first_files:?}");

    // The run id is a digest of input, settings and output: a rerun with
    // another file size cap writes under a new one.
    fout.add(Rule::new(
        Op::Delete,
        "",
        None,
        Act::Fail("403 AccessDenied"),
    ));
    c.max_file_bytes = 48 << 10;
    let second = run_on(&c, &in_root, &root).unwrap();
    INJECTED.fetch_add(fout.injected(), Ordering::Relaxed);
    assert!(second.committed);
    assert_eq!(second.output.stale_objects_removed, 0);
    assert!(
        second
            .warnings
            .iter()
            .any(|w| w.contains("committed, but removing other runs' files")
                && w.contains("DELETE ")
                && w.contains("403 AccessDenied")),
        "{:?}",
        second.warnings
    );
    // Both runs' files are there; the manifest names the second.
    assert_eq!(data_of(&first.output.run_id), first_files);
    let (sh, w) = second.output.location.split_once('/').unwrap();
    let m = rt()
        .block_on(tailor::job::manifest::read_manifest(&root, sh, w))
        .unwrap();
    assert_eq!(m.run_id, second.output.run_id);
    let second_files = data_of(&second.output.run_id);

    fout.clear();
    c.max_file_bytes = 40 << 10;
    let third = run_on(&c, &in_root, &root).unwrap();
    // The commit it replaced goes at once; the first run's files, which no
    // manifest names, wait for the grace period (a run of the window still
    // uploading looks the same), with a warning.
    assert_eq!(
        third.output.stale_objects_removed as usize,
        second_files.len()
    );
    assert!(
        third.warnings.len() == 1
            && third.warnings[0].contains(&format!("{} objects of other runs", first_files.len())),
        "{:?}",
        third.warnings
    );
    assert!(data_of(&second.output.run_id).is_empty());
    assert_eq!(data_of(&first.output.run_id), first_files);
    // Once older than the grace period, a later commit removes them.
    c.cleanup_grace = Duration::ZERO;
    c.max_file_bytes = 36 << 10;
    let fourth = run_on(&c, &in_root, &root).unwrap();
    assert!(fourth.warnings.is_empty(), "{:?}", fourth.warnings);
    assert!(data_of(&first.output.run_id).is_empty());
    assert!(data_of(&third.output.run_id).is_empty());
    let left: Vec<String> = objects()
        .into_iter()
        .filter(|p| p.contains("/data/"))
        .collect();
    assert_eq!(left, data_of(&fourth.output.run_id));
}
