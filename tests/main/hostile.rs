//! Bad inputs beyond payload files: object keys that are not valid object
//! paths (`..`, bytes that are not UTF-8) or merely unusual (spaces,
//! percent signs, non-ASCII), and job files, shard maps and manifests that
//! are huge, truncated or hostile. Each gets a clear error naming the file
//! or prefix, with the right exit code; nothing is read or written outside
//! the shard prefix and the output root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{files_under, tempdir};

fn tailor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tailor"))
        .args(args)
        .output()
        .unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A tree where every org is in shard `org-mod-0`, and its shard map.
fn tree(dir: &Path) -> (PathBuf, PathBuf) {
    let map = dir.join("map1.toml");
    std::fs::write(&map, "modulus = 1\ndedicated = []\n").unwrap();
    let input = dir.join("in");
    let o = tailor(&[
        "generate",
        "--output",
        p(&input),
        "--size",
        "256KiB",
        "--orgs",
        "10",
        "--hours",
        "1",
        "--shard-map",
        p(&map),
    ]);
    assert!(o.status.success(), "{}", err(&o));
    (input, map)
}

fn hour_dir(input: &Path) -> PathBuf {
    input.join("org-mod-0/dt=2026-11-21/hour=00")
}

#[test]
fn unusual_keys_are_read_and_invalid_ones_are_refused_by_name() {
    let tmp = tempdir();
    let (input, map) = tree(tmp.path());
    let hour = hour_dir(&input);
    let some = files_under(&hour)
        .into_iter()
        .find(|f| f.extension().is_some_and(|x| x == "tsp") && f.metadata().unwrap().len() > 0)
        .unwrap();
    let run = |out: &Path| {
        tailor(&[
            "run",
            "--input",
            p(&input),
            "--output",
            p(out),
            "--shard",
            "org-mod-0",
            "--shard-map",
            p(&map),
            "--report",
            p(&out.with_extension("json")),
        ])
    };
    // Unusual but valid names are payload files like any other.
    for name in ["sp ace+ü.tsp", "a%2Fb%25.tsp", "x&y=z?.tsp"] {
        std::fs::copy(&some, hour.join(name)).unwrap();
    }
    let out = tmp.path().join("out");
    let o = run(&out);
    assert!(o.status.success(), "{}", err(&o));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
    let keys: Vec<&str> = r["input"]["object_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    for name in ["sp ace+ü.tsp", "a%2Fb%25.tsp", "x&y=z?.tsp"] {
        assert!(
            keys.iter().any(|k| k.ends_with(name)),
            "{name} read: {keys:?}"
        );
    }
    // Everything written is under the output root.
    assert!(files_under(&out).iter().all(|f| f.starts_with(&out)));

    // A name that is not UTF-8 cannot be an object path: the shard cannot
    // be listed, a data error (65) naming the prefix; nothing committed.
    use std::os::unix::ffi::OsStrExt;
    let bad = hour.join(std::ffi::OsStr::from_bytes(b"\xff\xfe.tsp"));
    std::fs::copy(&some, &bad).unwrap();
    let out2 = tmp.path().join("out2");
    let o = run(&out2);
    assert_eq!(o.status.code(), Some(65), "{}", err(&o));
    assert!(
        err(&o).contains(&format!(
            "LIST {}/org-mod-0/ (an object under it has a key that is not a valid object path",
            input.display()
        )) && err(&o).contains("non-unicode"),
        "{}",
        err(&o)
    );
    assert!(!out2.join("org-mod-0").exists(), "nothing committed");
}

