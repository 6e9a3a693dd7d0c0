//! The job against object stores: S3 (moto), Azure (azurite) and GCS (an
//! XML-API front end over moto), started by `scripts/test-servers.sh`. Input
//! and output both live in the store; the committed content must equal the
//! local run's, and ranged reads must stay near the input size.
//!
//! Without the servers' environment these tests say so and return, unless
//! `CI` or `TAILOR_REQUIRE_SERVERS` (set by `scripts/test.sh` once it has
//! started the servers) is set: then a missing server is a failure.

use tailor::datasource::store::StoreRoot;
use tailor::job::config::RunConfig;
use tailor::job::generate::{GenerateOptions, generate};
use tailor::job::run::run_shard;

use crate::common::{S, read_series, rt_multi as runtime, shard_map, tempdir};

async fn content(root: &StoreRoot, shard: &str) -> Vec<S> {
    read_series(root, shard).await
}

fn available(var: &str, name: &str) -> bool {
    if std::env::var_os(var).is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some() || std::env::var_os("TAILOR_REQUIRE_SERVERS").is_some() {
        panic!(
            "{name}: {var} is not set; scripts/test.sh starts the servers (scripts/test-servers.sh)"
        );
    }
    eprintln!("{name}: {var} not set, skipping (run `eval \"$(scripts/test-servers.sh start)\"`)");
    false
}

fn round_trip(base: &str) {
    let tmp = tempdir();
    let unique = format!(
        "run-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let input_url = format!("{base}/{unique}/in");
    let output_url = format!("{base}/{unique}/out");
    let rt = runtime();
    rt.block_on(async {
        let opts = GenerateOptions {
            seed: 23,
            target_bytes: 1 << 20,
            orgs: 10,
            hours: 1,
            partitions: 2,
            ..Default::default()
        };
        let input = StoreRoot::open(&input_url).unwrap();
        let local_in = StoreRoot::open(tmp.path().join("in").to_str().unwrap()).unwrap();
        let s = generate(&input, &shard_map(), &opts).await.unwrap();
        generate(&local_in, &shard_map(), &opts).await.unwrap();
        let shard = s.shards[0].clone();
        let mut c = RunConfig::new(&input_url, &output_url, &shard);
        c.shard_map = shard_map();
        c.target_partitions = 2;
        c.range_bytes = 64 << 10; // many ranged GETs
        let (remote, r) = run_shard(&c).await;
        r.unwrap();
        let local_out = tmp.path().join("out");
        let mut lc = RunConfig::new(
            tmp.path().join("in").to_str().unwrap(),
            local_out.to_str().unwrap(),
            &shard,
        );
        lc.shard_map = shard_map();
        let (local, r) = run_shard(&lc).await;
        r.unwrap();
        assert_eq!(remote.output.points, local.output.points);
        assert!(remote.scan.bytes_fetched <= remote.input.bytes + remote.input.objects * (1 << 20));
        let output = StoreRoot::open(&output_url).unwrap();
        let got = content(&output, &shard).await;
        let want = content(
            &StoreRoot::open(local_out.to_str().unwrap()).unwrap(),
            &shard,
        )
        .await;
        assert!(!want.is_empty());
        assert!(
            got == want,
            "{base}: the store's committed output differs from the local run's"
        );
        // A rerun replaces the commit atomically and leaves one run's files.
        run_shard(&c).await.1.unwrap();
        assert!(content(&output, &shard).await == want);
    });
}

/// The S3 test bucket's URL, when the servers run (see [`available`]).
pub fn s3_base() -> Option<String> {
    available("AWS_ENDPOINT", "S3").then(|| {
        format!(
            "s3://{}",
            std::env::var("AWS_BUCKET").unwrap_or("tailor-test".into())
        )
    })
}

#[test]
fn s3() {
    if available("AWS_ENDPOINT", "S3") {
        round_trip(&format!(
            "s3://{}",
            std::env::var("AWS_BUCKET").unwrap_or("tailor-test".into())
        ));
    }
}

#[test]
fn azure() {
    if available("AZURITE_BLOB_STORAGE_URL", "Azure") {
        round_trip("az://tailor-test");
    }
}

#[test]
fn gcs() {
    if available("GOOGLE_BASE_URL", "GCS") {
        round_trip("gs://tailor-test");
    }
}
