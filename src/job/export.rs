//! `tailor export`: a committed output back to one row per point, as
//! Parquet (zstd) or CSV, for diffing and for other tools (DuckDB, pyarrow).
//!
//! Columns: `org_id` u64, `metric_id` u64, `ts` i64 (epoch ms), `value` f64
//! (the stored bits, NaN payloads included; Parquet keeps them), `kind` u8,
//! `interval_s` u32, `metadata` utf8. CSV adds `value_bits` (the value's
//! bits as u64), since text cannot carry NaN payloads or tell -0.0 reliably.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringBuilder, UInt8Array, UInt32Array,
    UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::datasource::listing::{Hour, Window};
use crate::datasource::store::StoreRoot;
use crate::job::error::{IoContext, JobError};
use crate::job::manifest::{Manifest, list_windows, read_manifest};
use crate::job::migration::Migration;
use crate::job::output::{MergedSeries, SeriesData, WindowReader, WindowSeries};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ExportFormat {
    Parquet,
    Csv,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportSummary {
    pub windows: Vec<String>,
    pub series: u64,
    pub points: u64,
    pub bytes: u64,
}

pub fn point_schema(with_bits: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("org_id", DataType::UInt64, false),
        Field::new("metric_id", DataType::UInt64, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
        Field::new("kind", DataType::UInt8, false),
        Field::new("interval_s", DataType::UInt32, false),
        Field::new("metadata", DataType::Utf8, false),
    ];
    if with_bits {
        fields.push(Field::new("value_bits", DataType::UInt64, false));
    }
    Arc::new(Schema::new(fields))
}

/// Collects points into record batches of the point schema; a series'
/// metadata is appended into the array's buffer per point, not cloned.
/// A batch is full at [`Self::max_rows`] points or when its metadata
/// column reaches [`Self::max_meta_bytes`]: a Utf8 column's offsets are 32
/// bits, and a series of many points with large metadata (64 KiB is the
/// format's limit) repeats it per point past 2 GiB, so long series are cut
/// across batches.
pub struct PointBatcher {
    org: Vec<u64>,
    metric: Vec<u64>,
    ts: Vec<i64>,
    value: Vec<u64>,
    kind: Vec<u8>,
    interval: Vec<u32>,
    meta: StringBuilder,
    meta_bytes: usize,
    pub max_rows: usize,
    pub max_meta_bytes: usize,
}

impl Default for PointBatcher {
    fn default() -> Self {
        Self {
            org: Vec::new(),
            metric: Vec::new(),
            ts: Vec::new(),
            value: Vec::new(),
            kind: Vec::new(),
            interval: Vec::new(),
            meta: StringBuilder::new(),
            meta_bytes: 0,
            max_rows: 64 * 1024,
            max_meta_bytes: 256 << 20,
        }
    }
}

impl PointBatcher {
    pub fn len(&self) -> usize {
        self.ts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }
    fn is_full(&self, meta_len: usize) -> bool {
        !self.is_empty()
            && (self.len() >= self.max_rows || self.meta_bytes + meta_len > self.max_meta_bytes)
    }
    /// Adds a series' points, handing each batch that fills up to `flush`
    /// (which takes it with [`Self::take`]).
    pub fn push_series(
        &mut self,
        e: &SeriesData,
        mut flush: impl FnMut(&mut Self) -> Result<(), JobError>,
    ) -> Result<(), JobError> {
        for (&t, &v) in e.ts.iter().zip(&e.vals) {
            if self.is_full(e.metadata.len()) {
                flush(self)?;
            }
            self.org.push(e.org_id);
            self.metric.push(e.metric_id);
            self.ts.push(t);
            self.value.push(v);
            self.kind.push(e.kind);
            self.interval.push(e.interval_s);
            self.meta.append_value(&e.metadata);
            self.meta_bytes += e.metadata.len();
        }
        Ok(())
    }
    pub fn take(&mut self, with_bits: bool) -> Result<RecordBatch, JobError> {
        let bits = std::mem::take(&mut self.value);
        self.meta_bytes = 0;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(std::mem::take(&mut self.org))),
            Arc::new(UInt64Array::from(std::mem::take(&mut self.metric))),
            Arc::new(Int64Array::from(std::mem::take(&mut self.ts))),
            Arc::new(Float64Array::from(
                bits.iter().map(|&b| f64::from_bits(b)).collect::<Vec<_>>(),
            )),
            Arc::new(UInt8Array::from(std::mem::take(&mut self.kind))),
            Arc::new(UInt32Array::from(std::mem::take(&mut self.interval))),
            Arc::new(self.meta.finish()),
        ];
        if with_bits {
            cols.push(Arc::new(UInt64Array::from(bits)));
        }
        Ok(RecordBatch::try_new(point_schema(with_bits), cols)
            .map_err(datafusion::error::DataFusionError::from)?)
    }
}

