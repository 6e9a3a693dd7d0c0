//! A scan of the payload table through DataFusion (`SELECT sum(n_points)`),
//! on a generated tree, 1 and 2 partitions.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::prelude::{SessionConfig, SessionContext};
use tailor::datasource::listing::{Window, list_inputs};
use tailor::datasource::options::PayloadOptions;
use tailor::datasource::scan_log::ScanLog;
use tailor::datasource::store::StoreRoot;
use tailor::datasource::table::PayloadTable;
use tailor::format::shard::ShardMap;
use tailor::job::generate::{GenerateOptions, generate};

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let map = std::sync::Arc::new(ShardMap::parse(tailor::job::config::DEFAULT_SHARD_MAP).unwrap());
    let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
    let summary = rt
        .block_on(generate(
            &root,
            &map,
            &GenerateOptions {
                target_bytes: 32 << 20,
                orgs: 50,
                ..Default::default()
            },
        ))
        .unwrap();
    let listing = rt
        .block_on(list_inputs(&root, None, &Window::default()))
        .unwrap();
    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Bytes(summary.bytes));
    g.sample_size(10);
    for parts in [1, 2] {
        g.bench_function(format!("sum_points_{parts}p"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let ctx = SessionContext::new_with_config(
                        SessionConfig::new().with_target_partitions(parts),
                    );
                    PayloadTable::new(
                        &root,
                        listing.objects.clone(),
                        PayloadOptions::new(map.clone()),
                        ScanLog::new(),
                    )
                    .register(&ctx, &root, "payloads")
                    .unwrap();
                    ctx.sql("SELECT sum(n_points) FROM payloads")
                        .await
                        .unwrap()
                        .collect()
                        .await
                        .unwrap()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
