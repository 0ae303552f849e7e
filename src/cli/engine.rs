//! The engine's commands: `info`, `trace` and `profile`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use crate::data::{DataOptions, load_prompts};
use crate::inference::profiling::{
    ProfileError, ProfileOptions, ProfileProgress, Schedule, run_profile,
};
use crate::inference::trace::trace_tokens;
use crate::model::device::DeviceChoice;
use crate::model::memory::human_bytes;
use crate::model::{LoadOptions, LoadedModel, load_model, parse_dtype, tokenize};

/// Which model to load and how.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model folder (config.json, tokenizer.json, *.safetensors), GGUF file (`.gguf`; the
    /// first or any part of a split one), HF hub id (owner/name), or a GGUF file of a hub repo
    /// (owner/name:Q4_K_M or owner/name:FILE.gguf); the embedded demo model when omitted.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Hub revision: branch, tag or commit.
    #[arg(long)]
    pub revision: Option<String>,
    /// Weight dtype: f32, bf16 or f16. By default the checkpoint's own, read in place from the
    /// memory-mapped files on the CPU; another dtype is a converted copy in memory.
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<candle_core::DType>,
    /// Device: auto, cpu, cuda[:N], metal[:N].
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) merged
    /// into the weights, e.g. the output of `moescope train`.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

impl ModelArgs {
    /// Loads the model; `routing_only` skips what routing capture never uses.
    pub fn load(&self, show_progress: bool, routing_only: bool) -> Result<LoadedModel> {
        let loaded = self.load_with(self.options(routing_only)?, show_progress)?;
        let plan = &loaded.plan;
        // Profiles stream layer by layer; a whole forward pass per token cannot.
        if !routing_only
            && plan.mapped
            && plan.exceeds_memory()
            && let Some(b) = &plan.budget
        {
            eprintln!(
                "note: the weights ({}) are larger than the {} of memory available ({}); \
                 this command reads them from disk as it goes and will be slow",
                human_bytes(plan.weight_bytes),
                human_bytes(b.available),
                b.source
            );
        }
        Ok(loaded)
    }

    /// What [`ModelArgs::load`] loads.
    fn options(&self, routing_only: bool) -> Result<LoadOptions> {
        let model = match &self.model {
            Some(m) => m.clone(),
            None => crate::demo::demo_dir()?.display().to_string(),
        };
        Ok(LoadOptions {
            model,
            revision: self.revision.clone(),
            dtype: self.dtype,
            device: self.device,
            routing_only,
            adapter: self.adapter.clone(),
            in_memory: false,
        })
    }

    fn load_with(&self, opts: LoadOptions, show_progress: bool) -> Result<LoadedModel> {
        let mut bar = DownloadBar::default();
        let progress: Option<&mut dyn crate::model::hub::DownloadProgress> =
            if show_progress { Some(&mut bar) } else { None };
        Ok(load_model(&opts, progress)?)
    }
}

/// An indicatif bar for hub downloads.
#[derive(Default)]
struct DownloadBar(Option<indicatif::ProgressBar>);

impl crate::model::hub::DownloadProgress for DownloadBar {
    fn on_file(&mut self, file: &str, total_bytes: usize) {
        if let Some(b) = self.0.take() {
            b.finish();
        }
        let bar = indicatif::ProgressBar::new(total_bytes as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("valid template"),
        );
        bar.set_message(file.to_string());
        self.0 = Some(bar);
    }

