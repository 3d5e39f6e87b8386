//! A pickle reader for `torch.save` files that never executes anything.
//!
//! Python's unpickler *runs code*: the GLOBAL opcode imports any `module.name` and REDUCE calls it, so a `.bin` or
//! `.pt` file from the internet can run `os.system` when opened with `torch.load`. This reader is a plain data
//! parser instead: it implements only the opcodes `torch.save` emits (protocol 2, plus the protocol-4 framing
//! ones), accepts GLOBAL only for the handful of names torch uses to describe tensors and refuses every other
//! name with an error. An accepted name is never imported or called; it is a tag telling the reader how to
//! interpret the arguments that follow (a storage type, a tensor's offset / size / stride).
//!
//! Hostile input can at worst produce an error: lengths are checked against the input, nesting is limited, and
//! the memo (which lets a pickle reuse a value many times) is charged against a node budget so that a small
//! file cannot expand into an exponentially large tree.

use std::collections::HashMap;

use torch::{reduce, storage_ref};

/// Floating-point storage types an embedding can be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StorageDtype {
    F32,
    F16,
    Bf16,
    F64,
}

/// A reference to raw tensor data, stored in the archive as `<prefix>/data/<key>`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    pub dtype: StorageDtype,
    pub key: String,
    pub numel: usize,
}

/// A tensor as torch describes it: a view (offset, size, stride, in elements) into a storage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A name from the allow-list; see [`allowed_global`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Global {
    RebuildTensorV2,
    RebuildParameter,
    OrderedDict,
    StorageType(StorageDtype),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Key/value pairs in insertion order (Python dicts are ordered; token order matters).
    Dict(Vec<(Value, Value)>),
    Tensor(TensorRef),
    Global(Global),
    Storage(StorageRef),
}

impl Value {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value under a string key, for a dict.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(pairs) => pairs
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A short description for error messages ("dict with keys [a, b]", "tensor [2, 1024]").
    pub(crate) fn describe(&self) -> String {
        match self {
            Value::Dict(pairs) => {
                let keys: Vec<String> = pairs
                    .iter()
                    .map(|(k, _)| k.as_str().unwrap_or("<non-string>").to_string())
                    .collect();
                format!("a dict with keys {keys:?}")
            }
            Value::Tensor(t) => format!("a tensor {:?}", t.size),
            Value::Str(_) => "a string".into(),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => "a number".into(),
            Value::List(_) | Value::Tuple(_) => "a list".into(),
            Value::None => "None".into(),
            Value::Global(_) | Value::Storage(_) => "a torch type".into(),
        }
    }
}

/// The names GLOBAL may refer to: exactly what `torch.save` writes for (parameter) tensors in a dict.
fn allowed_global(module: &str, name: &str) -> Option<Global> {
    let storage = |dtype| Some(Global::StorageType(dtype));
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch", "FloatStorage") => storage(StorageDtype::F32),
        ("torch", "HalfStorage") => storage(StorageDtype::F16),
        ("torch", "BFloat16Storage") => storage(StorageDtype::Bf16),
        ("torch", "DoubleStorage") => storage(StorageDtype::F64),
        _ => None,
    }
}

/// Deepest container nesting accepted; embedding files nest 3–4 levels.
const MAX_DEPTH: usize = 64;
/// Most value nodes that memo copies may create; embedding files use a few dozen.
const NODE_BUDGET: usize = 1 << 20;

/// Parses a whole pickle into a value tree, or says why it refuses to.
pub(crate) fn parse(input: &[u8]) -> Result<Value, String> {
    let mut machine = Machine {
        input,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget: NODE_BUDGET,
    };
    loop {
        let at = machine.pos;
        let op = machine.byte()?;
        if op == op::STOP {
            return machine.finish();
        }
        machine
            .step(op)
            .map_err(|e| format!("pickle byte {at} (opcode 0x{op:02x}): {e}"))?;
    }
}

mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const BINUNICODE: u8 = b'X';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const EMPTY_LIST: u8 = b']';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const EMPTY_DICT: u8 = b'}';
    pub const DICT: u8 = b'd';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
}

/// A value on the stack with its nesting depth and node count, kept alongside so limits cost nothing to check.
#[derive(Clone)]
struct Item {
    value: Value,
    depth: usize,
    nodes: usize,
}

