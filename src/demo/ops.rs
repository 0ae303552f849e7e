//! Fused CPU kernels with backward passes for training the demo model.
//!
//! Candle's composite versions of these (many elementwise passes, each allocating) cost more
//! than the matrix products in a model this small; these do one pass forward and one backward:
//! - [`cross_entropy_rows`]: per-row cross-entropy of logits against targets (gradient
//!   `softmax − onehot`);
//! - [`rms_norm`]: HF RMSNorm `w · x / sqrt(mean(x²) + eps)`;
//! - [`causal_softmax`]: softmax over the last axis of `[.., t, t]` attention scores with the
//!   causal mask applied (keys after the query get probability 0).
//!
//! They compute exactly what the engine's layers compute (tests compare values and gradients
//! with the composite versions). CPU and f32 only; inputs must be contiguous.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, bail};

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{what}: f32 tensors only")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{what}: the input must be contiguous"),
    }
}

fn host_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Log-sum-exp of a row.
fn lse(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    max + sum.ln()
}

struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "demo-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let x = f32s(s1, l1, self.name())?;
        let CpuStorage::U32(t) = s2 else {
            bail!("{}: targets must be u32", self.name())
        };
        let Some((a, b)) = l2.contiguous_offsets() else {
            bail!("{}: targets must be contiguous", self.name())
        };
        let t = &t[a..b];
        if t.len() != n {
            bail!("{}: {} targets for {n} rows", self.name(), t.len());
        }
        let mut out = Vec::with_capacity(n);
        for (row, &tg) in x.chunks_exact(v).zip(t) {
            let Some(&picked) = row.get(tg as usize) else {
                bail!("{}: target {tg} outside the vocabulary of {v}", self.name())
            };
            out.push(lse(row) - picked);
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = logits.dims2()?;
        let x = host_f32(logits)?;
        let t = targets.flatten_all()?.to_vec1::<u32>()?;
        let g = host_f32(grad)?;
        let mut dx = vec![0f32; n * v];
        for i in 0..n {
            let row = &x[i * v..(i + 1) * v];
            let l = lse(row);
            let out = &mut dx[i * v..(i + 1) * v];
            for (o, &xi) in out.iter_mut().zip(row) {
                *o = (xi - l).exp() * g[i];
            }
            out[t[i] as usize] -= g[i];
        }
        Ok((Some(Tensor::from_vec(dx, (n, v), logits.device())?), None))
    }
}

/// Cross-entropy of each row of `logits` `[n, vocab]` (f32) against `targets` `[n]` (u32):
/// `[n]` losses in nats.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, CrossEntropy)
}

struct RmsNormOp {
    eps: f32,
}

