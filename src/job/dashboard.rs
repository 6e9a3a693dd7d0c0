//! `tailor report`: what operators look at, from the run history
//! (`history.rs`) and, when the input is given, the plan: one
//! self-contained HTML page (no scripts, fonts or anything fetched) or the
//! same figures as JSON.
//!
//! * the state of every (shard, hour) window as a grid;
//! * a phase timeline (Gantt chart) of each chosen run;
//! * per shard over time: wall time, points per second, peak RSS, with the
//!   runs slower than the shard's recent median by `slow_margin` flagged;
//! * the largest shards and the skew between them;
//! * what was dropped, misrouted and corrupt, with the objects' keys.
//!
//! Charts are SVG drawn by plotters, on white cards with dark text so they
//! read in print and on a dark page alike.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use plotters::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::job::history::Entry;
use crate::job::plan::Plan;

/// What the report covers and how it judges.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// A run is flagged slow when its wall time is over this many times
    /// the median of the shard's previous `recent` successful runs.
    pub slow_margin: f64,
    pub recent: usize,
    /// Phase timelines of this many of the latest runs.
    pub timelines: usize,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            slow_margin: 1.5,
            recent: 10,
            timelines: 6,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub hour: String,
    /// A plan state, or from the history: `committed`, `failed`, `none`.
    pub state: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GridRow {
    pub shard: String,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunPoint {
    pub shard: String,
    pub window: String,
    pub ended_at: DateTime<Utc>,
    pub status: String,
    pub wall_s: f64,
    pub cpu_s: f64,
    pub points: u64,
    pub points_per_s: f64,
    pub peak_rss_bytes: u64,
    pub input_bytes: u64,
    /// The median wall time of the shard's previous successful runs.
    pub median_wall_s: Option<f64>,
    pub slow: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseBar {
    pub name: String,
    pub start_s: f64,
    pub wall_s: f64,
    pub cpu_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub shard: String,
    pub window: String,
    pub ended_at: DateTime<Utc>,
    pub phases: Vec<PhaseBar>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardSize {
    pub shard: String,
    /// Input bytes of the latest run of each of its windows.
    pub input_bytes: u64,
    pub points: u64,
    pub runs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Drops {
    pub shard: String,
    pub window: String,
    pub ended_at: DateTime<Utc>,
    pub duplicate_points: u64,
    pub conflicting_duplicate_points: u64,
    pub misrouted_payloads: u64,
    pub misrouted_points: u64,
    pub corrupt_frames: u64,
    /// Keys of misrouted payloads and corrupt frames (`key @ offset`).
    pub keys: Vec<String>,
}

/// Every figure of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    pub generated_at: DateTime<Utc>,
    pub output: String,
    pub input: Option<String>,
    pub hours: Vec<String>,
    pub grid: Vec<GridRow>,
    pub runs: Vec<RunPoint>,
    pub timelines: Vec<Timeline>,
    /// Largest first.
    pub shards: Vec<ShardSize>,
    /// The largest shard's input bytes over the median shard's.
    pub skew: f64,
    pub drops: Vec<Drops>,
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The figures of `history` (oldest first) and, if given, `plan`.
pub fn build(
    cfg: &DashboardConfig,
    output: &str,
    input: Option<&str>,
    history: &[Entry],
    plan: Option<&Plan>,
    hours: &[String],
    shards: &[String],
) -> Dashboard {
    // Per shard over time, slow runs flagged against the shard's recent
    // successful runs.
    let mut recent: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut runs = Vec::new();
    for e in history {
        let r = &e.report;
        let wall = f(&r["wall"]);
        let points = u(&r["scan"]["points"]);
        let prev = recent.entry(e.shard.as_str()).or_default();
        let mut window: Vec<f64> = prev.iter().rev().take(cfg.recent).copied().collect();
        let median_wall = (window.len() >= 3).then(|| median(&mut window)).flatten();
        let ok = e.status == "committed";
        let slow = ok && median_wall.is_some_and(|m| wall > m * cfg.slow_margin);
        if ok {
            prev.push(wall);
        }
        runs.push(RunPoint {
            shard: e.shard.clone(),
            window: e.window.clone(),
            ended_at: e.ended_at,
            status: e.status.clone(),
            wall_s: wall,
            cpu_s: f(&r["cpu"]),
            points,
            points_per_s: if wall > 0.0 {
                points as f64 / wall
            } else {
                0.0
            },
            peak_rss_bytes: u(&r["peak_rss_bytes"]),
            input_bytes: u(&r["input"]["bytes"]),
            median_wall_s: median_wall,
            slow,
        });
    }
    // The latest run of each window.
    let mut latest: BTreeMap<(&str, &str), &Entry> = BTreeMap::new();
    for e in history {
        latest.insert((e.shard.as_str(), e.window.as_str()), e);
    }
    let mut sizes: BTreeMap<&str, ShardSize> = BTreeMap::new();
    for ((shard, _), e) in &latest {
        let s = sizes.entry(shard).or_insert_with(|| ShardSize {
            shard: shard.to_string(),
            input_bytes: 0,
            points: 0,
            runs: 0,
        });
        s.input_bytes += u(&e.report["input"]["bytes"]);
        s.points += u(&e.report["scan"]["points"]);
    }
    for e in history {
        if let Some(s) = sizes.get_mut(e.shard.as_str()) {
            s.runs += 1;
        }
    }
    let mut shard_sizes: Vec<ShardSize> = sizes.into_values().collect();
    shard_sizes.sort_by(|a, b| {
        b.input_bytes
            .cmp(&a.input_bytes)
            .then(a.shard.cmp(&b.shard))
    });
    let mut bytes: Vec<f64> = shard_sizes.iter().map(|s| s.input_bytes as f64).collect();
    let skew = match (bytes.first().copied(), median(&mut bytes)) {
        (Some(max), Some(m)) if m > 0.0 => max / m,
        _ => 1.0,
    };
    // The grid: the plan's states, or what the history says.
    let grid = shards
        .iter()
        .map(|shard| GridRow {
            shard: shard.clone(),
            cells: hours
                .iter()
                .map(|h| {
                    let window = format!("{h}_{h}");
                    let state = match plan {
                        Some(p) => p
                            .windows
                            .iter()
                            .find(|w| &w.shard == shard && w.from == *h)
                            .map_or("empty", |w| w.state.name())
                            .to_string(),
                        None => match latest.get(&(shard.as_str(), window.as_str())) {
                            Some(e) if e.status == "failed" => "failed".into(),
                            Some(_) => "committed".into(),
                            None => "none".into(),
                        },
                    };
                    Cell {
                        hour: h.clone(),
                        state,
                    }
                })
                .collect(),
        })
        .collect();
    let timelines = history
        .iter()
        .rev()
        .take(cfg.timelines)
        .map(|e| Timeline {
            shard: e.shard.clone(),
            window: e.window.clone(),
            ended_at: e.ended_at,
            phases: e.report["phases"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| PhaseBar {
                            name: p["name"].as_str().unwrap_or("?").to_string(),
                            start_s: f(&p["start"]),
                            wall_s: f(&p["wall"]),
                            cpu_s: f(&p["cpu"]),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let drops = latest
        .values()
        .map(|e| {
            let r = &e.report;
            let keys = ["misrouted", "corrupt"]
                .iter()
                .filter_map(|k| r[*k].as_array())
                .flatten()
                .map(|x| format!("{} @ {}", x["key"].as_str().unwrap_or("?"), u(&x["offset"])))
                .take(20)
                .collect();
            Drops {
                shard: e.shard.clone(),
                window: e.window.clone(),
                ended_at: e.ended_at,
                duplicate_points: u(&r["merge"]["duplicates_dropped"]),
                conflicting_duplicate_points: u(&r["merge"]["conflicting_duplicates"]),
                misrouted_payloads: u(&r["scan"]["misrouted_payloads"]),
                misrouted_points: u(&r["scan"]["misrouted_points"]),
                corrupt_frames: u(&r["scan"]["corrupt_frames"]),
                keys,
            }
        })
        .collect();
    Dashboard {
        generated_at: Utc::now(),
        output: output.to_string(),
        input: input.map(str::to_string),
        hours: hours.to_vec(),
        grid,
        runs,
        timelines,
        shards: shard_sizes,
        skew,
        drops,
    }
}

/// Colours readable on the charts' white cards, in print and on screen.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
];
const SLOW: RGBColor = RGBColor(214, 39, 40);

/// One line of a chart: its name and its points (unix seconds, value,
/// slow?).
type Line = (String, Vec<(f64, f64, bool)>);

/// A line chart of `series` (per shard: (unix seconds, value, slow?)),
/// each point a circle (a slow one red and larger). Returns the SVG.
fn line_chart(title: &str, unit: &str, series: &[Line]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 320)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let all: Vec<&(f64, f64, bool)> = series.iter().flat_map(|(_, v)| v).collect();
        let (x0, x1) = all
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let pad = ((x1 - x0) * 0.05).max(1.0);
        let (x0, x1) = if all.is_empty() {
            (0.0, 1.0)
        } else {
            (x0 - pad, x1 + pad)
        };
        let y1 = all.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.15;
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18).into_font().color(&BLACK))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, 0.0..y1);
        let Ok(mut chart) = chart else {
            return svg_error(title);
        };
        let _ = chart
            .configure_mesh()
            .x_labels(6)
            .y_desc(unit)
            .x_label_formatter(&|x| {
                DateTime::<Utc>::from_timestamp(*x as i64, 0)
                    .map_or(String::new(), |t| t.format("%m-%d %H:%M:%S").to_string())
            })
            .y_label_formatter(&|y| si(*y))
            .label_style(("sans-serif", 12).into_font().color(&BLACK))
            .draw();
        for (i, (_, points)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let _ = chart.draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ));
            let _ = chart.draw_series(points.iter().map(|p| {
                if p.2 {
                    Circle::new((p.0, p.1), 6, SLOW.filled())
                } else {
                    Circle::new((p.0, p.1), 3, color.filled())
                }
            }));
        }
        let _ = root.present();
    }
    svg
}

