//! The run report: what came in, what went out, what was dropped and why,
//! and where the time and memory went. Written as JSON (`--report`) and
//! printed as a short human summary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::physical_plan::ExecutionPlan;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::datasource::listing::{Ignored, InputObject, Listing, Window};
use crate::datasource::source::{CorruptRecord, MisroutedRecord, ScanLog, ScanTotals};
use crate::job::config::RunConfig;
use crate::job::manifest::{Manifest, ManifestFile};
use crate::job::run::MergeCounts;

/// CPU time of this process (user + system).
pub fn cpu_time() -> Duration {
    rusage(libc::RUSAGE_SELF).0
}

/// Peak resident set size of this process, in bytes.
/// Bytes resident in this process now (Linux; 0 where unknown).
pub fn current_rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|r| r.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

pub fn peak_rss_bytes() -> u64 {
    rusage(libc::RUSAGE_SELF).1
}

fn rusage(who: libc::c_int) -> (Duration, u64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (
        tv(ru.ru_utime) + tv(ru.ru_stime),
        ru.ru_maxrss as u64 * 1024,
    )
}

/// Wall and CPU time of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    #[serde(with = "secs")]
    pub wall: Duration,
    #[serde(with = "secs")]
    pub cpu: Duration,
    /// Per-operator compute time inside the phase (seconds), where known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub detail: Vec<(String, f64)>,
    #[serde(skip)]
    started: Option<(Instant, Duration)>,
}

impl Phase {
    pub fn start(name: &str) -> Self {
        Self {
            name: name.to_string(),
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            detail: Vec::new(),
            started: Some((Instant::now(), cpu_time())),
        }
    }
    pub fn stop(mut self) -> Self {
        if let Some((w, c)) = self.started.take() {
            self.wall = w.elapsed();
            self.cpu = cpu_time().saturating_sub(c);
        }
        self
    }
    /// A phase measured elsewhere (e.g. on the writer thread).
    pub fn measured(name: &str, wall: Duration, cpu: Duration) -> Self {
        Self {
            name: name.to_string(),
            wall,
            cpu,
            detail: Vec::new(),
            started: None,
        }
    }
}

mod secs {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e6)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct InputSummary {
    pub objects: u64,
    pub bytes: u64,
    /// Every payload object read, in input order.
    pub object_list: Vec<InputObject>,
    pub ignored: Vec<Ignored>,
}

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

#[derive(Debug, Clone, Default, Serialize)]
pub struct SpillSummary {
    pub spill_count: u64,
    pub spilled_bytes: u64,
    pub spilled_rows: u64,
}

impl SpillSummary {
    /// Adds another pass's spills.
    pub fn add(&mut self, other: &SpillSummary) {
        self.spill_count += other.spill_count;
        self.spilled_bytes += other.spilled_bytes;
        self.spilled_rows += other.spilled_rows;
    }
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tailor_version: &'static str,
    pub status: String,
    pub error: Option<String>,
    pub config: RunConfig,
    pub window: Option<Window>,
    pub input: InputSummary,
    /// Frames, payloads and points read (misrouted ones included).
    pub scan: ScanTotals,
    pub merge: MergeCounts,
    pub output: OutputSummary,
    pub corrupt: Vec<CorruptRecord>,
    pub misrouted: Vec<MisroutedRecord>,
    /// Problems that did not fail the run (e.g. a cleanup after the commit).
    pub warnings: Vec<String>,
    pub spill: SpillSummary,
    pub peak_rss_bytes: u64,
    #[serde(with = "secs")]
    pub wall: Duration,
    #[serde(with = "secs")]
    pub cpu: Duration,
    pub phases: Vec<Phase>,
}

impl Report {
    pub fn new(cfg: &RunConfig) -> Self {
        Self {
            tailor_version: env!("CARGO_PKG_VERSION"),
            status: "running".into(),
            error: None,
            config: cfg.clone(),
            window: None,
            input: InputSummary::default(),
            scan: ScanTotals::default(),
            merge: MergeCounts::default(),
            output: OutputSummary::default(),
            corrupt: Vec::new(),
            misrouted: Vec::new(),
            warnings: Vec::new(),
            spill: SpillSummary::default(),
            peak_rss_bytes: 0,
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            phases: Vec::new(),
        }
    }

    pub fn set_inputs(&mut self, l: &Listing) {
        self.input = InputSummary {
            objects: l.objects.len() as u64,
            bytes: l.total_bytes(),
            object_list: l.objects.clone(),
            ignored: l.ignored.clone(),
        };
    }

