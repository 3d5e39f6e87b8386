//! Inference timestep grids and σ tables, reproducing the NumPy arithmetic diffusers uses for them
//! (`np.linspace`, float-step `np.arange`, round-half-to-even, `np.interp`), so that fractional
//! timesteps and interpolated σ come out bit-identical.

use super::config::TimestepSpacing;
use crate::{Error, Result};

/// `np.linspace(start, stop, num)`: `i·step + start`, with the last point set to `stop` exactly.
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = if num > 1 {
        (stop - start) / (num - 1) as f64
    } else {
        0.0
    };
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if num > 1 {
        v[num - 1] = stop;
    }
    v
}

/// `np.arange(start, 0, -step)` for a float step: NumPy fills `start + i·δ` with δ = `(start − step) − start`.
pub fn np_arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = (start / step).ceil().max(0.0) as usize;
    let delta = (start - step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// The training-timestep grid of `steps` inference steps, descending, as DDIM/DDPM/Euler lay it out.
/// `round_linspace` rounds the `linspace` grid to integers (DDIM, DDPM) or keeps it fractional (Euler).
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    steps: usize,
    steps_offset: usize,
    round_linspace: bool,
) -> Result<Vec<f64>> {
    if steps == 0 || steps > num_train_timesteps {
        return Err(Error::Msg(format!(
            "num_inference_steps must be in 1..={num_train_timesteps}, got {steps}"
        )));
    }
    let descending = |v: Vec<f64>| v.into_iter().rev().collect::<Vec<f64>>();
    Ok(match spacing {
        TimestepSpacing::Linspace => {
            let v = np_linspace(0.0, (num_train_timesteps - 1) as f64, steps);
            descending(if round_linspace {
                v.into_iter().map(f64::round_ties_even).collect()
            } else {
                v
            })
        }
        TimestepSpacing::Leading => {
            let ratio = num_train_timesteps / steps;
            descending(
                (0..steps)
                    .map(|i| (i * ratio + steps_offset) as f64)
                    .collect(),
            )
        }
        TimestepSpacing::Trailing => {
            let ratio = num_train_timesteps as f64 / steps as f64;
            np_arange_down(num_train_timesteps as f64, ratio)
                .into_iter()
                .map(|x| x.round_ties_even() - 1.0)
                .collect()
        }
    })
}

/// σ_t = √((1 − ᾱ_t)/ᾱ_t) for every training timestep, in float32 like diffusers' tensor expression.
pub fn sigma_table(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// `np.interp(x, arange(len(fp)), fp)`: float64 linear interpolation of float32 samples at integer abscissae.
pub fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j] as f64;
    }
    let slope = fp[j + 1] as f64 - fp[j] as f64;
    slope * (x - j as f64) + fp[j] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_match_diffusers() {
        let lead = spaced_timesteps(TimestepSpacing::Leading, 1000, 10, 1, true).unwrap();
        assert_eq!(
            lead,
            [901., 801., 701., 601., 501., 401., 301., 201., 101., 1.]
        );
        let trail = spaced_timesteps(TimestepSpacing::Trailing, 1000, 10, 1, true).unwrap();
        assert_eq!(
            trail,
            [999., 899., 799., 699., 599., 499., 399., 299., 199., 99.]
        );
        let lin = spaced_timesteps(TimestepSpacing::Linspace, 1000, 4, 1, true).unwrap();
        assert_eq!(lin, [999., 666., 333., 0.]);
        let frac = spaced_timesteps(TimestepSpacing::Linspace, 1000, 10, 0, false).unwrap();
        assert_eq!(frac[1], 888.0);
        assert!(spaced_timesteps(TimestepSpacing::Leading, 1000, 0, 0, true).is_err());
    }

    #[test]
    fn interp_hits_samples() {
        let fp = [1.0f32, 3.0, 7.0];
        assert_eq!(interp(1.0, &fp), 3.0);
        assert_eq!(interp(1.5, &fp), 5.0);
        assert_eq!(interp(9.0, &fp), 7.0);
    }
}