/// The committed windows of `shard` that lie inside `[from, to]`, in
/// window order. Windows are exported whole, so one only partly inside the
/// range is an error (leaving it out would drop its points unseen), and so
/// are two selected windows that cover the same hour (a replay committed
/// under other bounds than the scheduler's): their points would be
/// exported twice.
pub async fn select_windows(
    root: &StoreRoot,
    shard: &str,
    from: Option<&Hour>,
    to: Option<&Hour>,
) -> Result<Vec<Manifest>, JobError> {
    let selection = Window {
        from: from.cloned(),
        to: to.cloned(),
    };
    let mut out: Vec<Manifest> = Vec::new();
    for w in list_windows(root, shard).await? {
        let m = read_manifest(root, shard, &w).await?;
        let (wf, wt) = (m.window_from.as_str(), m.window_to.as_str());
        let selected = selection
            .selects(wf, wt, &m.location)
            .map_err(|e| JobError::Config(format!("{}: {e}", root.display)))?;
        if !selected {
            continue;
        }
        m.verify(root, shard, &w)?;
        if let Some(o) = out
            .iter()
            .find(|o| o.window_from.as_str() <= wt && wf <= o.window_to.as_str())
        {
            return Err(JobError::BadOutput(format!(
                "{}: shard {shard} has two committed windows over the same hours, \
                 {} and {}: their points would be exported twice; remove the one \
                 that should not be there (replays use the scheduler's window bounds)",
                root.display, o.location, m.location
            )));
        }
        out.push(m);
    }
    Ok(out)
}

enum Sink {
    Parquet(ArrowWriter<std::io::BufWriter<std::fs::File>>),
    Csv(datafusion::arrow::csv::Writer<std::io::BufWriter<std::fs::File>>),
}

/// Exports the selected windows of a shard to `out`.
pub async fn export(
    root: &StoreRoot,
    shard: &str,
    from: Option<&Hour>,
    to: Option<&Hour>,
    format: ExportFormat,
    out: &std::path::Path,
) -> Result<ExportSummary, JobError> {
    let manifests = select_windows(root, shard, from, to).await?;
    if manifests.is_empty() {
        return Err(JobError::BadOutput(format!(
            "no committed output for shard {shard} in that window under {}",
            root.display
        )));
    }
    let windows = manifests
        .into_iter()
        .map(|m| {
            (
                m.location.clone(),
                WindowReader::One(WindowSeries::new(root, m)),
            )
        })
        .collect();
    write_atomically(windows, format, out).await
}

/// Exports the merged view of a migration: for each selected window, each
/// org's points before its cutover from `old`, from its cutover on from
/// `new` (`MergedSeries`). The windows of both sides are paired by name; a
/// window on one side only is read with nothing on the other.
#[allow(clippy::too_many_arguments)]
pub async fn export_merged(
    old: &StoreRoot,
    new: &StoreRoot,
    migration: Arc<Migration>,
    shard: &str,
    from: Option<&Hour>,
    to: Option<&Hour>,
    format: ExportFormat,
    out: &std::path::Path,
) -> Result<ExportSummary, JobError> {
    let (o, n) = (
        select_windows(old, shard, from, to).await?,
        select_windows(new, shard, from, to).await?,
    );
    if o.is_empty() && n.is_empty() {
        return Err(JobError::BadOutput(format!(
            "no committed output for shard {shard} in that window under {} or {}",
            old.display, new.display
        )));
    }
    let windows = merged_windows(old, new, o, n, &migration)?;
    write_atomically(windows, format, out).await
}

/// Pairs the windows of two sides by name, in window order, as merged views.
pub fn merged_windows<'r>(
    old: &'r StoreRoot,
    new: &'r StoreRoot,
    o: Vec<Manifest>,
    n: Vec<Manifest>,
    migration: &Arc<Migration>,
) -> Result<Vec<(String, WindowReader<'r>)>, JobError> {
    let mut by: std::collections::BTreeMap<(String, String), (Option<Manifest>, Option<Manifest>)> =
        Default::default();
    for m in o {
        let key = (m.window_from.clone(), m.window_to.clone());
        by.entry(key).or_default().0 = Some(m);
    }
    for m in n {
        let key = (m.window_from.clone(), m.window_to.clone());
        by.entry(key).or_default().1 = Some(m);
    }
    // Windows of other bounds on the two sides over the same hours would
    // be merged twice.
    let keys: Vec<&(String, String)> = by.keys().collect();
    if let Some(w) = keys.windows(2).find(|w| w[1].0 <= w[0].1) {
        return Err(JobError::BadOutput(format!(
            "the old and the new output have windows over the same hours with other bounds \
             ({}_{} and {}_{}): merge them window by window with --from/--to",
            w[0].0, w[0].1, w[1].0, w[1].1
        )));
    }
    Ok(by
        .into_iter()
        .map(|((f, t), (om, nm))| {
            let location = format!("{f}_{t}");
            let reader = MergedSeries::new(
                om.map(|m| WindowSeries::new(old, m)),
                nm.map(|m| WindowSeries::new(new, m)),
                Arc::clone(migration),
            );
            (location, WindowReader::Merged(reader))
        })
        .collect())
}

