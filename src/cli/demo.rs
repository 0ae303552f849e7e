//! `moescope train-demo`: trains the embedded demo model from the demo corpus, writes the shipped
//! folder, and measures it (`--eval-only` measures an existing folder).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use crate::demo::config::DemoConfig;
use crate::demo::corpus::{CorpusDir, TokenCorpus};
use crate::demo::eval::{EvalReport, evaluate};
use crate::demo::train::{TrainEvent, TrainOptions, Trainer};

/// Train the embedded demo MoE (tokenizer + model) on the 12-domain demo corpus.
#[derive(Debug, Clone, Args)]
pub struct TrainDemoArgs {
    /// Demo corpus folder: train/<domain>.txt, prompts/<domain>.txt, SOURCES.tsv
    /// (scripts/build_demo_corpus.sh builds it).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Where the finished demo goes (config.json, model.safetensors, tokenizer.json, prompts/,
    /// NOTICE, training.json).
    #[arg(long, default_value = "assets/demo")]
    pub out: PathBuf,
    /// Work folder of the run: tokenizer, checkpoint.safetensors, loss.tsv.
    #[arg(long, default_value = "target/train-demo")]
    pub work: PathBuf,
    /// Optimisation steps (the shipped demo: 1800).
    #[arg(long, default_value_t = 1800)]
    pub steps: u64,
    /// Seed of the initialisation and of the batches.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Continue from the work folder's checkpoint (same options required).
    #[arg(long)]
    pub resume: bool,
    /// Write a checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Sequences per domain in each batch (batch = 12 × this).
    #[arg(long, default_value_t = 1)]
    pub per_domain: usize,
    /// Tokens per training sequence (at most the context).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Final learning rate as a fraction of the peak.
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_ratio: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// AdamW weight decay (matrices only).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// α: weight of the load-balancing loss.
    #[arg(long, default_value_t = 0.01)]
    pub balance_coef: f64,
    /// β: weight of the router z-loss.
    #[arg(long, default_value_t = 0.001)]
    pub z_coef: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Tokenizer vocabulary size.
    #[arg(long, default_value_t = DemoConfig::default().vocab_size)]
    pub vocab: usize,
    #[arg(long, default_value_t = DemoConfig::default().hidden_size)]
    pub hidden: usize,
    /// Each expert's intermediate size.
    #[arg(long, default_value_t = DemoConfig::default().intermediate_size)]
    pub expert_intermediate: usize,
    #[arg(long, default_value_t = DemoConfig::default().num_hidden_layers)]
    pub layers: usize,
    #[arg(long, default_value_t = DemoConfig::default().num_attention_heads)]
    pub heads: usize,
    #[arg(long, default_value_t = DemoConfig::default().num_experts)]
    pub experts: usize,
    /// Experts per token.
    #[arg(long, default_value_t = DemoConfig::default().num_experts_per_tok)]
    pub top_k: usize,
    /// Context (max_position_embeddings).
    #[arg(long, default_value_t = DemoConfig::default().max_position_embeddings)]
    pub context: usize,
    /// Characters per domain the tokenizer is trained on.
    #[arg(long, default_value_t = 400_000)]
    pub tokenizer_chars: usize,
    /// Measure the existing folder in --out (perplexity, routing specialisation) without training.
    #[arg(long, conflicts_with = "resume")]
    pub eval_only: bool,
    /// Skip the measurements after training.
    #[arg(long, conflicts_with = "eval_only")]
    pub no_eval: bool,
    /// Also write the profile of the bundled prompts here.
    #[arg(long)]
    pub profile_out: Option<PathBuf>,
    /// Print a log line every N steps when the progress bar is not shown (not a terminal).
    #[arg(long, default_value_t = 25)]
    pub log_every: u64,
}

impl TrainDemoArgs {
    fn config(&self) -> DemoConfig {
        DemoConfig {
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            intermediate_size: self.expert_intermediate,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_experts: self.experts,
            num_experts_per_tok: self.top_k,
            max_position_embeddings: self.context,
            ..DemoConfig::default()
        }
    }

    fn options(&self) -> TrainOptions {
        TrainOptions {
            corpus: self.corpus.clone(),
            out: self.out.clone(),
            work: self.work.clone(),
            config: self.config(),
            steps: self.steps,
            seed: self.seed,
            per_domain: self.per_domain,
            seq_len: self.seq_len,
            lr: self.lr,
            min_lr_ratio: self.min_lr_ratio,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            balance_coef: self.balance_coef,
            z_coef: self.z_coef,
            clip: self.clip,
            checkpoint_every: self.checkpoint_every,
            resume: self.resume,
            tokenizer_chars: self.tokenizer_chars,
        }
    }
}