impl Item {
    fn leaf(value: Value) -> Self {
        Item {
            value,
            depth: 0,
            nodes: 1,
        }
    }

    /// Wraps children into a container, refusing nesting beyond [`MAX_DEPTH`].
    fn container(
        children: Vec<Item>,
        make: impl FnOnce(Vec<Value>) -> Value,
    ) -> Result<Self, String> {
        let depth = 1 + children.iter().map(|c| c.depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(format!("containers nested deeper than {MAX_DEPTH}"));
        }
        let nodes = 1 + children.iter().map(|c| c.nodes).sum::<usize>();
        Ok(Item {
            value: make(children.into_iter().map(|c| c.value).collect()),
            depth,
            nodes,
        })
    }

    /// Adds children to this list or dict in place (APPEND, SETITEM…).
    fn extend(&mut self, children: Vec<Item>) -> Result<(), String> {
        let depth = children.iter().map(|c| c.depth + 1).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(format!("containers nested deeper than {MAX_DEPTH}"));
        }
        self.depth = self.depth.max(depth);
        self.nodes += children.iter().map(|c| c.nodes).sum::<usize>();
        let values = children.into_iter().map(|c| c.value);
        match &mut self.value {
            Value::List(items) => items.extend(values),
            Value::Dict(pairs) => {
                let values: Vec<Value> = values.collect();
                if !values.len().is_multiple_of(2) {
                    return Err("odd number of items for a dict".into());
                }
                let mut it = values.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
            }
            other => return Err(format!("cannot add items to {}", other.describe())),
        }
        Ok(())
    }
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    /// Stack heights at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Item>,
    /// Nodes that memo copies may still create.
    budget: usize,
}

