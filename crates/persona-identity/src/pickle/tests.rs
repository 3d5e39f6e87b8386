//! The pickle reader's unit tests: every allowed construct, and refusals of what it must not run.
use super::*;

/// The data.pkl of a real `torch.save({"<tiny>": tensor})` (tools/identity/make_files.py).
fn real_pickle() -> Vec<u8> {
    use std::io::Read;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/identity/diffusers.bin"
    );
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut bytes = Vec::new();
    zip.by_name("diffusers/data.pkl")
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

#[test]
fn reads_a_torch_pickle() {
    let value = parse(&real_pickle()).unwrap();
    let Some(Value::Tensor(t)) = value.get("<tiny>") else {
        panic!("{value:?}")
    };
    assert_eq!(
        (t.size.as_slice(), t.stride.as_slice(), t.storage.dtype),
        ([2, 32].as_slice(), [32, 1].as_slice(), StorageDtype::F32)
    );
}

/// Every truncation and every single-byte change of a real pickle gives a value or an error, never a panic.
#[test]
fn corrupted_pickles_never_panic() {
    let pickle = real_pickle();
    for len in 0..pickle.len() {
        assert!(parse(&pickle[..len]).is_err());
    }
    for at in 0..pickle.len() {
        for byte in 0..=255u8 {
            let mut bad = pickle.clone();
            bad[at] = byte;
            let _ = parse(&bad);
        }
    }
}

#[test]
fn memo_bombs_are_refused() {
    // x = []; 64 times: x = (x, x) — 2^64 nodes if expanded.
    let mut bomb = vec![op::PROTO, 2, op::EMPTY_LIST, op::BINPUT, 0];
    for _ in 0..64 {
        bomb.extend([op::BINGET, 0, op::BINGET, 0, op::TUPLE2, op::BINPUT, 0]);
    }
    bomb.push(op::STOP);
    assert!(parse(&bomb).unwrap_err().contains("too many values"));
}

#[test]
fn deep_nesting_is_refused() {
    let mut deep = vec![op::PROTO, 2];
    deep.extend(std::iter::repeat_n(op::EMPTY_LIST, 10_000));
    deep.extend(std::iter::repeat_n(op::APPEND, 9_999));
    deep.push(op::STOP);
    assert!(parse(&deep).unwrap_err().contains("nested deeper"));
}

#[test]
fn only_allowed_globals_resolve() {
    let evil = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00lsR.";
    assert!(parse(evil).unwrap_err().contains("`posix.system`"));
    let stack_global = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
    assert!(parse(stack_global).unwrap_err().contains("`builtins.eval`"));
}
