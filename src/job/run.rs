//! The shard job (`tailor run`): the flow a newcomer should read first.
//!
//! ```text
//! list       input objects of the shard and window (sizes, ETags)    datasource/listing.rs
//! plan       under a memory limit: the decoded size estimated from
//!            the first frames' zstd headers -> hash buckets of
//!            series, those that fit resident                         config.rs MemoryBudget
//! scan       DataSourceExec(PayloadSource): frames -> payload rows;
//!            a payload of a bucket that does not fit is spooled
//!            (its compressed frame, with its input position)         datasource/, route.rs
//! group      rows filed by series in a hash map, points left in
//!            their decode slabs; each series' rows in input order
//!            (object, frame offset, first point)                      group.rs
//! merge      per series, on all cores: its points by timestamp, the
//!            last in input order wins (concatenated when already in
//!            order); kind/interval/metadata of the last payload      merge.rs
//! encode     series -> TSF blocks on all cores, appended in key order
//!            on a writer thread, files rolled at the size cap, staged
//!            locally; with spooled buckets, each group (resident
//!            buckets, then each spooled bucket read back) is
//!            encoded apart and the groups merged by key              buckets.rs, encode.rs, format/tsf/
//! manifest   what was read and written, the run id                    manifest.rs
//! write      staged files -> <out>/<shard>/<window>/data/<run>/       commit.rs
//! commit     _manifest.json, written last, is the commit              commit.rs
//! ```
//!
//! With `--engine ballista` the steps scan to encode run on a cluster
//! (`cluster/`), the rest here as above.
//!
//! Every step is deterministic: series are written in key order and each
//! series' rows are taken in input order, which do not depend on how the
//! input was split or scheduled or which bucket a series fell in, so the
//! same input gives the same bytes whatever `--target-partitions`, the
//! range size, the memory limit or thread timing.
//!
//! A run returns what it did ([`RunStats`]) beside its result, whether it
//! succeeded or not; `report.rs` turns both into the run's report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use datafusion::arrow::array::AsArray;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use serde::Serialize;

use crate::datasource::batch::SlabPool;
use crate::datasource::listing::{Ignored, InputObject, Listing, Window, list_inputs};
use crate::datasource::options::{PayloadOptions, ROW_POINTS};
use crate::datasource::route::{self, Router, estimate_decoded};
use crate::datasource::scan_log::{CorruptRecord, MisroutedRecord, ScanLog, ScanTotals};
use crate::datasource::schema::OBJECT_KEY;
use crate::datasource::source::frame_error;
use crate::datasource::store::{StoreOptions, StoreRoot};
use crate::datasource::table::PayloadTable;
use crate::job::buckets::{SpoolSummary, encode_all};
use crate::job::commit::{self, Base};
use crate::job::config::{MemoryBudget, RunConfig};
use crate::job::encode::{FileOptions, Files, Staged};
use crate::job::error::JobError;
use crate::job::faults::fail_point;
use crate::job::group::{Grouper, Objects};
use crate::job::manifest::{
    Dropped, Manifest, ManifestFile, ManifestInput, OutputSettings, window_dir,
};
use crate::job::measure::{
    self, Phase, SpillSummary, cpu_time, current_rss_bytes, peak_rss_bytes, secs,
};
use crate::job::merge::MergeCounts;
use crate::job::migration::{Applied, Role};
use crate::job::scratch::{self, ScratchDir};
use std::collections::BTreeMap;

/// What the run read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InputSummary {
    pub objects: u64,
    pub bytes: u64,
    /// Every payload object read, in input order.
    pub object_list: Vec<InputObject>,
    pub ignored: Vec<Ignored>,
}

/// What the run committed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutputSummary {
    pub location: String,
    pub run_id: String,
    pub series: u64,
    pub points: u64,
    pub bytes: u64,
    pub files: u64,
    /// Every data file committed, as the manifest lists it.
    pub file_list: Vec<ManifestFile>,
    pub stale_objects_removed: u64,
}

