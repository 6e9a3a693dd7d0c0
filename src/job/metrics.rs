//! Prometheus metrics of a run and of a plan, in the text exposition format
//! (version 0.0.4): written to a file for node_exporter's textfile
//! collector (`--metrics-file`, atomically: a temporary file renamed into
//! place) and pushed to a Pushgateway (`--pushgateway`), grouped by job,
//! shard and window. Every metric is documented in `docs/metrics.md`.
//!
//! A batch job's metrics describe its last run, so they are gauges (a
//! Pushgateway group holds the last push); counts of what one run did are
//! gauges named for what they count. Units are in the names (`_seconds`,
//! `_bytes`), as Prometheus' naming conventions ask.

use std::path::Path;

use prometheus::{Encoder, GaugeVec, Opts, Registry, TextEncoder};

use crate::job::error::{ErrorClass, IoContext, JobError};
use crate::job::plan::{Plan, State};
use crate::job::report::Report;

/// The outcome label of a run: what a scheduler does with it.
pub fn outcome(report: &Report, class: Option<ErrorClass>) -> &'static str {
    match class {
        None if report.status == "up-to-date" => "up_to_date",
        None => "success",
        Some(ErrorClass::Usage) => "usage",
        Some(ErrorClass::Data) => "data",
        Some(ErrorClass::Internal) => "internal",
        Some(ErrorClass::Io) => "io",
        Some(ErrorClass::LostRace) => "lost_race",
    }
}

/// Every outcome, so that a run sets one to 1 and the others to 0.
pub const OUTCOMES: [&str; 7] = [
    "success",
    "up_to_date",
    "usage",
    "data",
    "internal",
    "io",
    "lost_race",
];

struct Metrics {
    registry: Registry,
}

impl Metrics {
    fn new(labels: &[(&str, &str)]) -> Self {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self {
            registry: Registry::new_custom(Some("tailor".into()), Some(labels))
                .expect("valid registry"),
        }
    }

    /// Sets gauge `name` (with `help`) to `value` for each of `values`'
    /// label sets.
    fn gauge(&self, name: &str, help: &str, label_names: &[&str], values: &[(&[&str], f64)]) {
        let g = GaugeVec::new(Opts::new(name, help), label_names).expect("valid gauge");
        for (labels, v) in values {
            g.with_label_values(labels).set(*v);
        }
        self.registry
            .register(Box::new(g))
            .expect("each metric registered once");
    }

    fn one(&self, name: &str, help: &str, value: f64) {
        self.gauge(name, help, &[], &[(&[], value)]);
    }

    fn text(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("utf-8")
    }
}

