//! Writes the routing files of the import benchmark (BENCHMARKS.md, "Importing engine
//! routing"): `--tokens` tokens of DeepSeek-V3-shaped routing (61 decoder layers, the first 3
//! dense, 256 experts, top-8) in requests of 1,000 tokens, as vLLM responses (58 MoE layers ×
//! 8 per token, JSON) and as SGLang responses (61 layers × 8 per row, base64 int32, dense
//! layers 0), plus the model's `config.json`. Experts are drawn with a skew per request so the
//! counts are not flat.
//!
//! `cargo run --release --example make_import_bench -- DIR [TOKENS]`

use std::io::Write;
use std::path::PathBuf;

use base64::Engine;
use rand::{Rng, SeedableRng};

const LAYERS: usize = 61;
const DENSE: usize = 3;
const EXPERTS: usize = 256;
const TOP_K: usize = 8;
const PER_REQUEST: usize = 1000;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: make_import_bench DIR [TOKENS]"));
    let tokens: usize = args
        .next()
        .map_or(1_000_000, |t| t.parse().expect("TOKENS"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("config.json"),
        format!(
            r#"{{"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "num_hidden_layers": {LAYERS}, "first_k_dense_replace": {DENSE},
  "n_routed_experts": {EXPERTS}, "num_experts_per_tok": {TOP_K}, "scoring_func": "sigmoid",
  "hidden_size": 7168, "moe_intermediate_size": 2048, "intermediate_size": 18432,
  "n_shared_experts": 1, "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5,
  "num_attention_heads": 128, "num_key_value_heads": 128, "q_lora_rank": 1536,
  "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
  "vocab_size": 129280, "max_position_embeddings": 163840, "rms_norm_eps": 1e-6,
  "rope_theta": 10000, "norm_topk_prob": true, "tie_word_embeddings": false}}
"#
        ),
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut vllm =
        std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(dir.join("vllm.jsonl"))?);
    let mut sglang = std::io::BufWriter::with_capacity(
        1 << 22,
        std::fs::File::create(dir.join("sglang.jsonl"))?,
    );
    let subjects = ["law", "math", "code", "medicine"];
    let mut row = [0u16; TOP_K];
    let mut ids: Vec<i32> = Vec::with_capacity(PER_REQUEST * LAYERS * TOP_K);
    let mut text = String::with_capacity(PER_REQUEST * LAYERS * TOP_K * 4);
    let mut written = 0;
    let mut request = 0;
    while written < tokens {
        let n = PER_REQUEST.min(tokens - written);
        let subject = subjects[request % subjects.len()];
        let hot = rng.random_range(0..EXPERTS);
        ids.clear();
        text.clear();
        text.push('[');
        for t in 0..n {
            if t > 0 {
                text.push(',');
            }
            text.push('[');
            for layer in 0..LAYERS {
                if layer < DENSE {
                    ids.extend([0; TOP_K]);
                    continue;
                }
                // Distinct experts, a quarter of them near the request's hot expert.
                let mut k = 0;
                while k < TOP_K {
                    let e = if rng.random_range(0..4) == 0 {
                        ((hot + rng.random_range(0..16)) % EXPERTS) as u16
                    } else {
                        rng.random_range(0..EXPERTS as u16)
                    };
                    if !row[..k].contains(&e) {
                        row[k] = e;
                        k += 1;
                    }
                }
                ids.extend(row.iter().map(|&e| i32::from(e)));
                if layer > DENSE {
                    text.push(',');
                }
                text.push('[');
                for (j, e) in row.iter().enumerate() {
                    if j > 0 {
                        text.push(',');
                    }
                    text.push_str(itoa(*e).as_str());
                }
                text.push(']');
            }
            text.push(']');
        }
        text.push(']');
        writeln!(
            vllm,
            r#"{{"id": "cmpl-{request}", "object": "text_completion", "subject": "{subject}", "prompt_routed_experts": {text}, "choices": [{{"index": 0, "text": "", "routed_experts": []}}]}}"#
        )?;
        let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        writeln!(
            sglang,
            r#"{{"text": "", "subject": "{subject}", "meta_info": {{"id": "r{request}", "prompt_tokens": {n}, "completion_tokens": 1, "routed_experts": "{b64}"}}}}"#
        )?;
        written += n;
        request += 1;
    }
    vllm.flush()?;
    sglang.flush()?;
    println!("{request} requests, {written} tokens in {}", dir.display());
    Ok(())
}

fn itoa(v: u16) -> String {
    v.to_string()
}
