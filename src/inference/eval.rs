//! Multiple-choice evaluation: each question is scored by the log-probability of each option
//! letter after the prompt, with and without steering, per subject, with seeded bootstrap 95 %
//! confidence intervals.
//!
//! Prompt: the dataset's multiple-choice text as [`crate::data::format_multiple_choice`]
//! writes it (`question\nA. …\nB. …`), then `\nAnswer:`. The score of letter `L` is the
//! log-probability of the tokens of `" L"` after that (one forward pass when every letter is one
//! token, as with every BPE vocabulary we know, with [`EVAL_BATCH`] questions padded into one
//! batch; otherwise a pass per letter summing its tokens' log-probabilities). The prediction is the best-scoring letter (ties: the earlier letter).
//!
//! Datasets: MMLU-Pro (`question`, `options` up to 10, `answer` letter / `answer_index`,
//! `category`) and MMLU (`question`, `choices`, `answer` index, `subject`), in any format
//! [`crate::data::load_prompts`] reads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::D;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::data::{
    DataOptions, count_lettered_options, load_prompts, multiple_choice_options, preview,
};
use crate::model::router::{NoHook, Steering};
use crate::model::{Batch, MoeModel, Output, RouteCtx, tokenize};
use crate::steering::{ActiveSteering, Result, SteerError};

/// One multiple-choice question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McItem {
    pub subject: String,
    /// Question and lettered options (no answer cue).
    pub prompt: String,
    pub num_options: usize,
    /// Index of the correct option (0 = A).
    pub answer: usize,
}

/// The answer cue appended to every prompt.
pub const ANSWER_CUE: &str = "\nAnswer:";

/// Letter of option `i` (0 = A).
pub fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

/// Reads a multiple-choice dataset: prompts through [`load_prompts`], answers and option counts
/// from the same rows. `subjects` (if not empty) keeps only those subjects; `limit` keeps the
/// first N questions per subject.
pub fn load_items(path: &Path, subjects: &[String], limit: Option<usize>) -> Result<Vec<McItem>> {
    let file = path.display().to_string();
    let bad = |msg: String| SteerError::Format {
        path: file.clone(),
        msg,
    };
    let prompts = load_prompts(path, &DataOptions::default())?;
    let rows = preview(path, usize::MAX)?;
    if rows.len() != prompts.len() {
        return Err(bad(format!(
            "read {} prompts but {} rows; cannot line up answers",
            prompts.len(),
            rows.len()
        )));
    }
    let find = |row: &[(String, String)], names: &[&str]| -> Option<String> {
        names.iter().find_map(|n| {
            row.iter()
                .find(|(c, _)| c == n)
                .or_else(|| row.iter().find(|(c, _)| c.eq_ignore_ascii_case(n)))
                .map(|(_, v)| v.clone())
        })
    };
    let mut items = Vec::new();
    let mut per_subject: BTreeMap<String, usize> = BTreeMap::new();
    for (i, (p, row)) in prompts.prompts.iter().zip(&rows).enumerate() {
        if !subjects.is_empty() && !subjects.iter().any(|s| s == &p.subject) {
            continue;
        }
        let count = per_subject.entry(p.subject.clone()).or_default();
        if limit.is_some_and(|n| *count >= n) {
            continue;
        }
        let options =
            find(row, &["options", "choices"]).ok_or_else(|| {
                bad("no \"options\" (MMLU-Pro) or \"choices\" (MMLU) column: not a multiple-choice \
                 dataset"
                .into())
            })?;
        let num_options = multiple_choice_options(&options)
            .map_or_else(|| count_lettered_options(&p.text), |o| o.len());
        if num_options < 2 {
            return Err(bad(format!("row {}: fewer than two options", i + 1)));
        }
        let answer_text = find(row, &["answer", "answer_index", "label", "target"])
            .ok_or_else(|| bad("no \"answer\" column".into()))?;
        let answer = parse_answer(&answer_text).ok_or_else(|| {
            bad(format!(
                "row {}: answer '{answer_text}' is neither a letter A–Z nor an option index",
                i + 1
            ))
        })?;
        if answer >= num_options {
            return Err(bad(format!(
                "row {}: answer {} is out of range for {num_options} options",
                i + 1,
                letter(answer.min(25))
            )));
        }
        *count += 1;
        items.push(McItem {
            subject: p.subject.clone(),
            prompt: p.text.clone(),
            num_options,
            answer,
        });
    }
    if items.is_empty() {
        let available = prompts.subjects().join(", ");
        return Err(bad(if subjects.is_empty() {
            "no questions".into()
        } else {
            format!("no questions for subjects {subjects:?} (the file has: {available})")
        }));
    }
    Ok(items)
}