    pub fn set_output(&mut self, m: &Manifest, stale_removed: u64) {
        self.status = "committed".into();
        self.output = OutputSummary {
            location: m.location.clone(),
            run_id: m.run_id.clone(),
            series: m.series,
            points: m.points,
            bytes: m.files.iter().map(|f| f.bytes).sum(),
            files: m.files.len() as u64,
            file_list: m.files.clone(),
            stale_objects_removed: stale_removed,
        };
    }

    pub fn failed(&mut self, why: &str) {
        self.status = "failed".into();
        self.error = Some(why.to_string());
        self.peak_rss_bytes = peak_rss_bytes();
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
            self.window
                .as_ref()
                .map(|w| format!("{}..{}", opt(&w.from), opt(&w.to)))
                .unwrap_or_default(),
            self.status
        );
        let _ = writeln!(
            s,
            "  input   {} objects, {:.1} MiB, {} frames, {} payloads, {} points ({} other objects ignored)",
            self.input.objects,
            mb(self.input.bytes),
            self.scan.frames,
            self.scan.payloads,
            self.scan.points,
            self.input.ignored.len()
        );
        let _ = writeln!(
            s,
            "  output  {} series, {} points, {} files, {:.1} MiB ({:.2} bytes/point)",
            self.output.series,
            self.output.points,
            self.output.files,
            mb(self.output.bytes),
            if self.output.points > 0 {
                self.output.bytes as f64 / self.output.points as f64
            } else {
                0.0
            }
        );
        let _ = writeln!(
            s,
            "  dropped {} duplicate points ({} conflicting), {} misrouted payloads ({} points), {} corrupt frames skipped",
            self.merge.duplicates_dropped,
            self.merge.conflicting_duplicates,
            self.scan.misrouted_payloads,
            self.scan.misrouted_points,
            self.scan.corrupt_frames
        );
        let _ = writeln!(
            s,
            "  memory  peak RSS {:.1} MiB{}, spilled {:.1} MiB in {} spills",
            mb(self.peak_rss_bytes),
            self.config
                .memory_limit
                .map(|l| format!(" (limit {:.1} MiB)", mb(l)))
                .unwrap_or_default(),
            mb(self.spill.spilled_bytes),
            self.spill.spill_count
        );
        let phases: Vec<String> = self
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
            self.wall.as_secs_f64(),
            self.cpu.as_secs_f64(),
            phases.join(", ")
        );
        for m in self.misrouted.iter().take(5) {
            let _ = writeln!(
                s,
                "  misrouted: {} @ {}: org {} belongs to {}",
                m.key, m.offset, m.org_id, m.expected_shard
            );
        }
        for c in self.corrupt.iter().take(5) {
            let _ = writeln!(s, "  corrupt: {} @ {}: {}", c.key, c.offset, c.reason);
        }
        for w in &self.warnings {
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

/// Spill totals of a plan after it ran.
pub fn spill_metrics(plan: &Arc<dyn ExecutionPlan>) -> SpillSummary {
    let mut s = SpillSummary::default();
    visit(plan, &mut |p| {
        if let Some(m) = p.metrics() {
            s.spill_count += m.spill_count().unwrap_or(0) as u64;
            s.spilled_bytes += m.spilled_bytes().unwrap_or(0) as u64;
            s.spilled_rows += m.spilled_rows().unwrap_or(0) as u64;
        }
    });
    s
}

/// Compute time per operator of a plan after it ran (seconds, summed over partitions).
pub fn operator_times(plan: &Arc<dyn ExecutionPlan>) -> Vec<(String, f64)> {
    let mut v = Vec::new();
    visit(plan, &mut |p| {
        if let Some(m) = p.metrics() {
            let secs = m
                .elapsed_compute()
                .map(|n| n as f64 / 1e9)
                .or_else(|| {
                    m.sum_by_name("time_elapsed_processing")
                        .map(|v| v.as_usize() as f64 / 1e9)
                })
                .unwrap_or(0.0);
            v.push((p.name().to_string(), (secs * 1e6).round() / 1e6));
        }
    });
    v
}

fn visit(plan: &Arc<dyn ExecutionPlan>, f: &mut dyn FnMut(&Arc<dyn ExecutionPlan>)) {
    f(plan);
    for c in plan.children() {
        visit(c, f);
    }
}

/// A progress bar over input bytes on stderr, when it is a terminal.
pub fn progress(enabled: bool, total: u64, log: Arc<ScanLog>) -> Option<Progress> {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} scan {bytes}/{total_bytes} {bar:30} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let b = bar.clone();
    std::thread::spawn(move || {
        while !b.is_finished() {
            b.set_position(log.progress_bytes());
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    Some(Progress(bar))
}

/// The scan's progress bar; cleared (and its updater stopped) when dropped,
/// on success or on any early return.
pub struct Progress(ProgressBar);

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