/// Writes `windows` to `out` through a partial file renamed at the end:
/// a failed export leaves no file that looks complete.
async fn write_atomically(
    windows: Vec<(String, WindowReader<'_>)>,
    format: ExportFormat,
    out: &std::path::Path,
) -> Result<ExportSummary, JobError> {
    let partial = out.with_file_name(format!(
        ".{}.partial",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("export")
    ));
    let result = export_to(windows, format, &partial).await;
    match result {
        Ok(mut summary) => {
            std::fs::rename(&partial, out).at(format_args!(
                "renaming {} to {}",
                partial.display(),
                out.display()
            ))?;
            summary.bytes = std::fs::metadata(out)
                .at(format_args!("reading {}", out.display()))?
                .len();
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

async fn export_to(
    windows: Vec<(String, WindowReader<'_>)>,
    format: ExportFormat,
    out: &std::path::Path,
) -> Result<ExportSummary, JobError> {
    let writing = format!("writing {}", out.display());
    let file = std::fs::File::create(out).at(&writing)?;
    let file = std::io::BufWriter::with_capacity(1 << 20, file);
    let write_error =
        |e: &dyn std::fmt::Display| JobError::io(&writing, std::io::Error::other(e.to_string()));
    let with_bits = format == ExportFormat::Csv;
    let mut sink = match format {
        ExportFormat::Parquet => {
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build();
            Sink::Parquet(
                ArrowWriter::try_new(file, point_schema(false), Some(props))
                    .map_err(|e| write_error(&e))?,
            )
        }
        ExportFormat::Csv => Sink::Csv(
            datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(file),
        ),
    };
    let mut summary = ExportSummary::default();
    let mut batcher = PointBatcher::default();
    let mut s = SeriesData::default();
    for (location, mut reader) in windows {
        summary.windows.push(location);
        let mut flush = |b: &mut PointBatcher| -> Result<(), JobError> {
            let batch = b.take(with_bits)?;
            match &mut sink {
                Sink::Parquet(w) => w.write(&batch).map_err(|e| write_error(&e)),
                Sink::Csv(w) => w.write(&batch).map_err(|e| write_error(&e)),
            }
        };
        while reader.next(&mut s).await? {
            summary.series += 1;
            summary.points += s.ts.len() as u64;
            batcher.push_series(&s, &mut flush)?;
        }
        if !batcher.is_empty() {
            flush(&mut batcher)?;
        }
    }
    use std::io::Write;
    let mut file = match sink {
        Sink::Parquet(w) => w.into_inner().map_err(|e| write_error(&e))?,
        Sink::Csv(w) => w.into_inner(),
    };
    file.flush().at(&writing)?;
    file.get_ref().sync_all().at(&writing)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;

    /// A series whose metadata, repeated per point, would overflow a Utf8
    /// column's 32-bit offsets (64 KiB x 40 Ki points is 2.5 GiB) is cut
    /// across batches at the metadata budget; here the budget is scaled
    /// down so the test holds little memory.
    #[test]
    fn a_series_of_large_metadata_is_cut_across_batches_at_the_byte_budget() {
        let ts: Vec<i64> = (0..1000).collect();
        let entry = SeriesData {
            org_id: 7,
            metric_id: 9,
            kind: 1,
            interval_s: 10,
            metadata: "m".repeat(1000),
            ts: ts.clone(),
            vals: (0..1000).map(|v| v * 3).collect(),
            n_points: 1000,
        };
        let mut b = PointBatcher {
            max_meta_bytes: 64 * 1000,
            ..Default::default()
        };
        let mut batches = Vec::new();
        b.push_series(&entry, |b| {
            batches.push(b.take(true)?);
            Ok(())
        })
        .unwrap();
        batches.push(b.take(true).unwrap());
        assert_eq!(batches.len(), 16, "1000 points at 64 per batch");
        assert!(batches.iter().all(|b| b.num_rows() <= 64));
        let got: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.column(2).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(got, ts, "every point, in order");
        assert!(batches.iter().all(|b| {
            b.column(6)
                .as_string::<i32>()
                .iter()
                .all(|m| m == Some(entry.metadata.as_str()))
        }));
        // The real budget keeps a batch's metadata far below 2 GiB.
        assert!(PointBatcher::default().max_meta_bytes < (i32::MAX as usize) / 4);
    }
}
