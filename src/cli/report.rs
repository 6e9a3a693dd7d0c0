//! `tailor report`: the run history (and, with `--input`, the plan) as one
//! self-contained HTML page or as JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::cli::parse_hour;
use crate::datasource::listing::Hour;
use crate::datasource::store::StoreRoot;
use crate::job::JobError;
use crate::job::config::{JobFile, load_shard_map};
use crate::job::dashboard::{DashboardConfig, build, html};
use crate::job::error::IoContext;
use crate::job::plan::{DEFAULT_SETTLE, PlanConfig, hours, plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Html,
    Json,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A job file: its output, input and shard map, unless flags say otherwise.
    #[arg(long, env = "TAILOR_JOB")]
    pub job: Option<PathBuf>,
    /// Output root URL (where the run history is: <output>/_history/).
    #[arg(long, env = "TAILOR_OUTPUT")]
    pub output: Option<String>,
    /// Input root URL: the window grid then shows the plan's states.
    #[arg(long)]
    pub input: Option<String>,
    /// Shards (repeatable; default: those in the history).
    #[arg(long = "shard")]
    pub shards: Vec<String>,
    #[arg(long, value_parser = parse_hour)]
    pub from: Option<Hour>,
    #[arg(long, value_parser = parse_hour)]
    pub to: Option<Hour>,
    #[arg(long)]
    pub shard_map: Option<PathBuf>,
    /// Write the HTML page here (with --format html).
    #[arg(long)]
    pub html: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "html")]
    pub format: ReportFormat,
    /// A run is flagged slow above this many times its shard's recent median.
    #[arg(long, default_value_t = 1.5)]
    pub slow_margin: f64,
}

pub async fn main(a: ReportArgs) -> Result<ExitCode, JobError> {
    let file = match &a.job {
        Some(p) => JobFile::load(p)?,
        None => JobFile::default(),
    };
    let output_url = a
        .output
        .clone()
        .or(file.output.clone())
        .ok_or_else(|| JobError::Config("--output is required (flag or job file)".into()))?;
    let input_url = a.input.clone().or(file.input.clone());
    if a.format == ReportFormat::Html && a.html.is_none() {
        return Err(JobError::Config("--format html needs --html <file>".into()));
    }
    let output = StoreRoot::open(&output_url)?;
    let (from, to) = (
        a.from.as_ref().map(|h| h.to_string()),
        a.to.as_ref().map(|h| h.to_string()),
    );
    let history =
        crate::job::history::read(&output, &a.shards, from.as_deref(), to.as_deref()).await?;
    // The hours shown: --from/--to, or those of the history's windows.
    let span: Vec<String> = match (&a.from, &a.to) {
        (Some(f), Some(t)) => hours(f, t).iter().map(|h| h.to_string()).collect(),
        _ => {
            let mut seen: Vec<Hour> = history
                .iter()
                .filter_map(|e| e.window.split_once('_'))
                .flat_map(|(f, t)| match (Hour::parse(f), Hour::parse(t)) {
                    (Some(f), Some(t)) => hours(&f, &t),
                    _ => Vec::new(),
                })
                .collect();
            seen.sort();
            seen.dedup();
            match (seen.first(), seen.last()) {
                (Some(f), Some(t)) => hours(f, t).iter().map(|h| h.to_string()).collect(),
                _ => Vec::new(),
            }
        }
    };
    let mut shards = a.shards.clone();
    if shards.is_empty() {
        shards = history.iter().map(|e| e.shard.clone()).collect();
        shards.sort();
        shards.dedup();
    }
    let planned = match &input_url {
        Some(url) if !span.is_empty() => {
            let (map, _) = load_shard_map(a.shard_map.as_deref().or(file.shard_map.as_deref()))?;
            if shards.is_empty() {
                shards = map.shards().iter().map(|s| s.to_string()).collect();
            }
            let (role, migration, migration_arg) =
                crate::cli::migration_settings(None, None, &file)?;
            let cfg = PlanConfig {
                shards: shards.clone(),
                map,
                from: span.first().and_then(|h| Hour::parse(h)),
                to: span.last().and_then(|h| Hour::parse(h)),
                settle: DEFAULT_SETTLE,
                now: chrono::Utc::now(),
                concurrency: 16,
                role,
                migration,
                migration_arg,
            };
            Some(plan(&cfg, &StoreRoot::open(url)?, &output).await?)
        }
        _ => None,
    };
    let cfg = DashboardConfig {
        slow_margin: a.slow_margin,
        ..Default::default()
    };
    let d = build(
        &cfg,
        &output_url,
        input_url.as_deref(),
        &history,
        planned.as_ref(),
        &span,
        &shards,
    );
    match a.format {
        ReportFormat::Json => {
            use std::io::Write;
            let json = serde_json::to_string_pretty(&d).expect("json") + "\n";
            std::io::stdout()
                .lock()
                .write_all(json.as_bytes())
                .at("writing to stdout")?;
        }
        ReportFormat::Html => {
            let path = a.html.as_ref().expect("checked above");
            std::fs::write(path, html(&d)).at(format_args!("writing {}", path.display()))?;
            eprintln!(
                "report: {} runs of {} shards over {} hours written to {}",
                d.runs.len(),
                d.grid.len(),
                d.hours.len(),
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
