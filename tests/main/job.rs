//! The shard job end to end: exported output against a simple reference
//! (a BTreeMap keyed by (org, metric, ts), fed in input order), the
//! determinism matrix, commit / kill / rerun, spilling under a small memory
//! limit, misrouted and corrupt input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tailor::datasource::store::StoreRoot;
use tailor::format::payload::{Decoder, check_body, parse_frame_prefix, parse_payload};
use tailor::format::shard::Shard;
use tailor::job::config::RunConfig;
use tailor::job::generate::{GenerateOptions, GenerateSummary, generate};
use tailor::job::merge::MergeCounts;

use crate::common::{files_under, read_series, rt, run_job, shard_map, tempdir};

/// Series content: (kind, interval_s, metadata) and points ts -> value bits.
type Content = BTreeMap<(u64, u64), ((u8, u32, String), BTreeMap<i64, u64>)>;

fn generate_tree(root: &Path, seed: u64, size: u64) -> GenerateSummary {
    let r = rt();
    r.block_on(async {
        let root = StoreRoot::open(root.to_str().unwrap()).unwrap();
        let opts = GenerateOptions {
            seed,
            target_bytes: size,
            orgs: 40,
            hours: 2,
            partitions: 3,
            dup_rate: 0.05,
            conflict_rate: 0.05,
            misroute_rate: 0.01,
            max_points: 300,
            ..Default::default()
        };
        generate(&root, &shard_map(), &opts).await.unwrap()
    })
}

/// The spec, applied the simple way: every frame of every file of the shard
/// in input order, last write wins per (org, metric, ts), misrouted skipped.
/// Also what merging should count, and how many of the dropped points that
/// conflict with their winner came from another object than it.
fn reference(input: &Path, shard: &str) -> (Content, MergeCounts, u64) {
    let map = shard_map();
    let want = Shard::parse(shard).unwrap();
    let mut files = tsp_files(&input.join(shard));
    // Input order: object key bytes (the relative paths sort like the keys).
    files.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    let mut out: Content = BTreeMap::new();
    // Every point of a (org, metric, ts), in input order: (file, bits).
    let mut all: BTreeMap<(u64, u64, i64), Vec<(usize, u64)>> = BTreeMap::new();
    let mut dec = Decoder::new();
    for (fi, f) in files.into_iter().enumerate() {
        let bytes = std::fs::read(&f).unwrap();
        let mut pos = 0usize;
        while pos < bytes.len() {
            let len = parse_frame_prefix(&bytes[pos..], pos as u64, (bytes.len() - pos) as u64)
                .unwrap() as usize;
            let body = &bytes[pos + 4..pos + 4 + len];
            let info = check_body(body, 0).unwrap();
            let mut buf = vec![0u64; info.content_size.div_ceil(8)];
            let b = unsafe {
                std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, info.content_size)
            };
            dec.decompress_into(body, info, b, 0).unwrap();
            let p = parse_payload(b, 0).unwrap();
            let h = p.header;
            if map.shard_of(h.org_id) == want {
                let e = out.entry((h.org_id, h.metric_id)).or_default();
                e.0 = (h.kind as u8, h.interval_s, p.metadata.to_string());
                for (t, v) in p.timestamps.iter().zip(p.values) {
                    e.1.insert(*t, *v);
                    all.entry((h.org_id, h.metric_id, *t))
                        .or_default()
                        .push((fi, *v));
                }
            }
            pos += 4 + len;
        }
    }
    let mut counts = MergeCounts::default();
    let mut cross_file_conflicts = 0;
    for points in all.values() {
        let (winner_file, winner) = points[points.len() - 1];
        counts.input_points += points.len() as u64;
        for &(file, bits) in &points[..points.len() - 1] {
            counts.duplicates_dropped += 1;
            counts.conflicting_duplicates += (bits != winner) as u64;
            cross_file_conflicts += (bits != winner && file != winner_file) as u64;
        }
    }
    (out, counts, cross_file_conflicts)
}

