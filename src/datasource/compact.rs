//! Scalar UDFs over the scan's zero-copy `ListView<Int64 | Float64>`
//! point columns.
//!
//! - `compact(list_view)` (registered by `tailor query`): compact `List`
//!   columns with one `memcpy` per row, releasing the decode slab at once,
//!   for queries that hold many rows (arrow's own `cast(ListView -> List)`
//!   builds one take index per point; this copies runs of 8-byte values).
//!   A list view's child is its whole slab, and DataFusion's spill code does
//!   not compact list views, so sorting or spilling them would write each
//!   slab many times over.
//! - `raw_points(timestamps, values)` (the job's grouping): one binary view
//!   per row into the slab, which sorts and spills copy only as needed; see
//!   [`RawPoints`].

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryViewArray, BinaryViewBuilder, ListArray, PrimitiveArray,
    make_view,
};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{ArrowPrimitiveType, DataType, Float64Type, Int64Type};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Compact {
    signature: Signature,
}

impl Compact {
    pub fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
    pub fn udf() -> ScalarUDF {
        ScalarUDF::from(Self::new())
    }
}

impl Default for Compact {
    fn default() -> Self {
        Self::new()
    }
}

fn compact_typed<T: ArrowPrimitiveType>(
    a: &dyn Array,
    field: &Arc<datafusion::arrow::datatypes::Field>,
) -> Result<ArrayRef> {
    let lv = a.as_list_view::<i32>();
    let child = lv.values().as_primitive::<T>().values();
    let total: usize = lv.sizes().iter().map(|&s| s as usize).sum();
    let mut data: Vec<T::Native> = Vec::with_capacity(total);
    let mut offsets: Vec<i32> = Vec::with_capacity(lv.len() + 1);
    offsets.push(0);
    for (&o, &s) in lv.offsets().iter().zip(lv.sizes().iter()) {
        data.extend_from_slice(&child[o as usize..o as usize + s as usize]);
        offsets.push(data.len() as i32);
    }
    let values = PrimitiveArray::<T>::new(ScalarBuffer::from(data), None);
    Ok(Arc::new(ListArray::try_new(
        Arc::clone(field),
        OffsetBuffer::new(offsets.into()),
        Arc::new(values),
        lv.nulls().cloned(),
    )?))
}

