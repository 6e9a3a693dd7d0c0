//! `tailor plan`: which windows must run or rerun (exit 0: none; 10: some).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::cli::parse_hour;
use crate::datasource::listing::Hour;
use crate::datasource::store::StoreRoot;
use crate::job::JobError;
use crate::job::config::{JobFile, load_shard_map, parse_duration};
use crate::job::error::IoContext;
use crate::job::plan::{DEFAULT_SETTLE, PlanConfig, plan};

/// Exit code of `tailor plan` when some window must run.
pub const EXIT_WORK: u8 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Table,
    Json,
    Csv,
    /// A Kubernetes `List`: the plan as a ConfigMap and an Indexed Job
    /// (from `--k8s-template`) with one completion per window to run.
    K8s,
    /// One line for jobs/Makefile: `<shard>/<window>:<state>` for each
    /// window to run.
    Make,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A job file (as `tailor run --job`): its input, output and shard map
    /// are the plan's, unless flags say otherwise.
    #[arg(long, env = "TAILOR_JOB")]
    pub job: Option<PathBuf>,
    /// Input root URL.
    #[arg(long, env = "TAILOR_INPUT")]
    pub input: Option<String>,
    /// Output root URL.
    #[arg(long, env = "TAILOR_OUTPUT")]
    pub output: Option<String>,
    /// Shards to plan (repeatable; default: every shard of the map).
    #[arg(long = "shard")]
    pub shards: Vec<String>,
    /// First hour (YYYY-MM-DDTHH); with --to, every hour between them is
    /// planned, empty ones too. Default: the hours present.
    #[arg(long, value_parser = parse_hour)]
    pub from: Option<Hour>,
    #[arg(long, value_parser = parse_hour)]
    pub to: Option<Hour>,
    #[arg(long, env = "TAILOR_SHARD_MAP")]
    pub shard_map: Option<PathBuf>,
    /// How long after an hour's end its window is left to settle (the sink
    /// may still be writing it): e.g. 10m (the default), 0s.
    #[arg(long)]
    pub settle: Option<String>,
    /// The time the plan is made at (RFC 3339; default: now), for replays
    /// and tests.
    #[arg(long)]
    pub now: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: PlanFormat,
    /// Also write the JSON plan here (whatever --format prints).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The Indexed Job (JSON) that `--format k8s` fills in.
    #[arg(long)]
    pub k8s_template: Option<PathBuf>,
    /// Shards planned at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Write the plan's Prometheus metrics to this file (atomically).
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// Push them to this Pushgateway (group job=tailor, scope=plan).
    #[arg(long, env = "TAILOR_PUSHGATEWAY")]
    pub pushgateway: Option<String>,
    /// The migration file the runs apply (as `tailor run --migration`): a
    /// window committed with other cutovers for its shard is stale.
    #[arg(long, env = "TAILOR_MIGRATION")]
    pub migration: Option<PathBuf>,
    /// The role the runs have (as `tailor run --role`).
    #[arg(long, value_enum)]
    pub role: Option<crate::cli::run::RoleArg>,
}

pub async fn main(a: PlanArgs) -> Result<ExitCode, JobError> {
    let file = match &a.job {
        Some(p) => JobFile::load(p)?,
        None => JobFile::default(),
    };
    let need = |flag: &Option<String>, f: &Option<String>, name: &str| {
        flag.clone()
            .or_else(|| f.clone())
            .ok_or_else(|| JobError::Config(format!("--{name} is required (flag or job file)")))
    };
    let (input_url, output_url) = (
        need(&a.input, &file.input, "input")?,
        need(&a.output, &file.output, "output")?,
    );
    let (map, source) = load_shard_map(a.shard_map.as_deref().or(file.shard_map.as_deref()))?;
    let shards = if a.shards.is_empty() {
        map.shards().iter().map(|s| s.to_string()).collect()
    } else {
        for s in &a.shards {
            if crate::format::shard::Shard::parse(s).is_none_or(|sh| !map.contains(sh)) {
                return Err(JobError::Config(format!(
                    "--shard {s:?} is not a shard of the shard map ({source})"
                )));
            }
        }
        a.shards.clone()
    };
    if let (Some(f), Some(t)) = (&a.from, &a.to)
        && f > t
    {
        return Err(JobError::Config(format!("--from {f} is after --to {t}")));
    }
    let settle = match &a.settle {
        Some(s) => parse_duration("--settle", s)?,
        None => DEFAULT_SETTLE,
    };
    let now = match &a.now {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| JobError::Config(format!("--now {t:?} is not an RFC 3339 time: {e}")))?
            .with_timezone(&chrono::Utc),
        None => chrono::Utc::now(),
    };
    if a.format == PlanFormat::K8s && a.k8s_template.is_none() {
        return Err(JobError::Config("--format k8s needs --k8s-template".into()));
    }
    let (role, migration, migration_arg) =
        crate::cli::migration_settings(a.migration.as_deref(), a.role, &file)?;
    let cfg = PlanConfig {
        shards,
        map,
        from: a.from.clone(),
        to: a.to.clone(),
        settle,
        now,
        concurrency: a.concurrency,
        role,
        migration,
        migration_arg,
    };
    let input = StoreRoot::open(&input_url)?;
    let output = StoreRoot::open(&output_url)?;
    let t0 = std::time::Instant::now();
    let p = plan(&cfg, &input, &output).await?;
    let took = t0.elapsed().as_secs_f64();
    if a.metrics_file.is_some() || a.pushgateway.is_some() {
        let text = crate::job::metrics::plan_metrics(&p, took);
        if let Some(path) = &a.metrics_file
            && let Err(e) = crate::job::metrics::write_metrics_file(path, &text)
        {
            eprintln!("tailor: warning: {e}");
        }
        if let Some(url) = &a.pushgateway
            && let Err(e) = crate::job::metrics::push(url, &[("scope", "plan")], text).await
        {
            eprintln!("tailor: warning: {e}");
        }
    }
    let json = serde_json::to_string_pretty(&p).expect("plan serialises");
    if let Some(out) = &a.out {
        std::fs::write(out, &json).at(format_args!("writing {}", out.display()))?;
    }
    let text = match a.format {
        PlanFormat::Table => p.table(),
        PlanFormat::Json => json + "\n",
        PlanFormat::Csv => p.csv(),
        PlanFormat::Make => {
            let words: Vec<String> = p
                .to_run()
                .map(|w| format!("{}/{}:{}", w.shard, w.window, w.state.name()))
                .collect();
            words.join(" ") + "\n"
        }
        PlanFormat::K8s => {
            let template = a.k8s_template.as_deref().expect("checked above");
            crate::job::plan::k8s_list(&p, template)? + "\n"
        }
    };
    {
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        o.write_all(text.as_bytes()).at("writing to stdout")?;
    }
    Ok(if p.to_run().next().is_some() {
        ExitCode::from(EXIT_WORK)
    } else {
        ExitCode::SUCCESS
    })
}
