//! The job's side of a cluster run: the scan, group, merge and encode
//! steps of `run.rs` as one Ballista job, submitted as a physical plan (see
//! `cluster/mod.rs`); the client then settles the scan's logs, checks that
//! every part came back once, and hands `run.rs` the files to commit
//! (uploaded by the executors under the run's pending directory).

use std::collections::BTreeMap;
use std::sync::Arc;

use ballista_core::config::BallistaConfig;
use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
use datafusion::arrow::array::AsArray;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::StreamExt;

use crate::datasource::listing::Listing;
use crate::datasource::options::{PayloadOptions, ROW_POINTS};
use crate::datasource::scan_log::{ScanLog, ScanTotals};
use crate::datasource::store::StoreRoot;
use crate::datasource::table::PayloadTable;
use crate::format::payload::FrameError;
use crate::job::cluster::codec::TailorCodec;
use crate::job::cluster::nodes::{
    PART_KEY, ShardWriteExec, ShuffleRowsExec, WriteParams, WriterProcess, Written, shuffle_schema,
};
use crate::job::cluster::{ClusterSummary, ScanFigures};
use crate::job::config::{ClusterSettings, MemoryBudget, RunConfig};
use crate::job::encode::{Staged, StagedFile};
use crate::job::error::JobError;
use crate::job::measure::Phase;
use crate::job::merge::MergeCounts;

/// A run's pending directory token: unique per run.
fn token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{}", std::process::id())
}

/// Runs scan, group, merge and encode of `listing` on the cluster; returns
/// the files it staged (uploaded, not committed) and the scan's totals
/// once its logs are settled, filling in the run's scan figures.
pub async fn scan_group_encode(
    cfg: &RunConfig,
    cluster: &ClusterSettings,
    input: &StoreRoot,
    listing: &Listing,
    location: &str,
    stats: &mut ScanFigures,
    summary: &mut ClusterSummary,
) -> Result<(Staged, ScanTotals), JobError> {
    let t = Phase::start("cluster");
    let budget = MemoryBudget::new(None, 0, cfg.target_partitions);
    let mut sc = SessionConfig::new_with_ballista()
        .with_target_partitions(cfg.target_partitions.max(1))
        .with_repartition_file_scans(true)
        .with_repartition_file_min_size(cfg.range_bytes.min(usize::MAX as u64) as usize)
        .with_ballista_shuffle_reader_force_remote_read(cluster.shuffle_over_network)
        .with_ballista_job_name(&format!("tailor {location}"));
    sc.options_mut().optimizer.enable_round_robin_repartition = false;
    let ctx = SessionContext::new_with_config(sc.clone());
    let mut options = PayloadOptions::new(Arc::clone(&cfg.shard_map));
    options.on_corrupt = cfg.on_corrupt;
    options.range_bytes = cfg.range_bytes;
    options.max_row_points = Some(ROW_POINTS);
    options.emit_log = true;
    PayloadTable::new(input, listing.objects.clone(), options, ScanLog::new())
        .register(&ctx, input, "payloads")?;
    let scan = ctx
        .sql("SELECT * FROM payloads")
        .await?
        .create_physical_plan()
        .await?;

    let parts = cfg.parts;
    let rows: Arc<dyn ExecutionPlan> = Arc::new(ShuffleRowsExec::new(scan, parts));
    let key = shuffle_schema()
        .index_of(PART_KEY)
        .expect("part_key column");
    let shuffle = Arc::new(RepartitionExec::try_new(
        rows,
        Partitioning::Hash(vec![Arc::new(Column::new(PART_KEY, key))], parts as usize),
    )?);
    let params = WriteParams {
        // Executors open it from their own working directory: a local
        // path travels absolute.
        output: if cfg.output.contains("://") {
            cfg.output.clone()
        } else {
            std::path::absolute(&cfg.output)
                .map_err(|e| JobError::io(format_args!("resolving {}", cfg.output), e))?
                .display()
                .to_string()
        },
        location: location.to_string(),
        token: token(),
        parts,
        max_file_bytes: cfg.max_file_bytes,
        block_points: cfg.block_points,
        zstd_level: cfg.zstd_level,
        round_points: budget.round_points(),
        objects: listing
            .objects
            .iter()
            .map(|o| o.meta.location.to_string())
            .collect(),
        stage_dir: cfg
            .stage_dir
            .as_ref()
            .map(|p| p.to_string_lossy().to_string()),
        store_retries: cfg.store_retry.max_retries,
        single_put_max: cfg.single_put_max,
    };
    let plan: Arc<dyn ExecutionPlan> =
        Arc::new(ShardWriteExec::new(shuffle, Arc::new(params.clone())));

    let session = format!("tailor-{}", params.token);
    summary.scheduler = cluster.scheduler.clone();
    summary.job_session = session.clone();
    let codec = TailorCodec::new();
    let mut stream = execute_physical_plan::<PhysicalPlanNode>(
        format!("http://{}", cluster.scheduler),
        &BallistaConfig::default(),
        plan,
        &codec,
        session,
        sc,
    )
    .await
    .map_err(cluster_failed)?;

    let log = ScanLog::new();
    let mut written: Vec<Written> = Vec::new();
    let mut corrupt: Option<FrameError> = None;
    let mut seen = std::collections::HashSet::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(cluster_failed)?;
        let kind = batch.column(0).as_string::<i32>();
        let json = batch.column(1).as_string::<i32>();
        for i in 0..batch.num_rows() {
            let j = json.value(i);
            // A partition's result may come back twice (a stage run again
            // after an executor was lost, its first result kept): the same
            // rows, which count once. Different rows for one part are an
            // error below.
            if !seen.insert((kind.value(i).to_string(), j.to_string())) {
                summary.duplicate_results += 1;
                continue;
            }
            match kind.value(i) {
                "written" => written.push(serde_json::from_str(j).map_err(|e| {
                    JobError::Internal(format!("a part writer's report does not parse: {e}"))
                })?),
                "log" => match j.strip_prefix(crate::job::cluster::nodes::ERROR_LOG) {
                    Some(e) => {
                        let fe: FrameError = serde_json::from_str(e).map_err(|e| {
                            JobError::Internal(format!("a scan error does not parse: {e}"))
                        })?;
                        // The first in input order, as a reader of the
                        // chain meets them.
                        if corrupt.as_ref().is_none_or(|c| {
                            (fe.key.as_str(), fe.error.offset) < (c.key.as_str(), c.error.offset)
                        }) {
                            corrupt = Some(fe);
                        }
                    }
                    None => log.merge_wire(j).map_err(JobError::Internal)?,
                },
                "process" => {
                    let p: WriterProcess = serde_json::from_str(j).map_err(|e| {
                        JobError::Internal(format!("a part writer's figures do not parse: {e}"))
                    })?;
                    summary.executor_peak_rss_bytes =
                        summary.executor_peak_rss_bytes.max(p.peak_rss_bytes);
                    summary.shuffled_bytes += p.shuffled_bytes;
                }
                k => {
                    return Err(JobError::Internal(format!(
                        "a cluster result of kind {k:?}"
                    )));
                }
            }
        }
    }
    drop(stream);
    stats.phases.push(t.stop());
    stats.scan = log.totals();
    stats.corrupt = log.corrupt();
    stats.misrouted = log.misrouted();
    if let Some(fe) = corrupt {
        return Err(JobError::Corrupt(Box::new(fe)));
    }
    log.settle(cfg.on_corrupt)
        .map_err(|e| JobError::Corrupt(Box::new(e)))?;
    stats.scan = log.totals();
    stats.corrupt = log.corrupt();
    if !stats.misrouted.is_empty() && cfg.fail_on_misrouted {
        return Err(JobError::Misrouted(stats.misrouted.len()));
    }

    let staged = collect_staged(&params, written, summary)?;
    Ok((staged, stats.scan.clone()))
}