impl Machine<'_> {
    fn step(&mut self, op: u8) -> Result<(), String> {
        match op {
            op::PROTO => {
                let version = self.byte()?;
                if version > 5 {
                    return Err(format!("pickle protocol {version} is not supported"));
                }
            }
            op::FRAME => {
                self.take(8)?;
            }
            op::MARK => self.marks.push(self.stack.len()),
            op::NONE => self.push(Value::None),
            op::NEWTRUE => self.push(Value::Bool(true)),
            op::NEWFALSE => self.push(Value::Bool(false)),
            op::BININT => {
                let v = i32::from_le_bytes(self.array()?);
                self.push(Value::Int(v.into()))
            }
            op::BININT1 => {
                let v = self.byte()?;
                self.push(Value::Int(v.into()))
            }
            op::BININT2 => {
                let v = u16::from_le_bytes(self.array()?);
                self.push(Value::Int(v.into()))
            }
            op::LONG1 => {
                let v = self.long1()?;
                self.push(Value::Int(v))
            }
            op::BINFLOAT => {
                let v = f64::from_be_bytes(self.array()?);
                self.push(Value::Float(v))
            }
            op::BINUNICODE => {
                let len = u32::from_le_bytes(self.array()?) as usize;
                let s = self.utf8(len)?;
                self.push(Value::Str(s))
            }
            op::SHORT_BINUNICODE => {
                let len = self.byte()? as usize;
                let s = self.utf8(len)?;
                self.push(Value::Str(s))
            }
            op::EMPTY_TUPLE => self.push(Value::Tuple(Vec::new())),
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push_container(items, Value::Tuple)?
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let items = self.pop_n(usize::from(op - op::TUPLE1) + 1)?;
                self.push_container(items, Value::Tuple)?
            }
            op::EMPTY_LIST => self.push(Value::List(Vec::new())),
            op::EMPTY_DICT => self.push(Value::Dict(Vec::new())),
            op::APPEND | op::SETITEM => {
                let items = self.pop_n(if op == op::APPEND { 1 } else { 2 })?;
                self.top()?.extend(items)?
            }
            op::APPENDS | op::SETITEMS => {
                let items = self.pop_mark()?;
                self.top()?.extend(items)?
            }
            op::DICT => {
                let items = self.pop_mark()?;
                self.push(Value::Dict(Vec::new()));
                self.top()?.extend(items)?
            }
            op::BINPUT => {
                let id = self.byte()?;
                self.memo_put(id.into())?
            }
            op::LONG_BINPUT => {
                let id = u32::from_le_bytes(self.array()?);
                self.memo_put(id)?
            }
            op::MEMOIZE => self.memo_put(self.memo.len() as u32)?,
            op::BINGET => {
                let id = self.byte()?;
                self.memo_get(id.into())?
            }
            op::LONG_BINGET => {
                let id = u32::from_le_bytes(self.array()?);
                self.memo_get(id)?
            }
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                self.push_global(&module, &name)?
            }
            op::STACK_GLOBAL => {
                let mut names = self.pop_n(2)?.into_iter().map(|i| i.value);
                match (names.next(), names.next()) {
                    (Some(Value::Str(module)), Some(Value::Str(name))) => {
                        self.push_global(&module, &name)?
                    }
                    _ => return Err("STACK_GLOBAL without two strings".into()),
                }
            }
            op::BINPERSID => {
                let pid = self.pop()?;
                self.push(Value::Storage(storage_ref(pid.value)?))
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let item = reduce(callable, args)?;
                self.stack.push(item)
            }
            _ => {
                return Err(
                    "unsupported opcode (only the data opcodes torch.save writes are read)".into(),
                )
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Value, String> {
        match (
            self.stack.pop(),
            self.stack.is_empty(),
            self.marks.is_empty(),
        ) {
            (Some(item), true, true) => Ok(item.value),
            _ => Err("malformed pickle: the stack does not hold exactly one value at STOP".into()),
        }
    }

    fn push_global(&mut self, module: &str, name: &str) -> Result<(), String> {
        match allowed_global(module, name) {
            Some(global) => {
                self.push(Value::Global(global));
                Ok(())
            }
            None => Err(format!(
                "refused: the pickle refers to `{module}.{name}`, which is not a torch tensor type; \
                 loading this file with Python would import and possibly call it (nothing was executed here)"
            )),
        }
    }

    fn push(&mut self, value: Value) {
        self.stack.push(Item::leaf(value))
    }

    fn push_container(
        &mut self,
        children: Vec<Item>,
        make: impl FnOnce(Vec<Value>) -> Value,
    ) -> Result<(), String> {
        let item = Item::container(children, make)?;
        self.stack.push(item);
        Ok(())
    }

    fn pop(&mut self) -> Result<Item, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("pop across a MARK".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "stack underflow".to_string())
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Item>, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() < floor + n {
            return Err("stack underflow".into());
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn pop_mark(&mut self) -> Result<Vec<Item>, String> {
        let mark = self.marks.pop().ok_or("no MARK to pop to")?;
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self) -> Result<&mut Item, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("stack underflow".into());
        }
        self.stack
            .last_mut()
            .ok_or_else(|| "stack underflow".to_string())
    }

    fn memo_put(&mut self, id: u32) -> Result<(), String> {
        let item = self
            .stack
            .last()
            .ok_or("memo put on an empty stack")?
            .clone();
        self.charge(item.nodes)?;
        self.memo.insert(id, item);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<(), String> {
        let item = self
            .memo
            .get(&id)
            .ok_or_else(|| format!("memo {id} is undefined"))?
            .clone();
        self.charge(item.nodes)?;
        self.stack.push(item);
        Ok(())
    }

    fn charge(&mut self, nodes: usize) -> Result<(), String> {
        self.budget = self
            .budget
            .checked_sub(nodes)
            .ok_or("the pickle expands to too many values")?;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.input.len())
            .ok_or("truncated pickle")?;
        let bytes = &self.input[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn utf8(&mut self, len: usize) -> Result<String, String> {
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8".to_string())
    }

    /// A `\n`-terminated ASCII line (GLOBAL's operands), at most 256 bytes.
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.input[self.pos..];
        let len = rest
            .iter()
            .take(257)
            .position(|&b| b == b'\n')
            .ok_or("GLOBAL name too long or unterminated")?;
        let line = self.utf8(len)?;
        self.pos += 1;
        Ok(line)
    }

    /// LONG1: a little-endian two's-complement integer of at most 8 bytes here.
    fn long1(&mut self) -> Result<i64, String> {
        let n = self.byte()? as usize;
        if n > 8 {
            return Err(format!("{n}-byte integer is too large"));
        }
        let bytes = self.take(n)?;
        let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
            [0xff; 8]
        } else {
            [0; 8]
        };
        buf[..n].copy_from_slice(bytes);
        Ok(i64::from_le_bytes(buf))
    }
}

#[cfg(test)]
mod tests;
mod torch;
