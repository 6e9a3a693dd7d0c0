//! `tailor run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::{load_shard_map, parse_hour};
use crate::datasource::listing::{Hour, Window};
use crate::datasource::source::CorruptPolicy;
use crate::job::JobError;
use crate::job::config::{JobFile, RunConfig, parse_size};

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
    #[arg(long, value_parser = parse_hour)]
    pub from: Option<Hour>,
    /// Last hour of the window (inclusive); default: the last present.
    #[arg(long, value_parser = parse_hour)]
    pub to: Option<Hour>,
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
    pub on_corrupt: Option<CorruptPolicy>,
    /// Fail (and commit nothing) when misrouted payloads are found;
    /// `--fail-on-misrouted=false` overrides a job file that sets it.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub fail_on_misrouted: Option<bool>,
    /// zstd level of the output blocks (1..=22, default 3).
    #[arg(long)]
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
    /// Print the JSON report on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Test hook: stop after writing the data files, before the commit.
    #[arg(long, hide = true)]
    pub fail_before_commit: bool,
}

/// Merges the job file and the flags into one validated config.
pub fn config(a: &RunArgs) -> Result<RunConfig, JobError> {
    let file = match &a.job {
        Some(p) => JobFile::load(p).map_err(JobError::Config)?,
        None => JobFile::default(),
    };
    let need = |flag: &Option<String>, f: &Option<String>, name: &str| {
        flag.clone()
            .or_else(|| f.clone())
            .ok_or_else(|| JobError::Config(format!("--{name} is required (flag or job file)")))
    };
    let input = need(&a.input, &file.input, "input")?;
    let output = need(&a.output, &file.output, "output")?;
    let shard = need(&a.shard, &file.shard, "shard")?;
    let mut cfg = RunConfig::new(input, output, shard);
    let hour = |s: &Option<String>| -> Result<Option<Hour>, JobError> {
        s.as_deref()
            .map(|s| parse_hour(s).map_err(JobError::Config))
            .transpose()
    };
    cfg.window = Window {
        from: a
            .from
            .clone()
            .map(Ok)
            .or_else(|| hour(&file.from).transpose())
            .transpose()?,
        to: a
            .to
            .clone()
            .map(Ok)
            .or_else(|| hour(&file.to).transpose())
            .transpose()?,
    };
    let (map, source) = load_shard_map(a.shard_map.as_deref().or(file.shard_map.as_deref()))?;
    if crate::format::shard::Shard::parse(&cfg.shard).is_none_or(|s| !map.contains(s)) {
        return Err(JobError::Config(format!(
            "shard {:?} is not a shard of the shard map ({source})",
            cfg.shard
        )));
    }
    cfg.shard_map = map;
    cfg.shard_map_source = source;
    let size = |flag: &Option<String>, f: &Option<String>| -> Result<Option<u64>, JobError> {
        flag.as_ref()
            .or(f.as_ref())
            .map(|s| parse_size(s).map_err(JobError::Config))
            .transpose()
    };
    if let Some(l) = size(&a.memory_limit, &file.memory_limit)? {
        cfg.memory_limit = Some(l);
    }
    if let Some(n) = a.target_partitions.or(file.target_partitions) {
        if n == 0 {
            return Err(JobError::Config(
                "--target-partitions must be at least 1".into(),
            ));
        }
        cfg.target_partitions = n;
    }
    if let Some(r) = size(&a.range_bytes, &file.range_bytes)? {
        if r == 0 {
            return Err(JobError::Config("--range-bytes must be at least 1".into()));
        }
        cfg.range_bytes = r;
    }
    if let Some(m) = size(&a.max_file_bytes, &file.max_file_bytes)? {
        cfg.max_file_bytes = m.max(1);
    }
    if let Some(b) = a.block_points.or(file.block_points) {
        if !(1..=65_536).contains(&b) {
            return Err(JobError::Config("--block-points must be 1..=65536".into()));
        }
        cfg.block_points = b;
    }
    if let Some(z) = a.zstd_level.or(file.zstd_level) {
        if !(1..=22).contains(&z) {
            return Err(JobError::Config("--zstd-level must be 1..=22".into()));
        }
        cfg.zstd_level = z;
    }
    cfg.on_corrupt = a.on_corrupt.or(file.on_corrupt).unwrap_or_default();
    cfg.fail_on_misrouted = a
        .fail_on_misrouted
        .or(file.fail_on_misrouted)
        .unwrap_or(false);
    cfg.spill_dir = a.spill_dir.clone().or(file.spill_dir);
    cfg.stage_dir = a.stage_dir.clone().or(file.stage_dir);
    cfg.report = a.report.clone().or(file.report);
    cfg.progress = true;
    cfg.fail_before_commit = a.fail_before_commit;
    Ok(cfg)
}

/// Runs the job. The report is written (and summarised) whatever happens
/// once the configuration is valid, so a scheduler always finds one that
/// says how far a failed run got and why it failed.
pub async fn main(a: RunArgs) -> Result<ExitCode, JobError> {
    let cfg = config(&a)?;
    let (report, result) = crate::job::run::run_shard_reported(&cfg).await;
    if let Some(path) = &cfg.report {
        let written = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, report.to_json()));
        if let Err(e) = written {
            // The job's own error, if any, matters more than the report's.
            result?;
            return Err(JobError::Output(format!(
                "writing report {}: {e}",
                path.display()
            )));
        }
    }
    if a.json {
        println!("{}", report.to_json());
    } else {
        eprint!("{}", report.summary());
    }
    result.map(|()| ExitCode::SUCCESS)
}
