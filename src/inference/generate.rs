//! Text generation with the KV cache: greedy or temperature + top-p sampling (seeded), steering
//! on the prompt and/or the generated tokens, tokens streamed through a callback.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use tokenizers::Tokenizer;

use crate::model::router::{NoHook, RoutingHook};
use crate::model::{Batch, MoeModel, Output, RouteCtx};
use crate::steering::{ActiveSteering, Result, SteerError};

/// How to pick tokens and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax, ties to the lower id).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches
    /// `top_p` (1 = no cut).
    pub top_p: f64,
    pub seed: u64,
    /// Generation stops after producing one of these ids (it is kept in the output).
    pub stop_ids: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_ids: Vec::new(),
        }
    }
}

impl GenerateOptions {
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(SteerError::Invalid(format!(
                "temperature must be a number ≥ 0, not {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SteerError::Invalid(format!(
                "top-p must be in (0, 1], not {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// The end-of-text ids a tokenizer knows among the usual names.
pub fn stop_ids(tokenizer: &Tokenizer) -> Vec<u32> {
    [
        "<|endoftext|>",
        "</s>",
        "<|im_end|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        "<eos>",
    ]
    .iter()
    .filter_map(|t| tokenizer.token_to_id(t))
    .collect()
}

/// Probabilities `softmax(logits / temperature)` (f64, max-subtracted).
pub fn softmax_with_temperature(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<f64> = logits
        .iter()
        .map(|&z| ((z as f64 - max) / temperature).exp())
        .collect();
    let sum: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= sum);
    p
}

/// The nucleus of `probs`: the most likely tokens, largest first (ties: lower id), up to and
/// including the first whose cumulative probability reaches `top_p`, renormalised to sum 1.
pub fn top_p_filter(probs: &[f64], top_p: f64) -> Vec<(u32, f64)> {
    let mut idx: Vec<u32> = (0..probs.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        probs[b as usize]
            .total_cmp(&probs[a as usize])
            .then(a.cmp(&b))
    });
    let mut kept = Vec::new();
    let mut cum = 0.0;
    for i in idx {
        let p = probs[i as usize];
        kept.push((i, p));
        cum += p;
        // A small tolerance so that e.g. 0.5 + 0.3 "reaches" 0.8 despite rounding.
        if cum >= top_p - 1e-12 {
            break;
        }
    }
    let total: f64 = kept.iter().map(|k| k.1).sum();
    kept.iter_mut().for_each(|k| k.1 /= total);
    kept
}

/// The token at uniform draw `u ∈ [0, 1)` of a (renormalised) distribution.
pub fn pick(dist: &[(u32, f64)], u: f64) -> u32 {
    let mut cum = 0.0;
    for &(i, p) in dist {
        cum += p;
        if u < cum {
            return i;
        }
    }
    dist.last().map_or(0, |d| d.0)
}

/// Argmax, ties to the lower id.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &z) in logits.iter().enumerate() {
        if z > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Picks the next token from last-position logits.
pub struct Sampler {
    temperature: f64,
    top_p: f64,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    pub fn new(opts: &GenerateOptions) -> Self {
        Self {
            temperature: opts.temperature,
            top_p: opts.top_p,
            rng: rand::rngs::StdRng::seed_from_u64(opts.seed),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        let probs = softmax_with_temperature(logits, self.temperature);
        let dist = top_p_filter(&probs, self.top_p);
        let u: f64 = self.rng.random();
        pick(&dist, u)
    }
}

/// Hooks that see the routing of the prompt pass and of every decoding step separately.
pub struct GenerateHooks<'a> {
    pub prompt: &'a mut dyn RoutingHook,
    pub generated: &'a mut dyn RoutingHook,
}

/// Generates up to `opts.max_new_tokens` tokens after `prompt`, calling `on_token` with each
/// new id as soon as it is chosen. Uses (and afterwards clears and turns off) the model's KV
/// cache. `cancel` is checked before every step.
pub fn generate(
    model: &mut dyn MoeModel,
    prompt: &[u32],
    steering: Option<&ActiveSteering>,
    opts: &GenerateOptions,
    hooks: Option<GenerateHooks<'_>>,
    cancel: &AtomicBool,
    on_token: &mut dyn FnMut(u32),
) -> Result<Vec<u32>> {
    opts.validate()?;
    if prompt.is_empty() {
        return Err(SteerError::Invalid("the prompt has no tokens".into()));
    }
    let vocab = model.info().vocab_size;
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(SteerError::Invalid(format!(
            "token id {bad} is outside the vocabulary of {vocab} tokens"
        )));
    }
    let max_pos = model.info().max_position_embeddings;
    if prompt.len() >= max_pos {
        return Err(SteerError::Invalid(format!(
            "the prompt has {} tokens; the model's context is {max_pos}",
            prompt.len()
        )));
    }
    let max_new = opts.max_new_tokens.min(max_pos - prompt.len());
    let (mut no1, mut no2) = (NoHook, NoHook);
    let (prompt_hook, gen_hook): (&mut dyn RoutingHook, &mut dyn RoutingHook) = match hooks {
        Some(h) => (h.prompt, h.generated),
        None => (&mut no1, &mut no2),
    };
    let device = model.device().clone();
    model.set_use_kv_cache(true);
    model.clear_kv_cache();
    let result = (|| -> Result<Vec<u32>> {
        let mut sampler = Sampler::new(opts);
        let mut out = Vec::new();
        if max_new == 0 {
            return Ok(out);
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(SteerError::Cancelled);
        }
        let batch = Batch::from_sequences(&[prompt.to_vec()], &device)?;
        let mut ctx =
            RouteCtx::new(prompt_hook).with_steering(steering.and_then(|s| s.for_prompt()));
        let logits = model
            .forward(&batch, Output::LastLogits, &mut ctx)?
            .ok_or_else(|| SteerError::Invalid("the model returned no logits".into()))?;
        let mut next = sampler.sample(&last_row(&logits)?);
        loop {
            out.push(next);
            on_token(next);
            if out.len() >= max_new || opts.stop_ids.contains(&next) {
                break;
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(SteerError::Cancelled);
            }
            let mut batch = Batch::from_sequences(&[vec![next]], &device)?;
            batch.seqlen_offset = prompt.len() + out.len() - 1;
            let mut ctx = RouteCtx::new(&mut *gen_hook)
                .with_steering(steering.and_then(|s| s.for_generated()));
            let logits = model
                .forward(&batch, Output::LastLogits, &mut ctx)?
                .ok_or_else(|| SteerError::Invalid("the model returned no logits".into()))?;
            next = sampler.sample(&last_row(&logits)?);
        }
        Ok(out)
    })();
    model.set_use_kv_cache(false);
    result
}

fn last_row(logits: &Tensor) -> Result<Vec<f32>> {
    Ok(logits.squeeze(0)?.to_vec1::<f32>()?)
}

/// Turns a growing list of token ids into text increments, holding back incomplete UTF-8.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    /// Adds a token; returns the new text that can be shown, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Option<String> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids, false).ok()?;
        if text.ends_with('\u{FFFD}')
            || text.len() <= self.emitted
            || !text.is_char_boundary(self.emitted)
        {
            return None;
        }
        let new = text[self.emitted..].to_string();
        self.emitted = text.len();
        Some(new)
    }
}