/// The committed output of one shard (every window), read back.
fn committed(output: &Path, shard: &str) -> Content {
    let root = StoreRoot::open(output.to_str().unwrap()).unwrap();
    let mut out: Content = BTreeMap::new();
    for s in rt().block_on(read_series(&root, shard)) {
        assert!(
            s.ts.windows(2).all(|w| w[0] < w[1]),
            "timestamps strictly increasing"
        );
        let prev = out.insert(
            (s.org, s.metric),
            (
                (s.kind, s.interval, s.meta),
                s.ts.into_iter().zip(s.vals).collect(),
            ),
        );
        assert!(prev.is_none(), "a series appears once");
    }
    out
}

fn cfg(input: &Path, output: &Path, shard: &str) -> RunConfig {
    let mut c = RunConfig::new(input.to_str().unwrap(), output.to_str().unwrap(), shard);
    c.shard_map = shard_map();
    c.target_partitions = 2;
    c
}

fn run(c: &RunConfig) -> Result<tailor::job::run::RunStats, tailor::job::JobError> {
    run_job(c)
}

/// The payload files under a directory, sorted by path.
fn tsp_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "tsp"))
        .collect()
}

/// The data files and manifests under an output root, by relative path.
fn tree_bytes(root: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(root)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&p).unwrap();
            (rel, bytes)
        })
        .collect()
}

/// A generated tree under `<tmp>/in`, and its first shard.
fn generated(seed: u64, size: u64) -> (tempfile::TempDir, PathBuf, String) {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    generate_tree(&input, seed, size);
    let shard = shards_of(&input)[0].clone();
    (tmp, input, shard)
}

fn shards_of(input: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(input)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn output_matches_the_reference_on_adversarial_input() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let output = tmp.path().join("out");
    let s = generate_tree(&input, 7, 3 << 20);
    assert!(s.verbatim_duplicates > 0 && s.conflicting_duplicates > 0 && s.misrouted > 0);
    let mut checked = 0;
    let (mut evolving, mut corrected, mut nans, mut cross_file) = (0, 0, 0, 0);
    for shard in shards_of(&input).iter().take(6) {
        let report = run(&cfg(&input, &output, shard)).unwrap();
        let (want, counts, cross) = reference(&input, shard);
        assert_eq!(
            report.merge, counts,
            "{shard}: points in, duplicates dropped, conflicts"
        );
        let phases: Vec<&str> = report.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            phases,
            ["list", "scan+decode", "group", "encode", "write", "commit"]
        );
        cross_file += cross;
        let got = committed(&output, shard);
        assert_eq!(got.len(), want.len(), "{shard}: series");
        for (k, v) in &want {
            let g = got
                .get(k)
                .unwrap_or_else(|| panic!("{shard}: series {k:?} missing"));
            assert_eq!(
                g.0, v.0,
                "{shard} {k:?}: kind/interval/metadata of the last payload"
            );
            assert_eq!(g.1, v.1, "{shard} {k:?}: points, bit for bit");
            evolving += v.0.2.contains(",rev:") as usize;
            corrected += (v.0.2.contains("corrected") || v.0.2.contains("resent:")) as usize;
            nans +=
                v.1.values()
                    .filter(|b| f64::from_bits(**b).is_nan())
                    .count();
        }
        let points: usize = want.values().map(|v| v.1.len()).sum();
        assert_eq!(report.output.points as usize, points);
        checked += points;
    }
    assert!(checked > 10_000, "checked {checked} points");
    // The cases "last payload wins" is about are really there: metadata
    // that changes between files, corrected resends, NaN values, and
    // conflicting points whose winner is in another object.
    assert!(
        evolving > 10 && corrected > 0 && nans > 0 && cross_file > 100,
        "{evolving} series with changing metadata, {corrected} corrected, {nans} NaNs, \
         {cross_file} conflicts across objects"
    );
}

/// A named change to the job's settings.
type Variant = (String, Box<dyn Fn(&mut RunConfig)>);

