//! `compact(list_view)`: a scalar UDF turning the scan's zero-copy
//! `ListView<Int64 | Float64>` columns into compact `List` columns with one
//! `memcpy` per row, releasing the decode slab at once.
//!
//! The job needs it before sorting: a list view shares its whole slab with
//! every row, so sorting, spilling or holding sorted runs of list views
//! would account and write each slab many times over. (arrow's own
//! `cast(ListView -> List)` builds one take index per point; this copies
//! runs of 8-byte values instead.)

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, LargeBinaryArray, ListArray, PrimitiveArray,
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

/// `pack_points(timestamps, values)`: one `LargeBinary` per payload holding
/// its points as interleaved little-endian `(timestamp i64, value bits u64)`
/// pairs, 16 bytes a point, in payload order.
///
/// The job groups payload rows with DataFusion's sort: a single bytes
/// column is taken, merged and spilled with tight copies (arrow's
/// specialised byte kernels), where two list columns go through the
/// generic per-row path; and the pairs are the layout the series merge
/// sorts, so a row becomes one copy into it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PackPoints {
    signature: Signature,
}

impl PackPoints {
    pub fn new() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
    pub fn udf() -> ScalarUDF {
        ScalarUDF::from(Self::new())
    }
}

impl Default for PackPoints {
    fn default() -> Self {
        Self::new()
    }
}

/// Each row's (offset, length) in a list's child values.
type Spans = Vec<(usize, usize)>;

/// The (offset, size) spans and child values of an `Int64` or `Float64`
/// list view or list, values as raw 64-bit patterns.
fn list_parts(a: &dyn Array) -> Result<(Spans, &[u64])> {
    let bits = |v: &dyn Array| -> Result<&[u64]> {
        let data = match v.data_type() {
            DataType::Int64 => v.as_primitive::<Int64Type>().values().inner().as_slice(),
            DataType::Float64 => v.as_primitive::<Float64Type>().values().inner().as_slice(),
            other => return exec_err!("pack_points() takes Int64 or Float64 lists, got {other}"),
        };
        // SAFETY: arrow primitive buffers are aligned for their 8-byte type.
        Ok(unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u64, data.len() / 8) })
    };
    match a.data_type() {
        DataType::ListView(_) => {
            let lv = a.as_list_view::<i32>();
            let spans = lv
                .offsets()
                .iter()
                .zip(lv.sizes().iter())
                .map(|(&o, &s)| (o as usize, s as usize))
                .collect();
            Ok((spans, bits(lv.values().as_ref())?))
        }
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let spans = l
                .value_offsets()
                .windows(2)
                .map(|w| (w[0] as usize, (w[1] - w[0]) as usize))
                .collect();
            Ok((spans, bits(l.values().as_ref())?))
        }
        other => exec_err!("pack_points() takes lists, got {other}"),
    }
}

impl ScalarUDFImpl for PackPoints {
    fn name(&self) -> &str {
        "pack_points"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::LargeBinary)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (ColumnarValue::Array(ts), ColumnarValue::Array(vals)) = (&args.args[0], &args.args[1])
        else {
            return exec_err!("pack_points() takes two columns");
        };
        let (ts_spans, ts_bits) = list_parts(ts.as_ref())?;
        let (val_spans, val_bits) = list_parts(vals.as_ref())?;
        if ts_spans.len() != val_spans.len() {
            return exec_err!("pack_points(): columns of different lengths");
        }
        let total: usize = ts_spans.iter().map(|s| s.1).sum();
        let mut data: Vec<u8> = Vec::with_capacity(total * 16);
        let mut offsets: Vec<i64> = Vec::with_capacity(ts_spans.len() + 1);
        offsets.push(0);
        for (&(to, tn), &(vo, vn)) in ts_spans.iter().zip(&val_spans) {
            if tn != vn {
                return exec_err!("pack_points(): {tn} timestamps but {vn} values in a row");
            }
            for (t, v) in ts_bits[to..to + tn].iter().zip(&val_bits[vo..vo + vn]) {
                data.extend_from_slice(&t.to_le_bytes());
                data.extend_from_slice(&v.to_le_bytes());
            }
            offsets.push(data.len() as i64);
        }
        let out = LargeBinaryArray::try_new(
            OffsetBuffer::new(offsets.into()),
            Buffer::from_vec(data),
            ts.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
