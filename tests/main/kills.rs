//! What only real processes show: `tailor run` SIGKILLed at each step of
//! the commit, two runs of one window racing for its commit (on local files
//! and on the S3 server), a full staging disk and a full spill directory.
//! Processes are stopped at exact steps with fail points
//! (`TAILOR_FAIL_POINTS`, `src/job/faults.rs`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{files_by_path, files_under, tempdir};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tailor")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Kills done by the tests of this module, and races run (for the record).
pub static KILLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
pub static RACES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Tree {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    input: PathBuf,
    map: PathBuf,
}

/// A generated tree where every org is in shard `org-mod-0`.
fn tree(seed: u64, size: &str) -> Tree {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let map = dir.join("map1.toml");
    std::fs::write(&map, "modulus = 1\ndedicated = []\n").unwrap();
    let input = dir.join("in");
    let o = Command::new(bin())
        .args([
            "generate",
            "--output",
            p(&input),
            "--seed",
            &seed.to_string(),
        ])
        .args([
            "--size",
            size,
            "--orgs",
            "30",
            "--hours",
            "1",
            "--shard-map",
            p(&map),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Tree {
        _tmp: tmp,
        dir,
        input,
        map,
    }
}

impl Tree {
    /// `tailor run` of shard org-mod-0 into `out` with `extra` flags.
    fn run_cmd(&self, out: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(["run", "--input", p(&self.input), "--output", out])
            .args(["--shard", "org-mod-0", "--shard-map", p(&self.map)])
            .args(["--target-partitions", "2"])
            .args(extra);
        c
    }

    fn run(&self, out: &str, extra: &[&str]) -> Output {
        self.run_cmd(out, extra).output().unwrap()
    }
}

/// A started process whose stderr lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

fn start(mut cmd: Command, points: &str) -> Running {
    let mut child = cmd
        .env("TAILOR_FAIL_POINTS", points)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    Running {
        child,
        lines,
        seen: Vec::new(),
    }
}

impl Running {
    /// Waits for the line saying that fail point `name` was reached.
    fn reached(&mut self, name: &str) {
        let want = format!("tailor: fail point {name} reached");
        loop {
            match self.lines.recv_timeout(Duration::from_secs(120)) {
                Ok(l) if l == want => return,
                Ok(l) => self.seen.push(l),
                Err(e) => panic!(
                    "fail point {name} not reached ({e}); stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.code().is_none(), "killed by a signal: {status:?}");
        KILLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits for the process; its exit code and stderr.
    fn finish(mut self) -> (i32, String) {
        let status = self.child.wait().unwrap();
        let mut rest: Vec<String> = self.lines.iter().collect();
        self.seen.append(&mut rest);
        (status.code().unwrap_or(-1), self.seen.join("\n"))
    }
}

fn manifest_of(out: &Path) -> Option<serde_json::Value> {
    files_under(out)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("_manifest.json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
}

/// The data files the committed manifest names, with their bytes.
fn named_files(out: &Path) -> Vec<(String, Vec<u8>)> {
    let m = manifest_of(out).expect("a commit");
    let loc = m["location"].as_str().unwrap();
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let rel = format!("{loc}/{}", f["path"].as_str().unwrap());
            let bytes = std::fs::read(out.join(&rel)).unwrap();
            (rel, bytes)
        })
        .collect()
}

/// `tailor export` of the committed output: every file the manifest names
/// is there whole (sizes and CRC32Cs checked), whatever was killed.
fn export_ok(t: &Tree, out: &Path) -> Vec<u8> {
    let csv = t.dir.join("export.csv");
    let o = Command::new(bin())
        .args([
            "export",
            "--output",
            p(out),
            "--shard",
            "org-mod-0",
            "--format",
            "csv",
        ])
        .args(["--out", p(&csv)])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "export: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(&csv).unwrap()
}

fn scratch_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("tailor-"))
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL at each step of the run: during the scan, during the upload of
/// the first and the third data file, between the last upload and the
/// manifest put, during the cleanup of the replaced commit. After each,
/// readers see the previous commit (or, once the manifest is written, the
/// new one), never a mix; a rerun gives the bytes of an undisturbed run;
/// and the killed run's scratch directories are reclaimed by the rerun.
#[test]
fn a_run_killed_at_any_step_leaves_a_whole_commit_and_a_rerun_gives_the_same_bytes() {
    let t = tree(71, "1536KiB");
    let flags = ["--max-file-bytes", "64KiB"];
    let reference = t.dir.join("reference");
    let o = t.run(p(&reference), &flags);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = named_files(&reference);
    assert!(want.len() >= 4, "several data files: {}", want.len());
    let want_export = export_ok(&t, &reference);

    for point in [
        "scan.batch",
        "upload.0",
        "upload.2",
        "commit.put",
        "cleanup.deleted",
    ] {
        let out = t.dir.join(format!("out-{point}"));
        let stage = t.dir.join(format!("stage-{point}"));
        let spill = t.dir.join(format!("spill-{point}"));
        // The previous commit, with other settings (another run id).
        let o = t.run(p(&out), &["--max-file-bytes", "1GiB"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let before = manifest_of(&out).unwrap();
        let before_export = export_ok(&t, &out);

        let mut cmd = t.run_cmd(p(&out), &flags);
        cmd.args(["--stage-dir", p(&stage), "--spill-dir", p(&spill)]);
        let mut r = start(cmd, &format!("{point}=stall"));
        r.reached(point);
        r.kill();

        let now = manifest_of(&out).unwrap();
        if point == "cleanup.deleted" {
            // The manifest was written: the new commit is the one seen.
            assert_eq!(now["run_id"], manifest_of(&reference).unwrap()["run_id"]);
            assert_eq!(export_ok(&t, &out), want_export, "{point}");
        } else {
            assert_eq!(
                now, before,
                "{point}: the previous commit is the visible one"
            );
            assert_eq!(export_ok(&t, &out), before_export, "{point}");
        }
        assert!(
            !scratch_dirs(&stage).is_empty(),
            "{point}: the killed run's staging directory is left"
        );

        let report = t.dir.join(format!("report-{point}.json"));
        let mut cmd = t.run_cmd(p(&out), &flags);
        cmd.args([
            "--stage-dir",
            p(&stage),
            "--spill-dir",
            p(&spill),
            "--report",
            p(&report),
        ]);
        let o = cmd.output().unwrap();
        assert!(
            o.status.success(),
            "{point}: rerun: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            named_files(&out),
            want,
            "{point}: the rerun's files are an undisturbed run's"
        );
        assert_eq!(export_ok(&t, &out), want_export, "{point}");
        assert!(
            scratch_dirs(&stage).is_empty() && scratch_dirs(&spill).is_empty(),
            "{point}: scratch directories reclaimed: {:?} {:?}",
            scratch_dirs(&stage),
            scratch_dirs(&spill)
        );
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert!(
            r["warnings"].as_array().unwrap().iter().any(|w| w
                .as_str()
                .unwrap()
                .contains("scratch directories of runs that were killed")),
            "{point}: {r}"
        );
    }
}

/// Two runs of one window at once: the one that commits first wins, the
/// other fails with exit 75 and removes nothing; on local files (no
/// previous commit, and one to replace) and on the S3 server.
#[test]
fn of_two_runs_racing_for_one_window_exactly_one_commits() {
    let t = tree(72, "768KiB");
    let mut outs = vec![(t.dir.join("race-fresh").display().to_string(), false)];
    outs.push((t.dir.join("race-replace").display().to_string(), true));
    if let Some(s3) = crate::stores::s3_base() {
        let unique = format!(
            "race-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        outs.push((format!("{s3}/{unique}/fresh"), false));
        outs.push((format!("{s3}/{unique}/replace"), true));
    }
    for (out, previous) in outs {
        if previous {
            let o = t.run(&out, &["--max-file-bytes", "1GiB"]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let go = t.dir.join(format!("go-{}", out.len() + previous as usize));
        // A: stops before its manifest put until B has committed.
        let mut a = start(
            t.run_cmd(&out, &["--max-file-bytes", "64KiB"]),
            &format!("commit.put=wait-for:{}", go.display()),
        );
        a.reached("commit.put");
        let b = t.run(&out, &["--max-file-bytes", "96KiB"]);
        assert!(
            b.status.success(),
            "{out}: B: {}",
            String::from_utf8_lossy(&b.stderr)
        );
        let listing_b = list(&t, &out);
        std::fs::write(&go, b"").unwrap();
        let (code, err) = a.finish();
        RACES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(code, 75, "{out}: A lost the race: {err}");
        assert!(
            err.contains("another run of org-mod-0/")
                && err.contains("committed while this one ran"),
            "{err}"
        );
        // B's commit stands whole; A removed nothing (its own files stay
        // for a later commit's cleanup).
        let after = list(&t, &out);
        for f in &listing_b {
            assert!(after.contains(f), "{out}: {f} of B's was removed");
        }
        let o = Command::new(bin())
            .args([
                "export",
                "--output",
                &out,
                "--shard",
                "org-mod-0",
                "--format",
                "csv",
            ])
            .args(["--out", p(&t.dir.join("race.csv"))])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{out}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Every object under an output (a local path or a store URL), through
/// `tailor inspect`-free means: the files, or the S3 listing.
fn list(t: &Tree, out: &str) -> Vec<String> {
    if !out.contains("://") {
        return files_by_path(Path::new(out)).into_keys().collect();
    }
    let _ = t;
    crate::common::rt().block_on(async {
        use futures::TryStreamExt;
        let root = tailor::datasource::store::StoreRoot::open(out).unwrap();
        let mut v: Vec<String> = root
            .store
            .list(Some(&root.prefix))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        v.sort();
        v
    })
}

/// A staging disk that fills up, and a spill directory that does: the run
/// fails with 74 and says which file could not be written, and nothing is
/// committed. (`ulimit -f` caps the size of every file the process writes;
/// the shell ignores SIGXFSZ so that the write fails instead.)
#[test]
fn a_full_staging_disk_or_spill_directory_fails_with_74_naming_it() {
    let t = tree(73, "1536KiB");
    let stage = t.dir.join("stage");
    let out = t.dir.join("out-full");
    let run_capped = |extra: &str| -> Output {
        let cmd = format!(
            "trap '' XFSZ; ulimit -f 64; exec {} run --input {} --output {} --shard org-mod-0 \
             --shard-map {} --target-partitions 2 {extra}",
            bin(),
            p(&t.input),
            p(&out),
            p(&t.map)
        );
        Command::new("bash").args(["-c", &cmd]).output().unwrap()
    };
    let o = run_capped(&format!("--stage-dir {}", p(&stage)));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(74), "{err}");
    assert!(
        err.contains(&format!(
            "writing staged file {}/tailor-stage-",
            stage.display()
        )) && err.contains("File too large"),
        "{err}"
    );
    assert!(manifest_of(&out).is_none(), "nothing committed");

    let spill = t.dir.join("spill");
    // A limit that leaves no room: every payload is spooled (compressed)
    // under the spill directory, past the 32 KiB a file may grow to.
    let o = run_capped(&format!(
        "--spill-dir {} --memory-limit 70MiB --max-file-bytes 32KiB",
        p(&spill)
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(74), "{err}");
    assert!(
        err.contains(&format!("spool file {}/tailor-spill-", spill.display()))
            && err.contains("File too large"),
        "{err}"
    );
    assert!(manifest_of(&out).is_none(), "nothing committed");
}

/// A `--stage-dir` or `--spill-dir` that does not exist is created; one
/// that cannot be is a usage error naming it.
#[test]
fn missing_scratch_directories_are_created_or_refused_by_name() {
    let t = tree(74, "256KiB");
    let stage = t.dir.join("new/stage/dir");
    let spill = t.dir.join("new/spill/dir");
    let out = t.dir.join("out");
    let o = t.run(
        p(&out),
        &["--stage-dir", p(&stage), "--spill-dir", p(&spill)],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stage.is_dir() && spill.is_dir());
    let file = t.dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for flag in ["--stage-dir", "--spill-dir"] {
        let bad = file.join("sub");
        let o = t.run(p(&out), &[flag, p(&bad)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(64), "{err}");
        assert!(
            err.contains(&format!(
                "{flag} {} does not exist and cannot be created",
                bad.display()
            )),
            "{err}"
        );
    }
}
