//! Memory that does not grow with the input: under a memory limit the job
//! keeps the hash buckets of series it has room for and spools the others
//! (their compressed frames), decoding each again on its own; every layout
//! the bucket plan can take gives the bytes of a run without a limit. Run
//! through the binary, whose resident set at the start (and so the budget
//! a limit leaves) does not depend on other tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tailor::datasource::store::StoreRoot;
use tailor::job::generate::{GenerateOptions, generate};

use crate::common::{P, file_of, files_by_path, files_under, rt, tempdir};

const MIB: u64 = 1 << 20;
/// The footprint the budget starts after (`config.rs` BASE_FOOTPRINT).
const BASE: u64 = 70 * MIB;

struct Tree {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    input: PathBuf,
    map: PathBuf,
}

/// One shard (org-mod-0: modulus 1) of about `size` compressed bytes.
fn tree(seed: u64, size: u64) -> Tree {
    tree_of(seed, size, GenerateOptions::default().max_points)
}

/// [`tree`] with payloads of up to `max_points` points.
fn tree_of(seed: u64, size: u64, max_points: u32) -> Tree {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let input = dir.join("in");
    let map = dir.join("one.toml");
    std::fs::write(&map, "modulus = 1\ndedicated = []\n").unwrap();
    rt().block_on(async {
        let root = StoreRoot::open(input.to_str().unwrap()).unwrap();
        let m = tailor::format::shard::ShardMap::parse("modulus = 1\ndedicated = []\n").unwrap();
        generate(
            &root,
            &m,
            &GenerateOptions {
                seed,
                target_bytes: size,
                orgs: 30,
                hours: 1,
                partitions: 3,
                dup_rate: 0.05,
                conflict_rate: 0.05,
                max_points,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    });
    Tree {
        _tmp: tmp,
        dir,
        input,
        map,
    }
}

impl Tree {
    fn cmd(&self, out: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tailor"));
        c.arg("run")
            .arg("--input")
            .arg(&self.input)
            .arg("--output")
            .arg(self.dir.join(out))
            .args(["--shard", "org-mod-0", "--shard-map"])
            .arg(&self.map)
            .arg("--report")
            .arg(self.dir.join(format!("{out}.json")))
            .args(["--history-keep", "0"])
            .args(extra);
        if !extra.contains(&"--target-partitions") {
            c.args(["--target-partitions", "2"]);
        }
        c
    }

    /// Runs the job into `out` with the test hooks `env`; its report's
    /// `spool` section.
    fn run(&self, out: &str, extra: &[&str], env: &[(&str, u64)]) -> serde_json::Value {
        let mut c = self.cmd(out, extra);
        for (k, v) in env {
            c.env(k, v.to_string());
        }
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{out}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.dir.join(format!("{out}.json"))).unwrap())
                .unwrap();
        report["spool"].clone()
    }

    /// The committed files of `out`, by relative path.
    fn bytes(&self, out: &str) -> BTreeMap<String, Vec<u8>> {
        files_by_path(&self.dir.join(out))
    }
}

fn limit(budget: u64) -> String {
    format!("{}", BASE + budget)
}

