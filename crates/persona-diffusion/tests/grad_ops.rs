//! Finite-difference checks of every differentiable building block (f64), and of the leanness rule: the
//! gradient store holds only the variable, never the frozen weights or constant operands.

use candle_core::{DType, Device, Module, Tensor, Var};
use persona_diffusion::nn::grad::{add, cat2, matmul, mse_loss, place_rows, softmax_last_dim};
use persona_diffusion::nn::{Activation, Conv2d, GroupNorm, LayerNorm, Linear, Weights};
use persona_diffusion::testing::grad_count;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rand_distr::StandardNormal.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Checks d/dx of `mse(f(x), target)` at several coordinates against central differences.
fn check(name: &str, shape: &[usize], f: impl Fn(&Tensor) -> Tensor) {
    let x = Var::from_tensor(&randn(shape, 1)).unwrap();
    let out = f(x.as_tensor());
    let target = randn(out.dims(), 2);
    let loss = |t: &Tensor| mse_loss(&f(t), &target).unwrap();
    let grads = loss(x.as_tensor()).backward().unwrap();
    assert_eq!(grad_count(&grads), 1, "{name}: gradient store holds more than the variable");
    let g = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base = x.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let scale = g.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    let n = base.len();
    for k in [0, n / 3, n / 2, n - 1] {
        let at = |d: f64| {
            let mut v = base.clone();
            v[k] += d;
            loss(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).to_scalar::<f64>().unwrap()
        };
        let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
        let err = (g[k] - fd).abs() / scale;
        assert!(err < 1e-6, "{name}[{k}]: backward {} vs finite difference {fd} (rel {err:.1e})", g[k]);
    }
}

fn w() -> Weights {
    Weights::random_as(3, &Device::Cpu, DType::F64)
}

#[test]
fn linear() {
    let l = Linear::load(&w().pp("l"), 6, 5, true).unwrap();
    check("linear", &[2, 3, 6], |x| l.forward(x).unwrap());
}

#[test]
fn conv3x3_stride1() {
    let c = Conv2d::load(&w().pp("c"), 3, 4, 3, 1, 1).unwrap();
    check("conv 3x3", &[2, 3, 5, 6], |x| c.forward(x).unwrap());
}

#[test]
fn conv3x3_stride2() {
    let c = Conv2d::load(&w().pp("c"), 3, 4, 3, 2, 1).unwrap();
    check("conv 3x3 stride 2", &[1, 3, 6, 7], |x| c.forward(x).unwrap());
}

#[test]
fn conv1x1() {
    let c = Conv2d::load(&w().pp("c"), 3, 4, 1, 1, 0).unwrap();
    check("conv 1x1", &[2, 3, 4, 4], |x| c.forward(x).unwrap());
}

#[test]
fn group_norm() {
    // Named without "norm" so the random loader gives a non-trivial affine (γ ≠ 1) to test.
    let g = GroupNorm::load(&w().pp("g"), 2, 6, 1e-5).unwrap();
    check("group norm", &[2, 6, 3, 3], |x| g.forward(x).unwrap());
}

#[test]
fn layer_norm() {
    let l = LayerNorm::load(&w().pp("l"), 7, 1e-5).unwrap();
    check("layer norm", &[2, 3, 7], |x| l.forward(x).unwrap());
}

#[test]
fn softmax() {
    check("softmax", &[2, 3, 5], |x| softmax_last_dim(x).unwrap());
}

#[test]
fn activations() {
    for a in [Activation::Gelu, Activation::QuickGelu, Activation::Silu] {
        check(&format!("{a:?}"), &[3, 4], |x| a.forward(x).unwrap());
    }
}

#[test]
fn constant_operands_get_no_gradient() {
    let c = randn(&[3, 4], 9);
    check("add constant", &[3, 4], |x| add(x, &c).unwrap());
    check("constant + x", &[3, 4], |x| add(&c, x).unwrap());
    check("matmul x·C", &[2, 3], |x| matmul(x, &c).unwrap());
    let c2 = randn(&[4, 2], 10);
    check("matmul C·x", &[2, 3], |x| matmul(&c2, x).unwrap());
    check("cat x,C", &[3, 4], |x| cat2(x, &c, 0).unwrap());
    check("cat C,x", &[3, 4], |x| cat2(&c, x, 1).unwrap());
}

#[test]
fn placed_rows() {
    let base = randn(&[2, 5, 3], 11);
    let positions = [(0, 1, 0), (1, 4, 0), (1, 2, 1)];
    check("place_rows", &[2, 3], |x| place_rows(&base, x, &positions).unwrap());
}

/// The plain graph `softmax(q kᵀ) v`, as attention ran before the fused op.
fn plain_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    matmul(&softmax_last_dim(&matmul(q, &k.t().unwrap()).unwrap()).unwrap(), v).unwrap()
}

#[test]
fn sdpa_gradients_of_each_operand_match_finite_differences() {
    use persona_diffusion::nn::sdpa::sdpa_blocked;
    // G = 3 heads of 5 queries over 4 keys, d = 2; a block of 20 score elements holds one head, so the
    // forward and the backward both run in three blocks.
    let (q, k, v) = (randn(&[3, 5, 2], 11), randn(&[3, 4, 2], 12), randn(&[3, 4, 2], 13));
    check("sdpa dq", &[3, 5, 2], |x| sdpa_blocked(x, &k, &v, 20).unwrap());
    check("sdpa dk", &[3, 4, 2], |x| sdpa_blocked(&q, x, &v, 20).unwrap());
    check("sdpa dv", &[3, 4, 2], |x| sdpa_blocked(&q, &k, x, 20).unwrap());
}

#[test]
fn sdpa_equals_the_plain_graph_in_value_and_gradients() {
    use persona_diffusion::nn::sdpa::{sdpa, sdpa_blocked};
    let vars = [randn(&[4, 6, 3], 21), randn(&[4, 7, 3], 22), randn(&[4, 7, 3], 23)].map(|t| Var::from_tensor(&t).unwrap());
    let [q, k, v] = vars.each_ref().map(|x| x.as_tensor().clone());
    let target = randn(&[4, 6, 3], 24);
    let plain = plain_attention(&q, &k, &v);
    let plain_grads = mse_loss(&plain, &target).unwrap().backward().unwrap();
    for block in [1, 42, 84, usize::MAX / 2] {
        let fused = if block == usize::MAX / 2 { sdpa(&q, &k, &v).unwrap() } else { sdpa_blocked(&q, &k, &v, block).unwrap() };
        let diff = (&fused - &plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(diff < 1e-12, "block {block}: value differs by {diff}");
        let grads = mse_loss(&fused, &target).unwrap().backward().unwrap();
        assert_eq!(grad_count(&grads), 3, "block {block}: only q, k and v get gradients");
        for (name, x) in ["q", "k", "v"].iter().zip(&vars) {
            let d = (grads.get(x).unwrap() - plain_grads.get(x).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(d < 1e-12, "block {block}: d{name} differs by {d}");
        }
    }
    // An untracked operand gets no gradient computed or stored.
    let grads = mse_loss(&sdpa(&q, &k.detach(), &v.detach()).unwrap(), &target).unwrap().backward().unwrap();
    assert_eq!(grad_count(&grads), 1);
}
