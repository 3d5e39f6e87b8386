//! AdamW with PyTorch's update (decoupled weight decay, bias-corrected moments, `eps` added to √v̂), over a
//! list of variables, with a state that checkpoints and resumes exactly.

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::Result;

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

pub struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: usize,
    pub config: AdamWConfig,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            m,
            v,
            step: 0,
            config,
        })
    }

    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// One update with learning rate `lr` (the schedule's value for this step). Variables without a gradient
    /// are left untouched.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let p = var.as_tensor().affine(1.0 - lr * c.weight_decay, 0.0)?;
            self.m[i] = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            self.v[i] = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((self.v[i].sqrt()? / bc2.sqrt())? + c.eps)?;
            let update = (self.m[i].div(&denom)? * (lr / bc1))?;
            var.set(&(p - update)?)?;
        }
        Ok(())
    }

    /// Moments and step count, keyed for a checkpoint file.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("adam.m.{name}"), self.m[i].clone());
            out.insert(format!("adam.v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores [`AdamW::state`] and the step count.
    pub fn restore(&mut self, state: &BTreeMap<String, Tensor>, step: usize) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let get = |k: String| -> Result<Tensor> {
                let t = state
                    .get(&k)
                    .ok_or_else(|| crate::Error::Msg(format!("checkpoint lacks {k}")))?;
                Ok(t.to_device(var.device())?)
            };
            self.m[i] = get(format!("adam.m.{name}"))?;
            self.v[i] = get(format!("adam.v.{name}"))?;
        }
        self.step = step;
        Ok(())
    }
}

/// Learning-rate schedules: constant (the methods' default) or cosine, each with linear warm-up.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Schedule {
    Constant,
    Cosine,
}

pub fn lr_at(schedule: Schedule, base: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    match schedule {
        Schedule::Constant => base,
        Schedule::Cosine => {
            let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
            base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}