#[test]
fn every_bucket_layout_gives_the_bytes_of_a_run_without_a_limit() {
    // About 6 MiB compressed, 20 MB decoded.
    let t = tree(31, 6 * MIB);
    t.run("free", &["--memory-limit", "100GiB"], &[]);
    let want = t.bytes("free");
    assert!(want.len() >= 2);
    let plan = |s: &serde_json::Value| {
        (
            s["plan"]["buckets"].as_u64().unwrap(),
            s["plan"]["resident"].as_u64().unwrap(),
        )
    };
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap();

    // Everything fits: every bucket resident, one stream, nothing spooled.
    let s = t.run("resident", &["--memory-limit", &limit(512 * MIB)], &[]);
    let (buckets, resident) = plan(&s);
    assert_eq!(resident, buckets, "{s}");
    assert_eq!((n(&s, "groups"), n(&s, "spooled_frames")), (0, 0), "{s}");
    assert!(t.bytes("resident") == want);

    // Some buckets resident, the others spooled (packed: the disk has
    // room) and read back.
    let s = t.run("hybrid", &["--memory-limit", &limit(24 * MIB)], &[]);
    let (buckets, resident) = plan(&s);
    assert!(resident > 0 && resident < buckets, "{s}");
    assert!(n(&s, "groups") > 1 && n(&s, "spooled_frames") > 0, "{s}");
    assert_eq!(
        n(&s, "spooled_packed_frames"),
        n(&s, "spooled_frames"),
        "{s}"
    );
    assert!(!s["demoted"].as_bool().unwrap());
    assert!(t.bytes("hybrid") == want);
    let packed_bytes = n(&s, "spooled_bytes");

    // No room for the packed form on the spill disk: every frame spooled
    // compressed and decoded again; and with room for some, both forms.
    let s = t.run(
        "compressed",
        &["--memory-limit", &limit(24 * MIB)],
        &[(ALLOWANCE, 0)],
    );
    assert_eq!(n(&s, "spooled_packed_frames"), 0, "{s}");
    assert!(n(&s, "spooled_bytes") < packed_bytes, "{s}");
    assert!(t.bytes("compressed") == want);
    let s = t.run(
        "both",
        &["--memory-limit", &limit(24 * MIB)],
        &[(ALLOWANCE, (packed_bytes - n(&s, "spooled_bytes")) / 2)],
    );
    let packed = n(&s, "spooled_packed_frames");
    assert!(packed > 0 && packed < n(&s, "spooled_frames"), "{s}");
    assert!(t.bytes("both") == want);

    // The same on one partition, and on eight of 64 KiB ranges.
    t.run(
        "one",
        &[
            "--memory-limit",
            &limit(24 * MIB),
            "--target-partitions",
            "1",
        ],
        &[],
    );
    assert!(t.bytes("one") == want);
    t.run(
        "eight",
        &[
            "--memory-limit",
            &limit(24 * MIB),
            "--target-partitions",
            "8",
            "--range-bytes",
            "64KiB",
        ],
        &[],
    );
    assert!(t.bytes("eight") == want);

    // Nothing resident: every frame spooled, in buckets of about a MiB.
    let s = t.run("spooled", &["--memory-limit", &limit(0)], &[]);
    assert_eq!(plan(&s).1, 0, "{s}");
    assert!(n(&s, "groups") > 8, "{s}");
    assert!(t.bytes("spooled") == want);

    // An estimate far short of the input: the plan keeps every bucket,
    // the scan's rows outgrow their share and it demotes them all; the
    // spooled buckets, four times a bucket's share, are split again.
    let s = t.run(
        "demoted",
        &["--memory-limit", &limit(8 * MIB)],
        &[(ESTIMATE, MIB)],
    );
    let (buckets, resident) = plan(&s);
    assert_eq!((buckets, resident), (4, 4), "{s}");
    assert!(s["demoted"].as_bool().unwrap(), "{s}");
    assert!(n(&s, "splits") > 0, "{s}");
    assert!(t.bytes("demoted") == want);
    // The same with the spooled frames compressed.
    let s = t.run(
        "demoted-compressed",
        &["--memory-limit", &limit(8 * MIB)],
        &[(ESTIMATE, MIB), (ALLOWANCE, 0)],
    );
    assert!(
        n(&s, "splits") > 0 && n(&s, "spooled_packed_frames") == 0,
        "{s}"
    );
    assert!(t.bytes("demoted-compressed") == want);
}

/// Test hooks of debug builds (`job/faults.rs`).
const ESTIMATE: &str = "TAILOR_DECODED_ESTIMATE";
const ALLOWANCE: &str = "TAILOR_SPOOL_ALLOWANCE";