/// Runs the job over `shard` once per variant of its settings (`name`,
/// change), each into its own output root under `dir`; asserts that every
/// output spans several data files and all are byte-identical. Returns the
/// output roots.
fn same_bytes_for(
    dir: &Path,
    input: &Path,
    shard: &str,
    max_file_bytes: u64,
    variants: Vec<Variant>,
) -> Vec<PathBuf> {
    let mut first: Option<BTreeMap<String, Vec<u8>>> = None;
    let mut outs = Vec::new();
    for (name, change) in variants {
        let out = dir.join(format!("out-{name}"));
        let mut c = cfg(input, &out, shard);
        c.max_file_bytes = max_file_bytes;
        change(&mut c);
        run(&c).unwrap();
        let t = tree_bytes(&out);
        let files = t.keys().filter(|k| k.ends_with(".tsf")).count();
        assert!(files > 1, "{name}: {files} data files");
        match &first {
            None => first = Some(t),
            Some(f) => assert!(f == &t, "{name}: output differs"),
        }
        outs.push(out);
    }
    outs
}

#[test]
fn output_bytes_do_not_depend_on_partitions_or_range_size() {
    let (tmp, input, shard) = generated(11, 2 << 20);
    let variants = [
        (1, 1u64 << 30),
        (2, 1 << 30),
        (8, 1 << 30),
        (2, 65_536),
        (8, 4096),
        (1, 777),
    ]
    .into_iter()
    .map(|(parts, range)| {
        let change: Box<dyn Fn(&mut RunConfig)> = Box::new(move |c| {
            c.target_partitions = parts;
            c.range_bytes = range;
        });
        (format!("partitions {parts}, range {range}"), change)
    })
    .collect();
    same_bytes_for(tmp.path(), &input, &shard, 64 << 10, variants);
}

/// Staged files reach a local output by a rename when the staging directory
/// is on the output's filesystem and by a copy when it is not (`/dev/shm`,
/// a tmpfs, where the machine has one): the same bytes either way, and
/// files any reader of the output may open.
#[test]
fn staged_files_reach_a_local_output_by_rename_or_copy_with_the_same_bytes() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (tmp, input, shard) = generated(12, 2 << 20);
    let mut stages = vec![tmp.path().join("stage")];
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && std::fs::metadata(shm).unwrap().dev() != std::fs::metadata(tmp.path()).unwrap().dev()
    {
        stages.push(shm.to_path_buf());
    }
    let variants = stages
        .into_iter()
        .map(|stage| {
            std::fs::create_dir_all(&stage).unwrap();
            let name = format!("staged in {}", stage.display()).replace('/', "_");
            let change: Box<dyn Fn(&mut RunConfig)> =
                Box::new(move |c| c.stage_dir = Some(stage.clone()));
            (name, change)
        })
        .collect();
    for out in same_bytes_for(tmp.path(), &input, &shard, 16 << 10, variants) {
        for k in tree_bytes(&out).keys() {
            let mode = std::fs::metadata(out.join(k)).unwrap().permissions().mode();
            assert_eq!(mode & 0o444, 0o444 & !umask(), "{k}: mode {mode:o}");
        }
    }
}

/// The process's file-creation mask.
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

