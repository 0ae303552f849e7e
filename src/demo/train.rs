//! Training the demo model: tokenizer, then the MoE LM, then the shipped folder.
//!
//! - Tokenizer: byte-level BPE on a domain-balanced sample of the training text.
//! - Model: built through the engine's OLMoE builder ([`super::model::build_vars`]), seeded
//!   initialisation, AdamW (decoupled weight decay on matrices, none on norms), linear warmup
//!   then cosine decay, global gradient-norm clipping; loss = cross-entropy + α·load-balancing +
//!   β·router z-loss; every step a domain-balanced batch ([`super::corpus::TokenCorpus::batch`]).
//! - Checkpoints (`<work>/checkpoint.safetensors`, atomic) every N steps and when cancelled;
//!   `resume` continues from the checkpoint's step with the same batches and schedule (the
//!   optimiser's moment estimates restart from zero — the only difference from an uninterrupted
//!   run).
//! - Finally the folder is written ([`super::export::write_folder`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use serde::{Deserialize, Serialize};

use super::config::DemoConfig;
use super::corpus::{CorpusDir, TokenCorpus, tokenizer_sample};
use super::export::{self, CheckpointMeta, DemoFolder};
use super::model::{TrainModel, build_vars, init_weights, is_norm};
use super::{DemoError, Result};
use crate::model::autograd::cross_entropy;

/// Everything a training run is told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    pub corpus: PathBuf,
    pub out: PathBuf,
    /// Tokenizer, checkpoint and loss log of the run.
    pub work: PathBuf,
    pub config: DemoConfig,
    pub steps: u64,
    pub seed: u64,
    /// Sequences per domain per step (a batch has `12 × per_domain` sequences).
    pub per_domain: usize,
    /// Tokens per training sequence (at most the config's context).
    pub seq_len: usize,
    pub lr: f64,
    /// The cosine decay ends at `lr × min_lr_ratio`.
    pub min_lr_ratio: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    /// α, weight of the load-balancing loss.
    pub balance_coef: f64,
    /// β, weight of the router z-loss.
    pub z_coef: f64,
    /// Global gradient-norm clip (0 = none).
    pub clip: f64,
    pub checkpoint_every: u64,
    pub resume: bool,
    /// Characters per domain the tokenizer is trained on.
    pub tokenizer_chars: usize,
}

impl TrainOptions {
    pub fn checkpoint_path(&self) -> PathBuf {
        self.work.join("checkpoint.safetensors")
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.work.join("tokenizer.json")
    }

    pub fn loss_log_path(&self) -> PathBuf {
        self.work.join("loss.tsv")
    }

    /// The learning rate of step `step` (0-based): linear warmup, then cosine to the minimum.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        let min = self.lr * self.min_lr_ratio;
        min + (self.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }

    fn validate(&self) -> Result<()> {
        self.config.validate()?;
        if self.seq_len == 0 || self.seq_len > self.config.max_position_embeddings {
            return Err(DemoError::msg(format!(
                "sequence length {} must be in 1..={} (the context)",
                self.seq_len, self.config.max_position_embeddings
            )));
        }
        if self.per_domain == 0 || self.steps == 0 || self.checkpoint_every == 0 {
            return Err(DemoError::msg(
                "steps, sequences per domain and the checkpoint interval must be positive",
            ));
        }
        if self.lr.is_nan() || self.lr <= 0.0 || !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(DemoError::msg(
                "learning rate must be positive, min-lr ratio in [0, 1]",
            ));
        }
        Ok(())
    }
}

/// The losses of one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    pub step: u64,
    /// Cross-entropy (nats per token).
    pub ce: f32,
    pub balance: f32,
    pub z: f32,
    pub lr: f64,
}

/// What the run reports while it goes.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// A stage begins (tokenizer, tokenising, training, writing).
    Stage(String),
    /// Training starts at `start` of `steps`.
    Begin {
        start: u64,
        steps: u64,
        tokens_per_step: usize,
    },
    Step {
        point: LossPoint,
        tokens_per_sec: f64,
    },
    Checkpoint {
        step: u64,
    },
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub tokens_seen: u64,
    pub train_secs: f64,
    pub tokenizer_secs: f64,
    pub tokenise_secs: f64,
    pub corpus_tokens: Vec<(String, usize)>,
    pub num_params: u64,
    pub active_params: u64,
    pub weights_bytes: u64,
    /// Mean losses over windows of steps.
    pub loss_curve: Vec<LossPoint>,
}