    fn on_bytes(&mut self, bytes: usize) {
        if let Some(b) = &self.0 {
            b.inc(bytes as u64);
        }
    }
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Shows what config.json and the safetensors headers say, without reading any weights: the
/// model is built over the memory-mapped files (no copy, nothing run), whatever `--dtype` and
/// `--device` say; those only change the plan shown.
pub fn info(args: InfoArgs) -> Result<()> {
    let asked = args.model.options(false)?;
    let mut opts = asked.clone();
    opts.dtype = None;
    opts.device = DeviceChoice::Cpu;
    opts.adapter = None;
    let loaded = args.model.load_with(opts, true)?;
    let i = loaded.model.info();
    let device = crate::model::device::open(asked.device);
    let plan = loaded
        .plan
        .replan(device.as_ref().unwrap_or(&candle_core::Device::Cpu), &asked);
    let (dtype, weight_bytes) = (plan.dtype, plan.weight_bytes);
    use crate::model::hub::FileLayout;
    let budget = plan.budget.clone();
    if args.json {
        let mut v = serde_json::to_value(i)?;
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "dtype".into(),
                json!(crate::model::device::dtype_name(dtype)),
            );
            o.insert(
                "checkpoint_dtype".into(),
                json!(crate::model::device::dtype_name(plan.checkpoint_dtype)),
            );
            o.insert("weight_bytes".into(), json!(weight_bytes));
            o.insert("mapped".into(), json!(plan.mapped));
            o.insert(
                "memory_available".into(),
                json!(budget.as_ref().map(|b| b.available)),
            );
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let dense: Vec<usize> = (0..i.num_layers)
        .filter(|l| !i.moe_layers.contains(l))
        .collect();
    println!("model            {}", i.id);
    println!("architecture     {} ({:?})", i.architecture, i.family);
    println!(
        "layers           {} ({} MoE: {:?}{})",
        i.num_layers,
        i.moe_layers.len(),
        i.moe_layers,
        if dense.is_empty() {
            String::new()
        } else {
            format!("; dense: {dense:?}")
        }
    );
    for (kind, layers) in layer_groups(i) {
        println!(
            "  {kind:<26} layers {}",
            crate::model::info::layer_ranges(&layers)
        );
    }
    println!(
        "experts          {} routed per MoE layer, {} per token",
        i.num_experts, i.top_k
    );
    println!("shared experts   {}", i.num_shared_experts);
    println!("hidden size      {}", i.hidden_size);
    println!("vocabulary       {}", i.vocab_size);
    println!("context          {}", i.max_position_embeddings);
    println!(
        "parameters       {} total, {} active per token",
        human(i.total_params),
        human(i.active_params)
    );
    let device_name = device
        .as_ref()
        .map(crate::model::device::describe)
        .unwrap_or_else(|e| format!("unavailable ({e})"));
    println!("device           {device_name}");
    match (&loaded.files.layout, &plan.storage) {
        (FileLayout::Hf { weights, .. }, _) => println!(
            "checkpoint       {} in {} file{}",
            crate::model::device::dtype_name(plan.checkpoint_dtype),
            weights.len(),
            if weights.len() == 1 { "" } else { "s" }
        ),
        (FileLayout::Gguf { .. }, storage) => {
            println!("checkpoint       {}", storage.as_deref().unwrap_or("GGUF"));
            for s in &i.storage {
                println!("  {:<26} {}", s.class, s.format);
            }
        }
    }
    let held_as = match (&plan.storage, plan.mapped) {
        (Some(_), true) => "stored".to_string(),
        _ => crate::model::device::dtype_name(dtype).to_string(),
    };
    println!(
        "weights          {} as {held_as}{}",
        human_bytes(weight_bytes),
        if plan.mapped {
            ", memory-mapped and read in place"
        } else {
            ", copied into memory"
        }
    );
    if let Some(b) = &budget {
        let verdict = if !plan.exceeds_memory() {
            "fits".to_string()
        } else if plan.mapped {
            "does not fit: profiles stream layer by layer".to_string()
        } else {
            format!(
                "does not fit: use --dtype {} to read the weights in place",
                crate::model::device::dtype_name(plan.checkpoint_dtype)
            )
        };
        println!(
            "memory           {} ({}): {verdict}",
            human_bytes(b.available),
            b.source
        );
    }
    Ok(())
}

/// The model's layers grouped by kind (`full attention, MoE` …), in order of first appearance.
fn layer_groups(info: &crate::model::ModelInfo) -> Vec<(String, Vec<usize>)> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for layer in 0..info.num_layers {
        let kind = info.layer_description(layer);
        match groups.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, layers)) => layers.push(layer),
            None => groups.push((kind, vec![layer])),
        }
    }
    groups
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B ({n})", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M ({n})", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K ({n})", n as f64 / 1e3),
        n => n.to_string(),
    }
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to tokenise (with the tokenizer's special tokens).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    pub text: Option<String>,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub ids: Option<Vec<u32>>,
    /// Print one JSON object (router logits, scores, chosen experts, weights, last-token logits).
    #[arg(long)]
    pub json: bool,
}