#[test]
fn corrupt_input_skipped_gives_the_same_bytes_and_list_at_every_split() {
    let (tmp, input, shard) = generated(13, 2 << 20);
    // Damage two files: a flipped byte inside a frame, and a cut tail.
    let files: Vec<PathBuf> = tsp_files(&input.join(&shard))
        .into_iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() > 20_000)
        .collect();
    assert!(files.len() >= 3);
    // The flipped byte is the zstd magic of the frame in the middle: a byte
    // flipped inside compressed data can decode to other valid points (the
    // spec has no checksum), so it would not be corruption the job can see.
    let mut a = std::fs::read(&files[0]).unwrap();
    let mut at = 0;
    while at < a.len() / 2 {
        at += 4 + u32::from_le_bytes(a[at..at + 4].try_into().unwrap()) as usize;
    }
    a[at + 4] ^= 0x55;
    std::fs::write(&files[0], &a).unwrap();
    let b = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &b[..b.len() - 5]).unwrap();
    // And a frame whose body is corrupt but ends with a well-formed frame
    // (its own original) that chains to the next: a range starting inside
    // the body would take that inner frame, which a read of the chain never
    // does; the skip policy reads objects whole, so the output is the same
    // at every range size.
    let c = std::fs::read(&files[2]).unwrap();
    let len_at = |o: usize| 4 + u32::from_le_bytes(c[o..o + 4].try_into().unwrap()) as usize;
    let (f0, f1) = (len_at(0), len_at(len_at(0)));
    let damaged = [
        &c[..f0],
        &crate::common::hidden_in_corrupt_body(&c[4..f0], 5000, &c[f0..f0 + f1]),
        &c[f0 + f1..],
    ]
    .concat();
    std::fs::write(&files[2], &damaged).unwrap();

    /// Output file bytes by name, the corrupt list, and the skipped count.
    type RunResult = (BTreeMap<String, Vec<u8>>, Vec<String>, u64);
    let mut first: Option<RunResult> = None;
    for (parts, range) in [
        (1, 1u64 << 30),
        (2, 1 << 30),
        (8, 65_536),
        (2, 4096),
        (1, 777),
    ] {
        let out = tmp.path().join(format!("out-{parts}-{range}"));
        let mut c = cfg(&input, &out, &shard);
        c.target_partitions = parts;
        c.range_bytes = range;
        c.on_corrupt = tailor::datasource::options::CorruptPolicy::Skip;
        let r = run(&c).unwrap();
        let corrupt: Vec<String> = r
            .corrupt
            .iter()
            .map(|c| {
                let s = c.skipped_bytes;
                format!("{} @ {}: {} ({s} bytes)", c.key, c.offset, c.reason)
            })
            .collect();
        assert!(corrupt.len() >= 3, "{corrupt:?}");
        // Under the skip policy every object is read whole, once: no pass
        // is discarded, whatever the range size.
        assert!(r.warnings.is_empty(), "range {range}: {:?}", r.warnings);
        assert_eq!(r.scan.bytes_fetched, r.input.bytes, "range {range}");
        let got = (tree_bytes(&out), corrupt, r.scan.corrupt_frames);
        match &first {
            None => first = Some(got),
            Some(f) => {
                assert_eq!(
                    f.1, got.1,
                    "partitions {parts}, range {range}: corrupt list"
                );
                assert_eq!(
                    f.2, got.2,
                    "partitions {parts}, range {range}: corrupt count"
                );
                assert!(
                    f.0 == got.0,
                    "partitions {parts}, range {range}: output differs"
                );
            }
        }
    }
}

#[test]
fn a_job_stopped_before_its_manifest_leaves_the_previous_commit() {
    let (tmp, input, shard) = generated(5, 1 << 20);
    let output = tmp.path().join("out");
    let c = cfg(&input, &output, &shard);
    run(&c).unwrap();
    let before = tree_bytes(&output);
    let content = committed(&output, &shard);
    // New input arrives; the rerun is stopped before its commit.
    let extra = generate_tree(&tmp.path().join("more"), 6, 256 << 10);
    assert!(extra.files > 0);
    let src = tmp.path().join("more").join(&shard);
    if src.exists() {
        copy_dir(&src, &input.join(&shard), "x");
    }
    let mut failing = c.clone();
    failing.fail_before_commit = true;
    let e = run(&failing).unwrap_err();
    assert!(
        matches!(&e, tailor::job::JobError::Internal(m) if m.starts_with("--fail-before-commit")),
        "{e}"
    );
    assert_eq!(
        committed(&output, &shard),
        content,
        "readers still see the previous commit"
    );
    let manifests: Vec<_> = before
        .keys()
        .filter(|k| k.ends_with("_manifest.json"))
        .collect();
    for m in manifests {
        assert_eq!(tree_bytes(&output)[m], before[m], "manifest untouched");
    }
    // The rerun commits and cleans up the orphaned files.
    run(&c).unwrap();
    let after = tree_bytes(&output);
    let runs: std::collections::BTreeSet<&str> = after
        .keys()
        .filter(|k| k.contains("/data/"))
        .map(|k| k.split("/data/").nth(1).unwrap().split('/').next().unwrap())
        .collect();
    assert_eq!(
        runs.len(),
        1,
        "only the committed run's files remain: {runs:?}"
    );
    // Same input again: byte-identical output.
    run(&c).unwrap();
    assert_eq!(tree_bytes(&output), after);
}