/// Gets the tokenizer of the run: the work folder's when resuming, else a newly trained one.
fn tokenizer_for(
    opts: &TrainOptions,
    domains: &[super::corpus::DomainText],
    resume: bool,
) -> Result<tokenizers::Tokenizer> {
    let path = opts.tokenizer_path();
    if resume {
        return super::tokenizer::load(&path);
    }
    let sample = tokenizer_sample(domains, opts.tokenizer_chars);
    let tok = super::tokenizer::train_bpe(sample.into_iter(), opts.config.vocab_size)?;
    super::tokenizer::save(&tok, &path)?;
    Ok(tok)
}

fn read_loss_log(path: &Path, upto: u64) -> Vec<LossPoint> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            Some(LossPoint {
                step: c.first()?.parse().ok()?,
                ce: c.get(1)?.parse().ok()?,
                balance: c.get(2)?.parse().ok()?,
                z: c.get(3)?.parse().ok()?,
                lr: c.get(4)?.parse().ok()?,
            })
        })
        .filter(|p| p.step <= upto)
        .collect()
}

fn write_loss_log(path: &Path, points: &[LossPoint]) -> Result<()> {
    let mut s = String::from("step\tce\tbalance\tz\tlr\n");
    for p in points {
        s.push_str(&format!(
            "{}\t{:.5}\t{:.5}\t{:.5}\t{:.3e}\n",
            p.step, p.ce, p.balance, p.z, p.lr
        ));
    }
    crate::io::write_atomic(path, s.as_bytes()).map_err(|e| DemoError::io(path, e))
}

/// Means of the loss points over consecutive windows of `window` steps.
pub fn loss_curve(points: &[LossPoint], window: usize) -> Vec<LossPoint> {
    points
        .chunks(window.max(1))
        .map(|c| {
            let n = c.len() as f32;
            LossPoint {
                step: c.last().map_or(0, |p| p.step),
                ce: c.iter().map(|p| p.ce).sum::<f32>() / n,
                balance: c.iter().map(|p| p.balance).sum::<f32>() / n,
                z: c.iter().map(|p| p.z).sum::<f32>() / n,
                lr: c.last().map_or(0.0, |p| p.lr),
            }
        })
        .collect()
}

/// Scales the gradients so their global L2 norm is at most `max`; returns the norm before.
fn clip_gradients(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[Var],
    max: f64,
) -> Result<f64> {
    let mut sq = Vec::with_capacity(vars.len());
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq.push(g.sqr()?.sum_all()?);
        }
    }
    if sq.is_empty() {
        return Ok(0.0);
    }
    let norm = f64::from(Tensor::stack(&sq, 0)?.sum_all()?.to_scalar::<f32>()?).sqrt();
    if max > 0.0 && norm > max {
        let scale = max / norm;
        for v in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let g = (g * scale)?;
                grads.insert(v.as_tensor(), g);
            }
        }
    }
    Ok(norm)
}

/// The model, optimiser state and data of a run in progress.
pub struct Trainer {
    pub opts: TrainOptions,
    pub varmap: VarMap,
    pub engine: Box<dyn crate::model::MoeModel>,
    pub model: TrainModel,
    pub corpus: TokenCorpus,
    pub tokenizer: tokenizers::Tokenizer,
    /// Steps completed.
    pub step: u64,
    pub resumed_from: Option<u64>,
    pub history: Vec<LossPoint>,
    decay: AdamW,
    no_decay: AdamW,
    vars: Vec<Var>,
    pub tokenizer_secs: f64,
    pub tokenise_secs: f64,
}

