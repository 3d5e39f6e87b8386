//! Finite-difference checks of the gradient from the loss back to learned token embeddings, through the
//! frozen text encoder and UNet (in f64, so the check is tight), and the leanness of the backward: the
//! gradient store holds exactly the trainable variable.

use candle_core::{DType, Device, Tensor, Var};
use persona_diffusion::loading::component_files;
use persona_diffusion::models::clip_text::{self, Output};
use persona_diffusion::models::{unet, ClipTextModel, UNet2DConditionModel};
use persona_diffusion::nn::grad::{mse_loss, place_rows};
use persona_diffusion::nn::{Condition, Weights};
use persona_diffusion::testing::{fixtures_dir, grad_count};
use persona_diffusion::tokenizer::ClipTokenizer;

struct Setup {
    te: ClipTextModel,
    unet: UNet2DConditionModel,
    base: Tensor,
    positions: Vec<(usize, usize, usize)>,
    sample: Tensor,
    target: Tensor,
    t: Tensor,
}

fn load(pipeline: &str) -> Setup {
    let dir = fixtures_dir().join(pipeline);
    let w = |c: &str, stem: &str| {
        Weights::from_files_as(
            &component_files(&dir.join(c), stem, None).unwrap(),
            &Device::Cpu,
            DType::F64,
        )
        .unwrap()
    };
    let te = ClipTextModel::load(
        &w("text_encoder", "model"),
        &clip_text::Config::read(&dir.join("text_encoder/config.json")).unwrap(),
    )
    .unwrap();
    let unet = UNet2DConditionModel::load(
        &w("unet", "diffusion_pytorch_model"),
        &unet::Config::read(&dir.join("unet/config.json")).unwrap(),
    )
    .unwrap();
    let mut tok = ClipTokenizer::from_dir(dir.join("tokenizer")).unwrap();
    let added = tok
        .add_tokens(&["<v0>".to_string(), "<v1>".to_string()])
        .unwrap();
    // Two prompts; the learned rows are the two added tokens. The frozen table has no row for them, so the
    // base embedding looks up the pad token there and `place_rows` puts the learned rows in.
    let prompts = [
        "a photo of a face of <v0> <v1> person",
        "a rendering of <v1> <v0>",
    ];
    let mut ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p).unwrap()).collect();
    let mut positions = Vec::new();
    for (b, row) in ids.iter_mut().enumerate() {
        for (l, id) in row.iter_mut().enumerate() {
            if let Some(r) = added.iter().position(|a| a == id) {
                positions.push((b, l, r));
                *id = tok.pad_id();
            }
        }
    }
    assert_eq!(positions.len(), 4);
    let ids = Tensor::new(ids, &Device::Cpu).unwrap();
    let base = te.embed(&ids).unwrap();
    let c = unet.config();
    let s = c.sample_size;
    let sample = randn(&[2, c.in_channels, s, s], 12);
    let target = randn(&[2, c.out_channels, s, s], 13);
    Setup {
        te,
        unet,
        base,
        positions,
        sample,
        target,
        t: Tensor::new(&[37f32, 812.], &Device::Cpu).unwrap(),
    }
}

impl Setup {
    fn condition(&self, rows: &Tensor) -> Tensor {
        let embeds = place_rows(&self.base, rows, &self.positions).unwrap();
        self.te.forward_embeds(&embeds, Output::Last).unwrap()
    }

    fn text_loss(&self, rows: &Tensor) -> Tensor {
        let out = self.condition(rows);
        let target = Tensor::arange(0f64, out.elem_count() as f64, &Device::Cpu)
            .unwrap()
            .reshape(out.shape())
            .unwrap();
        mse_loss(&out, &(target / 1000.0).unwrap().sin().unwrap()).unwrap()
    }

    fn diffusion_loss(&self, rows: &Tensor) -> Tensor {
        let cond = Condition::new(self.condition(rows));
        let pred = self
            .unet
            .forward(&self.sample, &self.t, &cond, None)
            .unwrap();
        mse_loss(&pred, &self.target).unwrap()
    }
}

/// Seeded standard normal values, so a failure reproduces.
fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f64> = (0..shape.iter().product())
        .map(|_| rand_distr::StandardNormal.sample(&mut rng))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn initial_rows(s: &Setup) -> Var {
    Var::from_tensor(&randn(&[2, s.base.dim(2).unwrap()], 11)).unwrap()
}

/// Central differences on a few coordinates against the backward gradient.
fn check_fd(name: &str, rows: &Var, loss: impl Fn(&Tensor) -> Tensor) {
    let l = loss(rows.as_tensor());
    let grads = l.backward().unwrap();
    assert_eq!(
        grad_count(&grads),
        1,
        "{name}: the gradient store must hold only the learned rows"
    );
    let g = grads
        .get(rows.as_tensor())
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let base = rows.as_tensor().to_vec2::<f64>().unwrap();
    let h = 1e-3;
    let d = base[0].len();
    for (r, j) in [
        (0, 0),
        (0, d / 2),
        (0, d - 1),
        (1, 1),
        (1, d / 3),
        (1, d - 2),
    ] {
        let at = |delta: f64| {
            let mut v = base.clone();
            v[r][j] += delta;
            loss(&Tensor::new(v, &Device::Cpu).unwrap())
                .to_scalar::<f64>()
                .unwrap()
        };
        // Richardson extrapolation of central differences: O(h⁴), so curvature does not blur the check.
        let central = |h: f64| (at(h) - at(-h)) / (2.0 * h);
        let fd = (4.0 * central(h / 2.0) - central(h)) / 3.0;
        let scale = g.iter().flatten().fold(0f64, |m, x| m.max(x.abs()));
        let err = (g[r][j] - fd).abs() / scale;
        eprintln!(
            "{name} [{r},{j}]: backward {:.6e} fd {:.6e} (rel {err:.1e})",
            g[r][j], fd
        );
        assert!(
            err < 1e-6,
            "{name} [{r},{j}]: backward {} vs finite difference {fd}",
            g[r][j]
        );
    }
}

#[test]
fn text_encoder_gradient_matches_finite_differences() {
    for p in ["sd2-tiny", "sd1-tiny"] {
        let s = load(p);
        let rows = initial_rows(&s);
        check_fd(&format!("{p} text encoder"), &rows, |r| s.text_loss(r));
    }
}

#[test]
fn diffusion_loss_gradient_matches_finite_differences() {
    for p in ["sd2-tiny", "sd1-tiny"] {
        let s = load(p);
        let rows = initial_rows(&s);
        check_fd(&format!("{p} text encoder + UNet"), &rows, |r| {
            s.diffusion_loss(r)
        });
    }
}