impl RmsNormOp {
    fn inv_rms(&self, row: &[f32]) -> f32 {
        let ms = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "demo-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let w = f32s(s2, l2, self.name())?;
        let h = w.len();
        if h == 0 || x.len() % h != 0 || l1.dims().last() != Some(&h) {
            bail!(
                "{}: weight of {h} does not match the input {:?}",
                self.name(),
                l1.dims()
            );
        }
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(h) {
            let r = self.inv_rms(row);
            out.extend(row.iter().zip(w).map(|(&xi, &wi)| xi * r * wi));
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let xs = host_f32(x)?;
        let ws = host_f32(w)?;
        let gs = host_f32(grad)?;
        let h = ws.len();
        let mut dx = vec![0f32; xs.len()];
        let mut dw = vec![0f32; h];
        for ((row, g), out) in xs
            .chunks_exact(h)
            .zip(gs.chunks_exact(h))
            .zip(dx.chunks_exact_mut(h))
        {
            let r = self.inv_rms(row);
            let dot: f32 = row
                .iter()
                .zip(g)
                .zip(&ws)
                .map(|((&xi, &gi), &wi)| xi * gi * wi)
                .sum();
            let c = r * r * r * dot / h as f32;
            for j in 0..h {
                out[j] = r * ws[j] * g[j] - row[j] * c;
                dw[j] += g[j] * row[j] * r;
            }
        }
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// HF RMSNorm over the last axis: `w · x / sqrt(mean(x²) + eps)` (f32).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNormOp { eps: eps as f32 })
}

struct CausalSoftmax;

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "demo-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        let dims = l.dims();
        let t = dims.last().copied().unwrap_or(0);
        if dims.len() < 2 || dims[dims.len() - 2] != t || t == 0 {
            bail!("{}: expected [.., t, t] scores, got {dims:?}", self.name());
        }
        let mut out = vec![0f32; x.len()];
        for (r, (row, o)) in x.chunks_exact(t).zip(out.chunks_exact_mut(t)).enumerate() {
            let q = r % t;
            let live = &row[..=q];
            let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for (oj, &xj) in o[..=q].iter_mut().zip(live) {
                *oj = (xj - max).exp();
                sum += *oj;
            }
            o[..=q].iter_mut().for_each(|v| *v /= sum);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let y = host_f32(res)?;
        let g = host_f32(grad)?;
        let t = res.dims().last().copied().unwrap_or(1);
        let mut dx = vec![0f32; y.len()];
        for (r, ((yr, gr), o)) in y
            .chunks_exact(t)
            .zip(g.chunks_exact(t))
            .zip(dx.chunks_exact_mut(t))
            .enumerate()
        {
            let q = r % t;
            let dot: f32 = yr[..=q].iter().zip(&gr[..=q]).map(|(a, b)| a * b).sum();
            for j in 0..=q {
                o[j] = yr[j] * (gr[j] - dot);
            }
        }
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

/// Causal softmax of attention scores `[.., t, t]` (query rows, key columns): keys after the
/// query get 0, the rest a softmax.
pub fn causal_softmax(scores: &Tensor) -> candle_core::Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < tol, "max difference {d}");
    }

    #[test]
    fn cross_entropy_matches_composite_with_gradients() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 2.0, (5, 7), &dev).unwrap();
        let t = Tensor::new(&[0u32, 6, 3, 3, 1], &dev).unwrap();
        let w = Tensor::new(&[1f32, 2., 3., 4., 5.], &dev).unwrap();
        let fused = (cross_entropy_rows(x.as_tensor(), &t).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap();
        let ls = candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1).unwrap();
        let composite = (ls
            .gather(&t.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .neg()
            .unwrap()
            * &w)
            .unwrap()
            .sum_all()
            .unwrap();
        close(&fused, &composite, 1e-5);
        let (g1, g2) = (fused.backward().unwrap(), composite.backward().unwrap());
        close(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn rms_norm_matches_the_engine_with_gradients() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
        let w = Var::randn(1f32, 0.3, 8, &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
        let fused = (rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap() * &up)
            .unwrap()
            .sum_all()
            .unwrap();
        let engine = crate::model::layers::RmsNorm {
            weight: w.as_tensor().clone(),
            eps: 1e-5,
        };
        let composite = (engine.forward(x.as_tensor()).unwrap() * &up)
            .unwrap()
            .sum_all()
            .unwrap();
        close(&fused, &composite, 1e-5);
        let (g1, g2) = (fused.backward().unwrap(), composite.backward().unwrap());
        close(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
            1e-5,
        );
        close(
            g1.get(w.as_tensor()).unwrap(),
            g2.get(w.as_tensor()).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn causal_softmax_matches_masked_softmax_with_gradients() {
        let dev = Device::Cpu;
        let t = 5;
        let x = Var::randn(0f32, 1.0, (2, 3, t, t), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (2, 3, t, t), &dev).unwrap();
        let fused = causal_softmax(x.as_tensor()).unwrap();
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
        let composite =
            super::super::model::softmax(&x.as_tensor().broadcast_add(&mask).unwrap()).unwrap();
        close(&fused, &composite, 1e-6);
        let f = (fused * &up).unwrap().sum_all().unwrap();
        let c = (composite * &up).unwrap().sum_all().unwrap();
        let (g1, g2) = (f.backward().unwrap(), c.backward().unwrap());
        close(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
            1e-5,
        );
    }
}
