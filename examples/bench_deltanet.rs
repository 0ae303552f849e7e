//! How much of a Qwen3.5-MoE forward pass the gated DeltaNet takes, on one decoder layer of
//! Qwen3.5-35B-A3B's shape (hidden 2048; DeltaNet 16 key heads and 32 value heads of 128,
//! conv kernel 4; 256 experts, top-8, expert and shared-expert intermediate 512). Qwen3-Next-
//! 80B-A3B's linear-attention layers have the same DeltaNet shape (it has 512 experts, top-10).
//!
//! Writes a one-layer bf16 checkpoint with random weights (about 1.6 GB, in a temporary
//! folder), loads it as the CLI does (memory-mapped, read in place), then times on
//! `batch × seq` random tokens:
//! - the whole model forward (embedding, the DeltaNet layer with its MoE block, LM head over a
//!   512-token vocabulary), as profiling runs it;
//! - the DeltaNet mixer alone (its five projections, convolution, recurrence, gated norm);
//! - the convolution, recurrence and gated norm alone (no projections).
//!
//! `cargo run --release --example bench_deltanet -- [batch] [seq] [iters]`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use moescope::model::device::DeviceChoice;
use moescope::model::layers::AttentionLayer;
use moescope::model::layers::gated_delta_net::{
    DeltaNetInputs, DeltaNetParams, DeltaNetState, GatedDeltaNet, GatedDeltaNetConfig,
};
use moescope::model::weights::{MmapWeights, WeightSource};
use moescope::model::{Batch, LoadOptions, Output, RecordingHook, RouteCtx, load_model};
use rand::{Rng, SeedableRng};

const HIDDEN: usize = 2048;
const VOCAB: usize = 512;
const EXPERTS: usize = 256;
const INTER: usize = 512;

fn shape() -> GatedDeltaNetConfig {
    GatedDeltaNetConfig {
        hidden_size: HIDDEN,
        num_key_heads: 16,
        num_value_heads: 32,
        key_head_dim: 128,
        value_head_dim: 128,
        conv_kernel: 4,
    }
}

/// Writes the one-layer checkpoint, config and tokenizer into `dir`.
fn write_model(dir: &std::path::Path) -> anyhow::Result<()> {
    let dn = shape();
    let dev = Device::Cpu;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: &str, dims: &[usize], std: f64, mean: f64| -> anyhow::Result<()> {
        let x = (Tensor::randn(0f32, std as f32, dims, &dev)? + mean)?;
        t.insert(name.to_string(), x.to_dtype(DType::BF16)?);
        Ok(())
    };
    let l = "model.layers.0";
    put("model.embed_tokens.weight", &[VOCAB, HIDDEN], 0.5, 0.0)?;
    put("model.norm.weight", &[HIDDEN], 0.1, 0.0)?;
    put("lm_head.weight", &[VOCAB, HIDDEN], 0.02, 0.0)?;
    put(&format!("{l}.input_layernorm.weight"), &[HIDDEN], 0.1, 0.0)?;
    put(
        &format!("{l}.post_attention_layernorm.weight"),
        &[HIDDEN],
        0.1,
        0.0,
    )?;
    let a = format!("{l}.linear_attn");
    let (ch, nv, vd) = (dn.conv_channels(), dn.num_value_heads, dn.value_dim());
    put(&format!("{a}.in_proj_qkv.weight"), &[ch, HIDDEN], 0.02, 0.0)?;
    put(&format!("{a}.in_proj_z.weight"), &[vd, HIDDEN], 0.02, 0.0)?;
    put(&format!("{a}.in_proj_b.weight"), &[nv, HIDDEN], 0.02, 0.0)?;
    put(&format!("{a}.in_proj_a.weight"), &[nv, HIDDEN], 0.02, 0.0)?;
    put(&format!("{a}.out_proj.weight"), &[HIDDEN, vd], 0.02, 0.0)?;
    put(
        &format!("{a}.conv1d.weight"),
        &[ch, 1, dn.conv_kernel],
        0.4,
        0.0,
    )?;
    put(&format!("{a}.A_log"), &[nv], 0.3, -1.0)?;
    put(&format!("{a}.dt_bias"), &[nv], 0.5, 0.0)?;
    put(&format!("{a}.norm.weight"), &[dn.value_head_dim], 0.1, 1.0)?;
    let m = format!("{l}.mlp");
    put(&format!("{m}.gate.weight"), &[EXPERTS, HIDDEN], 0.02, 0.0)?;
    put(
        &format!("{m}.experts.gate_up_proj"),
        &[EXPERTS, 2 * INTER, HIDDEN],
        0.02,
        0.0,
    )?;
    put(
        &format!("{m}.experts.down_proj"),
        &[EXPERTS, HIDDEN, INTER],
        0.02,
        0.0,
    )?;
    for p in ["gate_proj", "up_proj"] {
        put(
            &format!("{m}.shared_expert.{p}.weight"),
            &[INTER, HIDDEN],
            0.02,
            0.0,
        )?;
    }
    put(
        &format!("{m}.shared_expert.down_proj.weight"),
        &[HIDDEN, INTER],
        0.02,
        0.0,
    )?;
    put(
        &format!("{m}.shared_expert_gate.weight"),
        &[1, HIDDEN],
        0.02,
        0.0,
    )?;
    candle_core::safetensors::save(&t, dir.join("model.safetensors"))?;
    let config = serde_json::json!({
        "architectures": ["Qwen3_5MoeForCausalLM"],
        "model_type": "qwen3_5_moe_text",
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": 1,
        "layer_types": ["linear_attention"],
        "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
        "linear_num_key_heads": dn.num_key_heads, "linear_num_value_heads": nv,
        "linear_key_head_dim": dn.key_head_dim, "linear_value_head_dim": dn.value_head_dim,
        "linear_conv_kernel_dim": dn.conv_kernel,
        "num_experts": EXPERTS, "num_experts_per_tok": 8,
        "moe_intermediate_size": INTER, "shared_expert_intermediate_size": INTER,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25}
    });
    std::fs::write(dir.join("config.json"), config.to_string())?;
    let tokenizer = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/qwen3_5_moe/tokenizer.json");
    std::fs::copy(tokenizer, dir.join("tokenizer.json"))?;
    Ok(())
}