fn copy_dir(from: &Path, to: &Path, suffix: &str) {
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            std::fs::create_dir_all(to.join(&name)).unwrap();
            copy_dir(&p, &to.join(&name), suffix);
        } else {
            std::fs::copy(&p, to.join(format!("{suffix}{name}"))).unwrap();
        }
    }
}

#[test]
fn a_memory_limit_far_below_the_input_spills_and_gives_the_same_bytes() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    generate_tree(&input, 13, 48 << 20);
    // The biggest shard.
    let shard = shards_of(&input)
        .into_iter()
        .max_by_key(|s| dir_size(&input.join(s)))
        .unwrap();
    let size = dir_size(&input.join(&shard));
    let free = tmp.path().join("free");
    run(&cfg(&input, &free, &shard)).unwrap();
    let tight = tmp.path().join("tight");
    let mut c = cfg(&input, &tight, &shard);
    c.memory_limit = Some(size / 10);
    let r = run(&c).unwrap();
    assert!(
        r.spill.spill_count > 0,
        "spilled: {:?} (input {size} bytes)",
        r.spill
    );
    assert_eq!(tree_bytes(&free), tree_bytes(&tight));
}

#[test]
fn eight_scan_partitions_under_a_limit_give_the_same_bytes() {
    // Eight partitions feed one sort under a pool (once, eight sorts each
    // reserving half the pool up front exhausted it before a single batch
    // was sorted).
    let tmp = tempdir();
    let input = tmp.path().join("in");
    generate_tree(&input, 17, 4 << 20);
    let shard = shards_of(&input).into_iter().next().unwrap();
    let free = tmp.path().join("free");
    run(&cfg(&input, &free, &shard)).unwrap();
    let many = tmp.path().join("many");
    let mut c = cfg(&input, &many, &shard);
    c.target_partitions = 8;
    c.range_bytes = 64 << 10;
    c.memory_limit = Some(tailor::job::measure::current_rss_bytes() + (256 << 20));
    run(&c).unwrap();
    assert_eq!(tree_bytes(&free), tree_bytes(&many));
}

fn dir_size(p: &Path) -> u64 {
    files_under(p)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}

#[test]
fn misrouted_payloads_are_listed_and_fail_the_job_on_request() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let s = generate_tree(&input, 17, 1 << 20);
    assert!(s.misrouted > 0);
    let mut total = 0;
    for shard in shards_of(&input) {
        let out = tmp.path().join("out");
        let r = run(&cfg(&input, &out, &shard)).unwrap();
        for m in &r.misrouted {
            assert!(m.key.contains(&format!("{shard}/")));
            assert_ne!(m.expected_shard, shard);
        }
        total += r.misrouted.len() as u64;
        if !r.misrouted.is_empty() {
            let mut c = cfg(&input, &tmp.path().join("out2"), &shard);
            c.fail_on_misrouted = true;
            let e = run(&c).unwrap_err();
            assert!(matches!(e, tailor::job::JobError::Misrouted(..)), "{e}");
            assert!(
                !tmp.path().join("out2").join(&shard).exists()
                    || list_manifests(&tmp.path().join("out2")).is_empty()
            );
        }
    }
    assert_eq!(
        total, s.misrouted,
        "every misrouted payload is listed by exactly one shard job"
    );
}

