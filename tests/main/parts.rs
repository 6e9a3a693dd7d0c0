//! A window in K series parts (`--parts`): every reader sees the same
//! series and points as at K = 1; each file holds only its part's series in
//! key order; the bytes do not depend on partitions or the memory limit at a
//! given K; one series is found by hashing it to its part.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tailor::datasource::store::StoreRoot;
use tailor::format::part::part_of;
use tailor::job::config::RunConfig;
use tailor::job::export::{ExportFormat, export};
use tailor::job::generate::{GenerateOptions, generate};

use crate::common::{
    biggest_shard, export_csv, files_by_path, read_windows, rt, run_job, shard_map, tempdir,
};

struct Tree {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    input: PathBuf,
    shard: String,
}

fn tree() -> Tree {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let input = dir.join("in");
    let summary = rt().block_on(async {
        let root = StoreRoot::open(input.to_str().unwrap()).unwrap();
        generate(
            &root,
            &shard_map(),
            &GenerateOptions {
                seed: 71,
                target_bytes: 3 << 20,
                orgs: 20,
                hours: 2,
                partitions: 3,
                dup_rate: 0.05,
                conflict_rate: 0.05,
                misroute_rate: 0.01,
                ..Default::default()
            },
        )
        .await
        .unwrap()
    });
    let shard = biggest_shard(&input, &summary.shards);
    Tree {
        _tmp: tmp,
        dir,
        input,
        shard,
    }
}

impl Tree {
    fn run(&self, out: &str, parts: u32, f: impl FnOnce(&mut RunConfig)) {
        let mut c = RunConfig::new(
            self.input.to_str().unwrap(),
            self.dir.join(out).to_str().unwrap(),
            &self.shard,
        );
        c.shard_map = shard_map();
        c.target_partitions = 2;
        c.parts = parts;
        c.max_file_bytes = 48 << 10;
        f(&mut c);
        run_job(&c).unwrap();
    }

    /// The manifest of `window` in output `out`.
    fn manifest_path(&self, out: &str, window: &str) -> PathBuf {
        self.dir
            .join(out)
            .join(&self.shard)
            .join(window)
            .join("_manifest.json")
    }

    fn root(&self, out: &str) -> StoreRoot {
        StoreRoot::open(self.dir.join(out).to_str().unwrap()).unwrap()
    }

    fn export(&self, out: &str) -> Vec<u8> {
        export_csv(
            &self.root(out),
            &self.shard,
            &self.dir.join(format!("{out}.csv")),
        )
    }

    fn bytes(&self, out: &str) -> BTreeMap<String, Vec<u8>> {
        files_by_path(&self.dir.join(out))
            .into_iter()
            .filter(|(rel, _)| !rel.contains("_history"))
            .collect()
    }
}