impl Trainer {
    /// Prepares a run: tokenizer, tokenised corpus, model (fresh or from the checkpoint).
    pub fn new(opts: TrainOptions, on_event: &mut dyn FnMut(TrainEvent)) -> Result<Self> {
        opts.validate()?;
        let corpus_dir = CorpusDir::open(&opts.corpus)?;
        std::fs::create_dir_all(&opts.work).map_err(|e| DemoError::io(&opts.work, e))?;
        let resume = opts.resume && opts.checkpoint_path().is_file();
        if opts.resume && !resume {
            on_event(TrainEvent::Stage(format!(
                "no checkpoint at {}: starting from step 0",
                opts.checkpoint_path().display()
            )));
        }
        let domains = corpus_dir.read_train()?;
        on_event(TrainEvent::Stage(if resume {
            "loading the run's tokenizer".into()
        } else {
            format!("training the tokenizer ({} tokens)", opts.config.vocab_size)
        }));
        let t0 = Instant::now();
        let tokenizer = tokenizer_for(&opts, &domains, resume)?;
        if tokenizer.get_vocab_size(true) != opts.config.vocab_size {
            return Err(DemoError::msg(format!(
                "the tokenizer has {} tokens, the config {}",
                tokenizer.get_vocab_size(true),
                opts.config.vocab_size
            )));
        }
        let tokenizer_secs = t0.elapsed().as_secs_f64();
        on_event(TrainEvent::Stage("tokenising the corpus".into()));
        let t0 = Instant::now();
        let corpus = TokenCorpus::tokenise(&domains, &tokenizer)?;
        corpus.check_len(opts.seq_len)?;
        let tokenise_secs = t0.elapsed().as_secs_f64();

        let device = Device::Cpu;
        let varmap = VarMap::new();
        let engine = build_vars(&opts.config, &varmap, &device)?;
        init_weights(&varmap, &opts.config, opts.seed)?;
        let mut step = 0;
        let mut history = Vec::new();
        let mut resumed_from = None;
        if resume {
            let meta = export::load_checkpoint(&varmap, &opts.checkpoint_path(), &device)?;
            if meta.config != opts.config || meta.seed != opts.seed {
                return Err(DemoError::msg(format!(
                    "{}: the checkpoint was made with seed {} and config {:?}; this run has seed {} and config {:?} \
                     (pass the same options, or drop --resume to start over)",
                    opts.checkpoint_path().display(),
                    meta.seed,
                    meta.config,
                    opts.seed,
                    opts.config
                )));
            }
            step = meta.step;
            resumed_from = Some(step);
            history = read_loss_log(&opts.loss_log_path(), step);
        }
        let model = TrainModel::new(&varmap, &opts.config, &device)?;
        let (mut decay_vars, mut plain_vars) = (Vec::new(), Vec::new());
        let mut vars = Vec::new();
        {
            let data = varmap
                .data()
                .lock()
                .map_err(|_| DemoError::msg("weight map lock poisoned"))?;
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            for n in names {
                let v = data[n].clone();
                vars.push(v.clone());
                if is_norm(n) {
                    plain_vars.push(v);
                } else {
                    decay_vars.push(v);
                }
            }
        }
        let params = |wd: f64| ParamsAdamW {
            lr: opts.lr,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: wd,
        };
        let decay = AdamW::new(decay_vars, params(opts.weight_decay))?;
        let no_decay = AdamW::new(plain_vars, params(0.0))?;
        Ok(Self {
            opts,
            varmap,
            engine,
            model,
            corpus,
            tokenizer,
            step,
            resumed_from,
            history,
            decay,
            no_decay,
            vars,
            tokenizer_secs,
            tokenise_secs,
        })
    }

    pub fn tokens_per_step(&self) -> usize {
        self.corpus.domains.len() * self.opts.per_domain * self.opts.seq_len
    }

    /// Runs one optimisation step on the batch of step `self.step`.
    pub fn train_step(&mut self) -> Result<LossPoint> {
        let (o, step) = (&self.opts, self.step);
        let (inputs, targets) = self.corpus.batch(o.seed, step, o.per_domain, o.seq_len);
        let rows = inputs.len() / o.seq_len;
        let device = Device::Cpu;
        let x = Tensor::from_vec(inputs, (rows, o.seq_len), &device)?;
        let y = Tensor::from_vec(targets, rows * o.seq_len, &device)?;
        let out = self.model.forward(&x)?;
        let ce = cross_entropy(&out.logits, &y)?;
        let loss = ((&ce + (&out.balance_loss * o.balance_coef)?)? + (&out.z_loss * o.z_coef)?)?;
        let mut grads = loss.backward()?;
        clip_gradients(&mut grads, &self.vars, o.clip)?;
        let lr = o.lr_at(step);
        self.decay.set_learning_rate(lr);
        self.no_decay.set_learning_rate(lr);
        self.decay.step(&grads)?;
        self.no_decay.step(&grads)?;
        let point = LossPoint {
            step: step + 1,
            ce: ce.to_scalar::<f32>()?,
            balance: out.balance_loss.to_scalar::<f32>()?,
            z: out.z_loss.to_scalar::<f32>()?,
            lr,
        };
        if !point.ce.is_finite() {
            return Err(DemoError::msg(format!(
                "loss became {} at step {}",
                point.ce,
                step + 1
            )));
        }
        self.step += 1;
        self.history.push(point);
        Ok(point)
    }

