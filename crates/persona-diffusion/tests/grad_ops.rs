//! Finite-difference checks of every differentiable building block (f64), and of the leanness rule: the
//! gradient store holds only the variable, never the frozen weights or constant operands. The checks live in
//! `persona_diffusion::testing::gradcheck` so that `persona bench gradcheck` runs them on a GPU too.

use candle_core::{DType, Device, Tensor, Var};
use persona_diffusion::nn::grad::{matmul, mse_loss, softmax_last_dim};
use persona_diffusion::testing::{grad_count, gradcheck};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    gradcheck::randn(shape, seed, &Device::Cpu).unwrap()
}

fn assert_all(outcomes: &[gradcheck::Outcome]) {
    assert!(!outcomes.is_empty());
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| format!("{}: {:.2e} > {:.0e}", o.name, o.error, o.limit))
        .collect();
    for o in outcomes {
        eprintln!("{:<40} {:.2e}", o.name, o.error);
    }
    assert!(failed.is_empty(), "{}", failed.join("; "));
}

/// Every building block (linear, convolutions of stride 1 and 2, norms, softmax, activations, constant
/// operands, placed rows, blocked attention) against central differences, with only the variable in the
/// gradient store.
#[test]
fn every_block_matches_finite_differences() {
    assert_all(&gradcheck::finite_differences(&Device::Cpu).unwrap());
}

/// The same blocks in bf16 and f16 (the mixed-precision paths: upcast statistics, casts at layer inputs)
/// against f32, in value and input gradient.
#[test]
fn half_precision_blocks_match_f32() {
    for dtype in [DType::BF16, DType::F16] {
        assert_all(&gradcheck::half_precision(&Device::Cpu, dtype).unwrap());
    }
}

/// The plain graph `softmax(q kᵀ) v`, as attention ran before the fused op.
fn plain_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    matmul(
        &softmax_last_dim(&matmul(q, &k.t().unwrap()).unwrap()).unwrap(),
        v,
    )
    .unwrap()
}

#[test]
fn sdpa_equals_the_plain_graph_in_value_and_gradients() {
    use persona_diffusion::nn::sdpa::{sdpa, sdpa_blocked};
    let vars = [
        randn(&[4, 6, 3], 21),
        randn(&[4, 7, 3], 22),
        randn(&[4, 7, 3], 23),
    ]
    .map(|t| Var::from_tensor(&t).unwrap());
    let [q, k, v] = vars.each_ref().map(|x| x.as_tensor().clone());
    let target = randn(&[4, 6, 3], 24);
    let plain = plain_attention(&q, &k, &v);
    let plain_grads = mse_loss(&plain, &target).unwrap().backward().unwrap();
    for block in [1, 42, 84, usize::MAX / 2] {
        let fused = if block == usize::MAX / 2 {
            sdpa(&q, &k, &v).unwrap()
        } else {
            sdpa_blocked(&q, &k, &v, block).unwrap()
        };
        let diff = (&fused - &plain)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(diff < 1e-12, "block {block}: value differs by {diff}");
        let grads = mse_loss(&fused, &target).unwrap().backward().unwrap();
        assert_eq!(
            grad_count(&grads),
            3,
            "block {block}: only q, k and v get gradients"
        );
        for (name, x) in ["q", "k", "v"].iter().zip(&vars) {
            let d = (grads.get(x).unwrap() - plain_grads.get(x).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(d < 1e-12, "block {block}: d{name} differs by {d}");
        }
    }
    // An untracked operand gets no gradient computed or stored.
    let grads = mse_loss(&sdpa(&q, &k.detach(), &v.detach()).unwrap(), &target)
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(grad_count(&grads), 1);
}