pub fn train_demo(args: TrainDemoArgs) -> Result<()> {
    if args.eval_only {
        return eval_only(&args);
    }
    let opts = args.options();
    let started = Instant::now();
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        // A handler may already be registered by the caller; then Ctrl-C simply ends the process.
        let _ = ctrlc::set_handler(move || c.store(true, Ordering::Relaxed));
    }
    let bar = indicatif::ProgressBar::new(opts.steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "train-demo [{bar:30}] {pos}/{len} {msg} {elapsed_precise} eta {eta_precise}",
        )
        .context("progress template")?,
    );
    let plain = !std::io::stderr().is_terminal();
    let log_every = args.log_every.max(1);
    let run_started = Instant::now();
    let mut on_event = |e: TrainEvent| match e {
        TrainEvent::Stage(s) => eprintln!("train-demo: {s}"),
        TrainEvent::Begin {
            start,
            steps,
            tokens_per_step,
        } => {
            eprintln!("train-demo: steps {start}..{steps}, {tokens_per_step} tokens per step");
            bar.set_position(start);
            bar.reset_eta();
        }
        TrainEvent::Step {
            point,
            tokens_per_sec,
        } => {
            bar.set_position(point.step);
            let msg = format!(
                "ce {:.3} lb {:.3} z {:.2} lr {:.2e} {:.0} tok/s",
                point.ce, point.balance, point.z, point.lr, tokens_per_sec
            );
            if plain && point.step % log_every == 0 {
                eprintln!(
                    "step {}/{} {msg} elapsed {:.0}s",
                    point.step,
                    opts.steps,
                    run_started.elapsed().as_secs_f64()
                );
            }
            bar.set_message(msg);
        }
        TrainEvent::Checkpoint { step } => {
            if plain {
                eprintln!("checkpoint at step {step}");
            }
        }
    };
    let mut trainer = Trainer::new(opts.clone(), &mut on_event)?;
    eprintln!(
        "train-demo: {} parameters ({} active per token), corpus {} tokens",
        trainer.opts.config.num_params(),
        trainer.opts.config.active_params(),
        trainer.corpus.total_tokens()
    );
    let train_secs = trainer.run(&cancel, &mut on_event);
    bar.finish_and_clear();
    let train_secs = train_secs?;
    eprintln!("train-demo: writing {}", opts.out.display());
    let mut training = json!({ "options": opts });
    let size = trainer.export(training.clone())?;
    let summary = trainer.summary(train_secs, size);
    training["summary"] = serde_json::to_value(&summary)?;
    training["total_secs"] = json!(started.elapsed().as_secs_f64());
    crate::demo::export::write_training_json(&opts.out, &training)?;
    eprintln!(
        "train-demo: {} steps ({} tokens) in {:.0} s, weights {:.1} MB",
        summary.steps,
        summary.tokens_seen,
        summary.train_secs,
        size as f64 / 1e6
    );
    for p in &summary.loss_curve {
        eprintln!(
            "  step {:>5}  ce {:.3}  balance {:.3}  z {:.3}",
            p.step, p.ce, p.balance, p.z
        );
    }
    if args.no_eval {
        return Ok(());
    }
    let report = evaluate(&opts.out, &trainer.corpus, args.profile_out.as_deref())?;
    print_report(&report);
    training["eval"] = serde_json::to_value(&report)?;
    crate::demo::export::write_training_json(&opts.out, &training)?;
    Ok(())
}

fn eval_only(args: &TrainDemoArgs) -> Result<()> {
    let tok_path = args.out.join("tokenizer.json");
    let tokenizer = crate::demo::tokenizer::load(&tok_path)?;
    let corpus_dir = CorpusDir::open(&args.corpus)?;
    eprintln!("train-demo: tokenising the corpus for the unigram baselines");
    let corpus = TokenCorpus::tokenise(&corpus_dir.read_train()?, &tokenizer)?;
    let report = evaluate(&args.out, &corpus, args.profile_out.as_deref())?;
    print_report(&report);
    let path = args.out.join("training.json");
    if path.is_file() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut training: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        if !training.is_object() {
            bail!("{} is not a JSON object", path.display());
        }
        training["eval"] = serde_json::to_value(&report)?;
        crate::demo::export::write_training_json(&args.out, &training)?;
    }
    Ok(())
}

fn print_report(r: &EvalReport) {
    println!("held-out perplexity (prompts, tokens after the first)");
    println!(
        "{:<12} {:>7} {:>9} {:>9} {:>14}",
        "domain", "tokens", "model", "unigram", "domain unigram"
    );
    for p in &r.perplexity {
        println!(
            "{:<12} {:>7} {:>9.1} {:>9.1} {:>14.1}",
            p.domain, p.tokens, p.model, p.unigram, p.domain_unigram
        );
    }
    let s = &r.specialisation;
    println!(
        "\nprofiled {} prompts ({} tokens) in {:.1} s",
        r.profile_sequences, r.profile_tokens, r.profile_secs
    );
    println!("\ntop-3 layers by KL vs pooled (layer:KL)");
    for (d, v) in &s.top_layers {
        let cells: Vec<String> = v.iter().map(|(l, kl)| format!("{l}:{kl:.3}")).collect();
        println!("  {:<12} {}", d, cells.join("  "));
    }
    if let Some(j) = s.top_layer_mean_jaccard {
        println!(
            "  mean pairwise Jaccard of top-3 sets {j:.3}; appearances {:?}",
            s.layer_appearances
        );
    }
    println!(
        "\nhot-set Jaccard (top {} experts per layer by count, mean over layers)",
        s.hot_k
    );
    for p in &s.pairs {
        println!("  {:<12} vs {:<12} {:.3}", p.a, p.b, p.jaccard);
    }
    println!(
        "  all pairs: mean {:.3}, min {:.3} ({} vs {}), max {:.3} ({} vs {})",
        s.pair_mean,
        s.pair_min.jaccard,
        s.pair_min.a,
        s.pair_min.b,
        s.pair_max.jaccard,
        s.pair_max.a,
        s.pair_max.b
    );
    println!(
        "\nload per layer (pooled): layer CV cold% coverage@{} entropy",
        s.hot_k
    );
    for l in &s.layers {
        println!(
            "  {:>3} {:>6.3} {:>5.1} {:>8.3} {:>7.3}",
            l.layer,
            l.cv,
            l.cold_share * 100.0,
            l.coverage,
            l.entropy
        );
    }
    println!(
        "  global CV {:.3}, mean layer CV {:.3}, mean cold {:.1} %",
        s.load.global_cv,
        s.load.mean_layer_cv,
        s.load.mean_cold_share * 100.0
    );
}
