//! The forward (noising) process used by training: diffusers' `DDPMScheduler.add_noise` / `get_velocity`.

use candle_core::Tensor;

use super::betas::alphas_cumprod;
use super::config::{PredictionType, SchedulerConfig};
use super::ddpm::DdpmConfig;
use crate::{Error, Result};

/// ᾱ_t of the training schedule and the prediction type the UNet was trained for.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    alphas_cumprod: Vec<f32>,
    prediction_type: PredictionType,
}

impl NoiseSchedule {
    /// The schedule of `DDPMScheduler.from_config(config)`, which is what diffusers' training scripts load.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        let ddpm = DdpmConfig::from_config(config);
        Ok(NoiseSchedule {
            alphas_cumprod: alphas_cumprod(&ddpm.betas)?,
            prediction_type: ddpm.prediction_type,
        })
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// ᾱ_t for every training timestep (float32, as diffusers stores it).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// The prediction type of the model's config (what [`Self::target`] is usually called with).
    pub fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    /// `√ᾱ_t·x₀ + √(1−ᾱ_t)·ε` with one timestep per sample of the batch (first dimension).
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, t: &[usize]) -> Result<Tensor> {
        let (a, s) = self.coefficients(x0, t)?;
        Ok((x0.broadcast_mul(&a)? + noise.broadcast_mul(&s)?)?)
    }

    /// The v-prediction target `√ᾱ_t·ε − √(1−ᾱ_t)·x₀`, one timestep per sample.
    pub fn velocity(&self, x0: &Tensor, noise: &Tensor, t: &[usize]) -> Result<Tensor> {
        let (a, s) = self.coefficients(x0, t)?;
        Ok((noise.broadcast_mul(&a)? - x0.broadcast_mul(&s)?)?)
    }

    /// The training target of a UNet that predicts `prediction`: ε, v, or x₀.
    pub fn target(
        &self,
        prediction: PredictionType,
        x0: &Tensor,
        noise: &Tensor,
        t: &[usize],
    ) -> Result<Tensor> {
        match prediction {
            PredictionType::Epsilon => Ok(noise.clone()),
            PredictionType::VPrediction => self.velocity(x0, noise, t),
            PredictionType::Sample => Ok(x0.clone()),
        }
    }

    /// √ᾱ_t and √(1−ᾱ_t) per sample (float32 like diffusers), shaped `[B, 1, …]` to broadcast over `like`.
    fn coefficients(&self, like: &Tensor, t: &[usize]) -> Result<(Tensor, Tensor)> {
        let batch = like.dim(0)?;
        if t.len() != batch {
            return Err(Error::Msg(format!(
                "{} timesteps for a batch of {batch}",
                t.len()
            )));
        }
        let n = self.num_train_timesteps();
        let ac = t
            .iter()
            .map(|&t| {
                self.alphas_cumprod
                    .get(t)
                    .copied()
                    .ok_or_else(|| Error::Msg(format!("timestep {t} ≥ {n}")))
            })
            .collect::<Result<Vec<f32>>>()?;
        let mut shape = vec![1; like.rank()];
        shape[0] = batch;
        let column = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, shape.as_slice(), like.device())?.to_dtype(like.dtype())?)
        };
        let sqrt_a = column(ac.iter().map(|a| a.sqrt()).collect())?;
        let sqrt_1ma = column(ac.iter().map(|a| (1.0 - a).sqrt()).collect())?;
        Ok((sqrt_a, sqrt_1ma))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn velocity_and_noise_are_orthogonal_rotations() {
        let s = NoiseSchedule::from_config(&SchedulerConfig::default()).unwrap();
        let x0 = Tensor::new(&[[1f32, 0.0], [0.5, 2.0]], &Device::Cpu).unwrap();
        let eps = Tensor::new(&[[0f32, 1.0], [1.0, -1.0]], &Device::Cpu).unwrap();
        let t = [10, 900];
        let noisy = s.add_noise(&x0, &eps, &t).unwrap();
        let v = s.velocity(&x0, &eps, &t).unwrap();
        // x_t² + v² = x0² + ε² elementwise, since (x_t, v) is a rotation of (x0, ε).
        let lhs = (noisy.sqr().unwrap() + v.sqr().unwrap())
            .unwrap()
            .sum(D::Minus1)
            .unwrap();
        let rhs = (x0.sqr().unwrap() + eps.sqr().unwrap())
            .unwrap()
            .sum(D::Minus1)
            .unwrap();
        let diff = (lhs - rhs)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
        assert!(s.add_noise(&x0, &eps, &[1000, 0]).is_err());
    }
}
