//! What torch's pickled names mean: the values REDUCE builds for the allowed globals (tensors rebuilt from
//! storages, parameters, ordered dicts) and the persistent ids of storages — data, never calls.

use super::{Global, Item, StorageRef, TensorRef, Value};

/// REDUCE on an allowed name: builds the value that name describes, without calling anything.
pub(super) fn reduce(callable: Item, args: Item) -> Result<Item, String> {
    let (Value::Global(global), Value::Tuple(args)) = (callable.value, args.value) else {
        return Err("REDUCE on something other than an allowed torch name".into());
    };
    let value = match global {
        Global::OrderedDict if args.is_empty() => Value::Dict(Vec::new()),
        Global::RebuildTensorV2 => Value::Tensor(tensor_ref(args)?),
        Global::RebuildParameter => match args.into_iter().next() {
            Some(Value::Tensor(t)) => Value::Tensor(t),
            _ => return Err("_rebuild_parameter without a tensor".into()),
        },
        other => return Err(format!("unsupported call of {other:?}")),
    };
    Ok(Item::leaf(value))
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])`.
fn tensor_ref(args: Vec<Value>) -> Result<TensorRef, String> {
    let mut args = args.into_iter();
    let (Some(Value::Storage(storage)), Some(offset), Some(size), Some(stride)) =
        (args.next(), args.next(), args.next(), args.next())
    else {
        return Err(
            "_rebuild_tensor_v2 arguments are not (storage, offset, size, stride, …)".into(),
        );
    };
    let tensor = TensorRef {
        storage,
        offset: to_usize(&offset)?,
        size: usize_tuple(size)?,
        stride: usize_tuple(stride)?,
    };
    if tensor.size.len() != tensor.stride.len() {
        return Err("tensor size and stride have different lengths".into());
    }
    Ok(tensor)
}

/// The persistent id torch writes for a storage: `('storage', torch.FloatStorage, key, location, numel)`.
pub(super) fn storage_ref(pid: Value) -> Result<StorageRef, String> {
    let Value::Tuple(fields) = pid else {
        return Err("persistent id is not a tuple".into());
    };
    match fields.as_slice() {
        [Value::Str(kind), Value::Global(Global::StorageType(dtype)), Value::Str(key), Value::Str(_location), numel]
            if kind == "storage" =>
        {
            Ok(StorageRef {
                dtype: *dtype,
                key: key.clone(),
                numel: to_usize(numel)?,
            })
        }
        _ => Err("persistent id is not a supported floating-point torch storage".into()),
    }
}

fn to_usize(v: &Value) -> Result<usize, String> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("negative size or offset {i}")),
        other => Err(format!("expected an integer, found {}", other.describe())),
    }
}

fn usize_tuple(v: Value) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) => items.iter().map(to_usize).collect(),
        other => Err(format!(
            "expected a tuple of integers, found {}",
            other.describe()
        )),
    }
}