#[test]
fn a_window_in_parts_reads_as_the_same_series_and_points() {
    let t = tree();
    t.run("k1", 1, |_| {});
    let one = t.export("k1");
    let k1 = rt().block_on(read_windows(&t.root("k1"), &t.shard));
    assert!(k1[0].1.files.iter().all(|f| f.part.is_none()));
    assert_eq!(k1[0].1.settings.parts, 1);
    for k in [2u32, 7] {
        let out = format!("k{k}");
        t.run(&out, k, |_| {});
        // Every reader: the same rows, in the same order.
        assert!(t.export(&out) == one, "K = {k}: export differs from K = 1");
        let windows = rt().block_on(read_windows(&t.root(&out), &t.shard));
        assert_eq!(windows.len(), k1.len());
        for ((_, m, series), (_, m1, _)) in windows.iter().zip(&k1) {
            assert_eq!(m.settings.parts, k);
            assert_ne!(m.run_id, m1.run_id, "another K is another commit");
            assert_eq!((m.series, m.points), (m1.series, m1.points));
            // Files part after part, each holding only its part's series in
            // key order, named after the part.
            let parts: Vec<u32> = m.files.iter().map(|f| f.part.unwrap()).collect();
            assert!(parts.windows(2).all(|w| w[0] <= w[1]), "{parts:?}");
            assert!(
                parts
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    > 1
            );
            for f in &m.files {
                let p = f.part.unwrap();
                assert!(f.path.contains(&format!("/p{p:04}-")), "{}", f.path);
            }
            let mut by_part: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
            for s in series {
                by_part
                    .entry(part_of(s.org, s.metric, k))
                    .or_default()
                    .push((s.org, s.metric));
            }
            for keys in by_part.values() {
                assert!(keys.windows(2).all(|w| w[0] < w[1]), "key order in a part");
            }
        }
        // The diff of K = 1 against K parts: the same content.
        let r = rt()
            .block_on(tailor::job::diff::diff(&tailor::job::diff::DiffConfig {
                old: t.dir.join("k1").to_str().unwrap().into(),
                new: t.dir.join(&out).to_str().unwrap().into(),
                shards: vec![t.shard.clone()],
                from: None,
                to: None,
                orgs: vec![],
                examples: 3,
                out: None,
                memory_limit: None,
                migration: None,
                shadow: None,
            }))
            .unwrap();
        assert!(r.identical(), "{}", r.summary());
    }
    // One series, by its part: `inspect --series` on the manifest.
    let windows = rt().block_on(read_windows(&t.root("k7"), &t.shard));
    let (w, m, series) = &windows[0];
    let s = &series[series.len() / 2];
    let manifest = t.manifest_path("k7", w);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tailor"))
        .arg("inspect")
        .arg(&manifest)
        .args(["--series", &format!("{}:{}", s.org, s.metric)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let part = part_of(s.org, s.metric, 7);
    assert!(
        text.contains(&format!("p{part:04}-")),
        "the file of part {part}: {text}"
    );
    assert!(m.files.iter().any(|f| f.part == Some(part)));
}

#[test]
fn bytes_at_a_part_count_do_not_depend_on_partitions_or_the_memory_limit() {
    let t = tree();
    t.run("free", 5, |_| {});
    let want = t.bytes("free");
    t.run("one", 5, |c| c.target_partitions = 1);
    assert!(t.bytes("one") == want);
    t.run("ranges", 5, |c| {
        c.target_partitions = 8;
        c.range_bytes = 32 << 10;
    });
    assert!(t.bytes("ranges") == want);
    // No room: every payload spooled, buckets decoded again, groups merged
    // part after part.
    t.run("tight", 5, |c| {
        c.memory_limit = Some(tailor::job::config::BASE_FOOTPRINT.max(1) + (1 << 20))
    });
    assert!(t.bytes("tight") == want);
}

#[test]
fn a_manifest_of_parts_that_does_not_add_up_is_refused() {
    let t = tree();
    t.run("k3", 3, |_| {});
    let root = t.root("k3");
    let windows = rt().block_on(read_windows(&root, &t.shard));
    let (w, m, _) = &windows[0];
    let path = t.manifest_path("k3", w);
    let check = |m: &tailor::job::manifest::Manifest| -> String {
        std::fs::write(&path, m.to_json()).unwrap();
        let file = t.dir.join("x.csv");
        rt().block_on(export(
            &root,
            &t.shard,
            None,
            None,
            ExportFormat::Csv,
            &file,
        ))
        .unwrap_err()
        .to_string()
    };
    // A file without its part; a part out of range; a file given another
    // part than its series'.
    let mut bad = m.clone();
    bad.files[0].part = None;
    assert!(check(&bad).contains("has part None"), "{}", check(&bad));
    let mut bad = m.clone();
    bad.files[0].part = Some(3);
    assert!(check(&bad).contains("has part Some(3)"));
    let mut bad = m.clone();
    let last = bad.files.len() - 1;
    let other = (bad.files[last].part.unwrap() + 1) % 3;
    bad.files[last].part = Some(other);
    let e = check(&bad);
    assert!(
        e.contains("belongs to part") || e.contains("does not follow"),
        "{e}"
    );
    std::fs::write(&path, m.to_json()).unwrap();
    assert!(Path::new(&path).exists());
}