impl ScalarUDFImpl for Compact {
    fn name(&self) -> &str {
        "compact"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match &arg_types[0] {
            DataType::ListView(f) | DataType::List(f) => Ok(DataType::List(Arc::clone(f))),
            other => exec_err!("compact() takes a list view, got {other}"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let ColumnarValue::Array(a) = &args.args[0] else {
            return exec_err!("compact() takes a column");
        };
        let DataType::ListView(field) = a.data_type() else {
            if matches!(a.data_type(), DataType::List(_)) {
                return Ok(ColumnarValue::Array(Arc::clone(a)));
            }
            return exec_err!("compact() takes a list view, got {}", a.data_type());
        };
        let out = match field.data_type() {
            DataType::Int64 => compact_typed::<Int64Type>(a.as_ref(), field)?,
            DataType::Float64 => compact_typed::<Float64Type>(a.as_ref(), field)?,
            other => return exec_err!("compact() supports Int64 and Float64 lists, got {other}"),
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// `raw_points(timestamps, values)`: each payload row as one `BinaryView`
/// of `16 n` bytes: its `n` timestamps, then its `n` value bits, 8 bytes
/// each, little-endian. The scan decodes a payload's values right after its
/// timestamps in the decode slab, so the view points at those bytes and
/// **nothing is copied** (lists laid out otherwise are copied into a new
/// buffer, once).
///
/// The job groups payload rows with DataFusion's sort. Views make that sort
/// move 16 bytes a row, however many points the row has: sorting a batch
/// and merging the sorted runs copy views, not points, so no point is
/// copied between zstd writing it and the series merge reading it. Slabs
/// stay alive until the last row viewing them is consumed; a spilling sort
/// compacts (garbage-collects) view arrays before writing them, so each
/// spilled point is written once. One view column per slab matters:
/// DataFusion's sort estimates a batch's size as its buffers plus, per view
/// column, the view buffers in full.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RawPoints {
    signature: Signature,
}

impl RawPoints {
    pub fn new() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
    pub fn udf() -> ScalarUDF {
        ScalarUDF::from(Self::new())
    }
}

impl Default for RawPoints {
    fn default() -> Self {
        Self::new()
    }
}

/// The child buffer of an `Int64` or `Float64` list's values.
fn child_buffer(v: &dyn Array) -> Result<Buffer> {
    match v.data_type() {
        DataType::Int64 => Ok(v.as_primitive::<Int64Type>().values().inner().clone()),
        DataType::Float64 => Ok(v.as_primitive::<Float64Type>().values().inner().clone()),
        other => exec_err!("raw_points() takes Int64 or Float64 lists, got {other}"),
    }
}

/// Each row's (offset, length) in a list's child values, and the child's
/// buffer. Arrow's list constructors check every span against the child.
fn list_parts(a: &dyn Array) -> Result<(Vec<(usize, usize)>, Buffer)> {
    match a.data_type() {
        DataType::ListView(_) => {
            let lv = a.as_list_view::<i32>();
            let spans = lv
                .offsets()
                .iter()
                .zip(lv.sizes().iter())
                .map(|(&o, &s)| (o as usize, s as usize))
                .collect();
            Ok((spans, child_buffer(lv.values().as_ref())?))
        }
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let spans = l
                .value_offsets()
                .windows(2)
                .map(|w| (w[0] as usize, (w[1] - w[0]) as usize))
                .collect();
            Ok((spans, child_buffer(l.values().as_ref())?))
        }
        other => exec_err!("raw_points() takes lists, got {other}"),
    }
}

/// The rows of `ts` and `vals` as `16 n`-byte views (see [`RawPoints`]).
pub fn raw_points(ts: &dyn Array, vals: &dyn Array) -> Result<BinaryViewArray> {
    let (ts_spans, ts_buf) = list_parts(ts)?;
    let (val_spans, val_buf) = list_parts(vals)?;
    if ts_spans.len() != val_spans.len() {
        return exec_err!("raw_points(): columns of different lengths");
    }
    if let Some((t, v)) = ts_spans.iter().zip(&val_spans).find(|(t, v)| t.1 != v.1) {
        return exec_err!(
            "raw_points(): {} timestamps but {} values in a row",
            t.1,
            v.1
        );
    }
    let nulls = ts.nulls().cloned();
    let in_place = ts_buf.as_ptr() == val_buf.as_ptr()
        && ts_buf.len() == val_buf.len()
        && u32::try_from(ts_buf.len()).is_ok()
        && ts_spans
            .iter()
            .zip(&val_spans)
            .all(|(&(to, n), &(vo, _))| vo == to + n);
    if in_place {
        let data = ts_buf.as_slice();
        let views: Vec<u128> = ts_spans
            .iter()
            .map(|&(o, n)| make_view(&data[o * 8..(o + 2 * n) * 8], 0, (o * 8) as u32))
            .collect();
        // SAFETY: every view was made by `make_view` over bytes of buffer 0
        // at the offset it records (the slice is bounds-checked; values
        // follow timestamps, so it lies inside the buffer), the offset fits
        // in u32 because the whole buffer does, and binary views need no
        // UTF-8.
        return Ok(unsafe { BinaryViewArray::new_unchecked(views.into(), vec![ts_buf], nulls) });
    }
    let (t, v) = (ts_buf.as_slice(), val_buf.as_slice());
    let mut b = BinaryViewBuilder::with_capacity(ts_spans.len());
    let mut row = Vec::new();
    for (i, (&(to, n), &(vo, _))) in ts_spans.iter().zip(&val_spans).enumerate() {
        if nulls.as_ref().is_some_and(|m| m.is_null(i)) {
            b.append_null();
            continue;
        }
        row.clear();
        row.extend_from_slice(&t[to * 8..(to + n) * 8]);
        row.extend_from_slice(&v[vo * 8..(vo + n) * 8]);
        b.append_value(&row);
    }
    Ok(b.finish())
}

impl ScalarUDFImpl for RawPoints {
    fn name(&self) -> &str {
        "raw_points"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::BinaryView)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (ColumnarValue::Array(ts), ColumnarValue::Array(vals)) = (&args.args[0], &args.args[1])
        else {
            return exec_err!("raw_points() takes two columns");
        };
        Ok(ColumnarValue::Array(Arc::new(raw_points(
            ts.as_ref(),
            vals.as_ref(),
        )?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, ListViewArray};
    use datafusion::arrow::datatypes::Field;

    fn list_view(
        t: DataType,
        offsets: Vec<i32>,
        sizes: Vec<i32>,
        child: ArrayRef,
    ) -> ListViewArray {
        ListViewArray::new(
            Arc::new(Field::new_list_field(t, false)),
            ScalarBuffer::from(offsets),
            ScalarBuffer::from(sizes),
            child,
            None,
        )
    }

    fn words(b: &[u8]) -> Vec<u64> {
        b.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn values_after_timestamps_are_viewed_in_place_without_copying() {
        // One slab as the scan lays it out: payload A (2 points) at words
        // 0..4, padding at 4, payload B (1 point) at 5..7, C (0 points).
        let slab = Buffer::from_vec(vec![10i64, 11, 100, 101, 0, 20, 200]);
        let ts_child: ArrayRef =
            Arc::new(Int64Array::new(ScalarBuffer::new(slab.clone(), 0, 7), None));
        let val_child: ArrayRef = Arc::new(Float64Array::new(
            ScalarBuffer::new(slab.clone(), 0, 7),
            None,
        ));
        let ts = list_view(DataType::Int64, vec![0, 5, 7], vec![2, 1, 0], ts_child);
        let vals = list_view(DataType::Float64, vec![2, 6, 7], vec![2, 1, 0], val_child);
        let b = raw_points(&ts, &vals).unwrap();
        assert_eq!(words(b.value(0)), [10, 11, 100, 101]);
        assert_eq!(words(b.value(1)), [20, 200]);
        assert!(b.value(2).is_empty());
        // The one data buffer is the slab itself, and row A's bytes are the
        // slab's first 32.
        assert_eq!(b.data_buffers().len(), 1);
        assert_eq!(b.data_buffers()[0].as_ptr(), slab.as_ptr());
        assert_eq!(b.value(0).as_ptr(), slab.as_ptr());
    }

    #[test]
    fn lists_laid_out_otherwise_are_copied_with_float_bits_kept() {
        let vals = [f64::NAN, -0.0, f64::from_bits(0x7ff8_0000_0000_0001), 1.5];
        let v = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Float64, false)),
            OffsetBuffer::new(vec![0, 3, 4].into()),
            Arc::new(Float64Array::from(vals.to_vec())),
            None,
        );
        let t = list_view(
            DataType::Int64,
            vec![1, 0],
            vec![3, 1],
            Arc::new(Int64Array::from(vec![7, 1, 2, 3])),
        );
        let b = raw_points(&t, &v).unwrap();
        let bits: Vec<u64> = vals.iter().map(|v| v.to_bits()).collect();
        assert_eq!(words(b.value(0)), [1, 2, 3, bits[0], bits[1], bits[2]]);
        assert_eq!(words(b.value(1)), [7, bits[3]]);
    }

    /// `raw_points`' error for timestamp and value lists of these row
    /// sizes, each list column laid out contiguously in its own child.
    fn error_for(ts_sizes: &[i32], val_sizes: &[i32]) -> String {
        let offsets = |sizes: &[i32]| -> Vec<i32> {
            sizes
                .iter()
                .scan(0, |at, &n| {
                    *at += n;
                    Some(*at - n)
                })
                .collect()
        };
        let n = |sizes: &[i32]| sizes.iter().sum::<i32>() as usize;
        let t = list_view(
            DataType::Int64,
            offsets(ts_sizes),
            ts_sizes.to_vec(),
            Arc::new(Int64Array::from(vec![1; n(ts_sizes)])),
        );
        let v = list_view(
            DataType::Float64,
            offsets(val_sizes),
            val_sizes.to_vec(),
            Arc::new(Float64Array::from(vec![1.0; n(val_sizes)])),
        );
        raw_points(&t, &v).unwrap_err().to_string()
    }

    #[test]
    fn columns_of_different_lengths_are_an_error() {
        let e = error_for(&[1, 1], &[1]);
        assert!(e.contains("columns of different lengths"), "{e}");
    }

    #[test]
    fn rows_whose_lengths_differ_are_an_error() {
        let e = error_for(&[2], &[1]);
        assert!(e.contains("2 timestamps but 1 values"), "{e}");
    }
}