/// A Gantt chart of one run's phases: one bar per phase, from its start
/// for its wall time.
fn gantt(t: &Timeline) -> String {
    let mut svg = String::new();
    {
        let h = 60 + 26 * t.phases.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (900, h)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let end = t
            .phases
            .iter()
            .map(|p| p.start_s + p.wall_s)
            .fold(0.0f64, f64::max)
            .max(1e-6);
        let n = t.phases.len().max(1);
        let title = format!(
            "{} {} ({})",
            t.shard,
            t.window,
            t.ended_at.format("%Y-%m-%d %H:%M:%S")
        );
        let chart = ChartBuilder::on(&root)
            .caption(title.as_str(), ("sans-serif", 15).into_font().color(&BLACK))
            .margin(8)
            .x_label_area_size(26)
            .y_label_area_size(20)
            .build_cartesian_2d(0.0..end * 1.35, 0.0..n as f64);
        let Ok(mut chart) = chart else {
            return svg_error("timeline");
        };
        let _ = chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("seconds from the run's start")
            .label_style(("sans-serif", 12).into_font().color(&BLACK))
            .draw();
        let _ = chart.draw_series(t.phases.iter().enumerate().map(|(i, p)| {
            let row = (n - 1 - i) as f64;
            Rectangle::new(
                [
                    (p.start_s, row + 0.15),
                    (p.start_s + p.wall_s.max(end / 400.0), row + 0.85),
                ],
                PALETTE[i % PALETTE.len()].filled(),
            )
        }));
        // Each bar's name and times, after it.
        let _ = chart.draw_series(t.phases.iter().enumerate().map(|(i, p)| {
            let row = (n - 1 - i) as f64;
            Text::new(
                format!("{} {:.2}s wall, {:.2}s CPU", p.name, p.wall_s, p.cpu_s),
                (p.start_s + p.wall_s + end * 0.01, row + 0.75),
                ("sans-serif", 12).into_font().color(&BLACK),
            )
        }));
        let _ = root.present();
    }
    svg
}