fn list_manifests(p: &Path) -> Vec<String> {
    tree_bytes(p)
        .into_keys()
        .filter(|k| k.ends_with("_manifest.json"))
        .collect()
}

#[test]
fn corrupt_input_fails_with_key_and_offset_or_is_skipped_and_listed() {
    let (tmp, input, shard) = generated(19, 1 << 20);
    // Truncate one payload file mid-frame.
    let hour_dir = std::fs::read_dir(input.join(&shard))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let hour_dir = std::fs::read_dir(hour_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let victim = std::fs::read_dir(&hour_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "tsp") && std::fs::metadata(p).unwrap().len() > 100
        })
        .min()
        .unwrap();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() - 7]).unwrap();
    let out = tmp.path().join("out");
    let e = run(&cfg(&input, &out, &shard)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(victim.file_name().unwrap().to_str().unwrap()) && msg.contains("offset"),
        "{msg}"
    );
    assert!(list_manifests(&out).is_empty(), "nothing committed");
    let mut c = cfg(&input, &out, &shard);
    c.on_corrupt = tailor::datasource::options::CorruptPolicy::Skip;
    let r = run(&c).unwrap();
    assert_eq!(r.corrupt.len(), 1);
    assert!(victim.to_str().unwrap().ends_with(&r.corrupt[0].key));
    assert_eq!(r.scan.corrupt_frames, 1);
}

#[test]
fn a_copy_of_the_input_gives_the_same_paths_and_bytes() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let copy = tmp.path().join("copy");
    generate_tree(&input, 29, 1 << 20);
    std::fs::create_dir_all(&copy).unwrap();
    copy_dir(&input, &copy, "");
    let shard = shards_of(&input)[0].clone();
    let a = run(&cfg(&input, &tmp.path().join("out-a"), &shard)).unwrap();
    let b = run(&cfg(&copy, &tmp.path().join("out-b"), &shard)).unwrap();
    assert_eq!(a.output.run_id, b.output.run_id);
    let (ta, tb) = (
        tree_bytes(&tmp.path().join("out-a")),
        tree_bytes(&tmp.path().join("out-b")),
    );
    let normalized = |t: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
        t.iter()
            .map(|(k, v)| {
                if !k.ends_with("_manifest.json") {
                    return (k.clone(), v.clone());
                }
                let mut m: serde_json::Value = serde_json::from_slice(v).unwrap();
                for i in m["inputs"].as_array_mut().unwrap() {
                    assert!(i["e_tag"].is_string(), "{i}");
                    i["e_tag"] = serde_json::Value::Null;
                    let key = i["key"].as_str().unwrap();
                    let below = key[key.find(&format!("/{shard}/")).unwrap()..].to_string();
                    i["key"] = below.into();
                }
                (k.clone(), serde_json::to_vec(&m).unwrap())
            })
            .collect()
    };
    assert!(ta != tb, "the ETags differ");
    assert!(normalized(&ta) == normalized(&tb));
}

/// A commit removes the files of the commit it replaces at once, but leaves
/// young files no manifest names: they may be a run of the same window
/// still uploading, which would otherwise commit a manifest naming files
/// that are gone. Once older than the grace period, a commit removes them.
#[test]
fn a_commit_leaves_the_files_of_a_run_still_uploading() {
    let (tmp, input, shard) = generated(37, 1 << 20);
    let output = tmp.path().join("out");
    let mut c = cfg(&input, &output, &shard);
    let first = run(&c).unwrap();
    let window = output.join(&first.output.location);
    // Another run of the window, uploading.
    let inflight = window.join("data/0123456789abcdef0123456789abcdef/part-00000.tsf");
    std::fs::create_dir_all(inflight.parent().unwrap()).unwrap();
    std::fs::write(&inflight, b"being uploaded").unwrap();

    c.zstd_level = 5; // another run id
    let second = run(&c).unwrap();
    assert_ne!(second.output.run_id, first.output.run_id);
    assert_eq!(
        second.output.stale_objects_removed, first.output.files,
        "the replaced commit's files go"
    );
    assert!(inflight.exists(), "the uploading run's file stays");
    assert!(
        second
            .warnings
            .iter()
            .any(|w| w.starts_with("1 objects of other runs")),
        "{:?}",
        second.warnings
    );
    assert!(!window.join("data").join(&first.output.run_id).exists());

    // Two days later, nothing has committed it: the next commit removes it.
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
    std::fs::File::options()
        .write(true)
        .open(&inflight)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    c.zstd_level = 7;
    let third = run(&c).unwrap();
    assert!(third.warnings.is_empty(), "{:?}", third.warnings);
    assert_eq!(third.output.stale_objects_removed, second.output.files + 1);
    assert!(!inflight.exists());
}