/// On S3 a key can hold `..`: object_store refuses it as a path, so the
/// shard is refused (65) with the key named; nothing outside the prefix is
/// read (the key would point there).
#[test]
fn an_s3_key_with_dot_dot_is_refused_by_name() {
    let Some(s3) = crate::stores::s3_base() else {
        return;
    };
    let endpoint = std::env::var("AWS_ENDPOINT").unwrap();
    let bucket = s3.trim_start_matches("s3://");
    let unique = format!(
        "hostile-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let key = format!("{unique}/in/org-mod-0/dt=2026-11-21/hour=00/../../../escape.tsp");
    let o = Command::new("curl")
        .args(["-sf", "--path-as-is", "-X", "PUT", "--data-binary", "abc"])
        .args(["-H", "Content-Type: application/octet-stream"])
        .arg(format!("{endpoint}/{bucket}/{key}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let tmp = tempdir();
    let o = tailor(&[
        "run",
        "--input",
        &format!("{s3}/{unique}/in"),
        "--output",
        p(&tmp.path().join("out")),
        "--shard",
        "org-mod-0",
    ]);
    assert_eq!(o.status.code(), Some(65), "{}", err(&o));
    assert!(
        err(&o).contains("not a valid object path") && err(&o).contains(&key),
        "{}",
        err(&o)
    );
}

#[test]
fn huge_truncated_and_hostile_job_files_and_shard_maps_are_refused_by_name() {
    let tmp = tempdir();
    let dir = tmp.path();
    let huge = dir.join("huge.toml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(10 << 30)
        .unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.toml",
            b"input = \"in\"\nshard_map = \"".to_vec(),
            ", line 2, column 14: invalid basic string",
        ),
        (
            "deep.toml",
            format!("a = {}", "[".repeat(100_000)).into_bytes(),
            ", line 1, column",
        ),
        (
            "binary.toml",
            vec![0xff, 0xfe, 0x00, 0x12],
            "stream did not contain valid UTF-8",
        ),
        (
            "unknown.toml",
            b"input = \"in\"\nmemory_limt = \"1GiB\"\n".to_vec(),
            ": unknown field `",
        ),
    ];
    for (name, bytes, says) in &cases {
        let f = dir.join(name);
        std::fs::write(&f, bytes).unwrap();
        for args in [
            vec!["run", "--job", p(&f)],
            vec![
                "run",
                "--input",
                "in",
                "--output",
                "out",
                "--shard",
                "org-mod-1",
                "--shard-map",
                p(&f),
            ],
        ] {
            let o = tailor(&args);
            assert_eq!(o.status.code(), Some(64), "{name}: {}", err(&o));
            let e = err(&o);
            assert!(
                e.contains(&format!("{}", f.display())) && e.contains(says),
                "{name}: {e}"
            );
            assert!(
                e.len() < 2000,
                "{name}: a short error, not the file: {} bytes",
                e.len()
            );
        }
    }
    for (args, what) in [
        (vec!["run", "--job", p(&huge)], "job file"),
        (
            vec![
                "run",
                "--input",
                "in",
                "--output",
                "out",
                "--shard",
                "org-mod-1",
                "--shard-map",
                p(&huge),
            ],
            "shard map",
        ),
    ] {
        let o = tailor(&args);
        assert_eq!(o.status.code(), Some(64), "{}", err(&o));
        assert!(
            err(&o).contains(&format!(
                "reading {what} {}: 10737418240 bytes, over the",
                huge.display()
            )),
            "{}",
            err(&o)
        );
    }
}

#[test]
fn huge_truncated_and_hostile_manifests_are_refused_by_name() {
    let tmp = tempdir();
    let (input, map) = tree(tmp.path());
    let out = tmp.path().join("out");
    let o = tailor(&[
        "run",
        "--input",
        p(&input),
        "--output",
        p(&out),
        "--shard",
        "org-mod-0",
        "--shard-map",
        p(&map),
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let manifest = files_under(&out)
        .into_iter()
        .find(|f| f.ends_with("_manifest.json"))
        .unwrap();
    let good = std::fs::read(&manifest).unwrap();
    let export = || {
        tailor(&[
            "export",
            "--output",
            p(&out),
            "--shard",
            "org-mod-0",
            "--format",
            "csv",
            "--out",
            p(&tmp.path().join("x.csv")),
        ])
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "is not valid: EOF while parsing",
        ),
        (
            "nested",
            format!("{{\"a\":{}", "[".repeat(100_000)).into_bytes(),
            "is not valid: EOF while parsing a list",
        ),
        ("binary", vec![0xff; 64], "is not valid"),
        (
            "a number",
            b"12".to_vec(),
            "is not valid: invalid type: integer",
        ),
    ];
    for (name, bytes, says) in cases {
        std::fs::write(&manifest, &bytes).unwrap();
        let o = export();
        assert_eq!(o.status.code(), Some(65), "{name}: {}", err(&o));
        let e = err(&o);
        assert!(
            e.contains("_manifest.json") && e.contains(says),
            "{name}: {e}"
        );
        assert!(e.len() < 2000, "{name}: {} bytes of error", e.len());
        // A run of the window replaces what it cannot read as a manifest,
        // saying so, rather than failing forever.
        let o = tailor(&[
            "run",
            "--input",
            p(&input),
            "--output",
            p(&out),
            "--shard",
            "org-mod-0",
            "--shard-map",
            p(&map),
            "--json",
        ]);
        assert!(o.status.success(), "{name}: {}", err(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            r["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w.as_str().unwrap().contains("does not parse")),
            "{name}: {r}"
        );
        assert_eq!(
            std::fs::read(&manifest).unwrap(),
            good,
            "{name}: recommitted"
        );
    }
    // Bigger than any manifest: refused before it is read.
    std::fs::File::create(&manifest)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let o = export();
    assert_eq!(o.status.code(), Some(65), "{}", err(&o));
    assert!(
        err(&o).contains("over the 268435456-byte limit of a manifest"),
        "{}",
        err(&o)
    );
}
