//! Finite-difference checks (f64, central differences with Richardson extrapolation) of the trainable ID-EA
//! modules: every parameter of the Enhancer and the Adapter and the Adapter's input condition, with a
//! non-zero gate (at γ = 0 everything but γ has a zero gradient); and the Mahalanobis regulariser.

use candle_core::{DType, Device, Tensor, Var};
use persona_diffusion::nn::grad::mse_loss;
use persona_identity::adapter::Adapter;
use persona_identity::layers::{Named, Source};
use persona_train::methods::idea::enhancer::Enhancer;
use persona_train::methods::idea::reg;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| rand_distr::StandardNormal.sample(&mut rng))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Compares the backward gradient of `loss` for every variable at a few coordinates with finite differences.
fn check(vars: &[(String, Var)], loss: impl Fn() -> Tensor) {
    let grads = loss().backward().unwrap();
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let scale = g.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let n = base.len();
        for k in [0, n / 3, n / 2, n - 1] {
            let at = |d: f64| {
                let mut v = base.clone();
                v[k] += d;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let value = loss().to_scalar::<f64>().unwrap();
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                value
            };
            let central = |h: f64| (at(h) - at(-h)) / (2.0 * h);
            let fd = (4.0 * central(1e-4) - central(2e-4)) / 3.0;
            let err = (g[k] - fd).abs() / scale;
            assert!(
                err < 1e-6,
                "{name}[{k}]: backward {} vs finite difference {fd} (rel {err:.1e})",
                g[k]
            );
        }
    }
}

fn init(seed: u64, vars: &mut Named) -> Source<'_> {
    Source::Init {
        seed,
        dtype: DType::F64,
        device: &Device::Cpu,
        vars,
    }
}

#[test]
fn enhancer_gradients() {
    let mut vars = Named::new();
    let enhancer = Enhancer::new(&mut init(1, &mut vars), 12, 16, 4).unwrap();
    let face = randn(&[12], 2);
    let anchor = randn(&[3, 16], 3);
    let target = randn(&[3, 32], 4);
    check(&vars, || {
        mse_loss(&enhancer.forward(&face, &anchor).unwrap(), &target).unwrap()
    });
}

#[test]
fn adapter_gradients() {
    let mut vars = Named::new();
    let adapter = Adapter::new(&mut init(5, &mut vars), 16, 4, 0.4).unwrap();
    let gamma = vars
        .iter()
        .find(|(n, _)| n == "adapter.gamma")
        .unwrap()
        .1
        .clone();
    gamma
        .set(&Tensor::new(&[0.7f64], &Device::Cpu).unwrap())
        .unwrap();
    let y = Var::from_tensor(&randn(&[2, 5, 16], 6)).unwrap();
    let fused = Var::from_tensor(&randn(&[3, 32], 7)).unwrap();
    let target = randn(&[2, 5, 16], 8);
    vars.push(("y".into(), y.clone()));
    vars.push(("fused".into(), fused.clone()));
    check(&vars, || {
        mse_loss(
            &adapter.forward(y.as_tensor(), fused.as_tensor()).unwrap(),
            &target,
        )
        .unwrap()
    });
}

#[test]
fn mahalanobis_gradient() {
    let anchor = randn(&[3, 8], 9);
    let precision = reg::precision(&anchor).unwrap();
    let rows = Var::from_tensor(&(&anchor + (randn(&[3, 8], 10) * 0.3).unwrap()).unwrap()).unwrap();
    check(&[("rows".into(), rows.clone())], || {
        reg::mahalanobis(rows.as_tensor(), &anchor, &precision, 0.5).unwrap()
    });
}
