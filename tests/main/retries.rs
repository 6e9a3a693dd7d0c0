//! Transient failures of a real S3 endpoint, injected at the HTTP level by
//! `scripts/fault-proxy.py` in front of the local S3 server: 503 SlowDown,
//! connection resets and bodies cut short, on listing, ranged reads, data
//! uploads and the manifest put. object_store retries them
//! (`--store-max-retries`, `--store-retry-timeout`, `--store-backoff`) and
//! the run commits exactly what a run that met none commits; when they do
//! not stop, the run fails with 74 naming the operation and the object.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::tempdir;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tailor")
}

/// The proxy's URL and the S3 bucket's, when the servers run.
fn servers() -> Option<(String, String)> {
    let s3 = crate::stores::s3_base()?;
    let proxy = std::env::var("TAILOR_FAULT_PROXY").ok().or_else(|| {
        assert!(
            std::env::var_os("TAILOR_REQUIRE_SERVERS").is_none(),
            "TAILOR_FAULT_PROXY is not set but the servers were started"
        );
        None
    })?;
    Some((proxy, s3))
}

fn rules(proxy: &str, json: &str) {
    let o = Command::new("curl")
        .args(["-sf", "-X", "POST", "--data-binary", json])
        .arg(format!("{proxy}/__faults__/rules"))
        .output()
        .unwrap();
    assert!(o.status.success(), "adding rules: {o:?}");
}

/// Faults the proxy injected so far (all tests), and those of `key`.
fn injected(proxy: &str, key: &str) -> (u64, u64) {
    let o = Command::new("curl")
        .args(["-sf", &format!("{proxy}/__faults__/stats")])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mine = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"].as_str().unwrap_or("").contains(key))
        .map(|r| r["times"].as_u64().unwrap() - r["left"].as_u64().unwrap())
        .sum();
    (v["injected"].as_u64().unwrap(), mine)
}

fn unique(what: &str) -> String {
    format!(
        "{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn tailor(args: &[&str], endpoint: Option<&str>) -> Output {
    let mut c = Command::new(bin());
    c.args(args);
    if let Some(e) = endpoint {
        c.env("AWS_ENDPOINT", e);
    }
    c.output().unwrap()
}

fn export(out: &str, csv: &Path) -> Vec<u8> {
    let o = Command::new(bin())
        .args([
            "export",
            "--output",
            out,
            "--shard",
            "org-mod-0",
            "--format",
            "csv",
        ])
        .arg("--out")
        .arg(csv)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "export {out}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(csv).unwrap()
}

#[test]
fn transient_s3_failures_are_retried_and_the_output_is_a_clean_runs() {
    let Some((proxy, s3)) = servers() else {
        return;
    };
    let tmp = tempdir();
    let map = tmp.path().join("map1.toml");
    std::fs::write(&map, "modulus = 1\ndedicated = []\n").unwrap();
    let key = unique("retry");
    let input = format!("{s3}/{key}/in");
    let o = tailor(
        &[
            "generate",
            "--output",
            &input,
            "--size",
            "1MiB",
            "--orgs",
            "20",
            "--hours",
            "1",
            "--shard-map",
            map.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = |out: &str, endpoint: Option<&str>, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--input",
            &input,
            "--output",
            out,
            "--shard",
            "org-mod-0",
            "--shard-map",
            map.to_str().unwrap(),
            "--max-file-bytes",
            "64KiB",
            "--range-bytes",
            "128KiB",
            "--store-backoff",
            "10ms",
        ];
        args.extend_from_slice(extra);
        tailor(&args, endpoint)
    };
    // A clean run, straight to the S3 server.
    let clean = format!("{s3}/{key}/clean");
    let o = run(&clean, None, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = export(&clean, &tmp.path().join("clean.csv"));

    // Through the proxy, with faults at every kind of request.
    let out = format!("{s3}/{key}/out");
    let k = |s: &str| format!("{key}/{s}");
    rules(
        &proxy,
        &serde_json::json!([
            {"method": "GET", "path": k("in/org-mod-0"), "times": 1, "action": "503"},
            {"method": "GET", "path": k("in/org-mod-0/dt="), "times": 3, "action": "503"},
            {"method": "GET", "path": k("in/org-mod-0/dt="), "times": 2, "action": "reset"},
            {"method": "GET", "path": k("in/org-mod-0/dt="), "times": 2, "action": "short"},
            {"method": "PUT", "path": k("out/org-mod-0/"), "times": 2, "action": "503"},
            {"method": "PUT", "path": k("out/org-mod-0/"), "times": 1, "action": "reset"},
            {"method": "GET", "path": k("out/org-mod-0/"), "times": 1, "action": "503"},
        ])
        .to_string(),
    );
    let (before, _) = injected(&proxy, &key);
    let o = run(&out, Some(&proxy), &[]);
    let (after, mine) = injected(&proxy, &key);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mine, 12, "every fault was met: {}", after - before);
    crate::faults::INJECTED.fetch_add(mine as usize, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        export(&out, &tmp.path().join("out.csv")),
        want,
        "the bytes of a clean run"
    );

    // Failures that do not stop: 74 within the retry budget, naming the
    // operation and the object; nothing committed.
    let failed = format!("{s3}/{key}/failed");
    rules(
        &proxy,
        &serde_json::json!([
            {"method": "GET", "path": k("in/org-mod-0/dt="), "times": 1000, "action": "503"},
        ])
        .to_string(),
    );
    let t0 = std::time::Instant::now();
    let o = run(&failed, Some(&proxy), &["--store-max-retries", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(74), "{err}");
    assert!(t0.elapsed().as_secs() < 60, "bounded by the retry settings");
    assert!(
        err.contains("GET ") && err.contains(&k("in/org-mod-0/dt=")) && err.contains("503"),
        "{err}"
    );
    let o = Command::new(bin())
        .args([
            "export",
            "--output",
            &failed,
            "--shard",
            "org-mod-0",
            "--format",
            "csv",
        ])
        .arg("--out")
        .arg(tmp.path().join("failed.csv"))
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "nothing committed");
}
