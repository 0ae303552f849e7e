//! A checkpoint with OLMoE-1B-7B-0924's exact shapes and hub layout (13.8 GB of bf16 in five
//! shards plus the index), written as sparse files so that it takes no disk space: `info`
//! reads only the config and the headers (well under 200 MB of memory, whatever the size),
//! and a copy that would not fit in memory is refused up front, in numbers.
//!
//! One test in its own binary, so that the peak memory of the child processes it measures is
//! theirs alone.

mod common;

use std::io::Write;
use std::path::Path;

/// OLMoE-1B-7B-0924's tensors, in the order the hub checkpoint stores them.
fn olmoe_1b_7b_tensors() -> Vec<(String, Vec<usize>)> {
    let (h, i, v, experts, layers) = (2048, 1024, 50304, 64, 16);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        for e in 0..experts {
            out.push((format!("{p}.mlp.experts.{e}.down_proj.weight"), vec![h, i]));
            out.push((format!("{p}.mlp.experts.{e}.gate_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.experts.{e}.up_proj.weight"), vec![i, h]));
        }
        out.push((format!("{p}.mlp.gate.weight"), vec![experts, h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        for n in ["k_norm", "q_norm"] {
            out.push((format!("{p}.self_attn.{n}.weight"), vec![h]));
        }
        for n in ["k_proj", "o_proj", "q_proj", "v_proj"] {
            out.push((format!("{p}.self_attn.{n}.weight"), vec![h, h]));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    out.push(("lm_head.weight".to_string(), vec![v, h]));
    out
}

/// Writes `tensors` as a bf16 safetensors file whose data is a hole (zeros, no disk space).
fn write_sparse_shard(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header).unwrap();
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.set_len((8 + text.len() + offset) as u64).unwrap();
}

fn write_checkpoint(dir: &Path) -> u64 {
    let tensors = olmoe_1b_7b_tensors();
    let total: usize = tensors
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let per_shard = total.div_ceil(5);
    let (mut shards, mut current, mut size) = (Vec::new(), Vec::new(), 0usize);
    for t in tensors {
        size += t.1.iter().product::<usize>();
        current.push(t);
        if size >= per_shard {
            shards.push(std::mem::take(&mut current));
            size = 0;
        }
    }
    if !current.is_empty() {
        shards.push(current);
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (k, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        write_sparse_shard(&dir.join(&name), shard);
        for (t, _) in shard {
            weight_map.insert(t.clone(), name.clone().into());
        }
    }
    let index =
        serde_json::json!({"metadata": {"total_size": total * 2}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let config = serde_json::json!({
        "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe",
        "hidden_size": 2048, "intermediate_size": 1024, "num_hidden_layers": 16,
        "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 64,
        "num_experts_per_tok": 8, "vocab_size": 50304, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "clip_qkv": null,
        "norm_topk_prob": false, "tie_word_embeddings": false, "torch_dtype": "bfloat16"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        common::fixture("olmoe").join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    total as u64
}

/// Peak resident memory of the waited-for children so far, in bytes.
fn children_peak_rss() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0);
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn info_on_a_13_gb_checkpoint_reads_only_headers_and_copies_are_refused_in_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let params = write_checkpoint(dir.path());
    assert_eq!(params, 6_919_161_856, "OLMoE-1B-7B-0924's parameter count");
    let moescope = |args: &[&str], budget: &str| {
        common::moescope_env(args, &[("MOESCOPE_MEMORY_BUDGET", budget)])
    };
    let model = dir.path().display().to_string();
    let o = moescope(&["info", "--model", &model], "4G");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("6.92B (6919161856) total"), "{out}");
    assert!(out.contains("bf16 in 5 files"), "{out}");
    assert!(
        out.contains("13.8 GB as bf16, memory-mapped and read in place"),
        "{out}"
    );
    assert!(
        out.contains("does not fit: profiles stream layer by layer"),
        "{out}"
    );
    let peak = children_peak_rss();
    assert!(
        peak < 200 << 20,
        "info on a 13.8 GB checkpoint peaked at {} MB",
        peak >> 20
    );

    // A copy in f32 (27.7 GB) inside 4 GiB: refused before anything is read.
    let data = dir.path().join("prompts.jsonl");
    std::fs::write(
        &data,
        "{\"subject\": \"law\", \"text\": \"The court held\"}\n",
    )
    .unwrap();
    let out_path = dir.path().join("p.json");
    let o = moescope(
        &[
            "profile",
            "--model",
            &model,
            "--dtype",
            "f32",
            "--data",
            &data.display().to_string(),
            "--out",
            &out_path.display().to_string(),
        ],
        "4G",
    );
    assert!(!out_path.exists(), "nothing is written");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    for needle in [
        "needs 27.7 GB as f32",
        "4.3 GB available",
        "MOESCOPE_MEMORY_BUDGET",
        "use --dtype bf16",
    ] {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
}