/// The metrics of one run (successful or not) of `report`'s shard and
/// window, at `now` (seconds since the epoch).
pub fn run_metrics(report: &Report, class: Option<ErrorClass>, now: f64) -> String {
    let r = &report.run;
    let window = r
        .window
        .as_ref()
        .map(|w| {
            format!(
                "{}_{}",
                w.from.as_ref().map_or("", |h| h.as_str()),
                w.to.as_ref().map_or("", |h| h.as_str())
            )
        })
        .unwrap_or_default();
    let m = Metrics::new(&[("shard", &report.config.shard), ("window", &window)]);
    let out = outcome(report, class);
    let outcomes: Vec<(&[&str], f64)> = OUTCOMES
        .iter()
        .map(|o| (std::slice::from_ref(o), if *o == out { 1.0 } else { 0.0 }))
        .collect();
    m.gauge(
        "run_outcome",
        "1 for the outcome of the last run (success, up_to_date, usage, data, internal, io, lost_race), 0 for the others",
        &["outcome"],
        &outcomes,
    );
    m.one(
        "run_last_timestamp_seconds",
        "When the last run ended (seconds since the epoch)",
        now,
    );
    if class.is_none() {
        m.one(
            "run_last_success_timestamp_seconds",
            "When the last successful run of the window ended",
            now,
        );
    }
    m.one(
        "run_wall_seconds",
        "Wall time of the run",
        r.wall.as_secs_f64(),
    );
    m.one(
        "run_cpu_seconds",
        "CPU time (user + system) of the run",
        r.cpu.as_secs_f64(),
    );
    let phases: Vec<(Vec<&str>, f64, f64)> = r
        .phases
        .iter()
        .map(|p| {
            (
                vec![p.name.as_str()],
                p.wall.as_secs_f64(),
                p.cpu.as_secs_f64(),
            )
        })
        .collect();
    let wall: Vec<(&[&str], f64)> = phases.iter().map(|(l, w, _)| (l.as_slice(), *w)).collect();
    let cpu: Vec<(&[&str], f64)> = phases.iter().map(|(l, _, c)| (l.as_slice(), *c)).collect();
    m.gauge(
        "run_phase_wall_seconds",
        "Wall time of each phase (scan, group and encode overlap)",
        &["phase"],
        &wall,
    );
    m.gauge(
        "run_phase_cpu_seconds",
        "CPU time spent in each phase",
        &["phase"],
        &cpu,
    );
    m.one(
        "input_objects",
        "Payload objects read",
        r.input.objects as f64,
    );
    m.one(
        "input_bytes",
        "Bytes of the payload objects read",
        r.input.bytes as f64,
    );
    m.one("input_frames", "Frames read", r.scan.frames as f64);
    m.one(
        "input_points",
        "Points read (misrouted ones included)",
        r.scan.points as f64,
    );
    m.one(
        "output_files",
        "Data files committed",
        r.output.files as f64,
    );
    m.one(
        "output_bytes",
        "Bytes of the data files committed",
        r.output.bytes as f64,
    );
    m.one("output_series", "Series committed", r.output.series as f64);
    m.one("output_points", "Points committed", r.output.points as f64);
    let dropped: [(&[&str], f64); 3] = [
        (&["duplicate"], r.merge.duplicates_dropped as f64),
        (&["misrouted"], r.scan.misrouted_points as f64),
        (
            &["conflicting_duplicate"],
            r.merge.conflicting_duplicates as f64,
        ),
    ];
    m.gauge(
        "dropped_points",
        "Points not committed, by reason: duplicate (a later point of the series had the timestamp; conflicting_duplicate counts those of them whose value differed), misrouted (found under the wrong shard)",
        &["reason"],
        &dropped,
    );
    m.one(
        "misrouted_payloads",
        "Payloads found under a shard their org does not belong to",
        r.scan.misrouted_payloads as f64,
    );
    m.one(
        "corrupt_frames",
        "Corrupt frames skipped (--on-corrupt skip)",
        r.scan.corrupt_frames as f64,
    );
    m.one(
        "spilled_bytes",
        "Bytes the grouping sort spilled to disk",
        r.spill.spilled_bytes as f64,
    );
    m.one(
        "peak_rss_bytes",
        "Peak resident memory of the run",
        r.peak_rss_bytes as f64,
    );
    m.one(
        "memory_limit_bytes",
        "The run's --memory-limit",
        report.config.memory_limit.unwrap_or(0) as f64,
    );
    m.text()
}

/// The per-shard last-success metric, pushed to its own group so that it
/// survives the window groups: the alert "no successful run for N hours"
/// reads it.
pub fn shard_success_metrics(shard: &str, now: f64) -> String {
    let m = Metrics::new(&[("shard", shard)]);
    m.one(
        "shard_last_success_timestamp_seconds",
        "When a run of the shard last succeeded (seconds since the epoch)",
        now,
    );
    m.text()
}

/// The metrics of a plan.
pub fn plan_metrics(plan: &Plan, took_seconds: f64) -> String {
    let m = Metrics::new(&[]);
    let states = [
        State::Pending,
        State::Stale,
        State::Done,
        State::Settling,
        State::Empty,
        State::Orphaned,
    ];
    let shards: std::collections::BTreeSet<&str> =
        plan.windows.iter().map(|w| w.shard.as_str()).collect();
    let mut by: std::collections::BTreeMap<(&str, &str), f64> = Default::default();
    for s in &shards {
        for st in states {
            by.insert((s, st.name()), 0.0);
        }
    }
    let mut oldest: std::collections::BTreeMap<&str, f64> =
        shards.iter().map(|s| (*s, 0.0)).collect();
    let now = plan.generated_at.timestamp_millis();
    for w in plan.windows.iter().chain(&plan.other_windows) {
        *by.entry((w.shard.as_str(), w.state.name())).or_default() += 1.0;
        if w.state.needs_run()
            && let Some(to) = crate::datasource::listing::Hour::parse(&w.to)
        {
            let age = (now - (to.start_ms() + 3_600_000)).max(0) as f64 / 1000.0;
            let e = oldest.entry(w.shard.as_str()).or_default();
            *e = e.max(age);
        }
    }
    let labels: Vec<[&str; 2]> = by.keys().map(|(s, st)| [*s, *st]).collect();
    let values: Vec<(&[&str], f64)> = labels
        .iter()
        .zip(by.values())
        .map(|(l, v)| (l.as_slice(), *v))
        .collect();
    m.gauge(
        "plan_windows",
        "Windows of the plan by shard and state (pending, stale, done, settling, empty, orphaned)",
        &["shard", "state"],
        &values,
    );
    let ol: Vec<[&str; 1]> = oldest.keys().map(|s| [*s]).collect();
    let ov: Vec<(&[&str], f64)> = ol
        .iter()
        .zip(oldest.values())
        .map(|(l, v)| (l.as_slice(), *v))
        .collect();
    m.gauge(
        "plan_oldest_pending_age_seconds",
        "Seconds since the end of the hour of the shard's oldest pending or stale window (0: none)",
        &["shard"],
        &ov,
    );
    m.one(
        "plan_misplaced_objects",
        "Payload-named objects outside the layout",
        plan.misplaced.len() as f64,
    );
    m.one(
        "plan_duration_seconds",
        "How long the plan took",
        took_seconds,
    );
    m.one(
        "plan_last_timestamp_seconds",
        "When the plan was made (seconds since the epoch)",
        now as f64 / 1000.0,
    );
    m.text()
}