#[test]
fn payloads_the_scan_splits_into_rows_are_spooled_whole_in_either_form() {
    // Payloads of up to 5000 points: those over `ROW_POINTS` are split
    // into rows when they stay in memory, and spooled whole.
    let t = tree_of(41, 3 * MIB, 5000);
    t.run("free", &["--memory-limit", "100GiB"], &[]);
    let want = t.bytes("free");
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap();
    let s = t.run("hybrid", &["--memory-limit", &limit(12 * MIB)], &[]);
    assert!(n(&s, "spooled_frames") > 0, "{s}");
    assert_eq!(
        n(&s, "spooled_packed_frames"),
        n(&s, "spooled_frames"),
        "{s}"
    );
    assert!(t.bytes("hybrid") == want);
    let s = t.run(
        "compressed",
        &["--memory-limit", &limit(12 * MIB)],
        &[(ALLOWANCE, 0)],
    );
    assert!(
        n(&s, "spooled_frames") > 0 && n(&s, "spooled_packed_frames") == 0,
        "{s}"
    );
    assert!(t.bytes("compressed") == want);
}

#[test]
fn a_series_too_big_for_the_limit_is_a_usage_error_naming_it() {
    // Series 1/1: 64 payloads of 4096 points (64 x (40 + 16 x 4096) bytes
    // decoded); 200 small
    // payloads of other series around it.
    let tmp = tempdir();
    let dir = tmp.path();
    let hour = dir.join("in/org-mod-0/dt=2026-11-21/hour=00");
    std::fs::create_dir_all(&hour).unwrap();
    let map = dir.join("one.toml");
    std::fs::write(&map, "modulus = 1\ndedicated = []\n").unwrap();
    let p = |org: u64, metric: u64, at: i64, n: i64| P {
        version: 2,
        org,
        metric,
        kind: tailor::format::payload::Kind::Gauge,
        interval_s: 1,
        ts: (0..n)
            .map(|k| 1_795_219_200_000 + (at + k) * 1000)
            .collect(),
        vals: (0..n as u64).collect(),
        meta: String::new(),
    };
    let mut payloads: Vec<P> = (0..64).map(|i| p(1, 1, i * 4096, 4096)).collect();
    payloads.extend((0..200u64).map(|i| p(2 + i % 50, 7, i as i64, 10)));
    std::fs::write(hour.join("points+0+0000000000.tsp"), file_of(&payloads).0).unwrap();
    let run = |out: &str, budget: u64| {
        Command::new(env!("CARGO_BIN_EXE_tailor"))
            .arg("run")
            .arg("--input")
            .arg(dir.join("in"))
            .arg("--output")
            .arg(dir.join(out))
            .args(["--shard", "org-mod-0", "--shard-map"])
            .arg(&map)
            .args(["--memory-limit", &limit(budget), "--target-partitions", "2"])
            .output()
            .unwrap()
    };
    let o = run("small", MIB);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{err}");
    assert!(
        err.contains("series 1/1 decodes to 4196864 bytes") && err.contains("raise --memory-limit"),
        "{err}"
    );
    assert!(!has_manifest(&dir.join("small")), "{err}");
    // With room for it, the same input runs.
    let o = run("room", 64 * MIB);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(has_manifest(&dir.join("room")));
}

/// A run into `out` under a 12 MiB limit, its spill directory `spill`
/// below the tree, stopped at a fail point until the file `go` exists.
struct Stopped {
    child: std::process::Child,
    /// Its stderr's lines after the fail point (those before were read).
    rx: std::sync::mpsc::Receiver<String>,
    spill: PathBuf,
    go: PathBuf,
}

