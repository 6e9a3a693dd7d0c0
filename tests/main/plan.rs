//! `tailor plan` on local files and on the S3 server: every state (pending,
//! stale by an added, a removed and a replaced object, done, settling,
//! empty, orphaned), a window committed with other bounds, a misplaced
//! object, the JSON fields and the exit codes; and `tailor run
//! --only-if-needed` / `--plan-file`.

use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload};
use tailor::datasource::store::StoreRoot;

use crate::common::{rt, tempdir};

fn tailor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tailor"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn key(hour: &str, file: &str) -> String {
    format!("org-mod-0/dt={}/hour={}/{file}", &hour[..10], &hour[11..])
}

/// The objects of one hour (keys relative to the root).
fn objects(root: &StoreRoot, hour: &str) -> Vec<(String, u64)> {
    use futures::TryStreamExt;
    let prefix = root.child(&key(hour, ""));
    let mut v: Vec<(String, u64)> = rt()
        .block_on(root.store.list(Some(&prefix)).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|m| (root.relative(&m.location).unwrap().to_string(), m.size))
        .filter(|(k, s)| k.ends_with(".tsp") && *s > 0)
        .collect();
    v.sort();
    v
}

fn plan_json(args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["plan", "--format", "json"];
    all.extend_from_slice(args);
    let o = tailor(&all);
    let code = o.status.code().unwrap();
    assert!(
        code == 0 || code == 10,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    (code, serde_json::from_slice(&o.stdout).unwrap())
}

fn state_of<'a>(plan: &'a serde_json::Value, window: &str) -> &'a serde_json::Value {
    plan["windows"]
        .as_array()
        .unwrap()
        .iter()
        .chain(plan["other_windows"].as_array().unwrap())
        .find(|w| w["window"] == window)
        .unwrap_or_else(|| panic!("no window {window} in {plan}"))
}