/// A rerun of a committed run (same inputs, same run id) rewrites that
/// run's files: a commit that replaces the run removes only the files
/// written before the run's manifest, not those the rerun has rewritten.
#[test]
fn a_commit_leaves_the_files_a_rerun_of_the_replaced_run_rewrote() {
    let (tmp, input, shard) = generated(21, 2 << 20);
    let output = tmp.path().join("out");
    let mut c = cfg(&input, &output, &shard);
    c.max_file_bytes = 16 << 10;
    let first = run(&c).unwrap();
    assert!(first.output.files >= 2);
    let dir = output
        .join(&first.output.location)
        .join("data")
        .join(&first.output.run_id);
    // The rerun has rewritten its first file (same bytes, a newer time).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let rewritten = dir.join("part-00000.tsf");
    let bytes = std::fs::read(&rewritten).unwrap();
    std::fs::write(&rewritten, &bytes).unwrap();

    c.zstd_level = 9; // another run commits over the first
    let second = run(&c).unwrap();
    assert_eq!(second.output.stale_objects_removed, first.output.files - 1);
    assert!(rewritten.exists());
    assert!(
        second
            .warnings
            .iter()
            .any(|w| w.starts_with("1 objects of other runs")),
        "{:?}",
        second.warnings
    );
}

#[test]
fn the_generator_is_deterministic_for_a_seed() {
    let tmp = tempdir();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let sa = generate_tree(&a, 41, 1 << 20);
    let sb = generate_tree(&b, 41, 1 << 20);
    generate_tree(&c, 42, 1 << 20);
    let (ta, tb, tc) = (tree_bytes(&a), tree_bytes(&b), tree_bytes(&c));
    assert!(ta.len() > 10, "{} objects", ta.len());
    assert!(ta == tb, "same seed, same objects and bytes");
    assert_eq!(format!("{sa:?}"), format!("{sb:?}"));
    assert!(ta != tc, "another seed, other data");
}

#[test]
fn payload_files_outside_the_layout_are_listed_and_warned_about_not_read() {
    let (tmp, input, shard) = generated(43, 256 << 10);
    let dt_dir = std::fs::read_dir(input.join(&shard))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let a_file = tsp_files(&dt_dir)[0].clone();
    let bytes = std::fs::read(&a_file).unwrap();
    // A payload file one level too high, and one under an hour that is not one.
    std::fs::write(input.join(&shard).join("stray.tsp"), &bytes).unwrap();
    let bad_hour = dt_dir.join("hour=24");
    std::fs::create_dir_all(&bad_hour).unwrap();
    std::fs::write(bad_hour.join("points+0+0000000000.tsp"), &bytes).unwrap();
    std::fs::write(dt_dir.join("_SUCCESS"), b"").unwrap();
    let r = run(&cfg(&input, &tmp.path().join("out"), &shard)).unwrap();
    let stray: Vec<&str> = r
        .input
        .ignored
        .iter()
        .filter(|o| o.key.ends_with(".tsp"))
        .map(|o| o.key.as_str())
        .collect();
    assert_eq!(stray.len(), 2, "{stray:?}");
    for key in stray {
        let w = r
            .warnings
            .iter()
            .find(|w| w.contains(key))
            .unwrap_or_else(|| panic!("no warning for {key}: {:?}", r.warnings));
        assert!(
            w.starts_with("not read: ") && w.contains(&format!("({} bytes)", bytes.len())),
            "{w}"
        );
        assert!(
            w.contains("outside the <shard>/dt=YYYY-MM-DD/hour=HH/ layout"),
            "{w}"
        );
    }
    // Other objects (markers) are listed but not warned about.
    assert!(r.input.ignored.iter().any(|o| !o.key.ends_with(".tsp")));
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
}

