//! Measuring the demo model: held-out perplexity per domain against unigram baselines, and the
//! routing specialisation of the held-out prompts (through the normal loader and profiler, so
//! it measures exactly what users get).
//!
//! Perplexity is over every prompt token after the first (the first has no context: prompts are
//! encoded without special tokens, as the profiler encodes them). The baselines use the same
//! tokenizer and the same predicted tokens: a unigram model of the whole training corpus, and a
//! (stronger) unigram model of the prompt's own domain, both add-one smoothed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::corpus::TokenCorpus;
use super::{DemoError, Result};
use crate::analysis::balance::{LayerLoad, LoadSummary, layer_loads, load_summary};
use crate::analysis::divergence::{subject_divergences, top_layer_overlap};
use crate::analysis::hot::{HotSignal, experts_for_budget, hot_set_jaccard_matrix};
use crate::data::PromptSet;
use crate::inference::nll::sequence_nll;
use crate::inference::profiling::{ProfileOptions, run_profile};
use crate::model::MoeModel;
use crate::profile::RoutingProfile;

/// One domain's held-out perplexities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainPerplexity {
    pub domain: String,
    pub prompts: usize,
    /// Tokens predicted (all prompt tokens but the first).
    pub tokens: usize,
    pub model: f64,
    /// Unigram of the whole training corpus.
    pub unigram: f64,
    /// Unigram of this domain's training text.
    pub domain_unigram: f64,
}

/// Add-one smoothed unigram log-probabilities over a vocabulary.
pub struct Unigram {
    logp: Vec<f64>,
}

impl Unigram {
    pub fn from_streams<'a>(streams: impl Iterator<Item = &'a [u32]>, vocab: usize) -> Self {
        let mut counts = vec![0u64; vocab];
        let mut total = 0u64;
        for s in streams {
            for &t in s {
                if let Some(c) = counts.get_mut(t as usize) {
                    *c += 1;
                    total += 1;
                }
            }
        }
        let denom = (total + vocab as u64) as f64;
        Self {
            logp: counts
                .iter()
                .map(|&c| ((c + 1) as f64 / denom).ln())
                .collect(),
        }
    }

    pub fn logp(&self, id: u32) -> f64 {
        self.logp
            .get(id as usize)
            .copied()
            .unwrap_or(f64::NEG_INFINITY)
    }
}

/// Perplexity per domain of `prompts` (subjects = domains) under the model and the baselines.
pub fn perplexity(
    model: &mut dyn MoeModel,
    tokenizer: &Tokenizer,
    prompts: &PromptSet,
    corpus: &TokenCorpus,
) -> Result<Vec<DomainPerplexity>> {
    let vocab = model.info().vocab_size;
    let max_len = model.info().max_position_embeddings;
    let global = Unigram::from_streams(corpus.domains.iter().map(|d| d.ids.as_slice()), vocab);
    let mut out = Vec::new();
    for subject in prompts.subjects() {
        let texts: Vec<String> = prompts
            .prompts_for(&subject)
            .map(|p| p.text.clone())
            .collect();
        let mut seqs = super::tokenizer::encode_many(tokenizer, texts)?;
        for s in &mut seqs {
            s.truncate(max_len);
        }
        let (nll, n) = sequence_nll(model, &seqs, 16)?;
        if n == 0 {
            return Err(DemoError::msg(format!(
                "domain {subject}: no prompt has two tokens"
            )));
        }
        let local = corpus
            .domains
            .iter()
            .find(|d| d.name == subject)
            .map(|d| Unigram::from_streams(std::iter::once(d.ids.as_slice()), vocab));
        let (mut g, mut l) = (0.0, 0.0);
        for s in &seqs {
            for &id in s.iter().skip(1) {
                g -= global.logp(id);
                l -= local.as_ref().map_or(global.logp(id), |u| u.logp(id));
            }
        }
        out.push(DomainPerplexity {
            domain: subject.clone(),
            prompts: seqs.len(),
            tokens: n,
            model: (nll / n as f64).exp(),
            unigram: (g / n as f64).exp(),
            domain_unigram: (l / n as f64).exp(),
        });
    }
    Ok(out)
}

/// A pair of domains and the mean over layers of their hot-set Jaccard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairJaccard {
    pub a: String,
    pub b: String,
    pub jaccard: f64,
}

/// The routing-specialisation numbers `docs/demo.md` quotes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Specialisation {
    /// Hot-set size per layer (25 % of the experts).
    pub hot_k: usize,
    /// Domain → its top-3 layers by KL vs pooled (decoder indices) and their KL values.
    pub top_layers: BTreeMap<String, Vec<(usize, f64)>>,
    /// Mean pairwise Jaccard of the top-3 layer sets.
    pub top_layer_mean_jaccard: Option<f64>,
    /// Decoder layer → number of domains whose top-3 contains it.
    pub layer_appearances: BTreeMap<usize, usize>,
    /// Selected domain pairs' hot-set Jaccard (by count).
    pub pairs: Vec<PairJaccard>,
    /// Mean, min and max of the hot-set Jaccard over all domain pairs.
    pub pair_mean: f64,
    pub pair_min: PairJaccard,
    pub pair_max: PairJaccard,
    /// Load statistics of the pooled profile per layer and overall.
    pub layers: Vec<LayerLoad>,
    pub load: LoadSummary,
}