/// What one run did, as far as it got: filled in step by step, and
/// returned whether the run succeeded or failed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunStats {
    pub window: Option<Window>,
    pub input: InputSummary,
    /// Frames, payloads and points read (misrouted ones included).
    pub scan: ScanTotals,
    pub merge: MergeCounts,
    pub output: OutputSummary,
    pub corrupt: Vec<CorruptRecord>,
    pub misrouted: Vec<MisroutedRecord>,
    /// Points left to the other system of a migration, per org
    /// (`--role new|old`): not errors, not in the output.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub left_to_other: BTreeMap<u64, u64>,
    /// Problems that did not fail the run (e.g. a cleanup after the commit).
    pub warnings: Vec<String>,
    pub spill: SpillSummary,
    /// How series were grouped under the memory limit: the bucket plan,
    /// what was spooled, groups merged.
    pub spool: SpoolSummary,
    pub peak_rss_bytes: u64,
    /// A cluster run (`--engine ballista`): where and what it shuffled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::job::cluster::ClusterSummary>,
    #[serde(with = "secs")]
    pub wall: Duration,
    #[serde(with = "secs")]
    pub cpu: Duration,
    pub phases: Vec<Phase>,
    /// The run committed its output.
    #[serde(skip)]
    pub committed: bool,
    /// Why the run did nothing (`--only-if-needed` found the window up to
    /// date); the run succeeded without a commit.
    pub skipped: Option<String>,
}

/// Builds the session of the scan: partitions and batch size. (Memory is
/// the job's own to manage: DataFusion's pool is not used, see
/// `MemoryBudget`.)
pub fn session(cfg: &RunConfig, budget: &MemoryBudget) -> Result<SessionContext, JobError> {
    let runtime = RuntimeEnvBuilder::new().build_arc()?;
    let partitions = cfg.target_partitions.max(1);
    let mut sc = SessionConfig::new()
        .with_target_partitions(partitions)
        .with_batch_size(budget.batch_rows())
        .with_repartition_file_scans(true)
        .with_repartition_file_min_size(cfg.range_bytes.min(usize::MAX as u64) as usize)
        .with_information_schema(false);
    // No round-robin repartition when there are fewer scan ranges than
    // partitions (a small shard, or one file): the scan decodes, and the
    // grouping after it is cheap, so it would only hold one more batch per
    // partition in its channels.
    sc.options_mut().optimizer.enable_round_robin_repartition = false;
    Ok(SessionContext::new_with_config_rt(sc, runtime))
}

/// Runs one shard job end to end on the stores its config names. Returns
/// what the run did whatever happened: on failure it says how far the job
/// got, and the time and memory it took until then.
pub async fn run_shard(cfg: &RunConfig) -> (RunStats, Result<(), JobError>) {
    let clock = Clock::start();
    let mut stats = RunStats::default();
    let opts = StoreOptions {
        retry: Some(cfg.store_retry.retry_config()),
    };
    let result = match (
        StoreRoot::open_with(&cfg.input, &opts),
        StoreRoot::open_with(&cfg.output, &opts),
    ) {
        (Ok(input), Ok(output)) => steps(cfg, &input, &output, &mut stats).await,
        (Err(e), _) | (_, Err(e)) => Err(e.into()),
    };
    clock.stop(&mut stats);
    (stats, result)
}

/// [`run_shard`] on stores the caller opened (any `ObjectStore`, such as
/// one that injects faults); `cfg.input` and `cfg.output` are then only
/// names for reports.
pub async fn run_shard_on(
    cfg: &RunConfig,
    input: &StoreRoot,
    output: &StoreRoot,
) -> (RunStats, Result<(), JobError>) {
    let clock = Clock::start();
    let mut stats = RunStats::default();
    let result = steps(cfg, input, output, &mut stats).await;
    clock.stop(&mut stats);
    (stats, result)
}

/// The wall and CPU time of a whole run.
struct Clock(Instant, Duration);

