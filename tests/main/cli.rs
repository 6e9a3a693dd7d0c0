//! The `tailor` binary as a scheduler and an engineer use it: job files
//! from another working directory, reports of failed runs, flag overrides,
//! and `diff`'s exit codes (0 identical, 1 different, 2 error).

use std::path::Path;
use std::process::{Command, Output};

use crate::common::tempdir;

fn tailor(cwd: &Path, args: &[&str]) -> Output {
    tailor_env(cwd, &[], args)
}

fn tailor_env(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tailor"))
        .current_dir(cwd)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run tailor")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Generates a small tree where every org lives in `org-mod-0` (modulus 1).
fn generate(root: &Path, into: &Path, seed: u64) {
    std::fs::write(root.join("map1.toml"), "modulus = 1\ndedicated = []\n").unwrap();
    let o = tailor(
        root,
        &[
            "generate",
            "--output",
            p(into),
            "--seed",
            &seed.to_string(),
            "--size",
            "256KiB",
            "--orgs",
            "8",
            "--hours",
            "1",
            "--partitions",
            "2",
            "--max-points",
            "64",
            "--shard-map",
            "map1.toml",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// Runs the job over `org-mod-0` of a tree [`generate`] wrote (paths
/// relative to `root`), with `extra` flags; it must succeed.
fn run_ok(root: &Path, input: &str, output: &str, extra: &[&str]) {
    let mut args = vec![
        "run",
        "--input",
        input,
        "--output",
        output,
        "--shard",
        "org-mod-0",
        "--shard-map",
        "map1.toml",
    ];
    args.extend_from_slice(extra);
    let o = tailor(root, &args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// The first file under `dir` whose name ends with `suffix`.
fn file_ending(dir: &Path, suffix: &str) -> String {
    walk(dir)
        .into_iter()
        .find(|f| f.ends_with(suffix))
        .unwrap_or_else(|| panic!("no *{suffix} under {}", dir.display()))
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn manifests(out: &Path) -> usize {
    walk(out)
        .iter()
        .filter(|f| f.ends_with("_manifest.json"))
        .count()
}

fn walk(dir: &Path) -> Vec<String> {
    crate::common::files_under(dir)
        .into_iter()
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn a_job_file_works_from_any_directory_and_failed_runs_write_their_report() {
    let tmp = tempdir();
    let root = tmp.path();
    generate(root, &root.join("in"), 1);
    // Under a 2-way map about half of these orgs are not org-mod-0's.
    std::fs::write(root.join("map2.toml"), "modulus = 2\ndedicated = []\n").unwrap();
    std::fs::create_dir(root.join("jobs")).unwrap();
    let job = root.join("jobs/job.toml");
    std::fs::write(
        &job,
        "input = \"../in\"\noutput = \"../out\"\nshard = \"org-mod-0\"\n\
         shard_map = \"../map2.toml\"\nreport = \"../reports/run.json\"\n\
         fail_on_misrouted = true\n",
    )
    .unwrap();
    let report = root.join("reports/run.json");

    // Started elsewhere, as a scheduler does: paths are the job file's.
    let o = tailor(Path::new("/"), &["run", "--job", p(&job)]);
    assert_eq!(
        code(&o),
        65,
        "misrouted payloads fail the job: {}",
        stderr(&o)
    );
    let r = read_json(&report);
    assert_eq!(r["status"], "failed");
    assert!(r["error"].as_str().unwrap().contains("misrouted"), "{r}");
    assert!(!r["misrouted"].as_array().unwrap().is_empty());
    assert!(r["wall_s"].is_number() || r.get("wall").is_some(), "{r}");
    assert_eq!(manifests(&root.join("out")), 0, "nothing committed");

    // The flag overrides the job file, both ways.
    std::fs::remove_file(&report).unwrap();
    let o = tailor(
        Path::new("/"),
        &["run", "--job", p(&job), "--fail-on-misrouted=false"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = read_json(&report);
    assert_eq!(r["status"], "committed");
    assert!(!r["misrouted"].as_array().unwrap().is_empty());
    let objects = r["input"]["object_list"].as_array().unwrap();
    assert_eq!(
        objects.len() as u64,
        r["input"]["objects"].as_u64().unwrap()
    );
    assert!(objects[0]["key"].as_str().unwrap().ends_with(".tsp"), "{r}");
    let files = r["output"]["file_list"].as_array().unwrap();
    assert_eq!(files.len() as u64, r["output"]["files"].as_u64().unwrap());
    assert!(r["output"]["points"].as_u64().unwrap() > 0, "{r}");
    assert!(files[0]["crc32c"].is_number(), "{r}");
    assert_eq!(r["warnings"].as_array().unwrap().len(), 0);
    assert_eq!(manifests(&root.join("out")), 1);

    std::fs::write(
        &job,
        std::fs::read_to_string(&job)
            .unwrap()
            .replace("true", "false"),
    )
    .unwrap();
    let o = tailor(
        Path::new("/"),
        &["run", "--job", p(&job), "--fail-on-misrouted"],
    );
    assert_eq!(code(&o), 65, "{}", stderr(&o));

    // Bad settings are usage errors, before anything runs.
    let o = tailor(root, &["run", "--job", p(&job), "--zstd-level", "40"]);
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    assert!(stderr(&o).contains("zstd-level"), "{}", stderr(&o));
    // The cluster's settings too (docs/distributed.md).
    for (flags, says) in [
        (&["--parts", "0"][..], "--parts 0"),
        (&["--parts", "5000"][..], "--parts 5000"),
        (&["--engine", "ballista"][..], "needs --scheduler"),
        (&["--scheduler", "h:1"][..], "is for --engine ballista"),
        (
            &["--engine", "ballista", "--scheduler", "nohost"][..],
            "expected host:port",
        ),
    ] {
        let mut args = vec!["run", "--job", p(&job)];
        args.extend_from_slice(flags);
        let o = tailor(root, &args);
        assert_eq!(code(&o), 64, "{flags:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{flags:?}: {}", stderr(&o));
    }
}

/// A Ballista scheduler nobody answers at: an I/O failure (74: a retry
/// may help) that names the address, and nothing committed.
#[cfg(feature = "cluster")]
#[test]
fn an_unreachable_scheduler_is_an_io_error_naming_it() {
    let tmp = tempdir();
    let root = tmp.path();
    generate(root, &root.join("in"), 2);
    // A port that was free a moment ago: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let o = tailor(
        root,
        &[
            "run",
            "--input",
            "in",
            "--output",
            "out",
            "--shard",
            "org-mod-0",
            "--shard-map",
            "map1.toml",
            "--engine",
            "ballista",
            "--scheduler",
            &addr,
        ],
    );
    assert_eq!(code(&o), 74, "{}", stderr(&o));
    assert!(stderr(&o).contains(&addr), "{}", stderr(&o));
    assert_eq!(manifests(&root.join("out")), 0, "nothing committed");
}

#[test]
fn diff_exits_0_when_identical_1_when_different_2_on_error() {
    let tmp = tempdir();
    let root = tmp.path();
    generate(root, &root.join("in"), 2);
    generate(root, &root.join("in-other"), 3);
    run_ok(root, "in", "a", &[]);
    run_ok(root, "in", "b", &[]);
    run_ok(root, "in-other", "c", &[]);
    let diff = |args: &[&str]| {
        let mut all = vec!["diff"];
        all.extend_from_slice(args);
        tailor(root, &all)
    };

    let o = diff(&["--old", "a", "--new", "b", "--report", "same.json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = read_json(&root.join("same.json"));
    assert!(r.to_string().contains("org-mod-0"), "{r}");

    let o = diff(&["--old", "a", "--new", "c"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    // With a report, every differing point goes next to it by default.
    let o = diff(&["--old", "a", "--new", "c", "--report", "ac.json"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let r = read_json(&root.join("ac.json"));
    assert_eq!(r["differing_points_file"], "ac.points.parquet", "{r}");
    let rows = parquet::file::reader::SerializedFileReader::new(
        std::fs::File::open(root.join("ac.points.parquet")).unwrap(),
    )
    .map(|f| {
        use parquet::file::reader::FileReader;
        f.metadata().file_metadata().num_rows()
    })
    .unwrap();
    assert!(rows > 0, "{rows} differing points");
    // A reader that closed stdout (`| head`) does not change the verdict.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tailor"))
        .current_dir(root)
        .args(["diff", "--old", "a", "--new", "c"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    assert_eq!(child.wait().unwrap().code(), Some(1), "closed stdout");

    // A wrong path is an error, not "every series is new".
    let o = diff(&["--old", "no-such-dir", "--new", "a"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("no committed output"), "{}", stderr(&o));

    // A shard neither side has.
    let o = diff(&["--old", "a", "--new", "b", "--shard", "org-mod-5"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("org-mod-5"), "{}", stderr(&o));

    // A window whose run never committed is an error on that side.
    let manifest = file_ending(&root.join("b"), "_manifest.json");
    std::fs::remove_file(&manifest).unwrap();
    let o = diff(&["--old", "a", "--new", "b"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("did not commit"), "{}", stderr(&o));

    // A data file that does not match its manifest: corrupt, an error.
    let data = file_ending(&root.join("a"), ".tsf");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&data, &bytes).unwrap();
    let o = diff(&["--old", "a", "--new", "c"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    // The error names the file and what is wrong with it.
    let name = std::path::Path::new(&data)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        stderr(&o).contains(name) && stderr(&o).contains("the manifest says"),
        "{}",
        stderr(&o)
    );

    // The same damage under a manifest that vouches for it (its CRC32C
    // updated): the block's own checksum catches it, and the error names
    // the data file.
    let a_manifest = file_ending(&root.join("a"), "_manifest.json");
    let mut m = read_json(Path::new(&a_manifest));
    let files = m["files"].as_array_mut().unwrap();
    let entry = files
        .iter_mut()
        .find(|f| data.ends_with(f["path"].as_str().unwrap()))
        .unwrap();
    entry["crc32c"] = crc32c::crc32c(&bytes).into();
    std::fs::write(&a_manifest, m.to_string()).unwrap();
    let o = diff(&["--old", "a", "--new", "c"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("data file {}", data.trim_start_matches('/'))),
        "{}",
        stderr(&o)
    );
}

#[test]
fn export_writes_every_committed_point_with_its_bits() {
    use datafusion::arrow::array::{AsArray, RecordBatchReader};
    use datafusion::arrow::datatypes::{Float64Type, Int64Type, UInt64Type};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let tmp = tempdir();
    let root = tmp.path();
    generate(root, &root.join("in"), 4);
    run_ok(root, "in", "out", &[]);

    // What the committed output holds, read with the library.
    let mut want = Vec::new();
    crate::common::rt().block_on(async {
        let store = tailor::datasource::store::StoreRoot::open(p(&root.join("out"))).unwrap();
        for w in tailor::job::manifest::list_windows(&store, "org-mod-0")
            .await
            .unwrap()
        {
            let m = tailor::job::manifest::read_manifest(&store, "org-mod-0", &w)
                .await
                .unwrap();
            tailor::job::output::for_each_series(&store, &m, |e, ts, vals| {
                for (&t, &v) in ts.iter().zip(vals) {
                    want.push((e.org_id, e.metric_id, t, v, e.metadata.clone()));
                }
                Ok(())
            })
            .await
            .unwrap();
        }
    });
    assert!(want.len() > 1000);
    assert!(
        want.iter().any(|w| f64::from_bits(w.3).is_nan()),
        "NaNs are part of the check"
    );

    let o = tailor(
        root,
        &[
            "export",
            "--output",
            "out",
            "--shard",
            "org-mod-0",
            "--format",
            "parquet",
            "--out",
            "points.parquet",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let reader = ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(root.join("points.parquet")).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let schema = reader.schema();
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "org_id",
            "metric_id",
            "ts",
            "value",
            "kind",
            "interval_s",
            "metadata"
        ]
    );
    let mut got = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let org = b.column(0).as_primitive::<UInt64Type>();
        let metric = b.column(1).as_primitive::<UInt64Type>();
        let ts = b.column(2).as_primitive::<Int64Type>();
        let value = b.column(3).as_primitive::<Float64Type>();
        let meta = b.column(6).as_string::<i32>();
        for i in 0..b.num_rows() {
            got.push((
                org.value(i),
                metric.value(i),
                ts.value(i),
                value.value(i).to_bits(),
                meta.value(i).to_string(),
            ));
        }
    }
    assert_eq!(got, want, "every point, bit for bit, in order");

    let o = tailor(
        root,
        &[
            "export",
            "--output",
            "out",
            "--shard",
            "org-mod-0",
            "--format",
            "csv",
            "--out",
            "points.csv",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let csv = std::fs::read_to_string(root.join("points.csv")).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().ends_with(",value_bits"));
    assert_eq!(lines.count(), want.len());

    // No committed output: an error, and no file left behind.
    let o = tailor(
        root,
        &[
            "export",
            "--output",
            "out",
            "--shard",
            "org-mod-3",
            "--out",
            "none.parquet",
        ],
    );
    assert_ne!(code(&o), 0);
    assert!(!root.join("none.parquet").exists());
}

/// Lines of stdout.
fn stdout_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn inspect_shows_a_manifest_a_data_file_and_one_series_from_either() {
    let tmp = tempdir();
    let root = tmp.path();
    generate(root, &root.join("in"), 5);
    run_ok(root, "in", "out", &["--max-file-bytes", "16KiB"]);
    let manifest = file_ending(&root.join("out"), "_manifest.json");
    let m = read_json(Path::new(&manifest));
    let files = m["files"].as_array().unwrap();
    assert!(files.len() > 1, "several data files");

    // The manifest: one line per data file, with its counts.
    let o = tailor(root, &["inspect", &manifest]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lines = stdout_lines(&o);
    assert!(lines[0].starts_with("manifest org-mod-0/"), "{lines:?}");
    assert!(
        lines[0].contains(&format!("{} series", m["series"])),
        "{lines:?}"
    );
    for f in files {
        let line = format!(
            "  {} {} bytes, {} series, {} points",
            f["path"].as_str().unwrap(),
            f["bytes"],
            f["series"],
            f["points"]
        );
        assert!(
            lines.iter().any(|l| l.starts_with(&line)),
            "{line} in {lines:?}"
        );
    }

    // The last data file: its series, with their point counts.
    let last = files.last().unwrap();
    let data = Path::new(&manifest)
        .parent()
        .unwrap()
        .join(last["path"].as_str().unwrap());
    let o = tailor(root, &["inspect", p(&data), "--limit", "100000"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lines = stdout_lines(&o);
    assert!(
        lines[0].contains(&format!(
            "{} series, {} points",
            last["series"], last["points"]
        )),
        "{lines:?}"
    );
    assert_eq!(lines.len() as u64, 1 + last["series"].as_u64().unwrap());
    // Its last series: "  ORG:METRIC kind K interval_s I points N ...".
    let words: Vec<&str> = lines.last().unwrap().split_whitespace().collect();
    let (key, n) = (words[0], words[6].parse::<usize>().unwrap());
    assert_eq!(
        key,
        format!("{}:{}", last["last_series"][0], last["last_series"][1])
    );

    // That series, from the manifest (found in the right file) and from the
    // file: the same header line and its N points.
    let from_manifest = tailor(
        root,
        &["inspect", &manifest, "--series", key, "--limit", "100000"],
    );
    let from_file = tailor(
        root,
        &["inspect", p(&data), "--series", key, "--limit", "100000"],
    );
    assert_eq!(code(&from_manifest), 0, "{}", stderr(&from_manifest));
    // After the manifest's own summary.
    let lines = stdout_lines(&from_file);
    let via_manifest = stdout_lines(&from_manifest);
    assert!(via_manifest.ends_with(&lines), "{via_manifest:?}");
    assert!(
        lines[0].starts_with(&format!("series {key} kind ")),
        "{lines:?}"
    );
    assert!(lines[0].ends_with(&format!(": {n} points")), "{lines:?}");
    assert_eq!(lines.len(), 1 + n);

    // A series no file holds is a usage error; a damaged file is a data
    // error that names the file.
    for at in [manifest.as_str(), p(&data)] {
        let o = tailor(root, &["inspect", at, "--series", "1:1"]);
        assert_eq!(code(&o), 64, "{}", stderr(&o));
        let want = format!("series 1:1 is not in {at}");
        assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    }
    let mut bytes = std::fs::read(&data).unwrap();
    // A damaged block: the footer is sound, --stats meets the block.
    let block = data.with_extension("block.tsf");
    let mut damaged = bytes.clone();
    damaged[20] ^= 1;
    std::fs::write(&block, &damaged).unwrap();
    let o = tailor(root, &["inspect", p(&block), "--stats"]);
    assert_eq!(code(&o), 65, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("data file {}: ", block.display()))
            && stderr(&o).contains("checksum mismatch"),
        "{}",
        stderr(&o)
    );
    let footer_crc_at = bytes.len() - 52 + 32;
    bytes[footer_crc_at] ^= 1;
    std::fs::write(&data, &bytes).unwrap();
    let o = tailor(root, &["inspect", p(&data)]);
    assert_eq!(code(&o), 65, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("data file {}", data.display())),
        "{}",
        stderr(&o)
    );
}

/// A manifest is the commit, but what it says must add up and match the
/// files: an edited manifest (a file listed twice or left out, a file's
/// bytes swapped for another's with size and CRC32C to match, a shard map
/// the series do not belong to, another location) or a data file gone makes
/// `export` fail (65) and `diff` fail (2), naming what is wrong, never
/// return other points.
#[test]
fn an_edited_manifest_is_an_error_never_other_points() {
    let tmp = tempdir();
    let root = tmp.path();
    generate(root, &root.join("in"), 6);
    run_ok(root, "in", "good", &["--max-file-bytes", "20KiB"]);
    let manifest_of = |out: &str| file_ending(&root.join(out), "_manifest.json");
    let good = read_json(Path::new(&manifest_of("good")));
    let n_files = good["files"].as_array().unwrap().len();
    assert!(n_files >= 3, "{n_files} files");

    type Edit = fn(&mut serde_json::Value, &Path);
    let edits: [(&str, Edit, &str); 8] = [
        (
            "listed_twice",
            |m, _| {
                let f = m["files"][0].clone();
                m["files"].as_array_mut().unwrap().push(f);
            },
            "series order",
        ),
        (
            "left_out",
            |m, _| {
                m["files"].as_array_mut().unwrap().pop();
            },
            "its files hold",
        ),
        (
            "bytes_swapped",
            |m, dir| {
                let path = |i: usize| dir.join(m["files"][i]["path"].as_str().unwrap());
                let other = std::fs::read(path(1)).unwrap();
                std::fs::write(path(0), &other).unwrap();
                m["files"][0]["bytes"] = other.len().into();
                m["files"][0]["crc32c"] = crc32c::crc32c(&other).into();
            },
            "the manifest says",
        ),
        (
            "other_shard_map",
            |m, _| m["settings"]["shard_map_modulus"] = 2.into(),
            "belongs to shard org-mod-1",
        ),
        (
            "other_location",
            |m, _| m["location"] = "org-mod-0/2026-11-21T05_2026-11-21T05".into(),
            "location",
        ),
        (
            "another_windows_manifest",
            |m, _| {
                m["window_from"] = "2026-11-21T05".into();
                m["window_to"] = "2026-11-21T05".into();
                m["location"] = "org-mod-0/2026-11-21T05_2026-11-21T05".into();
            },
            "is the manifest of org-mod-0/2026-11-21T05_2026-11-21T05, not of",
        ),
        (
            "file_missing",
            |m, dir| {
                std::fs::remove_file(dir.join(m["files"][1]["path"].as_str().unwrap())).unwrap()
            },
            "cannot be read: No such file",
        ),
        (
            "file_is_a_directory",
            |m, dir| {
                let f = dir.join(m["files"][1]["path"].as_str().unwrap());
                std::fs::remove_file(&f).unwrap();
                std::fs::create_dir(&f).unwrap();
            },
            "cannot be read: it is a directory",
        ),
    ];
    for (name, edit, says) in edits {
        let out = format!("edited-{name}");
        let o = Command::new("cp")
            .args(["-r", p(&root.join("good")), p(&root.join(&out))])
            .output()
            .unwrap();
        assert!(o.status.success());
        let manifest = manifest_of(&out);
        let mut m = read_json(Path::new(&manifest));
        edit(&mut m, Path::new(&manifest).parent().unwrap());
        std::fs::write(&manifest, m.to_string()).unwrap();

        let o = tailor(
            root,
            &[
                "export",
                "--output",
                &out,
                "--shard",
                "org-mod-0",
                "--format",
                "csv",
                "--out",
                "x.csv",
            ],
        );
        assert_eq!(code(&o), 65, "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{name}: {}", stderr(&o));
        let o = tailor(root, &["diff", "--old", "good", "--new", &out]);
        assert_eq!(code(&o), 2, "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{name}: {}", stderr(&o));
        assert!(!stderr(&o).contains("External error"), "{}", stderr(&o));
    }

    // A broken manifest in a window outside --from/--to is not read: the
    // selected windows export and diff as before.
    let good_manifest = manifest_of("good");
    let window_dir = Path::new(&good_manifest).parent().unwrap();
    let from = good["window_from"].as_str().unwrap().to_string();
    let other = window_dir.with_file_name("2026-11-22T05_2026-11-22T05");
    std::fs::create_dir(&other).unwrap();
    let mut broken = good.clone();
    broken["window_from"] = "2026-11-22T05".into();
    broken["window_to"] = "2026-11-22T05".into();
    broken["location"] = "org-mod-0/2026-11-22T05_2026-11-22T05".into();
    broken["points"] = 1.into();
    std::fs::write(other.join("_manifest.json"), broken.to_string()).unwrap();
    let bounds = ["--from", from.as_str(), "--to", from.as_str()];
    let mut args = vec![
        "export",
        "--output",
        "good",
        "--shard",
        "org-mod-0",
        "--format",
        "csv",
        "--out",
        "x.csv",
    ];
    args.extend_from_slice(&bounds);
    let o = tailor(root, &args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = tailor(root, &args[..9]);
    assert_eq!(code(&o), 65, "every window: {}", stderr(&o));
}

#[test]
fn huge_pages_on_or_off_write_the_same_bytes_and_a_bad_setting_is_a_usage_error() {
    let dir = tempdir();
    let root = dir.path();
    generate(root, &root.join("in"), 11);
    let run = |setting: &str, out: &str| {
        let args = [
            "run",
            "--input",
            "in",
            "--output",
            out,
            "--shard",
            "org-mod-0",
            "--shard-map",
            "map1.toml",
        ];
        tailor_env(root, &[("TAILOR_HUGE_PAGES", setting)], &args)
    };
    // The data files' bytes (their names carry the run).
    let data = |out: &str| -> Vec<Vec<u8>> {
        let mut files: Vec<Vec<u8>> = crate::common::files_by_path(&root.join(out))
            .into_iter()
            .filter(|(path, _)| path.ends_with(".tsf"))
            .map(|(_, bytes)| bytes)
            .collect();
        files.sort();
        files
    };
    // Decode slabs are 2 MiB: with `on` every one asks for huge pages.
    for setting in ["on", "off"] {
        let o = run(setting, setting);
        assert_eq!(code(&o), 0, "{setting}: {}", stderr(&o));
    }
    assert!(!data("on").is_empty());
    assert_eq!(data("on"), data("off"));
    let o = run("yes", "bad");
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("TAILOR_HUGE_PAGES=\"yes\": expected auto, on or off"),
        "{}",
        stderr(&o)
    );
    assert!(!root.join("bad").exists(), "nothing written");
}
