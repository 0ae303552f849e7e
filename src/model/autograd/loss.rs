//! Cross-entropy of logits against target ids in one fused op (gradient `softmax − onehot`),
//! where candle's composite version costs many elementwise passes.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, bail};

use super::storage::{f32s, host_f32};

/// Log-sum-exp of a row.
fn lse(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    max + sum.ln()
}

struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
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

/// Mean cross-entropy of `logits` `[n, vocab]` against `targets` `[n]` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    cross_entropy_rows(logits, targets)?.mean_all()
}
