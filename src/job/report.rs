//! The run report: what came in, what went out, what was dropped and why,
//! and where the time and memory went. Written as JSON (`--report`) and
//! printed as a short human summary. The top of `job/`: it reads what the
//! run returned ([`RunStats`]) and its result; no step reads it.

use serde::Serialize;

use crate::job::config::RunConfig;
use crate::job::error::JobError;
use crate::job::run::{RunStats, run_shard};

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tailor_version: &'static str,
    /// `committed` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub config: RunConfig,
    #[serde(flatten)]
    pub run: RunStats,
}

/// Runs one shard job and returns its report whatever happened, beside
/// the run's result: on failure the report says how far the job got, why
/// it failed, and the time and memory it took until then.
pub async fn run_reported(cfg: &RunConfig) -> (Report, Result<(), JobError>) {
    let (stats, result) = run_shard(cfg).await;
    (Report::new(cfg, stats, result.as_ref().err()), result)
}

impl Report {
    /// The report of a run with `cfg` that did `run` and ended with
    /// `error` (or committed).
    pub fn new(cfg: &RunConfig, run: RunStats, error: Option<&JobError>) -> Self {
        let (status, error) = match error {
            None if run.committed => ("committed", None),
            None if run.skipped.is_some() => ("up-to-date", None),
            None => ("failed", Some("the run ended without a commit".to_string())),
            Some(e) => ("failed", Some(e.to_string())),
        };
        Self {
            tailor_version: env!("CARGO_PKG_VERSION"),
            status: status.into(),
            error,
            config: cfg.clone(),
            run,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    /// The short human summary.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        let _ = writeln!(
            s,
            "tailor run {} {}: {}",
            self.config.shard,
            self.run
                .window
                .as_ref()
                .map(|w| format!("{}..{}", opt(&w.from), opt(&w.to)))
                .unwrap_or_default(),
            self.status
        );
        let _ = writeln!(
            s,
            "  input   {} objects, {:.1} MiB, {} frames, {} payloads, {} points ({} other objects ignored)",
            self.run.input.objects,
            mb(self.run.input.bytes),
            self.run.scan.frames,
            self.run.scan.payloads,
            self.run.scan.points,
            self.run.input.ignored.len()
        );
        let _ = writeln!(
            s,
            "  output  {} series, {} points, {} files, {:.1} MiB ({:.2} bytes/point)",
            self.run.output.series,
            self.run.output.points,
            self.run.output.files,
            mb(self.run.output.bytes),
            if self.run.output.points > 0 {
                self.run.output.bytes as f64 / self.run.output.points as f64
            } else {
                0.0
            }
        );
        let _ = writeln!(
            s,
            "  dropped {} duplicate points ({} conflicting), {} misrouted payloads ({} points), {} corrupt frames skipped",
            self.run.merge.duplicates_dropped,
            self.run.merge.conflicting_duplicates,
            self.run.scan.misrouted_payloads,
            self.run.scan.misrouted_points,
            self.run.scan.corrupt_frames
        );
        let _ = writeln!(
            s,
            "  memory  peak RSS {:.1} MiB{}, spilled {:.1} MiB in {} spills",
            mb(self.run.peak_rss_bytes),
            self.config
                .memory_limit
                .map(|l| format!(
                    " (limit {:.1} MiB: {})",
                    mb(l),
                    self.config.memory_limit_source
                ))
                .unwrap_or_default(),
            mb(self.run.spill.spilled_bytes),
            self.run.spill.spill_count
        );
        let phases: Vec<String> = self
            .run
            .phases
            .iter()
            .map(|p| {
                format!(
                    "{} {:.2}s/{:.2}s",
                    p.name,
                    p.wall.as_secs_f64(),
                    p.cpu.as_secs_f64()
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "  time    {:.2}s wall, {:.2}s CPU; phases wall/CPU (scan, group and encode overlap): {}",
            self.run.wall.as_secs_f64(),
            self.run.cpu.as_secs_f64(),
            phases.join(", ")
        );
        if !self.run.left_to_other.is_empty() {
            let total: u64 = self.run.left_to_other.values().sum();
            let orgs: Vec<String> = self
                .run
                .left_to_other
                .iter()
                .take(10)
                .map(|(org, n)| format!("org {org}: {n}"))
                .collect();
            let _ = writeln!(
                s,
                "  role    {}: {total} points left to the other system ({}{})",
                self.config.role.name(),
                orgs.join(", "),
                if self.run.left_to_other.len() > 10 {
                    ", ..."
                } else {
                    ""
                }
            );
        }
        for m in self.run.misrouted.iter().take(5) {
            let _ = writeln!(
                s,
                "  misrouted: {} @ {}: org {} belongs to {}",
                m.key, m.offset, m.org_id, m.expected_shard
            );
        }
        for c in self.run.corrupt.iter().take(5) {
            let _ = writeln!(s, "  corrupt: {} @ {}: {}", c.key, c.offset, c.reason);
        }
        if let Some(why) = &self.run.skipped {
            let _ = writeln!(s, "  skipped: {why}");
        }
        for w in &self.run.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        s
    }
}

fn opt<T: std::fmt::Display>(o: &Option<T>) -> String {
    o.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "*".into())
}