/// Payloads of the spec's maximum size (1,048,576 points, 16 MiB decoded)
/// are split into rows of at most `ROW_POINTS` points for the grouping
/// sort, which cannot split a row: once, two such payloads failed the job
/// at a 128 MiB limit and forty at 1 GiB. Split rows keep input order
/// inside a payload (a timestamp repeated across a row boundary: the later
/// point wins) and the output is the same with and without a limit.
#[test]
fn payloads_of_the_maximum_size_run_under_a_small_limit_with_the_same_bytes() {
    use tailor::datasource::options::ROW_POINTS;
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let shard = "org-mod-7";
    let dir = input.join(shard).join("dt=2026-11-21/hour=00");
    std::fs::create_dir_all(&dir).unwrap();
    let max = 1 << 20;
    let big = |metric: u64, seed: u64, meta: &str| {
        let mut rng = crate::common::Rng(seed);
        // Rising timestamps with a repeat straddling every row boundary,
        // and a few from anywhere earlier.
        let ts: Vec<i64> = (0..max as i64)
            .map(|i| {
                if i % ROW_POINTS as i64 == 0 && i > 0 {
                    (i - 1) * 10
                } else if rng.below(5000) == 0 {
                    rng.below(i as u64 + 1) as i64 * 10
                } else {
                    i * 10
                }
            })
            .collect();
        let vals: Vec<u64> = (0..max).map(|_| rng.next_u64()).collect();
        crate::common::P {
            version: 2,
            org: 7,
            metric,
            kind: tailor::format::payload::Kind::Count,
            interval_s: 10,
            ts,
            vals,
            meta: meta.into(),
        }
    };
    // Small payloads of the same series around them.
    let small = |metric: u64| crate::common::P {
        version: 1,
        org: 7,
        metric,
        kind: tailor::format::payload::Kind::Gauge,
        interval_s: 0,
        ts: vec![50, 10 * (max as i64 - 1), 77_777_770],
        vals: vec![1, 2, 3],
        meta: String::new(),
    };
    use crate::common::file_of;
    let a = file_of(&[
        big(1, 1, "host:a"),
        small(2),
        big(2, 2, &"m".repeat(65_536)),
    ])
    .0;
    let b = file_of(&[small(1), big(3, 3, "host:b")]).0;
    std::fs::write(dir.join("points+0+0000000000.tsp"), a).unwrap();
    std::fs::write(dir.join("points+1+0000000000.tsp"), b).unwrap();

    let free = tmp.path().join("free");
    let r = run(&cfg(&input, &free, shard)).unwrap();
    let (want, counts, _) = reference(&input, shard);
    assert_eq!(r.merge, counts);
    assert_eq!(
        r.scan.payloads, 5,
        "payloads are counted once, however split"
    );
    assert_eq!(committed(&free, shard), want);

    let tight = tmp.path().join("tight");
    let mut c = cfg(&input, &tight, shard);
    // What a 128 MiB limit leaves the job in a process of its own (the
    // pool is sized from what the process already holds; tests share one).
    let base = tailor::job::measure::current_rss_bytes().max(70 << 20);
    c.memory_limit = Some(base + (58 << 20));
    let r = run(&c).unwrap();
    assert!(r.spill.spill_count > 0, "{:?}", r.spill);
    assert_eq!(tree_bytes(&free), tree_bytes(&tight));
}
