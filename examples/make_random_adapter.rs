//! Writes a random PEFT LoRA adapter for a model folder, from its `config.json` and shard
//! headers alone (no weights are read): `--experts` experts of every decoder layer (gate, up and
//! down of each), plus every layer's attention projections with `--attention`. Used by the
//! merge benchmark (BENCHMARKS.md, "Merging an adapter") and to check fused-expert merges with
//! transformers (`scripts/check_merge.py --base … --adapter …`).
//!
//! A is uniform in ±1/√in, B uniform in ±0.02, so the update is small but moves the logits.
//!
//! `cargo run --release --example make_random_adapter -- --model DIR --out ADAPTER
//!  [--rank 16] [--alpha 32] [--experts 8] [--attention] [--seed 0]`

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use moescope::model::adapter::{Adapter, AdapterSettings, LoraPair};
use moescope::model::families::layout_from_config;
use moescope::model::hub::{FileLayout, resolve_dir};
use moescope::model::loader::detect_family;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
struct Args {
    /// The model folder (config.json, safetensors).
    #[arg(long)]
    model: PathBuf,
    /// The adapter folder to write.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    #[arg(long, default_value_t = 32.0)]
    alpha: f64,
    /// Experts adapted per layer (distinct, drawn at random).
    #[arg(long, default_value_t = 8)]
    experts: usize,
    /// Also adapt every layer's attention projections.
    #[arg(long)]
    attention: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// A config field of the language model (`text_config` of a multimodal config, else the top).
fn text_field(config: &serde_json::Value, keys: &[&str]) -> Option<usize> {
    let text = config.get("text_config").unwrap_or(config);
    keys.iter()
        .find_map(|k| text.get(*k).and_then(serde_json::Value::as_u64))
        .map(|v| v as usize)
}

fn uniform(rng: &mut impl Rng, shape: (usize, usize), bound: f32) -> Result<Tensor> {
    let values: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let files = resolve_dir(&args.model)?;
    let FileLayout::Hf {
        config, weights, ..
    } = &files.layout
    else {
        anyhow::bail!("{}: not a safetensors model folder", args.model.display());
    };
    let text = std::fs::read_to_string(config)?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let family = detect_family(config, &json)?;
    let (layout, _) = layout_from_config(family, &text)?;
    let layers = text_field(&json, &["num_hidden_layers"]).context("num_hidden_layers")?;
    let experts = text_field(
        &json,
        &["num_experts", "num_local_experts", "n_routed_experts"],
    )
    .context("the number of experts")?;
    let mut tensors = HashSet::new();
    for shard in weights {
        let file = std::fs::File::open(shard)?;
        // SAFETY: read-only map of a file nobody writes while this runs.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&map[..])?;
        tensors.extend(meta.tensors().into_keys());
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut modules = BTreeMap::new();
    let mut add =
        |rng: &mut rand::rngs::StdRng, name: String, inp: usize, out: usize| -> Result<()> {
            let a = uniform(rng, (args.rank, inp), 1.0 / (inp as f32).sqrt())?;
            let b = uniform(rng, (out, args.rank), 0.02)?;
            modules.insert(name, LoraPair { a, b });
            Ok(())
        };
    for layer in 0..layers {
        for e in sample(&mut rng, experts, args.experts.min(experts)).into_vec() {
            for p in &layout.expert_projections {
                let name = layout.expert_module(layer, e, &p.name);
                add(&mut rng, name, p.in_features, p.out_features)?;
            }
        }
        if args.attention {
            let prefix = layout
                .attention_prefix
                .replace("{layer}", &layer.to_string());
            for p in &layout.attention_projections {
                let name = format!("{prefix}.{}", p.name);
                if tensors.contains(&format!("{name}.weight")) {
                    add(&mut rng, name, p.in_features, p.out_features)?;
                }
            }
        }
    }
    let adapter = Adapter {
        settings: AdapterSettings {
            rank: args.rank,
            alpha: args.alpha,
            dropout: 0.0,
            use_rslora: false,
            base_model: args.model.display().to_string(),
        },
        modules,
    };
    let bytes = adapter.save(&args.out)?;
    println!(
        "wrote {} ({} modules, {} parameters, {bytes} bytes)",
        args.out.display(),
        adapter.modules.len(),
        adapter.num_params()
    );
    Ok(())
}
