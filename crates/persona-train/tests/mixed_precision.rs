//! One training step of every method with the frozen models in bf16 against the same step in f32 (the
//! learned tensors, the loss and the optimiser are f32 in both): what `--dtype bf16` changes in training is
//! the rounding of the frozen models' activations, nothing else. Limits: the loss within 2e-3 relative
//! (seen ≤ 2.2e-4); each gradient within 8e-2 (seen 0.8–3.8e-2: a gradient crosses every bf16 layer twice,
//! each rounding by up to 2⁻⁹), where a wrong or missing term is of order one.

use candle_core::{DType, Device};
use persona_diffusion::pipeline::{LoadOptions, StableDiffusion};
use persona_diffusion::testing::fixtures_dir;
use persona_diffusion::testing::gradcheck::norm_error;
use persona_train::probe;
use persona_train::recipe::MethodName;

fn load(dtype: DType) -> StableDiffusion {
    let opts = LoadOptions {
        variant: None,
        device: Device::Cpu,
        dtype,
    };
    StableDiffusion::load(fixtures_dir().join("sd2-tiny").to_str().unwrap(), &opts).unwrap()
}

#[test]
fn every_method_trains_in_bf16_as_in_f32() {
    let (full, half) = (load(DType::F32), load(DType::BF16));
    for name in [
        MethodName::Ti,
        MethodName::CrossInit,
        MethodName::Idea,
        MethodName::Sefi,
    ] {
        // Both built on the f32 model: a method's fixed tensors (Cross Init's and ID-EA's anchors, the
        // Mahalanobis precision) are then identical, and only the frozen models' precision differs.
        let (m32, mut m16) = (
            probe::method(&full, name).unwrap(),
            probe::method(&full, name).unwrap(),
        );
        probe::align(m32.as_ref(), m16.as_mut()).unwrap();
        let inputs = probe::inputs(&full, m32.as_ref(), name).unwrap();
        let (l32, g32) = probe::loss_and_grads(&full, m32, &inputs, name).unwrap();
        let (l16, g16) = probe::loss_and_grads(&half, m16, &inputs, name).unwrap();
        assert_eq!(l16.dtype(), DType::F32, "{name:?}: the loss must be f32");
        let loss_err = norm_error(&l16, &l32).unwrap();
        eprintln!(
            "{name:?} loss {:.5} vs {:.5}: {loss_err:.2e}",
            l16.to_scalar::<f32>().unwrap(),
            l32.to_scalar::<f32>().unwrap()
        );
        assert!(loss_err < 2e-3, "{name:?}: loss differs by {loss_err:.2e}");
        for ((n, a), (_, b)) in g16.iter().zip(&g32) {
            let (Some(a), Some(b)) = (a, b) else {
                panic!("{name:?} {n}: gradient in one precision only")
            };
            assert_eq!(
                a.dtype(),
                DType::F32,
                "{name:?} {n}: learned tensors stay f32"
            );
            let err = norm_error(a, b).unwrap();
            eprintln!("  ∂{n}: {err:.2e}");
            assert!(err < 8e-2, "{name:?} ∂{n}: {err:.2e}");
        }
    }
}

/// A device computes Cross Init's anchor with its own rounding. At `E = init` the regulariser
/// `‖E − init + 1e-6‖` has the eps vector's gradient direction, so an anchor a millionth off (as rounding
/// on another device leaves it) moves the gradient by far more than arithmetic differences do: `align`
/// must give both methods one anchor, as it gives them one set of values.
#[test]
fn align_gives_both_methods_one_anchor() {
    let sd = load(DType::F32);
    let name = MethodName::CrossInit;
    let method = || probe::method(&sd, name).unwrap();
    let (reference, mut unaligned, mut aligned) = (method(), method(), method());
    let init = reference.extra_tensors()["anchor.init"].clone();
    let rounded = (&init * (1.0 + 1e-6)).unwrap();
    unaligned.set_extra_tensor("anchor.init", &rounded).unwrap();
    aligned.set_extra_tensor("anchor.init", &rounded).unwrap();
    probe::align(reference.as_ref(), aligned.as_mut()).unwrap();
    let inputs = probe::inputs(&sd, reference.as_ref(), name).unwrap();
    let rows = |m| {
        let (_, grads) = probe::loss_and_grads(&sd, m, &inputs, name).unwrap();
        grads.into_iter().next().unwrap().1.unwrap()
    };
    let (want, off, same) = (rows(reference), rows(unaligned), rows(aligned));
    let (off, same) = (
        norm_error(&off, &want).unwrap(),
        norm_error(&same, &want).unwrap(),
    );
    eprintln!("∂embeddings: anchor off by 1e-6 relative {off:.2e}, aligned {same:.2e}");
    assert!(
        off > 1e-4,
        "the anchor's rounding did not matter ({off:.2e}): the test no longer tests align"
    );
    assert_eq!(same, 0.0, "aligned methods must give the same gradient");
}