/// Domain pairs quoted in the documentation.
pub const QUOTED_PAIRS: [(&str, &str); 7] = [
    ("code_rust", "law"),
    ("code_python", "law"),
    ("literature", "religion"),
    ("code_rust", "code_python"),
    ("law", "medicine"),
    ("literature", "politics"),
    ("math", "science"),
];

/// Computes [`Specialisation`] from a profile (hot sets at 25 % of the experts).
pub fn specialisation(profile: &RoutingProfile) -> Result<Specialisation> {
    let hot_k = experts_for_budget(profile.model.num_experts, 0.25)
        .map_err(|e| DemoError::msg(e.to_string()))?;
    let divs = subject_divergences(profile, 3);
    let overlap = top_layer_overlap(
        &divs
            .iter()
            .map(|d| d.top_layers.clone())
            .collect::<Vec<_>>(),
    );
    let layers = &profile.model.moe_layers;
    let top_layers = divs
        .iter()
        .map(|d| {
            let v = d
                .top_layers
                .iter()
                .map(|&l| {
                    let row = layers.iter().position(|&x| x == l).unwrap_or(0);
                    (l, d.kl.get(row).copied().unwrap_or(0.0))
                })
                .collect();
            (d.name.clone(), v)
        })
        .collect();
    let m = hot_set_jaccard_matrix(profile, HotSignal::Count, hot_k)
        .map_err(|e| DemoError::msg(e.to_string()))?;
    let idx = |n: &str| m.subjects.iter().position(|s| s == n);
    let pairs = QUOTED_PAIRS
        .iter()
        .filter_map(|(a, b)| {
            Some(PairJaccard {
                a: a.to_string(),
                b: b.to_string(),
                jaccard: m.values[idx(a)?][idx(b)?],
            })
        })
        .collect();
    let mut all = Vec::new();
    for i in 0..m.subjects.len() {
        for j in i + 1..m.subjects.len() {
            all.push(PairJaccard {
                a: m.subjects[i].clone(),
                b: m.subjects[j].clone(),
                jaccard: m.values[i][j],
            });
        }
    }
    if all.is_empty() {
        return Err(DemoError::msg("the profile needs at least two domains"));
    }
    let pair_mean = all.iter().map(|p| p.jaccard).sum::<f64>() / all.len() as f64;
    let by = |a: &&PairJaccard, b: &&PairJaccard| a.jaccard.total_cmp(&b.jaccard);
    let pair_min = all
        .iter()
        .min_by(by)
        .cloned()
        .ok_or_else(|| DemoError::msg("no pairs"))?;
    let pair_max = all
        .iter()
        .max_by(by)
        .cloned()
        .ok_or_else(|| DemoError::msg("no pairs"))?;
    let pooled = profile.pooled();
    let loads = layer_loads(&pooled.count, layers, hot_k);
    let load = load_summary(&pooled.count, &loads);
    Ok(Specialisation {
        hot_k,
        top_layers,
        top_layer_mean_jaccard: overlap.mean_pairwise,
        layer_appearances: overlap.layer_appearances,
        pairs,
        pair_mean,
        pair_min,
        pair_max,
        layers: loads,
        load,
    })
}

/// Everything `train-demo` measures on a finished demo folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub perplexity: Vec<DomainPerplexity>,
    pub specialisation: Specialisation,
    pub profile_secs: f64,
    pub profile_sequences: usize,
    pub profile_tokens: usize,
}

/// Loads the demo folder `dir` through the normal loader, measures perplexity on its bundled
/// prompts against the baselines of `corpus`, profiles the prompts (timed) and summarises the
/// routing specialisation. The profile is also written to `profile_out` if given.
pub fn evaluate(
    dir: &Path,
    corpus: &TokenCorpus,
    profile_out: Option<&Path>,
) -> Result<EvalReport> {
    let opts = crate::model::LoadOptions {
        model: dir.display().to_string(),
        device: crate::model::device::DeviceChoice::Cpu,
        ..Default::default()
    };
    let mut loaded = crate::model::load_model(&opts, None)?;
    let prompts = crate::data::load_prompt_dir(&dir.join("prompts"))
        .map_err(|e| DemoError::msg(e.to_string()))?;
    let started = Instant::now();
    let mut tokens = 0usize;
    let profile = run_profile(
        loaded.model.as_mut(),
        &loaded.tokenizer,
        &prompts,
        &ProfileOptions::default(),
        &AtomicBool::new(false),
        &mut |p| tokens = p.tokens_done,
    )
    .map_err(|e| DemoError::msg(format!("profiling the demo prompts: {e}")))?;
    let profile_secs = started.elapsed().as_secs_f64();
    if let Some(p) = profile_out {
        profile.save(p).map_err(|e| DemoError::msg(e.to_string()))?;
    }
    let perplexity = perplexity(loaded.model.as_mut(), &loaded.tokenizer, &prompts, corpus)?;
    Ok(EvalReport {
        perplexity,
        specialisation: specialisation(&profile)?,
        profile_secs,
        profile_sequences: prompts.len(),
        profile_tokens: tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unigram_is_add_one_smoothed() {
        let u = Unigram::from_streams([&[0u32, 0, 1][..]].into_iter(), 4);
        // counts 2,1,0,0 over 3 tokens, vocab 4: (c+1)/7
        assert!((u.logp(0) - (3.0f64 / 7.0).ln()).abs() < 1e-12);
        assert!((u.logp(3) - (1.0f64 / 7.0).ln()).abs() < 1e-12);
    }
}
