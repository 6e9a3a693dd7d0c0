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

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListArray, PrimitiveArray};
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
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