fn scenario(input: &str, output: &str, dir: &Path) {
    let map = dir.join("map1.toml");
    std::fs::write(&map, "modulus = 1\ndedicated = []\n").unwrap();
    let map = map.to_str().unwrap();
    ok(&tailor(&[
        "generate",
        "--output",
        input,
        "--size",
        "1MiB",
        "--orgs",
        "12",
        "--hours",
        "5",
        "--partitions",
        "2",
        "--start-hour",
        "2026-11-21T00",
        "--shard-map",
        map,
    ]));
    let base = ["--input", input, "--output", output, "--shard-map", map];
    let run = |from: &str, to: &str, extra: &[&str]| {
        let mut a = vec!["run", "--shard", "org-mod-0", "--from", from, "--to", to];
        a.extend_from_slice(&base);
        a.extend_from_slice(extra);
        tailor(&a)
    };
    for h in ["00", "02", "03", "04"] {
        let h = format!("2026-11-21T{h}");
        ok(&run(&h, &h, &[]));
    }
    // A replay committed with other bounds.
    ok(&run("2026-11-21T00", "2026-11-21T01", &[]));
    let root = StoreRoot::open(input).unwrap();
    let put = |k: &str, bytes: Vec<u8>| {
        rt().block_on(
            root.store
                .put(&root.child(k), PutPayload::from(Bytes::from(bytes))),
        )
        .unwrap();
    };
    let get = |k: &str| -> Vec<u8> {
        rt().block_on(async { root.store.get(&root.child(k)).await?.bytes().await })
            .unwrap()
            .to_vec()
    };
    // T02: an object added after the commit.
    let t02 = objects(&root, "2026-11-21T02");
    put(
        &key("2026-11-21T02", "points+7+0000000999.tsp"),
        get(&t02[0].0),
    );
    // T03: every object removed after the commit.
    for (k, _) in objects(&root, "2026-11-21T03") {
        rt().block_on(root.store.delete(&root.child(&k))).unwrap();
    }
    // T04: an object replaced by other (valid) bytes.
    let t04 = objects(&root, "2026-11-21T04");
    put(&t04[0].0, [get(&t04[1].0), get(&t04[1].0)].concat());
    // A payload-named object outside the layout.
    put("org-mod-0/stray.tsp", b"x".to_vec());

    // Planned at T06 + 65 minutes: T06 ended 5 minutes ago.
    let args = [
        &base[..],
        &[
            "--shard",
            "org-mod-0",
            "--from",
            "2026-11-21T00",
            "--to",
            "2026-11-21T06",
        ],
        &["--now", "2026-11-21T07:05:00Z", "--settle", "10m"],
    ]
    .concat();
    let (code, p) = plan_json(&args);
    assert_eq!(code, 10, "something to run");
    assert_eq!(p["format"], "tailor-plan");
    assert_eq!(p["version"], 1);
    let want = [
        ("2026-11-21T00_2026-11-21T00", "done"),
        ("2026-11-21T01_2026-11-21T01", "pending"),
        ("2026-11-21T02_2026-11-21T02", "stale"),
        ("2026-11-21T03_2026-11-21T03", "orphaned"),
        ("2026-11-21T04_2026-11-21T04", "stale"),
        ("2026-11-21T05_2026-11-21T05", "empty"),
        ("2026-11-21T06_2026-11-21T06", "settling"),
        ("2026-11-21T00_2026-11-21T01", "done"),
    ];
    for (w, s) in want {
        assert_eq!(state_of(&p, w)["state"], s, "{w}: {}", state_of(&p, w));
    }
    let c = &state_of(&p, "2026-11-21T02_2026-11-21T02")["changes"];
    assert_eq!(
        (
            c["added"].as_u64(),
            c["removed"].as_u64(),
            c["changed"].as_u64()
        ),
        (Some(1), Some(0), Some(0))
    );
    assert_eq!(c["added_bytes"].as_u64(), Some(t02[0].1));
    let c = &state_of(&p, "2026-11-21T04_2026-11-21T04")["changes"];
    assert_eq!(
        (
            c["added"].as_u64(),
            c["removed"].as_u64(),
            c["changed"].as_u64()
        ),
        (Some(0), Some(0), Some(1))
    );
    assert!(
        state_of(&p, "2026-11-21T03_2026-11-21T03")["changes"]["removed"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(p["summary"]["pending"], 1);
    assert_eq!(p["summary"]["stale"], 2);
    assert_eq!(
        state_of(&p, "2026-11-21T01_2026-11-21T01")["run_args"],
        serde_json::json!([
            "--shard",
            "org-mod-0",
            "--from",
            "2026-11-21T01",
            "--to",
            "2026-11-21T01"
        ])
    );
    let misplaced = p["misplaced"].as_array().unwrap();
    assert!(
        misplaced.len() == 1
            && misplaced[0]["key"]
                .as_str()
                .unwrap()
                .ends_with("org-mod-0/stray.tsp"),
        "{misplaced:?}"
    );
    // Without --now the hours are long past: T06 is plain empty.
    let (_, p2) = plan_json(
        &[
            &base[..],
            &[
                "--shard",
                "org-mod-0",
                "--from",
                "2026-11-21T05",
                "--to",
                "2026-11-21T06",
            ],
        ]
        .concat(),
    );
    assert_eq!(
        state_of(&p2, "2026-11-21T06_2026-11-21T06")["state"],
        "empty"
    );

    // --only-if-needed: a done window is skipped at the cost of a listing.
    let o = run(
        "2026-11-21T00",
        "2026-11-21T00",
        &["--only-if-needed", "--json"],
    );
    ok(&o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["status"], "up-to-date", "{r}");
    // The windows to run, from the plan's file, as a Kubernetes index picks them.
    let plan_file = dir.join("plan.json");
    let mut a = vec!["plan", "--out", plan_file.to_str().unwrap()];
    a.extend_from_slice(&args);
    let o = tailor(&a);
    assert_eq!(o.status.code(), Some(10));
    for i in 0..3 {
        let mut a = vec![
            "run",
            "--only-if-needed",
            "--plan-file",
            plan_file.to_str().unwrap(),
        ];
        let index = i.to_string();
        a.extend_from_slice(&["--plan-index", &index]);
        a.extend_from_slice(&base);
        ok(&tailor(&a));
    }
    let mut a = vec![
        "run",
        "--plan-file",
        plan_file.to_str().unwrap(),
        "--plan-index",
        "3",
    ];
    a.extend_from_slice(&base);
    let o = tailor(&a);
    assert_eq!(
        o.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("but the plan has 3 windows to run"));
    // Nothing left to run: exit 0.
    let (code, p) = plan_json(&args);
    assert_eq!(
        code,
        0,
        "{}",
        serde_json::to_string_pretty(&p["summary"]).unwrap()
    );
    for w in [
        "2026-11-21T01_2026-11-21T01",
        "2026-11-21T02_2026-11-21T02",
        "2026-11-21T04_2026-11-21T04",
    ] {
        assert_eq!(state_of(&p, w)["state"], "done", "{w}");
    }
    // The replay saw the added object of T02? No: it covers T00-T01 only.
    assert_eq!(state_of(&p, "2026-11-21T00_2026-11-21T01")["state"], "done");
}

#[test]
fn plan_tells_every_state_on_local_files() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let output = tmp.path().join("out");
    scenario(
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        tmp.path(),
    );
}

#[test]
fn plan_tells_every_state_on_the_s3_server() {
    let Some(s3) = crate::stores::s3_base() else {
        return;
    };
    let tmp = tempdir();
    let unique = format!(
        "plan-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    scenario(
        &format!("{s3}/{unique}/in"),
        &format!("{s3}/{unique}/out"),
        tmp.path(),
    );
}

/// 64 shards x 24 hours against the S3 server: one LIST per shard prefix
/// and one GET per manifest, concurrently; the time is printed for the
/// record (`cargo test plan_of_64_shards -- --nocapture`).
#[test]
fn plan_of_64_shards_and_24_hours_on_the_s3_server() {
    let Some(s3) = crate::stores::s3_base() else {
        return;
    };
    let unique = format!(
        "plan64-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let (input, output) = (format!("{s3}/{unique}/in"), format!("{s3}/{unique}/out"));
    let tmp = tempdir();
    let map = tmp.path().join("map64.toml");
    std::fs::write(&map, "modulus = 64\ndedicated = []\n").unwrap();
    let map = map.to_str().unwrap();
    ok(&tailor(&[
        "generate",
        "--output",
        &input,
        "--size",
        "24MiB",
        "--orgs",
        "256",
        "--hours",
        "24",
        "--partitions",
        "1",
        "--start-hour",
        "2026-11-21T00",
        "--shard-map",
        map,
    ]));
    // A commit for every window of 8 shards (their manifests are read).
    for s in 0..8 {
        let shard = format!("org-mod-{s}");
        for h in 0..24 {
            let hour = format!("2026-11-21T{h:02}");
            let o = tailor(&[
                "run",
                "--input",
                &input,
                "--output",
                &output,
                "--shard",
                &shard,
                "--from",
                &hour,
                "--to",
                &hour,
                "--shard-map",
                map,
            ]);
            ok(&o);
        }
    }
    let t0 = std::time::Instant::now();
    let (code, p) = plan_json(&[
        "--input",
        &input,
        "--output",
        &output,
        "--shard-map",
        map,
        "--from",
        "2026-11-21T00",
        "--to",
        "2026-11-21T23",
    ]);
    let took = t0.elapsed();
    assert_eq!(code, 10);
    assert_eq!(p["windows"].as_array().unwrap().len(), 64 * 24);
    assert_eq!(p["summary"]["done"], 8 * 24);
    eprintln!(
        "plan of 64 shards x 24 hours ({} committed windows) on the S3 server: {:.2} s",
        8 * 24,
        took.as_secs_f64()
    );
}