/// Writes `text` to `path` atomically (a temporary file in the same
/// directory, renamed into place), as node_exporter's textfile collector
/// needs: it must never read half a file.
pub fn write_metrics_file(path: &Path, text: &str) -> Result<(), JobError> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).at(format_args!("creating {}", dir.display()))?;
    let what = format!("writing metrics file {}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".tailor-metrics-")
        .tempfile_in(dir)
        .at(&what)?;
    tmp.write_all(text.as_bytes()).at(&what)?;
    tmp.as_file().sync_all().at(&what)?;
    tmp.persist(path)
        .map_err(|e| JobError::io(&what, e.error))?;
    Ok(())
}

/// Pushes `text` to the Pushgateway at `url`, replacing the group
/// `job=tailor` plus `grouping` (an HTTP PUT).
pub async fn push(url: &str, grouping: &[(&str, &str)], text: String) -> Result<(), JobError> {
    let mut target = format!("{}/metrics/job/tailor", url.trim_end_matches('/'));
    for (k, v) in grouping {
        // Values may hold `/`: base64 form, as the Pushgateway documents.
        use base64::Engine;
        let v64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        target.push_str(&format!("/{k}@base64/{v64}"));
    }
    let what = format!("pushing metrics to {target}");
    let resp = reqwest::Client::new()
        .put(&target)
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(text)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| JobError::io(&what, std::io::Error::other(e)))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(JobError::io(
            &what,
            std::io::Error::other(format!("{status}: {}", body.trim())),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::config::RunConfig;
    use crate::job::run::RunStats;

    /// The value of sample `name` whose labels include `labels`.
    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            let have: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
            let all = labels
                .iter()
                .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()));
            (n == name && all).then(|| value.parse().ok())?
        })
    }

    #[test]
    fn a_runs_metrics_follow_the_exposition_format() {
        let cfg = RunConfig::new("in", "out", "org-mod-3");
        let mut stats = RunStats::default();
        stats.scan.points = 10;
        stats.merge.duplicates_dropped = 2;
        stats.committed = true;
        stats.window = Some(crate::datasource::listing::Window {
            from: crate::datasource::listing::Hour::parse("2026-11-21T13"),
            to: crate::datasource::listing::Hour::parse("2026-11-21T13"),
        });
        let r = Report::new(&cfg, stats, None);
        let text = run_metrics(&r, None, 1_700_000_000.0);
        assert!(text.contains("# TYPE tailor_run_outcome gauge"), "{text}");
        let at = [
            ("shard", "org-mod-3"),
            ("window", "2026-11-21T13_2026-11-21T13"),
        ];
        let with = |extra: (&'static str, &'static str)| {
            let mut v = at.to_vec();
            v.push(extra);
            v
        };
        assert_eq!(
            sample(&text, "tailor_run_outcome", &with(("outcome", "success"))),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "tailor_run_outcome", &with(("outcome", "io"))),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "tailor_dropped_points",
                &with(("reason", "duplicate"))
            ),
            Some(2.0)
        );
        assert_eq!(sample(&text, "tailor_input_points", &at), Some(10.0));
        assert_eq!(
            sample(&text, "tailor_run_last_success_timestamp_seconds", &at),
            Some(1_700_000_000.0)
        );
        let failed = run_metrics(&r, Some(ErrorClass::Data), 1.0);
        assert_eq!(
            sample(&failed, "tailor_run_outcome", &with(("outcome", "data"))),
            Some(1.0)
        );
        assert!(!failed.contains("last_success"));
    }
}