/// `"C"` → 2, `"2"` → 2, `"(C)"` → 2.
fn parse_answer(text: &str) -> Option<usize> {
    let t = text.trim().trim_matches(|c| c == '(' || c == ')').trim();
    if let Ok(n) = t.parse::<usize>() {
        return Some(n);
    }
    let mut chars = t.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_uppercase() => Some((c as u8 - b'A') as usize),
        _ => None,
    }
}

/// Log-softmax of one logit row.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row
        .iter()
        .map(|&z| (z as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&z| z as f64 - lse).collect()
}

/// The scored tokens of one question.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Context tokens (left-truncated to fit the model).
    pub context: Vec<u32>,
    /// Per option: its continuation tokens after `context`.
    pub options: Vec<Vec<u32>>,
    pub truncated: bool,
}

/// Tokenises a question's context and each option letter's continuation.
pub fn encode_item(tokenizer: &Tokenizer, item: &McItem, max_positions: usize) -> Result<Encoded> {
    let context_text = format!("{}{ANSWER_CUE}", item.prompt);
    let ctx = tokenize::encode(tokenizer, &context_text)?;
    let mut common = ctx.len();
    let mut fulls = Vec::with_capacity(item.num_options);
    for i in 0..item.num_options {
        let full = tokenize::encode(tokenizer, &format!("{context_text} {}", letter(i)))?;
        let c = ctx.iter().zip(&full).take_while(|(a, b)| a == b).count();
        common = common.min(c);
        fulls.push(full);
    }
    if common == 0 {
        return Err(SteerError::Invalid(
            "the answer letters change the tokenisation of the whole prompt".into(),
        ));
    }
    let mut context = ctx[..common].to_vec();
    let options: Vec<Vec<u32>> = fulls.iter().map(|f| f[common..].to_vec()).collect();
    if let Some(i) = options.iter().position(Vec::is_empty) {
        return Err(SteerError::Invalid(format!(
            "option letter {} adds no tokens",
            letter(i)
        )));
    }
    let longest = options.iter().map(Vec::len).max().unwrap_or(1);
    let room = max_positions.saturating_sub(longest);
    let truncated = context.len() > room;
    if truncated {
        if room == 0 {
            return Err(SteerError::Invalid(
                "the model's context is too short".into(),
            ));
        }
        context.drain(..context.len() - room);
    }
    Ok(Encoded {
        context,
        options,
        truncated,
    })
}

