//! Measurements every step takes: wall and CPU time of a phase, the
//! process's CPU time and resident memory, what a DataFusion plan spilled
//! and spent per operator, and the scan's progress bar.
//!
//! Process figures come from `getrusage(2)` and `/proc/self/statm`
//! directly rather than from a process-metrics crate: `procfs` covers them
//! (`stat` utime/stime, `status` VmHWM) but in clock ticks (10 ms) and by
//! parsing `/proc` text, where one `getrusage` call gives user + system CPU
//! time in microseconds and the peak RSS (`ru_maxrss`); the job samples
//! them at every phase boundary, so precision and cost both matter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::physical_plan::ExecutionPlan;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::datasource::scan_log::ScanLog;

/// CPU time of this process (user + system).
pub fn cpu_time() -> Duration {
    rusage(libc::RUSAGE_SELF).0
}

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

/// Peak resident set size of this process, in bytes.
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
    /// When the phase began, from the start of the run (for timelines).
    #[serde(with = "secs")]
    pub start: Duration,
    /// Per-operator compute time inside the phase (seconds), where known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub detail: Vec<(String, f64)>,
    /// When it began (set by [`Self::start`] or [`Self::measured_from`]);
    /// turned into `start` once the run's own start is known.
    #[serde(skip)]
    pub began: Option<Instant>,
    #[serde(skip)]
    started: Option<(Instant, Duration)>,
}

impl Phase {
    pub fn start(name: &str) -> Self {
        let now = Instant::now();
        Self {
            name: name.to_string(),
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            start: Duration::ZERO,
            detail: Vec::new(),
            began: Some(now),
            started: Some((now, cpu_time())),
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
            start: Duration::ZERO,
            detail: Vec::new(),
            began: None,
            started: None,
        }
    }

    /// [`Self::measured`], for a phase that began at `began`.
    pub fn measured_from(name: &str, began: Instant, wall: Duration, cpu: Duration) -> Self {
        Self {
            began: Some(began),
            ..Self::measured(name, wall, cpu)
        }
    }

    /// Sets `start` from when the run began.
    pub fn place(&mut self, run_began: Instant) {
        if let Some(b) = self.began {
            self.start = b.saturating_duration_since(run_began);
        }
    }
}

pub(crate) mod secs {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e6)
    }
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
