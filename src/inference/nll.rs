//! Next-token negative log-likelihood of token sequences under a model (no gradients kept):
//! the one measure behind held-out perplexity, for the demo's evaluation and for training's
//! before / after numbers.

use candle_core::{D, Tensor};

use crate::model::router::NoHook;
use crate::model::{Batch, ModelError, MoeModel, Output, RouteCtx};

/// Sum of the model's negative log-likelihood of `seqs` (each token after the first) and the
/// number of tokens scored. Sequences are sorted by length and run `batch_size` at a time;
/// sequences shorter than two tokens predict nothing and are skipped.
pub fn sequence_nll(
    model: &mut dyn MoeModel,
    seqs: &[Vec<u32>],
    batch_size: usize,
) -> Result<(f64, usize), ModelError> {
    let device = model.device().clone();
    let (mut nll, mut n) = (0.0f64, 0usize);
    let mut order: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].len() >= 2).collect();
    order.sort_by_key(|&i| seqs[i].len());
    for chunk in order.chunks(batch_size.max(1)) {
        let batch_seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| seqs[i].clone()).collect();
        let batch = Batch::from_sequences(&batch_seqs, &device)?;
        let mut hook = NoHook;
        let logits = model
            .forward(&batch, Output::AllLogits, &mut RouteCtx::new(&mut hook))?
            .ok_or_else(|| ModelError::msg("the model returned no logits"))?;
        let (b, t, _) = logits.dims3()?;
        let max = logits.max_keepdim(D::Minus1)?;
        let shifted = logits.broadcast_sub(&max)?;
        let logz = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        // Targets: the next token at each position (0 where there is none; masked below).
        let mut targets = vec![0u32; b * t];
        for (bi, s) in batch_seqs.iter().enumerate() {
            for p in 0..s.len() - 1 {
                targets[bi * t + p] = s[p + 1];
            }
        }
        let tg = Tensor::from_vec(targets, (b, t, 1), &device)?;
        let lp: Vec<Vec<f32>> = (shifted.gather(&tg, D::Minus1)? - logz)?
            .squeeze(2)?
            .to_vec2()?;
        for (bi, s) in batch_seqs.iter().enumerate() {
            for &l in &lp[bi][..s.len() - 1] {
                nll -= f64::from(l);
                n += 1;
            }
        }
    }
    Ok((nll, n))
}