/// Log-probability of each option's continuation.
pub fn score_encoded(
    model: &mut dyn MoeModel,
    enc: &Encoded,
    steering: Option<&Steering>,
) -> Result<Vec<f64>> {
    let device = model.device().clone();
    let mut hook = NoHook;
    if enc.options.iter().all(|o| o.len() == 1) {
        let batch = Batch::from_sequences(std::slice::from_ref(&enc.context), &device)?;
        let mut ctx = RouteCtx::new(&mut hook).with_steering(steering);
        let logits = model
            .forward(&batch, Output::LastLogits, &mut ctx)?
            .ok_or_else(|| SteerError::Invalid("the model returned no logits".into()))?;
        let lp = log_softmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
        return Ok(enc.options.iter().map(|o| lp[o[0] as usize]).collect());
    }
    // Letters of several tokens: every option's continuation in one padded pass (right
    // padding is masked, so each row reads as if it ran alone).
    let seqs: Vec<Vec<u32>> = enc
        .options
        .iter()
        .map(|o| [enc.context.as_slice(), o].concat())
        .collect();
    let batch = Batch::from_sequences(&seqs, &device)?;
    let mut ctx = RouteCtx::new(&mut hook).with_steering(steering);
    let logits = model
        .forward(&batch, Output::AllLogits, &mut ctx)?
        .ok_or_else(|| SteerError::Invalid("the model returned no logits".into()))?;
    let start = enc.context.len() - 1;
    let mut scores = Vec::with_capacity(enc.options.len());
    for (i, o) in enc.options.iter().enumerate() {
        let rows = logits.get(i)?.narrow(0, start, o.len())?;
        let lp = candle_nn::ops::log_softmax(&rows, D::Minus1)?.to_vec2::<f32>()?;
        scores.push(
            o.iter()
                .zip(&lp)
                .map(|(&t, row)| row[t as usize] as f64)
                .sum(),
        );
    }
    Ok(scores)
}

/// Questions scored together in one padded forward pass.
pub const EVAL_BATCH: usize = 8;

/// [`score_encoded`] for several questions: those whose letters are single tokens share one
/// padded forward pass (each read at its own last token); the others are scored one by one.
pub fn score_batch(
    model: &mut dyn MoeModel,
    encoded: &[Encoded],
    steering: Option<&Steering>,
) -> Result<Vec<Vec<f64>>> {
    let single = |e: &Encoded| e.options.iter().all(|o| o.len() == 1);
    let batched: Vec<usize> = (0..encoded.len())
        .filter(|&i| single(&encoded[i]))
        .collect();
    let mut scores: Vec<Option<Vec<f64>>> = vec![None; encoded.len()];
    if batched.len() > 1 {
        let contexts: Vec<Vec<u32>> = batched
            .iter()
            .map(|&i| encoded[i].context.clone())
            .collect();
        let batch = Batch::from_sequences(&contexts, model.device())?;
        let mut hook = NoHook;
        let mut ctx = RouteCtx::new(&mut hook).with_steering(steering);
        let logits = model
            .forward(&batch, Output::LastLogits, &mut ctx)?
            .ok_or_else(|| SteerError::Invalid("the model returned no logits".into()))?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        for (&i, row) in batched.iter().zip(&logits) {
            let lp = log_softmax(row);
            scores[i] = Some(
                encoded[i]
                    .options
                    .iter()
                    .map(|o| lp[o[0] as usize])
                    .collect(),
            );
        }
    }
    encoded
        .iter()
        .zip(scores)
        .map(|(enc, s)| match s {
            Some(s) => Ok(s),
            None => score_encoded(model, enc, steering),
        })
        .collect()
}

/// Index of the best score (ties: the earlier option).
pub fn best(scores: &[f64]) -> usize {
    let mut b = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[b] {
            b = i;
        }
    }
    b
}

/// Bootstrap percentile interval of the mean of `correct` (95 % by default: `level` 0.95):
/// `resamples` resamples with replacement from a `seed`ed RNG; the bounds are the sorted
/// resample means at ranks ⌊α/2·(B−1)⌉ and ⌊(1−α/2)·(B−1)⌉ (rounded).
pub fn bootstrap_ci(values: &[f64], resamples: usize, level: f64, seed: u64) -> (f64, f64) {
    paired_bootstrap(values, None, resamples, level, seed)
}

/// The same for the mean of `a − b` over paired items (same resampled indices).
pub fn paired_bootstrap(
    a: &[f64],
    b: Option<&[f64]>,
    resamples: usize,
    level: f64,
    seed: u64,
) -> (f64, f64) {
    let n = a.len();
    if n == 0 || resamples == 0 {
        return (f64::NAN, f64::NAN);
    }
    let value = |i: usize| a[i] - b.map_or(0.0, |b| b[i]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| value(rng.random_range(0..n))).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let alpha = (1.0 - level).clamp(0.0, 1.0);
    let rank = |q: f64| ((q * (resamples - 1) as f64).round() as usize).min(resamples - 1);
    (means[rank(alpha / 2.0)], means[rank(1.0 - alpha / 2.0)])
}

