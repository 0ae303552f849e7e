//! AdamW with its state in the open, so a checkpoint can carry the moments and a resumed run
//! continues exactly where it stopped (Candle's `AdamW` keeps its moments private).
//!
//! PyTorch's update: `m ← β₁m + (1-β₁)g`, `v ← β₂v + (1-β₂)g²`, `θ ← θ - lr·λ·θ`,
//! `θ ← θ - lr·m̂/(√v̂ + ε)` with bias-corrected `m̂ = m/(1-β₁ᵗ)`, `v̂ = v/(1-β₂ᵗ)`.

use candle_core::{Tensor, Var};

use super::Result;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    /// PyTorch's betas and eps; no weight decay (the HF Trainer's default for LoRA).
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over a fixed list of variables.
pub struct AdamW {
    pub settings: AdamWSettings,
    /// Updates applied so far (`t`).
    pub steps: u64,
    /// First and second moments, one pair per variable, same order as the variables.
    pub moments: Vec<(Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(vars: &[Var], settings: AdamWSettings) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|v| Ok((v.zeros_like()?, v.zeros_like()?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            settings,
            steps: 0,
            moments,
        })
    }

    /// One update of every variable with its gradient (`None`: no gradient this step, e.g. an
    /// expert no token was routed to; its moments still decay, as PyTorch does with zero grads).
    pub fn step(&mut self, vars: &[Var], grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        let s = self.settings;
        self.steps += 1;
        let t = self.steps as i32;
        let (c1, c2) = (1.0 - s.beta1.powi(t), 1.0 - s.beta2.powi(t));
        for ((var, grad), (m, v)) in vars.iter().zip(grads).zip(self.moments.iter_mut()) {
            let g = match grad {
                Some(g) => g.clone(),
                None => var.zeros_like()?,
            };
            let new_m = ((&*m * s.beta1)? + (&g * (1.0 - s.beta1))?)?;
            let new_v = ((&*v * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?;
            let update = ((&new_m / c1)? / ((&new_v / c2)?.sqrt()? + s.eps)?)?;
            let mut theta = var.as_tensor().clone();
            if s.weight_decay > 0.0 {
                theta = (&theta * (1.0 - lr * s.weight_decay))?;
            }
            var.set(&(theta - (update * lr)?)?)?;
            *m = new_m;
            *v = new_v;
        }
        Ok(())
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads.iter().flatten() {
        sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let k = max_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = (&*g * k)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_steps_match_hand_computed_adamw() {
        // θ₀ = 1, g = 0.5 twice, lr 0.1, λ 0.01.
        // Step 1: m = 0.05, v = 0.00025, m̂ = 0.5, v̂ = 0.25 → update 0.5/0.5 = 1 (ε negligible);
        //   θ = 1·(1 - 0.001) - 0.1 = 0.899.
        // Step 2: m = 0.095, v = 0.00049975, m̂ = 0.095/0.19 = 0.5, v̂ = 0.00049975/0.001999 = 0.25
        //   → update 1; θ = 0.899·0.999 - 0.1 = 0.798101.
        let var = Var::from_tensor(&Tensor::new(&[1.0f32], &Device::Cpu).unwrap()).unwrap();
        let settings = AdamWSettings {
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut opt = AdamW::new(std::slice::from_ref(&var), settings).unwrap();
        let g = Tensor::new(&[0.5f32], &Device::Cpu).unwrap();
        opt.step(std::slice::from_ref(&var), &[Some(g.clone())], 0.1)
            .unwrap();
        let v1 = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((v1 - 0.899).abs() < 1e-5, "{v1}");
        opt.step(std::slice::from_ref(&var), &[Some(g)], 0.1)
            .unwrap();
        let v2 = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((v2 - 0.798101).abs() < 1e-5, "{v2}");
        assert_eq!(opt.steps, 2);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        // (3, 4) has norm 5; clipped to 1 → (0.6, 0.8).
        let mut grads = vec![
            Some(Tensor::new(&[3.0f32], &Device::Cpu).unwrap()),
            None,
            Some(Tensor::new(&[4.0f32], &Device::Cpu).unwrap()),
        ];
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let a = grads[0].as_ref().unwrap().to_vec1::<f32>().unwrap()[0];
        let b = grads[2].as_ref().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-5 && (b - 0.8).abs() < 1e-5, "{a} {b}");
    }
}