impl Stopped {
    /// Starts the run and waits until it has reached fail point `point`.
    fn at(t: &Tree, point: &str) -> Stopped {
        let spill = t.dir.join("spill");
        std::fs::create_dir_all(&spill).unwrap();
        let go = t.dir.join("go");
        let mut c = t.cmd(
            "out",
            &[
                "--memory-limit",
                &limit(12 * MIB),
                "--spill-dir",
                spill.to_str().unwrap(),
            ],
        );
        c.env(
            "TAILOR_FAIL_POINTS",
            format!("{point}=wait-for:{}", go.display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(l);
            }
        });
        let reached = format!("tailor: fail point {point} reached");
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(std::time::Duration::from_secs(120)) {
                Ok(l) if l == reached => break,
                Ok(l) => seen.push(l),
                Err(e) => panic!("fail point not reached ({e}): {}", seen.join("\n")),
            }
        }
        Stopped {
            child,
            rx,
            spill,
            go,
        }
    }

    /// Lets the run go on to its end: its exit status and the rest of its
    /// stderr.
    fn resume(mut self) -> (std::process::ExitStatus, String) {
        std::fs::write(&self.go, "").unwrap();
        let status = self.child.wait().unwrap();
        let err: Vec<String> = self.rx.iter().collect();
        (status, err.join("\n"))
    }
}

#[test]
fn a_spool_lost_from_disk_fails_the_run_with_an_io_error_naming_it() {
    let t = tree(37, 4 * MIB);
    // The scan's first batch: spool files are being written below `spill`.
    let run = Stopped::at(&t, "scan.batch");
    let spill = run.spill.clone();
    // A cleaner removes the job's scratch space under it.
    for e in std::fs::read_dir(&spill).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let (status, err) = run.resume();
    assert_eq!(status.code(), Some(74), "{err}");
    assert!(
        err.contains("spool file") && err.contains(spill.to_str().unwrap()),
        "{err}"
    );
    // Nothing was committed.
    assert!(!has_manifest(&t.dir.join("out")), "{err}");
}

#[test]
fn spool_files_are_deleted_once_read_back() {
    // Stopped once the data files are written, before the manifest: every
    // spooled bucket has been read back, and its file is gone from the
    // spill directory (which the job keeps until it ends), so the spill
    // disk never holds the spool beside the encoded groups and output.
    let t = tree(37, 4 * MIB);
    let run = Stopped::at(&t, "commit.put");
    let spools: Vec<PathBuf> = files_under(&run.spill)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".spool"))
        .collect();
    let dirs = std::fs::read_dir(&run.spill).unwrap().count();
    let (status, err) = run.resume();
    assert!(status.success(), "{err}");
    assert_eq!(dirs, 1, "the job's scratch directory is there");
    assert!(spools.is_empty(), "spool files left: {spools:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.dir.join("out.json")).unwrap()).unwrap();
    let spool = &report["spool"];
    assert!(
        spool["spooled_frames"].as_u64().unwrap() > 0 && spool["groups"].as_u64().unwrap() > 1,
        "{spool}"
    );
}

fn has_manifest(root: &Path) -> bool {
    files_under(root)
        .iter()
        .any(|p| p.file_name().is_some_and(|n| n == "_manifest.json"))
}

#[test]
fn a_panic_while_encoding_is_an_internal_error_and_commits_nothing() {
    // A round of series encoded on the worker threads panics (a bug):
    // the run fails with 70 naming it, not a process abort, whether the
    // series go straight to the files or to encoded groups (spooled).
    let t = tree(41, 2 * MIB);
    let s = t.run("unhurt", &["--memory-limit", &limit(MIB)], &[]);
    assert!(s["groups"].as_u64().unwrap() > 1, "{s}");
    for (out, memory) in [("files", "100GiB".to_string()), ("groups", limit(MIB))] {
        let o = t
            .cmd(out, &["--memory-limit", &memory])
            .env("TAILOR_FAIL_POINTS", "encode.round=panic")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(70), "{out}: {err}");
        assert!(
            err.contains("encoding a round of series panicked"),
            "{out}: {err}"
        );
        assert!(t.bytes(out).is_empty(), "{out}: something committed");
    }
}
