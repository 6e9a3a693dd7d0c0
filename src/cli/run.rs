//! `tailor run`: flags -> a job file's settings overlaid -> one validated
//! [`RunConfig`] (`job::config`) -> the run -> its report.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::OnCorrupt;
use crate::job::JobError;
use crate::job::config::{JobFile, RunConfig};
use crate::job::report::run_reported;

/// `--role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    Shadow,
    New,
    Old,
}

impl From<RoleArg> for crate::job::migration::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Shadow => Self::Shadow,
            RoleArg::New => Self::New,
            RoleArg::Old => Self::Old,
        }
    }
}

/// `--engine`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EngineArg {
    Local,
    Ballista,
}

impl From<EngineArg> for crate::job::config::Engine {
    fn from(e: EngineArg) -> Self {
        match e {
            EngineArg::Local => Self::Local,
            EngineArg::Ballista => Self::Ballista,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A job file (TOML, see jobs/); flags override its settings.
    #[arg(long, env = "TAILOR_JOB")]
    pub job: Option<PathBuf>,
    /// Input root URL (file://, a path, s3://, az://, gs://).
    #[arg(long, env = "TAILOR_INPUT")]
    pub input: Option<String>,
    /// Output root URL.
    #[arg(long, env = "TAILOR_OUTPUT")]
    pub output: Option<String>,
    /// The shard to run (e.g. org-mod-7, org-1001).
    #[arg(long)]
    pub shard: Option<String>,
    /// First hour of the window (YYYY-MM-DDTHH, inclusive); default: the first present.
    #[arg(long)]
    pub from: Option<String>,
    /// Last hour of the window (inclusive); default: the last present.
    #[arg(long)]
    pub to: Option<String>,
    /// Shard map TOML (default: the built-in shards/production.toml).
    #[arg(long, env = "TAILOR_SHARD_MAP")]
    pub shard_map: Option<PathBuf>,
    /// Memory limit for grouping (e.g. 2GiB); spills to disk beyond it.
    #[arg(long)]
    pub memory_limit: Option<String>,
    /// Parallel partitions (default: the number of cores).
    #[arg(long)]
    pub target_partitions: Option<usize>,
    /// Byte-range size big files are split into (default 1GiB).
    #[arg(long)]
    pub range_bytes: Option<String>,
    /// Output file size cap (default 1GiB).
    #[arg(long)]
    pub max_file_bytes: Option<String>,
    /// Points per output block.
    #[arg(long)]
    pub block_points: Option<usize>,
    /// What to do with a corrupt frame.
    #[arg(long, value_enum)]
    pub on_corrupt: Option<OnCorrupt>,
    /// Fail (and commit nothing) when misrouted payloads are found;
    /// `--fail-on-misrouted=false` overrides a job file that sets it.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub fail_on_misrouted: Option<bool>,
    /// zstd level of the output blocks (-7..=22, default 3).
    #[arg(long, allow_negative_numbers = true)]
    pub zstd_level: Option<i32>,
    /// Directory for spill files (default: the system temp dir).
    #[arg(long)]
    pub spill_dir: Option<PathBuf>,
    /// Directory where output files are staged before upload to a remote
    /// output root (default: the system temp dir).
    #[arg(long)]
    pub stage_dir: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Retries of a failed object-store request (default 10).
    #[arg(long)]
    pub store_max_retries: Option<usize>,
    /// How long a request is retried at most (default 3m).
    #[arg(long)]
    pub store_retry_timeout: Option<String>,
    /// The first retry's backoff, doubling up to 15s (default 100ms).
    #[arg(long)]
    pub store_backoff: Option<String>,
    /// Write the run's Prometheus metrics to this file (atomically), for
    /// node_exporter's textfile collector.
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// Push the run's metrics to this Pushgateway (grouped by job, shard
    /// and window), e.g. http://pushgateway:9091.
    #[arg(long, env = "TAILOR_PUSHGATEWAY")]
    pub pushgateway: Option<String>,
    /// Reports kept per window in the run history (<output>/_history/;
    /// default 20; 0: no history).
    #[arg(long)]
    pub history_keep: Option<usize>,
    /// Days of run history kept (default 30).
    #[arg(long)]
    pub history_days: Option<u64>,
    /// The migration file: per org, the cutover from which the new system
    /// owns its points (shards/migration.toml, docs/migration.md).
    #[arg(long, env = "TAILOR_MIGRATION")]
    pub migration: Option<PathBuf>,
    /// Which points this run writes: every one (shadow, the default), each
    /// migrated org's from its cutover on (new), or the others (old).
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// Write the window in this many series parts (1, the default: one
    /// part, as before): each series goes to part
    /// `mix(org_id ^ mix(metric_id)) mod K` (docs/output-layout.md), and each
    /// part's files are merged, encoded and written apart.
    #[arg(long)]
    pub parts: Option<u32>,
    /// Where scan, grouping and encoding run: here (local, the default) or
    /// on an Apache DataFusion Ballista cluster (ballista, with
    /// --scheduler; docs/distributed.md). Same bytes either way.
    #[arg(long, value_enum, env = "TAILOR_ENGINE")]
    pub engine: Option<EngineArg>,
    /// The Ballista scheduler, host:port (tailor scheduler).
    #[arg(long, env = "TAILOR_SCHEDULER")]
    pub scheduler: Option<String>,
    /// Read every shuffle partition over the network, even one on the
    /// executor's own disk (tests the path a real cluster takes).
    #[arg(long)]
    pub shuffle_over_network: bool,
    /// Print the JSON report on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Run only if the window needs it: skipped (exit 0, at the cost of one
    /// LIST and one GET) when its commit read exactly the input listed now,
    /// or when it has neither input nor commit. For idempotent scheduler
    /// tasks that may be retried or run twice.
    #[arg(long)]
    pub only_if_needed: bool,
    /// Take the shard and window from this plan (`tailor plan --out`, or
    /// the ConfigMap of `--format k8s`): its `--plan-index`-th window to run.
    #[arg(long, requires = "plan_index")]
    pub plan_file: Option<PathBuf>,
    /// Which window of `--plan-file` (from 0; a Kubernetes Indexed Job
    /// passes `$(JOB_COMPLETION_INDEX)`).
    #[arg(long, requires = "plan_file")]
    pub plan_index: Option<usize>,
    /// Test hook: stop after writing the data files, before the commit.
    #[arg(long, hide = true)]
    pub fail_before_commit: bool,
}

impl RunArgs {
    /// The flags as settings, to lay over a job file's.
    fn settings(&self) -> JobFile {
        JobFile {
            input: self.input.clone(),
            output: self.output.clone(),
            shard: self.shard.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            shard_map: self.shard_map.clone(),
            memory_limit: self.memory_limit.clone(),
            target_partitions: self.target_partitions,
            range_bytes: self.range_bytes.clone(),
            max_file_bytes: self.max_file_bytes.clone(),
            block_points: self.block_points,
            zstd_level: self.zstd_level,
            on_corrupt: self.on_corrupt.map(Into::into),
            fail_on_misrouted: self.fail_on_misrouted,
            spill_dir: self.spill_dir.clone(),
            stage_dir: self.stage_dir.clone(),
            report: self.report.clone(),
            store_max_retries: self.store_max_retries,
            store_retry_timeout: self.store_retry_timeout.clone(),
            store_backoff: self.store_backoff.clone(),
            metrics_file: self.metrics_file.clone(),
            pushgateway: self.pushgateway.clone(),
            history_keep: self.history_keep,
            history_days: self.history_days,
            migration: self.migration.clone(),
            role: self.role.map(Into::into),
            parts: self.parts,
            engine: self.engine.map(Into::into),
            scheduler: self.scheduler.clone(),
            shuffle_over_network: self.shuffle_over_network.then_some(true),
        }
    }

    /// The job file (if any) overlaid by the flags, validated.
    pub fn config(&self) -> Result<RunConfig, JobError> {
        let file = match &self.job {
            Some(p) => JobFile::load(p)?,
            None => JobFile::default(),
        };
        let mut flags = self.settings();
        if let (Some(plan), Some(index)) = (&self.plan_file, self.plan_index) {
            if self.shard.is_some() || self.from.is_some() || self.to.is_some() {
                return Err(JobError::Config(
                    "--plan-file picks the shard and window: leave out --shard, --from and --to"
                        .into(),
                ));
            }
            let (shard, from, to) = crate::job::plan::window_of_plan_file(plan, index)?;
            flags.shard = Some(shard);
            flags.from = Some(from);
            flags.to = Some(to);
        }
        let mut cfg = RunConfig::resolve(file.overlay(flags))?;
        cfg.progress = true;
        cfg.only_if_needed = self.only_if_needed;
        cfg.fail_before_commit = self.fail_before_commit;
        Ok(cfg)
    }
}

/// Records the run for operators: its report in the run history, its
/// metrics to the metrics file and the Pushgateway. Best effort: a failure
/// here is a warning on stderr, never the run's outcome.
async fn observe(cfg: &RunConfig, report: &crate::job::report::Report, error: Option<&JobError>) {
    use crate::job::{history, metrics};
    let now = chrono::Utc::now();
    let at = now.timestamp_millis() as f64 / 1000.0;
    if cfg.history.keep > 0 {
        let opts = crate::datasource::store::StoreOptions {
            retry: Some(cfg.store_retry.retry_config()),
        };
        let recorded = match crate::datasource::store::StoreRoot::open_with(&cfg.output, &opts) {
            Ok(out) => history::record(&out, report, now, cfg.history).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = recorded {
            eprintln!("tailor: warning: the run history could not be recorded: {e}");
        }
    }
    if cfg.metrics_file.is_none() && cfg.pushgateway.is_none() {
        return;
    }
    let class = error.map(JobError::class);
    let text = metrics::run_metrics(report, class, at);
    if let Some(path) = &cfg.metrics_file
        && let Err(e) = metrics::write_metrics_file(path, &text)
    {
        eprintln!("tailor: warning: {e}");
    }
    if let Some(url) = &cfg.pushgateway {
        let window = report
            .run
            .window
            .as_ref()
            .map_or("unknown".to_string(), |w| {
                format!(
                    "{}_{}",
                    w.from.as_ref().map_or("", |h| h.as_str()),
                    w.to.as_ref().map_or("", |h| h.as_str())
                )
            });
        let shard = cfg.shard.as_str();
        let mut pushed = metrics::push(url, &[("shard", shard), ("window", &window)], text).await;
        if pushed.is_ok() && class.is_none() {
            let text = metrics::shard_success_metrics(shard, at);
            pushed = metrics::push(url, &[("shard", shard)], text).await;
        }
        if let Err(e) = pushed {
            eprintln!("tailor: warning: {e}");
        }
    }
}

/// Runs the job. The report is written (and summarised) whatever happens
/// once the configuration is valid, so a scheduler always finds one that
/// says how far a failed run got and why it failed.
pub async fn main(a: RunArgs) -> Result<ExitCode, JobError> {
    let cfg = a.config()?;
    let (report, result) = run_reported(&cfg).await;
    observe(&cfg, &report, result.as_ref().err()).await;
    if let Some(path) = &cfg.report {
        let written = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, report.to_json()));
        if let Err(e) = written {
            // The job's own error, if any, matters more than the report's.
            result?;
            return Err(JobError::io(
                format_args!("writing report {}", path.display()),
                e,
            ));
        }
    }
    if a.json {
        println!("{}", report.to_json());
    } else {
        eprint!("{}", report.summary());
    }
    result.map(|()| ExitCode::SUCCESS)
}