impl Clock {
    fn start() -> Self {
        Self(Instant::now(), cpu_time())
    }
    fn stop(self, stats: &mut RunStats) {
        for p in &mut stats.phases {
            p.place(self.0);
        }
        stats.wall = self.0.elapsed();
        stats.cpu = cpu_time().saturating_sub(self.1);
        stats.peak_rss_bytes = peak_rss_bytes();
    }
}

async fn steps(
    cfg: &RunConfig,
    input: &StoreRoot,
    output: &StoreRoot,
    stats: &mut RunStats,
) -> Result<(), JobError> {
    // -- list
    let t = Phase::start("list");
    let listing: Listing = list_inputs(input, Some(&cfg.shard), &cfg.window).await?;
    stats.phases.push(t.stop());
    let window = resolve_window(&cfg.window, &listing)?;
    stats.window = Some(window.clone());
    stats.input = InputSummary {
        objects: listing.objects.len() as u64,
        bytes: listing.total_bytes(),
        object_list: listing.objects.clone(),
        ignored: listing.ignored.clone(),
    };
    // A payload-named object the layout does not place in an hour is not
    // read: its points may belong to this shard, so say so loudly.
    for o in listing.ignored.iter().filter(|o| o.key.ends_with(".tsp")) {
        stats.warnings.push(format!(
            "not read: {} ({} bytes): {}",
            o.key, o.size, o.reason
        ));
    }

    // The commit this run will replace (or none): its put is conditional
    // on finding it unchanged.
    let location = format!(
        "{}/{}",
        cfg.shard,
        window_dir(
            window.from.as_ref().map_or("", |h| h.as_str()),
            window.to.as_ref().map_or("", |h| h.as_str())
        )
    );
    let (base, warning) = Base::read(output, &location).await?;
    stats.warnings.extend(warning);
    if cfg.only_if_needed
        && let Some(why) = up_to_date(cfg, output, &location, &listing).await?
    {
        stats.skipped = Some(why);
        return Ok(());
    }

    // -- scan + group (DataFusion) with merge + encode on a writer thread
    // Scratch space of killed runs first, then this run's own.
    let reclaimed =
        scratch::reclaim(cfg.stage_dir.as_deref()) + scratch::reclaim(cfg.spill_dir.as_deref());
    if reclaimed > 0 {
        stats.warnings.push(format!(
            "removed {reclaimed} scratch directories of runs that were killed"
        ));
    }
    let spill = ScratchDir::create(cfg.spill_dir.as_deref(), "spill", "--spill-dir")?;
    let stage = ScratchDir::create(cfg.stage_dir.as_deref(), "stage", "--stage-dir")?;
    // What the process holds before the job: the budget is what the limit
    // leaves beside it.
    let budget = MemoryBudget::new(cfg.memory_limit, current_rss_bytes(), cfg.target_partitions);
    let dirs = (spill.path(), stage.path());
    let (staged, scan) = match &cfg.cluster {
        #[cfg(feature = "cluster")]
        Some(cluster) if !listing.objects.is_empty() => {
            let mut figures = crate::job::cluster::ScanFigures::default();
            let mut summary = crate::job::cluster::ClusterSummary::default();
            let r = crate::job::cluster::client::scan_group_encode(
                cfg,
                cluster,
                input,
                &listing,
                &location,
                &mut figures,
                &mut summary,
            )
            .await;
            stats.scan = figures.scan;
            stats.corrupt = figures.corrupt;
            stats.misrouted = figures.misrouted;
            stats.phases.extend(figures.phases);
            stats.cluster = Some(summary);
            let (staged, scan) = r?;
            stats.merge = staged.merge;
            (staged, scan)
        }
        _ => scan_group_encode(cfg, input, &listing, dirs, &budget, stats).await?,
    };

    // -- manifest
    let dropped = Dropped {
        duplicate_points: staged.merge.duplicates_dropped,
        conflicting_duplicate_points: staged.merge.conflicting_duplicates,
        misrouted_payloads: scan.misrouted_payloads,
        corrupt_frames: scan.corrupt_frames,
    };
    let mut settings = OutputSettings::new(
        &cfg.shard_map,
        cfg.max_file_bytes,
        cfg.writer_options(),
        cfg.on_corrupt,
    );
    // A run that writes one side of a migration records its role and the
    // cutovers of the shard's orgs: another migration file is another
    // commit (and run id).
    settings.apply(applied(cfg));
    settings.parts = cfg.parts;
    let inputs: Vec<ManifestInput> = listing.objects.iter().map(ManifestInput::of).collect();
    let manifest = Manifest::build(&cfg.shard, &window, settings, inputs, &staged, dropped);

    // -- write + commit
    let t = Phase::start("write");
    commit::upload_files(output, &manifest, &staged, cfg.single_put_max).await?;
    stats.phases.push(t.stop());
    if cfg.fail_before_commit {
        return Err(JobError::Internal(
            "--fail-before-commit: stopped after writing the data files, before the manifest"
                .into(),
        ));
    }
    let t = Phase::start("commit");
    let committed = match commit::commit(output, &manifest, &base, cfg.cleanup_grace).await {
        // Another run committed first; it may have read this very input.
        Err(JobError::LostRace(why)) if cfg.only_if_needed => {
            match up_to_date(cfg, output, &location, &listing).await? {
                Some(done) => {
                    stats.skipped = Some(format!("another run committed the window first: {done}"));
                    return Ok(());
                }
                None => return Err(JobError::LostRace(why)),
            }
        }
        other => other?,
    };
    stats.phases.push(t.stop());
    stats.committed = true;
    stats.output = OutputSummary {
        location: manifest.location.clone(),
        run_id: manifest.run_id.clone(),
        series: manifest.series,
        points: manifest.points,
        bytes: manifest.files.iter().map(|f| f.bytes).sum(),
        files: manifest.files.len() as u64,
        file_list: manifest.files.clone(),
        stale_objects_removed: committed.stale_removed,
    };
    stats.warnings.extend(committed.cleanup_error);
    if committed.young_left > 0 {
        stats.warnings.push(format!(
            "{} objects of other runs under {}/data left in place: no manifest names them and \
             they are younger than {} s (a run of this window may still be uploading them); \
             a later commit of the window removes them once older",
            committed.young_left,
            manifest.location,
            cfg.cleanup_grace.as_secs()
        ));
    }
    drop((spill, stage));
    Ok(())
}