/// Median seconds of `iters` runs of `f` after one warm-up run.
fn time(iters: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let mut runs = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        runs.push(start.elapsed().as_secs_f64());
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[runs.len() / 2])
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (batch, seq, iters) = (arg(0, 4), arg(1, 128), arg(2, 3));
    let dir = tempfile::tempdir()?;
    write_model(dir.path())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let seqs: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            (0..seq)
                .map(|_| rng.random_range(0..VOCAB as u32))
                .collect()
        })
        .collect();

    let mut loaded = load_model(
        &LoadOptions {
            model: dir.path().display().to_string(),
            device: DeviceChoice::Cpu,
            ..Default::default()
        },
        None,
    )?;
    let b = Batch::from_sequences(&seqs, &loaded.device)?;
    let whole = time(iters, || {
        let mut hook = RecordingHook::default();
        loaded
            .model
            .forward(&b, Output::LastLogits, &mut RouteCtx::new(&mut hook))?;
        Ok(())
    })?;

    let weights = Arc::new(MmapWeights::open(&[dir.path().join("model.safetensors")])?);
    let vb = WeightSource::new(weights, DType::F32, &Device::Cpu, true);
    let mut mixer = GatedDeltaNet::load(&vb.pp("model.layers.0.linear_attn"), shape(), 1e-6)?;
    let x = Tensor::randn(0f32, 1.0, (batch, seq, HIDDEN), &Device::Cpu)?;
    let mixer_time = time(iters, || {
        mixer.forward(&x, None, 0, false)?;
        Ok(())
    })?;

    let dn = shape();
    let (ch, nv, vd) = (dn.conv_channels(), dn.num_value_heads, dn.value_dim());
    let mut r = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let params = DeltaNetParams {
        cfg: dn,
        conv: r(ch * dn.conv_kernel),
        neg_a: r(nv).iter().map(|v| -(v - 1.0).exp()).collect(),
        dt_bias: r(nv),
        norm: r(dn.value_head_dim),
        norm_eps: 1e-6,
    };
    let (qkv, bb, a, z) = (r(seq * ch), r(seq * nv), r(seq * nv), r(seq * vd));
    let recurrence = time(iters, || {
        for _ in 0..batch {
            let mut state = DeltaNetState {
                conv_window: vec![0.0; (dn.conv_kernel - 1) * ch],
                recurrent: vec![0.0; nv * dn.key_head_dim * dn.value_head_dim],
            };
            let inputs = DeltaNetInputs {
                qkv: &qkv,
                b: &bb,
                a: &a,
                z: &z,
            };
            std::hint::black_box(params.run_sequence(&inputs, &mut state));
        }
        Ok(())
    })?;
    let tokens = (batch * seq) as f64;
    println!(
        "{}",
        serde_json::json!({
            "batch": batch, "seq": seq, "threads": candle_core::utils::get_num_threads(),
            "model_forward_s": whole,
            "deltanet_mixer_s": mixer_time,
            "deltanet_recurrence_s": recurrence,
            "deltanet_share_of_forward": mixer_time / whole,
            "recurrence_share_of_forward": recurrence / whole,
            "model_tokens_per_s": tokens / whole,
        })
    );
    Ok(())
}