/// Decodes ids as text (special tokens kept, so an end-of-text marker is visible).
pub fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    tokenizer.decode(ids, false).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_the_nucleus_and_renormalises() {
        let probs = [0.1, 0.5, 0.3, 0.1];
        // sorted: 1 (0.5), 2 (0.3), 0 (0.1), 3 (0.1)
        let d = top_p_filter(&probs, 0.8);
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((d[0].1 - 0.625).abs() < 1e-12 && (d[1].1 - 0.375).abs() < 1e-12);
        let d = top_p_filter(&probs, 0.81);
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert!((d[2].1 - 0.1 / 0.9).abs() < 1e-12);
        let d = top_p_filter(&probs, 0.4);
        assert_eq!(d, vec![(1, 1.0)]);
        assert_eq!(top_p_filter(&probs, 1.0).len(), 4);
        // draws: [0, 0.625) -> 1, [0.625, 1) -> 2
        let d = top_p_filter(&probs, 0.8);
        assert_eq!(pick(&d, 0.0), 1);
        assert_eq!(pick(&d, 0.624), 1);
        assert_eq!(pick(&d, 0.626), 2);
        assert_eq!(pick(&d, 0.999), 2);
    }

    #[test]
    fn temperature_and_greedy() {
        // logits ln 1, ln 3 -> p = [0.25, 0.75]; at T = 2: sqrt -> [1, 1.732] / 2.732
        let z = [0f32, 3f32.ln()];
        let p = softmax_with_temperature(&z, 1.0);
        assert!((p[1] - 0.75).abs() < 1e-6);
        let p = softmax_with_temperature(&z, 2.0);
        assert!((p[1] - 3f64.sqrt() / (1.0 + 3f64.sqrt())).abs() < 1e-6);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        let mut s = Sampler::new(&GenerateOptions::default());
        assert_eq!(s.sample(&[1.0, 3.0, 2.0]), 1);
        // top-p tiny -> always the argmax even when sampling
        let mut s = Sampler::new(&GenerateOptions {
            temperature: 1.0,
            top_p: 1e-6,
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&[1.0, 3.0, 2.0]), 1);
        }
    }

    #[test]
    fn options_are_checked() {
        let bad = |t: f64, p: f64| {
            GenerateOptions {
                temperature: t,
                top_p: p,
                ..Default::default()
            }
            .validate()
            .is_err()
        };
        assert!(bad(-1.0, 1.0) && bad(f64::NAN, 1.0) && bad(1.0, 0.0) && bad(1.0, 1.5));
        assert!(!bad(0.7, 0.9));
    }
}