/// Scans the listed objects, groups their points per series and stages the
/// encoded files in a fresh directory under `stage`; fills the stats' scan,
/// merge and per-phase figures. Returns the staged files and the scan's
/// totals once every corrupt frame is settled.
async fn scan_group_encode(
    cfg: &RunConfig,
    input: &StoreRoot,
    listing: &Listing,
    (spill, stage): (&std::path::Path, &std::path::Path),
    budget: &MemoryBudget,
    stats: &mut RunStats,
) -> Result<(Staged, ScanTotals), JobError> {
    let ctx = session(cfg, budget)?;
    let mut options = PayloadOptions::new(Arc::clone(&cfg.shard_map));
    options.on_corrupt = cfg.on_corrupt;
    options.range_bytes = cfg.range_bytes;
    options.max_row_points = Some(ROW_POINTS);
    if let Some(slab) = budget.slab_bytes() {
        options.slab_bytes = slab;
    }
    // The scan's slabs go on to the spooled buckets (see `buckets.rs`).
    let pool = SlabPool::new(options.slab_bytes);
    options.pool = Some(Arc::clone(&pool));
    // Under a limit, series are routed to hash buckets, and those that the
    // estimated decoded input leaves no room for are spooled (see
    // `datasource/route.rs`, `buckets.rs`).
    let keys: Vec<String> = listing
        .objects
        .iter()
        .map(|o| o.meta.location.to_string())
        .collect();
    let index: HashMap<&str, u32> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i as u32))
        .collect();
    let mut summary = SpoolSummary::default();
    if budget.budget().is_some() {
        let metas: Vec<_> = listing.objects.iter().map(|o| o.meta.clone()).collect();
        let estimate = match crate::job::faults::decoded_estimate() {
            Some(e) => e,
            None => estimate_decoded(&input.store, &metas, 8, 1 << 20).await?,
        };
        summary.plan = budget.bucket_plan(estimate);
    }
    let router = summary.plan.map(|p| {
        let spooled = p.buckets - p.resident;
        // Payloads are spooled packed (read back with a copy) while the
        // spill disk has room for it, compressed (decoded again) after.
        let compressed = listing.total_bytes() / u64::from(p.buckets) * u64::from(spooled);
        let allowance = crate::job::faults::spool_allowance().unwrap_or_else(|| {
            scratch::free_space(spill).map_or(0, |free| route::packed_allowance(free, compressed))
        });
        Arc::new(Router::new(
            p.buckets,
            p.resident,
            &keys,
            spill,
            budget.spool_buffer(spooled.max(1)),
            allowance,
        ))
    });
    options.router = router.clone();
    let log = PayloadTable::new(input, listing.objects.clone(), options, ScanLog::new())
        .register(&ctx, input, "payloads")?;

    // scan + decode and the grouping run as one pipeline (their wall times
    // overlap; the CPU of each is measured where it is spent); merging and
    // encoding follow, on all cores.
    let t_pipeline = Phase::start("pipeline");
    let df = ctx.sql("SELECT * FROM payloads").await?;
    let plan: Arc<dyn ExecutionPlan> = df.create_physical_plan().await?;
    let mut stream = execute_stream(Arc::clone(&plan), ctx.task_ctx())?;
    let progress = measure::progress(cfg.progress, listing.total_bytes(), Arc::clone(&log));
    let mut grouper = Grouper::new();
    let resident_cap = budget.resident_cap();
    let mut scan_error = None;
    let object_of = |k: &str| {
        index.get(k).copied().ok_or_else(|| {
            JobError::Internal(format!(
                "the scan read {k}, which is not among the listed objects"
            ))
        })
    };
    while let Some(batch) = stream.next().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                scan_error = Some(e);
                break;
            }
        };
        let n = batch.num_rows();
        if n == 0 {
            continue;
        }
        // A scan batch is one range's, so one object's (checked).
        let key = batch.column(OBJECT_KEY).as_string_view();
        let objects = if key.value(0) == key.value(n - 1) {
            Objects::One(object_of(key.value(0))?)
        } else {
            Objects::PerRow(
                (0..n)
                    .map(|i| object_of(key.value(i)))
                    .collect::<Result<_, _>>()?,
            )
        };
        grouper.push(batch, objects)?;
        // Rows over their share of memory (the estimate was short): every
        // later payload is spooled.
        if let (Some(r), Some(cap)) = (&router, resident_cap)
            && grouper.bytes() > cap
            && r.resident() > 0
        {
            r.demote_all();
        }
        fail_point("scan.batch")?;
    }
    drop(stream);
    drop(progress);
    let pipeline = t_pipeline.stop();
    stats.scan = log.totals();
    stats.corrupt = log.corrupt();
    stats.misrouted = log.misrouted();
    let ops = measure::operator_times(&plan);
    let op_cpu = |names: &[&str]| {
        Duration::from_secs_f64(
            ops.iter()
                .filter(|(n, _)| names.contains(&n.as_str()))
                .map(|(_, s)| s)
                .sum(),
        )
    };
    let began = pipeline.began.unwrap_or_else(Instant::now);
    let decode_cpu = op_cpu(&["DataSourceExec"]);
    let mut scan_phase = Phase::measured_from("scan+decode", began, pipeline.wall, decode_cpu);
    scan_phase.detail = ops.clone();
    stats.phases.push(scan_phase);
    stats.phases.push(Phase::measured_from(
        "group",
        began,
        pipeline.wall,
        pipeline.cpu.saturating_sub(decode_cpu),
    ));
    if let Some(e) = scan_error {
        return Err(match frame_error(&e) {
            Some(fe) => JobError::Corrupt(Box::new(fe.clone())),
            None => JobError::DataFusion(e),
        });
    }
    if let Some(r) = &router {
        r.finish()
            .map_err(|e| JobError::io("spooling the scan's payloads", e))?;
    }
    log.settle(cfg.on_corrupt)
        .map_err(|e| JobError::Corrupt(Box::new(e)))?;
    stats.scan = log.totals();
    stats.corrupt = log.corrupt();
    if !stats.misrouted.is_empty() && cfg.fail_on_misrouted {
        return Err(JobError::Misrouted(stats.misrouted.len()));
    }

    // merge + encode: one stream of series, or groups merged (buckets.rs).
    let file_options = FileOptions {
        max_file_bytes: cfg.max_file_bytes,
        writer: cfg.writer_options(),
        round_points: budget.round_points(),
        keep: match (&cfg.migration, cfg.role) {
            (_, Role::Shadow) | (None, _) => None,
            (Some(m), role) => Some((role, Arc::clone(m))),
        },
        parts: cfg.parts,
    };
    let t_encode = Phase::start("encode");
    let files = Files::new(stage.to_path_buf(), file_options.clone());
    let (files, totals) = encode_all(
        grouper,
        router.as_deref().map(|r| (r, &pool)),
        &file_options,
        files,
        spill,
        budget,
        &mut summary,
    )?;
    let encode = t_encode.stop();
    stats.spill = SpillSummary {
        spill_count: summary.groups,
        spilled_bytes: summary.spooled_bytes + summary.encoded_spool_bytes,
        spilled_rows: summary.spooled_frames,
    };
    stats.spool = summary;
    let staged = files.finish(totals, encode)?;
    stats.merge = staged.merge;
    stats.left_to_other = staged.left_to_other.clone();
    stats.phases.push(staged.encode_phase.clone());
    Ok((staged, stats.scan.clone()))
}