/// An accuracy (or accuracy difference) with its bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// One subject's (or the overall) result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectResult {
    pub subject: String,
    pub questions: usize,
    pub unsteered: Estimate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steered: Option<Estimate>,
    /// Steered − unsteered (paired bootstrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Estimate>,
}

/// What happened to one question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    pub subject: String,
    pub answer: usize,
    pub unsteered: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steered: Option<usize>,
    pub truncated: bool,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub subjects: Vec<SubjectResult>,
    pub overall: SubjectResult,
    pub items: Vec<ItemResult>,
    pub resamples: usize,
    pub seed: u64,
    /// Questions whose prompt was cut from the left to fit the model's context.
    pub truncated: usize,
}

/// Bootstrap settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    pub resamples: usize,
    pub seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            resamples: 1000,
            seed: 0,
        }
    }
}

/// Scores every item unsteered and (if `steering` is given) steered, [`EVAL_BATCH`] at a time;
/// `progress(done, total)` after each batch; `cancel` checked between batches.
pub fn run_eval(
    model: &mut dyn MoeModel,
    tokenizer: &Tokenizer,
    items: &[McItem],
    steering: Option<&ActiveSteering>,
    opts: &EvalOptions,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    model.set_use_kv_cache(false);
    let max_pos = model.info().max_position_embeddings;
    // Multiple-choice scoring reads prompt tokens only.
    let steer = steering.and_then(|s| s.for_prompt());
    let mut results = Vec::with_capacity(items.len());
    for (chunk_no, chunk) in items.chunks(EVAL_BATCH).enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(SteerError::Cancelled);
        }
        let first = chunk_no * EVAL_BATCH;
        let encoded = chunk
            .iter()
            .enumerate()
            .map(|(j, item)| {
                encode_item(tokenizer, item, max_pos).map_err(|e| {
                    SteerError::Invalid(format!(
                        "question {} ({}): {e}",
                        first + j + 1,
                        item.subject
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let plain = score_batch(model, &encoded, None)?;
        let steered = match (steering, steer) {
            (Some(_), Some(s)) => Some(score_batch(model, &encoded, Some(s))?),
            _ => None,
        };
        for (j, (item, enc)) in chunk.iter().zip(&encoded).enumerate() {
            let unsteered = best(&plain[j]);
            results.push(ItemResult {
                subject: item.subject.clone(),
                answer: item.answer,
                unsteered,
                steered: match &steered {
                    Some(s) => Some(best(&s[j])),
                    // A spec that leaves prompt tokens alone scores as unsteered.
                    None => steering.map(|_| unsteered),
                },
                truncated: enc.truncated,
            });
        }
        progress(results.len(), items.len());
    }
    Ok(summarise(results, opts))
}

/// Per-subject (first-seen order) and overall accuracies with intervals.
pub fn summarise(items: Vec<ItemResult>, opts: &EvalOptions) -> EvalReport {
    let mut order: Vec<String> = Vec::new();
    for it in &items {
        if !order.contains(&it.subject) {
            order.push(it.subject.clone());
        }
    }
    let result = |name: &str, sel: Vec<&ItemResult>, salt: u64| -> SubjectResult {
        let seed = opts.seed.wrapping_add(salt);
        let plain: Vec<f64> = sel
            .iter()
            .map(|r| f64::from(u8::from(r.unsteered == r.answer)))
            .collect();
        let est = |v: &[f64]| {
            let (lo, hi) = bootstrap_ci(v, opts.resamples, 0.95, seed);
            Estimate {
                value: v.iter().sum::<f64>() / v.len().max(1) as f64,
                ci_low: lo,
                ci_high: hi,
            }
        };
        let steered_v: Option<Vec<f64>> = sel
            .iter()
            .map(|r| r.steered.map(|s| f64::from(u8::from(s == r.answer))))
            .collect();
        let delta = steered_v.as_ref().map(|s| {
            let (lo, hi) = paired_bootstrap(s, Some(&plain), opts.resamples, 0.95, seed);
            Estimate {
                value: s.iter().zip(&plain).map(|(a, b)| a - b).sum::<f64>()
                    / s.len().max(1) as f64,
                ci_low: lo,
                ci_high: hi,
            }
        });
        SubjectResult {
            subject: name.to_string(),
            questions: sel.len(),
            unsteered: est(&plain),
            steered: steered_v.as_deref().map(est),
            delta,
        }
    };
    let subjects = order
        .iter()
        .enumerate()
        .map(|(k, s)| {
            result(
                s,
                items.iter().filter(|r| &r.subject == s).collect(),
                k as u64 + 1,
            )
        })
        .collect();
    let overall = result("all", items.iter().collect(), 0);
    EvalReport {
        subjects,
        overall,
        truncated: items.iter().filter(|r| r.truncated).count(),
        items,
        resamples: opts.resamples,
        seed: opts.seed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_ci_hand_cases() {
        // All right / all wrong: every resample has the same mean.
        assert_eq!(bootstrap_ci(&[1.0; 5], 200, 0.95, 1), (1.0, 1.0));
        assert_eq!(bootstrap_ci(&[0.0; 5], 200, 0.95, 1), (0.0, 0.0));
        // Two items, one right: resample means 0, 0.5, 1 with probability 1/4, 1/2, 1/4, so the
        // 2.5 % and 97.5 % points of 2000 resamples are 0 and 1.
        assert_eq!(bootstrap_ci(&[1.0, 0.0], 2000, 0.95, 7), (0.0, 1.0));
        // A 0 % interval collapses onto the median, 0.5.
        assert_eq!(bootstrap_ci(&[1.0, 0.0], 2001, 0.0, 7), (0.5, 0.5));
        // Seeded: the same seed gives the same interval.
        let v = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0];
        assert_eq!(
            bootstrap_ci(&v, 500, 0.95, 3),
            bootstrap_ci(&v, 500, 0.95, 3)
        );
        let (lo, hi) = bootstrap_ci(&v, 500, 0.95, 3);
        assert!(lo < 0.625 && 0.625 < hi && lo >= 0.0 && hi <= 1.0);
        // Paired difference of identical vectors is exactly 0.
        assert_eq!(paired_bootstrap(&v, Some(&v), 100, 0.95, 0), (0.0, 0.0));
    }

    #[test]
    fn answers_and_options_parse() {
        assert_eq!(parse_answer("C"), Some(2));
        assert_eq!(parse_answer(" 3 "), Some(3));
        assert_eq!(parse_answer("(B)"), Some(1));
        assert_eq!(parse_answer("maybe"), None);
        assert_eq!(
            multiple_choice_options(r#"["a", "N/A", null, "b"]"#).map(|o| o.len()),
            Some(2)
        );
        assert_eq!(count_lettered_options("Q?\nA. x\nB. y\nC. z"), 3);
        assert_eq!(best(&[-1.0, -0.5, -0.5]), 1);
    }

    #[test]
    fn summary_counts_per_subject() {
        let it = |s: &str, a, u, st| ItemResult {
            subject: s.into(),
            answer: a,
            unsteered: u,
            steered: Some(st),
            truncated: false,
        };
        let r = summarise(
            vec![it("x", 0, 0, 1), it("y", 1, 0, 1), it("x", 2, 2, 2)],
            &EvalOptions::default(),
        );
        assert_eq!(r.subjects[0].subject, "x");
        assert_eq!(r.subjects[0].questions, 2);
        assert!((r.subjects[0].unsteered.value - 1.0).abs() < 1e-12);
        assert!((r.subjects[0].steered.unwrap().value - 0.5).abs() < 1e-12);
        assert!((r.subjects[1].delta.unwrap().value - 1.0).abs() < 1e-12);
        assert!((r.overall.unsteered.value - 2.0 / 3.0).abs() < 1e-12);
    }
}