/// A bar chart of the largest shards' input bytes.
fn bars(shards: &[ShardSize]) -> String {
    let mut svg = String::new();
    {
        let top: Vec<&ShardSize> = shards.iter().take(20).collect();
        let root = SVGBackend::with_string(&mut svg, (900, 320)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let max = top.iter().map(|s| s.input_bytes).max().unwrap_or(1).max(1) as f64 / 1048576.0;
        let n = top.len().max(1);
        let chart = ChartBuilder::on(&root)
            .caption(
                "Input per shard (latest run of each window)",
                ("sans-serif", 18).into_font().color(&BLACK),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..n as f64, 0.0..max * 1.15);
        let Ok(mut chart) = chart else {
            return svg_error("shards");
        };
        let names: Vec<String> = top.iter().map(|s| s.shard.clone()).collect();
        let _ = chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = (x - 0.5).round();
                if i >= 0.0 && (i as usize) < names.len() && (x.fract() - 0.5).abs() < 0.01 {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_desc("MiB")
            .label_style(("sans-serif", 12).into_font().color(&BLACK))
            .draw();
        let _ = chart.draw_series(top.iter().enumerate().map(|(i, s)| {
            Rectangle::new(
                [
                    (i as f64 + 0.15, 0.0),
                    (i as f64 + 0.85, s.input_bytes as f64 / 1048576.0),
                ],
                PALETTE[0].filled(),
            )
        }));
        let _ = root.present();
    }
    svg
}

/// A number with an SI prefix: 2.5M, 120k, 0.35.
fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn svg_error(what: &str) -> String {
    format!("<p>chart {what} could not be drawn</p>")
}

/// HTML-escaped text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const CSS: &str = r#"
:root { color-scheme: light dark; --bg: #ffffff; --fg: #1b1b1b; --muted: #5f6368; --line: #d0d4d9; }
@media (prefers-color-scheme: dark) { :root { --bg: #15181c; --fg: #e8eaed; --muted: #a0a6ad; --line: #3c4043; } }
body { background: var(--bg); color: var(--fg); font: 14px/1.45 system-ui, sans-serif; margin: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
p.meta { color: var(--muted); margin: 0 0 12px; }
figure.chart { background: #ffffff; color: #1b1b1b; border: 1px solid var(--line); border-radius: 6px; padding: 6px; margin: 8px 0; width: fit-content; }
figure.chart svg { display: block; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: right; }
th { text-align: center; } td.l { text-align: left; white-space: nowrap; }
table.grid td { width: 18px; height: 18px; padding: 0; }
.s-done, .s-committed { background: #2e9d48; } .s-pending { background: #e8a317; }
.s-stale { background: #e8671c; } .s-settling { background: #8ab4f8; }
.s-empty, .s-none { background: transparent; } .s-orphaned { background: #9c27b0; }
.s-failed { background: #d62728; }
.legend span { display: inline-block; margin-right: 12px; } .legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px; border: 1px solid var(--line); }
tr.slow td { font-weight: 600; color: #d62728; }
code { font-size: 12px; }
@media print { body { margin: 8mm; background: #fff; color: #000; } figure.chart { break-inside: avoid; } }
"#;

const STATES: [&str; 9] = [
    "done",
    "committed",
    "pending",
    "stale",
    "settling",
    "empty",
    "orphaned",
    "failed",
    "none",
];

/// The report as one self-contained HTML page.
pub fn html(d: &Dashboard) -> String {
    use std::fmt::Write;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tailor report</title><style>{CSS}</style></head><body>"
    );
    let _ = write!(
        h,
        "<h1>tailor report</h1><p class=\"meta\">output {} {}· {} runs in the history · generated {}</p>",
        esc(&d.output),
        d.input
            .as_deref()
            .map_or(String::new(), |i| format!("· input {} ", esc(i))),
        d.runs.len(),
        d.generated_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    // The grid.
    let _ = write!(h, "<h2>Windows by shard and hour</h2><p class=\"legend\">");
    for s in STATES {
        let _ = write!(
            h,
            "<span><i class=\"s-{s}\" style=\"background:var(--c)\"></i>{s}</span>"
        );
    }
    let _ = write!(
        h,
        "</p><table class=\"grid\" id=\"grid\" data-rows=\"{}\"><tr><th></th>",
        d.grid.len()
    );
    for hour in &d.hours {
        let _ = write!(h, "<th title=\"{hour}\">{}</th>", &hour[11..]);
    }
    h.push_str("</tr>");
    for row in &d.grid {
        let _ = write!(
            h,
            "<tr data-shard=\"{}\"><td class=\"l\">{}</td>",
            esc(&row.shard),
            esc(&row.shard)
        );
        for c in &row.cells {
            let _ = write!(
                h,
                "<td class=\"s-{}\" title=\"{} {}: {}\"></td>",
                c.state,
                esc(&row.shard),
                c.hour,
                c.state
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    // Over time, per shard.
    let mut per_shard: BTreeMap<&str, Vec<&RunPoint>> = BTreeMap::new();
    for r in &d.runs {
        per_shard.entry(r.shard.as_str()).or_default().push(r);
    }
    let series = |v: &dyn Fn(&RunPoint) -> f64| -> Vec<Line> {
        per_shard
            .iter()
            .map(|(s, runs)| {
                (
                    s.to_string(),
                    runs.iter()
                        .filter(|r| r.status == "committed")
                        .map(|r| (r.ended_at.timestamp_millis() as f64 / 1000.0, v(r), r.slow))
                        .collect(),
                )
            })
            .collect()
    };
    let committed = d.runs.iter().filter(|r| r.status == "committed").count();
    h.push_str("<h2>Shards over time</h2><p class=\"legend\">");
    for (i, s) in per_shard.keys().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let _ = write!(
            h,
            "<span><i style=\"background:rgb({},{},{})\"></i>{}</span>",
            c.0,
            c.1,
            c.2,
            esc(s)
        );
    }
    let _ = write!(
        h,
        "<span><i style=\"background:rgb(214,39,40)\"></i>slow run</span></p>"
    );
    for (id, title, unit, v) in [
        (
            "wall",
            "Wall time per run",
            "seconds",
            (&|r: &RunPoint| r.wall_s) as &dyn Fn(&RunPoint) -> f64,
        ),
        ("rate", "Points per second", "points/s", &|r: &RunPoint| {
            r.points_per_s
        }),
        ("rss", "Peak RSS", "MiB", &|r: &RunPoint| {
            r.peak_rss_bytes as f64 / 1048576.0
        }),
    ] {
        let _ = write!(
            h,
            "<figure class=\"chart\" id=\"chart-{id}\" data-points=\"{committed}\">{}</figure>",
            line_chart(title, unit, &series(v))
        );
    }
    let slow: Vec<&RunPoint> = d.runs.iter().filter(|r| r.slow).collect();
    let _ = write!(
        h,
        "<h2>Slow runs</h2><table id=\"slow\" data-rows=\"{}\"><tr><th>shard</th><th>window</th><th>ended</th><th>wall s</th><th>median of recent s</th></tr>",
        slow.len()
    );
    for r in &slow {
        let _ = write!(
            h,
            "<tr class=\"slow\"><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            esc(&r.shard),
            esc(&r.window),
            r.ended_at.format("%Y-%m-%d %H:%M:%S"),
            r.wall_s,
            r.median_wall_s.unwrap_or(0.0)
        );
    }
    h.push_str("</table>");
    // Phase timelines.
    h.push_str("<h2>Phase timelines of the latest runs</h2><p class=\"legend\">");
    for (i, name) in ["list", "scan+decode", "group", "encode", "write", "commit"]
        .iter()
        .enumerate()
    {
        let c = PALETTE[i % PALETTE.len()];
        let _ = write!(
            h,
            "<span><i style=\"background:rgb({},{},{})\"></i>{name}</span>",
            c.0, c.1, c.2
        );
    }
    h.push_str("</p>");
    for (i, t) in d.timelines.iter().enumerate() {
        let _ = write!(
            h,
            "<figure class=\"chart gantt\" id=\"gantt-{i}\" data-points=\"{}\">{}</figure>",
            t.phases.len(),
            gantt(t)
        );
    }
    // Largest shards.
    let _ = write!(
        h,
        "<h2>Largest shards</h2><p>Skew (largest over median): <b id=\"skew\">{:.2}</b></p><figure class=\"chart\" id=\"chart-shards\" data-points=\"{}\">{}</figure>",
        d.skew,
        d.shards.len().min(20),
        bars(&d.shards)
    );
    let _ = write!(
        h,
        "<table id=\"shards\" data-rows=\"{}\"><tr><th>shard</th><th>input MiB</th><th>points</th><th>runs</th></tr>",
        d.shards.len()
    );
    for s in &d.shards {
        let _ = write!(
            h,
            "<tr><td class=\"l\">{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.shard),
            s.input_bytes as f64 / 1048576.0,
            s.points,
            s.runs
        );
    }
    h.push_str("</table>");
    // Drops.
    let _ = write!(
        h,
        "<h2>Dropped, misrouted and corrupt (latest run of each window)</h2><table id=\"drops\" data-rows=\"{}\"><tr><th>shard</th><th>window</th><th>duplicate points</th><th>of them conflicting</th><th>misrouted payloads</th><th>misrouted points</th><th>corrupt frames</th><th>keys</th></tr>",
        d.drops.len()
    );
    for x in &d.drops {
        let keys: Vec<String> = x
            .keys
            .iter()
            .map(|k| format!("<code>{}</code>", esc(k)))
            .collect();
        let _ = write!(
            h,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            esc(&x.shard),
            esc(&x.window),
            x.duplicate_points,
            x.conflicting_duplicate_points,
            x.misrouted_payloads,
            x.misrouted_points,
            x.corrupt_frames,
            keys.join("<br>")
        );
    }
    h.push_str("</table></body></html>\n");
    // The legend's state swatches take their cells' colours.
    h.replace("style=\"background:var(--c)\"", "")
}