pub fn trace(args: TraceArgs) -> Result<()> {
    let mut loaded = args.model.load(true, false)?;
    let ids = match (&args.text, &args.ids) {
        (Some(t), _) => {
            if t.is_empty() {
                bail!("--text is empty");
            }
            tokenize::encode(&loaded.tokenizer, t)?
        }
        (None, Some(ids)) => ids.clone(),
        (None, None) => bail!("pass --text or --ids"),
    };
    let info = loaded.model.info().clone();
    let traced = trace_tokens(loaded.model.as_mut(), ids, true)?;
    let last: &[f32] = traced.last_logits.as_deref().unwrap_or_default();
    let tokens = traced.token_texts(&loaded.tokenizer);
    let ids = &traced.ids;
    let rows = |v: &[f32], w: usize| -> Vec<Vec<f32>> {
        v.chunks(w.max(1)).map(<[f32]>::to_vec).collect()
    };
    if args.json {
        let layers: Vec<_> = traced
            .layers
            .iter()
            .map(|l| {
                json!({
                    "layer": l.layer,
                    "router_logits": rows(&l.logits, l.num_experts),
                    "routing_scores": rows(&l.scores, l.num_experts),
                    "topk_indices": l.topk_indices.chunks(l.top_k).map(<[u32]>::to_vec).collect::<Vec<_>>(),
                    "topk_weights": rows(&l.topk_weights, l.top_k),
                })
            })
            .collect();
        let out = json!({
            "model": info.id,
            "architecture": info.architecture,
            "input_ids": ids,
            "tokens": tokens,
            "moe_layers": info.moe_layers,
            "layers": layers,
            "last_token_logits": last,
        });
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "{} · {} tokens · top-{} of {} experts",
        info.id,
        ids.len(),
        info.top_k,
        info.num_experts
    );
    for l in &traced.layers {
        println!("\nlayer {}", l.layer);
        for (t, tok) in tokens.iter().enumerate() {
            let chosen: Vec<String> = (0..l.top_k)
                .map(|j| {
                    format!(
                        "{}:{:.3}",
                        l.topk_indices[t * l.top_k + j],
                        l.topk_weights[t * l.top_k + j]
                    )
                })
                .collect();
            println!(
                "  {:>4} {:<16} {}",
                ids[t],
                format!("{tok:?}"),
                chosen.join(" ")
            );
        }
    }
    let best = crate::model::router::top_k_indices(last, 5);
    let next: Vec<String> = best
        .iter()
        .map(|&i| {
            format!(
                "{:?} ({:.3})",
                loaded.tokenizer.decode(&[i], false).unwrap_or_default(),
                last[i as usize]
            )
        })
        .collect();
    println!("\nnext-token logits, top 5: {}", next.join(", "));
    Ok(())
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Dataset: JSONL, JSON, CSV or Parquet with a subject column and a text column (or a
    /// `messages` / `conversations` column of chat messages, rendered with the model's chat
    /// template), a .txt file or a folder of `<subject>.txt` prompt files. Without it (and
    /// without --model), the demo's bundled prompts.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where to write the profile (JSON).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub subject_column: Option<String>,
    #[arg(long)]
    pub text_column: Option<String>,
    /// Keep at most N prompts per subject.
    #[arg(long)]
    pub max_per_subject: Option<usize>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Truncate prompts to this many tokens.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Also write per-sequence traces (JSON Lines) here.
    #[arg(long)]
    pub traces: Option<PathBuf>,
    /// Order of the work: `layer` runs every batch through one layer before the next (each
    /// weight read once, one layer resident at a time: for models larger than memory),
    /// `batch` each batch through the whole model, `auto` layer-major when the weights are
    /// memory-mapped. Both give the same profile.
    #[arg(long, default_value = "auto")]
    pub schedule: Schedule,
    /// Where a layer-major run spills hidden states that do not fit in memory (default: the
    /// system's temporary folder).
    #[arg(long)]
    pub spill_dir: Option<PathBuf>,
}

pub fn profile(args: ProfileArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let data = match (&args.data, &args.model.model) {
        (Some(d), _) => d.clone(),
        (None, None) => crate::demo::demo_dir()?.join("prompts"),
        (None, Some(m)) => {
            bail!("--data is needed with --model {m} (the bundled prompts go with the demo model)")
        }
    };
    let prompts = if data.is_dir() {
        crate::data::load_prompt_dir(&data)?
    } else {
        let opts = DataOptions {
            subject_optional: false,
            subject_column: args.subject_column.clone(),
            text_column: args.text_column.clone(),
            max_per_subject: args.max_per_subject,
        };
        load_prompts(&data, &opts)?
    };
    let mut prompts = prompts;
    if let Some(n) = args.max_per_subject {
        prompts.limit_per_subject(n);
    }
    let mut loaded = args.model.load(true, true)?;
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        // A second handler registration fails only if one exists already; ignore that.
        let _ = ctrlc::set_handler(move || c.store(true, Ordering::Relaxed));
    }
    let bar = indicatif::ProgressBar::new(prompts.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "profiling [{bar:30}] {pos}/{len} seqs {msg} {elapsed} eta {eta}",
        )
        .expect("valid template"),
    );
    let started = std::time::Instant::now();
    if prompts.has_conversations() {
        eprintln!("{}", loaded.chat_template.conversation_note());
    }
    let opts = ProfileOptions {
        batch_size: args.batch_size,
        max_tokens: args.max_tokens,
        traces: args.traces.clone(),
        schedule: args.schedule,
        spill_dir: args.spill_dir.clone(),
        chat_template: loaded.chat_template.clone(),
        ..ProfileOptions::default()
    };
    let mut tokens = 0usize;
    let mut last = ProfileProgress::default();
    let result = run_profile(
        loaded.model.as_mut(),
        &loaded.tokenizer,
        &prompts,
        &opts,
        &cancel,
        &mut |p| {
            last = p;
            tokens = p.tokens_done;
            match p.layers {
                Some((done, total)) => {
                    if bar.length() != Some(total as u64) {
                        bar.set_length(total as u64);
                        bar.set_style(
                            indicatif::ProgressStyle::with_template(
                                "layer-major [{bar:30}] layer {pos}/{len} {msg} {elapsed} eta {eta}",
                            )
                            .expect("valid template"),
                        );
                    }
                    bar.set_position(done as u64);
                    let mut msg = format!("{} of weights read", human_bytes(p.weight_bytes_read));
                    if p.spilled_bytes > 0 {
                        msg += &format!(", {} spilled", human_bytes(p.spilled_bytes));
                    }
                    bar.set_message(msg);
                }
                None => {
                    bar.set_position(p.sequences_done as u64);
                    let secs = started.elapsed().as_secs_f64().max(1e-9);
                    bar.set_message(format!(
                        "{} tok, {:.0} tok/s",
                        p.tokens_done,
                        p.tokens_done as f64 / secs
                    ));
                }
            }
        },
    );
    bar.finish_and_clear();
    let profile = match result {
        Ok(p) => p,
        Err(ProfileError::Cancelled) => bail!("cancelled; nothing was written"),
        Err(e) => return Err(e.into()),
    };
    profile.save(&args.out)?;
    let secs = started.elapsed().as_secs_f64();
    let how = match last.layers {
        Some((_, layers)) => format!(
            "layer-major over {layers} layers, {} of weights read{}",
            human_bytes(last.weight_bytes_read),
            if last.spilled_bytes > 0 {
                format!(
                    ", {} of hidden states spilled",
                    human_bytes(last.spilled_bytes)
                )
            } else {
                String::new()
            }
        ),
        None => "batch-major".to_string(),
    };
    eprintln!(
        "profiled {} sequences ({} tokens, {} subjects) in {:.1} s ({:.0} tokens/s; {how}; weights {}) -> {}",
        prompts.len(),
        tokens,
        profile.subjects.len(),
        secs,
        tokens as f64 / secs.max(1e-9),
        loaded.plan.describe(),
        args.out.display()
    );
    Ok(())
}
