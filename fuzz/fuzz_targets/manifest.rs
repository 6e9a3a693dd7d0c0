//! The manifest parser and its checks on arbitrary bytes: JSON that is a
//! manifest or not, totals that add up or not, file paths of any shape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor::datasource::store::StoreRoot;
use tailor::job::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::parse(data, "fuzz/_manifest.json") else {
        return;
    };
    let root = StoreRoot::open("memory:///out").expect("memory root");
    if let Some((shard, window)) = m.location.split_once('/') {
        let _ = m.verify(&root, shard, window);
    }
    let _ = m.shard_map();
    let _ = m.to_json();
});