/// Why the window at `location` needs no run, if it does not: its commit
/// read exactly the input listed now, or it has neither input nor commit.
/// The migration a run of `cfg` applies to its shard.
fn applied(cfg: &RunConfig) -> Applied {
    Applied::new(
        cfg.role,
        cfg.migration.as_deref(),
        &cfg.shard,
        &cfg.shard_map,
    )
}

async fn up_to_date(
    cfg: &RunConfig,
    output: &StoreRoot,
    location: &str,
    listing: &Listing,
) -> Result<Option<String>, JobError> {
    let (shard, window) = location
        .split_once('/')
        .ok_or_else(|| JobError::Internal(format!("bad location {location}")))?;
    Ok(
        match crate::job::manifest::read_stored(output, shard, window).await? {
            None if listing.objects.is_empty() => {
                Some(format!("{location} has no input and no commit"))
            }
            Some(s) => match s.manifest {
                Ok(m)
                    if crate::job::plan::compare(&listing.objects, &m.inputs).is_empty()
                        && applied(cfg).change_from(&m.settings.applied()).is_none() =>
                {
                    Some(format!(
                        "{location} is committed (run {}) and its input is unchanged",
                        m.run_id
                    ))
                }
                _ => None,
            },
            None => None,
        },
    )
}

/// The window the job covers: the flags, or every hour present.
fn resolve_window(w: &Window, listing: &Listing) -> Result<Window, JobError> {
    let hours = listing.hours();
    let from = w.from.clone().or_else(|| hours.first().cloned());
    let to = w.to.clone().or_else(|| hours.last().cloned());
    match (from, to) {
        (Some(from), Some(to)) if from <= to => Ok(Window {
            from: Some(from),
            to: Some(to),
        }),
        (Some(from), Some(to)) => Err(JobError::Config(format!(
            "--from {from} is after --to {to}"
        ))),
        _ => Err(JobError::Config(
            "no input hours found and no --from/--to given: nothing to do".into(),
        )),
    }
}