    /// Writes the checkpoint and the loss log.
    pub fn checkpoint(&self) -> Result<()> {
        export::save_checkpoint(
            &self.varmap,
            &self.opts.checkpoint_path(),
            &CheckpointMeta {
                step: self.step,
                seed: self.opts.seed,
                config: self.opts.config.clone(),
            },
        )?;
        write_loss_log(&self.opts.loss_log_path(), &self.history)
    }

    /// Trains until `opts.steps` (checkpointing as configured) or until `cancel` is set (then it
    /// checkpoints and returns an error saying so).
    pub fn run(
        &mut self,
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<f64> {
        on_event(TrainEvent::Begin {
            start: self.step,
            steps: self.opts.steps,
            tokens_per_step: self.tokens_per_step(),
        });
        let started = Instant::now();
        let mut rate = 0.0;
        while self.step < self.opts.steps {
            if cancel.load(Ordering::Relaxed) {
                self.checkpoint()?;
                on_event(TrainEvent::Checkpoint { step: self.step });
                return Err(DemoError::msg(format!(
                    "cancelled at step {}; checkpoint written to {} (continue with --resume)",
                    self.step,
                    self.opts.checkpoint_path().display()
                )));
            }
            let t0 = Instant::now();
            let point = self.train_step()?;
            let r = self.tokens_per_step() as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            rate = if rate == 0.0 { r } else { 0.9 * rate + 0.1 * r };
            on_event(TrainEvent::Step {
                point,
                tokens_per_sec: rate,
            });
            if self.step.is_multiple_of(self.opts.checkpoint_every) || self.step == self.opts.steps
            {
                self.checkpoint()?;
                on_event(TrainEvent::Checkpoint { step: self.step });
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Writes the shipped folder into `opts.out`.
    pub fn export(&self, training: serde_json::Value) -> Result<u64> {
        let corpus = CorpusDir::open(&self.opts.corpus)?;
        export::write_folder(
            &self.opts.out,
            &DemoFolder {
                config: &self.opts.config,
                varmap: &self.varmap,
                tokenizer: &self.tokenizer,
                corpus: &corpus,
                training,
            },
        )
    }

    pub fn summary(&self, train_secs: f64, weights_bytes: u64) -> TrainSummary {
        TrainSummary {
            steps: self.step,
            resumed_from: self.resumed_from,
            tokens_seen: self.step * self.tokens_per_step() as u64,
            train_secs,
            tokenizer_secs: self.tokenizer_secs,
            tokenise_secs: self.tokenise_secs,
            corpus_tokens: self
                .corpus
                .domains
                .iter()
                .map(|d| (d.name.clone(), d.ids.len()))
                .collect(),
            num_params: self.opts.config.num_params(),
            active_params: self.opts.config.active_params(),
            weights_bytes,
            loss_curve: loss_curve(&self.history, 50),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_minimum() {
        let o = TrainOptions {
            corpus: PathBuf::new(),
            out: PathBuf::new(),
            work: PathBuf::new(),
            config: DemoConfig::default(),
            steps: 100,
            seed: 0,
            per_domain: 1,
            seq_len: 16,
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup: 10,
            weight_decay: 0.1,
            balance_coef: 0.01,
            z_coef: 0.001,
            clip: 1.0,
            checkpoint_every: 10,
            resume: false,
            tokenizer_chars: 1000,
        };
        assert!((o.lr_at(0) - 1e-4).abs() < 1e-12);
        assert!((o.lr_at(9) - 1e-3).abs() < 1e-12);
        assert!((o.lr_at(10) - 1e-3).abs() < 1e-12);
        assert!((o.lr_at(55) - 0.55e-3).abs() < 1e-9);
        assert!((o.lr_at(100) - 1e-4).abs() < 1e-12);
        assert!(o.lr_at(30) > o.lr_at(60));
    }
}
