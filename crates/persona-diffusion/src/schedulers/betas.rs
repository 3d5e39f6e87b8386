//! ᾱ (`alphas_cumprod`) exactly as diffusers computes it with PyTorch on the CPU.
//!
//! diffusers builds β in float32 and near t = 0 every later quantity depends on `1 − ᾱ_t` ≈ 1e-3, where one
//! float32 ulp of ᾱ is already a 7e-5 relative error. Computing ᾱ in float64 instead moves Euler's σ by
//! up to 1e-4, so this module reproduces PyTorch's float32 arithmetic operation by operation:
//! - `torch.linspace` (float32, CPU) evaluates `start + step·i` for the first half and `end − step·(n−1−i)`
//!   for the second, compiled with fused multiply-add (x86 builds contract these expressions);
//! - `torch.cumprod` (CPU) accumulates in double and rounds each partial product to float32.

use super::config::{BetaConfig, BetaSchedule};
use crate::{Error, Result};

/// ᾱ_t for t in 0..num_train_timesteps, as float32 values.
pub fn alphas_cumprod(c: &BetaConfig) -> Result<Vec<f32>> {
    let n = c.num_train_timesteps;
    if n == 0 {
        return Err(Error::Msg("num_train_timesteps must be positive".into()));
    }
    let mut betas = match (&c.trained_betas, c.beta_schedule) {
        (Some(b), _) if b.len() == n => b.iter().map(|&x| x as f32).collect(),
        (Some(b), _) => {
            return Err(Error::Msg(format!(
                "trained_betas has {} values, num_train_timesteps is {n}",
                b.len()
            )))
        }
        (None, BetaSchedule::Linear) => torch_linspace(c.beta_start as f32, c.beta_end as f32, n),
        (None, BetaSchedule::ScaledLinear) => {
            let lin = torch_linspace(c.beta_start.sqrt() as f32, c.beta_end.sqrt() as f32, n);
            lin.iter().map(|x| x * x).collect()
        }
        (None, BetaSchedule::SquaredcosCapV2) => cosine_betas(n),
    };
    if c.rescale_betas_zero_snr {
        betas = rescale_zero_terminal_snr(&betas);
    }
    Ok(cumprod(betas.iter().map(|b| 1.0 - b)))
}

/// float32 `torch.linspace(start, end, n)` on the CPU, bit for bit (see the module docs).
fn torch_linspace(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// `torch.cumprod` of float32 values on the CPU: a double accumulator, each output rounded to float32.
fn cumprod(values: impl Iterator<Item = f32>) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .map(|v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// The cosine schedule (`squaredcos_cap_v2`, Nichol & Dhariwal): computed in double, stored as float32.
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Rescales β to zero terminal SNR (arXiv:2305.08891, Algorithm 1), in float32 like diffusers.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let sqrt_ac: Vec<f32> = cumprod(betas.iter().map(|b| 1.0 - b))
        .iter()
        .map(|a| a.sqrt())
        .collect();
    let (first, last) = (sqrt_ac[0], sqrt_ac[sqrt_ac.len() - 1]);
    let scale = first / (first - last);
    let ac: Vec<f32> = sqrt_ac
        .iter()
        .map(|s| ((s - last) * scale).powi(2))
        .collect();
    let mut out = vec![1.0 - ac[0]];
    out.extend(ac.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_ends_are_exact() {
        let v = torch_linspace(0.1, 0.7, 7);
        assert_eq!((v[0], v[6]), (0.1, 0.7));
        assert_eq!(torch_linspace(3.0, 4.0, 1), vec![3.0]);
    }

    #[test]
    fn zero_snr_ends_at_zero() {
        let c = BetaConfig {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            rescale_betas_zero_snr: true,
        };
        let ac = alphas_cumprod(&c).unwrap();
        assert_eq!(ac[999], 0.0);
        assert!(ac.windows(2).all(|w| w[1] <= w[0]));
    }
}