/// The writers' files as one staged output, parts in order; each part
/// written by exactly one writer.
fn collect_staged(
    params: &WriteParams,
    written: Vec<Written>,
    summary: &mut ClusterSummary,
) -> Result<Staged, JobError> {
    let mut by_part: BTreeMap<u32, usize> = BTreeMap::new();
    let mut staged = Staged {
        files: Vec::new(),
        series: 0,
        points: 0,
        merge: MergeCounts::default(),
        left_to_other: BTreeMap::new(),
        encode_phase: Phase::start("encode").stop(),
    };
    for (w, report) in written.iter().enumerate() {
        summary.writers += 1;
        summary.shuffled_rows += report.rows;
        for &p in &report.parts {
            if let Some(other) = by_part.insert(p, w)
                && other != w
            {
                return Err(JobError::Internal(format!(
                    "part {p} was written by two partition writers with other results (the \
                     shuffle's hashing differs between executors?)"
                )));
            }
        }
        staged.series += report.series;
        staged.points += report.points;
        staged.merge.add(&report.merge);
    }
    let mut files: Vec<_> = written.into_iter().flat_map(|w| w.files).collect();
    files.sort_by(|a, b| (a.part, &a.name).cmp(&(b.part, &b.name)));
    staged.files = files
        .into_iter()
        .map(|f| StagedFile {
            remote: Some(params.pending_path(&f.name)),
            ..f
        })
        .collect();
    Ok(staged)
}

/// A failed cluster job: I/O a retry may cure (the scheduler unreachable,
/// an executor lost for good) exits 74, anything else 70; the message is
/// the cluster's.
fn cluster_failed(e: datafusion::error::DataFusionError) -> JobError {
    let text = e.to_string();
    let transient = [
        "transport error",
        "Connection refused",
        "connection error",
        "executor lost",
        "Executor lost",
        "dns error",
        "timed out",
        // An object-store call failed in every attempt of a task.
        "Task failed due to IO error",
    ];
    if transient.iter().any(|t| text.contains(t)) {
        JobError::io(
            "the Ballista cluster",
            std::io::Error::other(format!("the cluster job failed: {text}")),
        )
    } else {
        JobError::Internal(format!("the cluster job failed: {text}"))
    }
}
