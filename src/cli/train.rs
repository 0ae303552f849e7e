//! `moescope train`: selective LoRA on the chosen experts, with a progress bar, Ctrl-C
//! checkpointing and a PEFT adapter at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use clap::Args;

use super::engine::ModelArgs;
use crate::data::DataOptions;
use crate::model::LoadOptions;
use crate::model::adapter::AdapterFormChoice;
use crate::selection::accounting::AdapterScope;
use crate::train::{ExpertChoice, LoraOptions, TrainError, TrainEvent, TrainOptions, run_training};

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Selection file of the experts to adapt (from `moescope select` or the GUI).
    #[arg(long, short = 's', conflicts_with_all = ["all_experts", "two_stage_das"])]
    pub selection: Option<PathBuf>,
    /// Adapt every routed expert (the all-expert LoRA baseline).
    #[arg(long)]
    pub all_experts: bool,
    /// DAS's recipe: stage 1 trains attention + router, stage 2 re-profiles the data and
    /// trains the top-DAS experts of --domain (the other subjects are the general set).
    #[arg(long, requires = "domain")]
    pub two_stage_das: bool,
    /// Steps of DAS stage 1 (default: half of the run).
    #[arg(long, requires = "two_stage_das")]
    pub stage1_steps: Option<u64>,
    /// Experts per MoE layer that stage 2 adapts (default: a quarter of the experts).
    #[arg(long, requires = "two_stage_das")]
    pub das_top: Option<usize>,
    /// Training data: JSONL, JSON, CSV, Parquet, .txt or a folder of <subject>.txt. A text
    /// column trains as it is; MMLU-style rows train on question, options and the answer
    /// letter; chat records (a `messages` column of {role, content}, or ShareGPT's
    /// `conversations` of {from, value}) train on the conversation rendered with the model's
    /// chat template (plain "role: content" lines when it has none), loss on every token.
    /// A `subject` / `category` column labels rows; without one the file name does. See
    /// docs/training-data.md.
    #[arg(long, short = 'd')]
    pub data: PathBuf,
    #[arg(long)]
    pub subject_column: Option<String>,
    #[arg(long)]
    pub text_column: Option<String>,
    /// Train on this subject's rows only (required by --two-stage-das).
    #[arg(long)]
    pub domain: Option<String>,
    /// Output folder: adapter, checkpoint, metrics.jsonl, training.json.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// LoRA rank r (MoE-Sieve: 32; DAS: 16).
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// LoRA alpha (the update is scaled by alpha / r).
    #[arg(long, default_value_t = 64.0)]
    pub alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f64,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Stop after this many optimiser steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<u64>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Tokens per training sequence (longer rows are cut).
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also adapt every layer's attention projections.
    #[arg(long)]
    pub train_attention: bool,
    /// Also adapt every MoE layer's router.
    #[arg(long)]
    pub train_router: bool,
    /// Also adapt the shared experts (families that have them).
    #[arg(long)]
    pub train_shared: bool,
    /// Write a checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Held-out data: per-subject perplexity before and after training.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// How the adapter is laid out: `per-expert` (the adapted experts' modules: PEFT with
    /// transformers 4.x, mistral.rs), `padded` (every expert of the adapted layers, zeros for
    /// the rest: also vLLM, SGLang and transformers 5 through PEFT's conversion), `fused`
    /// (transformers 5's `target_parameters` on `mlp.experts.gate_up_proj` / `down_proj`: PEFT
    /// with transformers 5, vLLM's fused-expert models). `auto`: fused for models only
    /// transformers 5 runs or checkpoints it saved, else per-expert.
    #[arg(long, value_enum, default_value = "auto")]
    pub adapter_form: AdapterFormChoice,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let experts = match (&args.selection, args.all_experts, args.two_stage_das) {
        (Some(s), false, false) => ExpertChoice::Selection(s.clone()),
        (None, true, false) => ExpertChoice::All,
        (None, false, true) => ExpertChoice::TwoStageDas {
            stage1_steps: args.stage1_steps,
            experts_per_layer: args.das_top,
        },
        _ => bail!("give one of --selection FILE, --all-experts or --two-stage-das"),
    };
    let model = match &args.model.model {
        Some(m) => m.clone(),
        None => crate::demo::demo_dir()?.display().to_string(),
    };
    let mut opts = TrainOptions::new(&model, experts, &args.data, &args.out);
    opts.load = LoadOptions {
        model,
        revision: args.model.revision.clone(),
        dtype: args.model.dtype,
        device: args.model.device,
        routing_only: false,
        adapter: None,
        in_memory: true,
    };
    if args.model.adapter.is_some() {
        bail!("--adapter is for applying a finished adapter; train writes a new one into --out");
    }
    opts.data_options = DataOptions {
        subject_optional: true,
        subject_column: args.subject_column.clone(),
        text_column: args.text_column.clone(),
        max_per_subject: None,
    };
    opts.domain = args.domain.clone();
    opts.lora = LoraOptions {
        rank: args.rank,
        alpha: args.alpha,
        dropout: args.dropout,
        scope: AdapterScope {
            attention: args.train_attention,
            router: args.train_router,
            shared_experts: args.train_shared,
            num_decoder_layers: None,
        },
    };
    opts.lr = args.lr;
    opts.weight_decay = args.weight_decay;
    opts.epochs = args.epochs;
    opts.max_steps = args.max_steps;
    opts.batch_size = args.batch_size;
    opts.grad_accum = args.grad_accum;
    opts.max_tokens = args.max_tokens;
    opts.seed = args.seed;
    opts.checkpoint_every = args.checkpoint_every;
    opts.resume = args.resume;
    opts.eval_data = args.eval_data.clone();
    opts.adapter_form = args.adapter_form;

    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || c.store(true, Ordering::Relaxed));
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps {msg} {elapsed} eta {eta}",
        )
        .expect("valid template"),
    );
    let mut on_event = |e: TrainEvent| match e {
        // A bar that is not drawn (output not a terminal) prints nothing: notes go to stderr.
        TrainEvent::Status(s) if bar.is_hidden() => eprintln!("{s}"),
        TrainEvent::Status(s) => bar.println(s),
        TrainEvent::Stage {
            stage,
            first_step,
            last_step,
            description,
        } => {
            bar.println(description);
            bar.set_prefix(match stage {
                0 => "training".to_string(),
                s => format!("stage {s}"),
            });
            bar.set_length(last_step - first_step);
            bar.set_position(0);
            bar.reset_eta();
        }
        TrainEvent::Profiling { done, total } => {
            bar.set_message(format!("re-profiling {done}/{total} seqs"));
        }
        TrainEvent::Step(m) => {
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                m.loss, m.lr, m.tokens_per_sec
            ));
        }
        TrainEvent::Checkpoint { .. } => {}
        TrainEvent::Finished(_) => bar.finish_and_clear(),
    };
    match run_training(opts, &cancel, &mut on_event) {
        Ok(s) => {
            bar.finish_and_clear();
            println!(
                "trained {} steps in {:.1} s ({:.0} tok/s): loss {:.4} -> {:.4}",
                s.steps, s.train_seconds, s.tokens_per_sec, s.first_loss, s.final_loss
            );
            println!(
                "adapter: {} modules ({} experts), {} parameters, {} bytes -> {}",
                s.adapted_modules,
                s.adapted_experts,
                s.trainable_params,
                s.adapter_bytes,
                s.adapter_dir
            );
            println!(
                "adapter form: {} (loads in {}; --adapter-form picks another)",
                s.adapter_form.label(),
                s.adapter_form.loads_in()
            );
            for h in &s.heldout {
                println!(
                    "held-out {:<16} ppl {:>9.2} -> {:>9.2} ({} tokens)",
                    h.subject, h.before, h.after, h.tokens
                );
            }
            Ok(())
        }
        Err(e @ TrainError::Cancelled { .. }) => {
            bar.abandon();
            bail!("{e}")
        }
        Err(e) => {
            bar.abandon();
            Err(e.into())
        }
    }
}
