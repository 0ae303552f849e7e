//! Weights read in place from the mapped checkpoint, layer-major profiles and sharded
//! checkpoints, driven through the CLI: every schedule gives the same profile (also when the
//! hidden states spill to disk), a bf16 checkpoint stays bf16 and routes like its f32 copy, and
//! a broken shard set is a clear error.

mod common;

use common::{bf16_copy, copy_dir, fixture, moescope_env as moescope};
use std::path::Path;
use std::process::Output;

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "failed: {err}");
    err
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Prompts of different lengths in three subjects: several padded batches of two.
fn write_prompts(path: &Path) {
    let texts = [
        ("law", "The court held that the contract was void."),
        ("law", "Appeal dismissed."),
        (
            "code",
            "fn main() { let x = vec![1, 2, 3]; println!(\"{:?}\", x); }",
        ),
        ("code", "def f(x): return x * 2"),
        (
            "music",
            "The sonata opens in a minor key and modulates twice.",
        ),
        ("music", "Allegro."),
        (
            "law",
            "A tort is a civil wrong that causes a claimant to suffer loss.",
        ),
    ];
    let lines: Vec<String> = texts
        .iter()
        .map(|(s, t)| serde_json::json!({"subject": s, "text": t}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

fn profile(model: &Path, data: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let traces = out.with_extension("jsonl");
    let mut args = vec![
        "profile".to_string(),
        "--model".into(),
        s(model),
        "--data".into(),
        s(data),
        "--batch-size".into(),
        "2".into(),
        "--out".into(),
        s(out),
        "--traces".into(),
        s(&traces),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&moescope(&args, env))
}

#[test]
fn layer_major_profiles_equal_batch_major_ones_for_every_family() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("prompts.jsonl");
    write_prompts(&data);
    for name in [
        "olmoe",
        "olmoe_sharded",
        "qwen2_moe",
        "qwen3_moe",
        "mixtral",
        "deepseek_v2_lite",
        "deepseek_v2_group",
        "qwen3_5_moe",
    ] {
        let model = fixture(name);
        let run = |tag: &str, extra: &[&str], env: &[(&str, &str)]| {
            let out = dir.path().join(format!("{name}-{tag}.json"));
            let log = profile(&model, &data, &out, extra, env);
            let profile = std::fs::read(&out).unwrap();
            let traces = std::fs::read(out.with_extension("jsonl")).unwrap();
            (profile, traces, log)
        };
        let (batch, batch_traces, log) = run("batch", &["--schedule", "batch"], &[]);
        assert!(log.contains("batch-major"), "{name}: {log}");
        let (layer, layer_traces, log) = run("layer", &["--schedule", "layer"], &[]);
        assert!(log.contains("layer-major over"), "{name}: {log}");
        assert!(batch == layer, "{name}: layer-major profile differs");
        assert!(
            batch_traces == layer_traces,
            "{name}: layer-major traces differ"
        );
        // The default for weights read in place is layer-major.
        let (auto, _, log) = run("auto", &[], &[]);
        assert!(log.contains("layer-major over"), "{name}: {log}");
        assert!(auto == batch, "{name}");
        // Hidden states that do not fit in a (tiny) memory budget go to a spill file.
        let (spilled, spilled_traces, log) =
            run("spill", &[], &[("MOESCOPE_MEMORY_BUDGET", "16K")]);
        assert!(log.contains("of hidden states spilled"), "{name}: {log}");
        assert!(spilled == batch, "{name}: spilled profile differs");
        assert!(
            spilled_traces == batch_traces,
            "{name}: spilled traces differ"
        );
    }
}

#[test]
fn a_bf16_checkpoint_is_read_in_place_and_routes_like_its_f32_copy() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("olmoe-bf16");
    bf16_copy(&model);
    let o = moescope(&["info", "--model", &s(&model)], &[]);
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("bf16 in 1 file"), "{out}");
    assert!(
        out.contains("as bf16, memory-mapped and read in place"),
        "{out}"
    );

    let data = dir.path().join("prompts.jsonl");
    write_prompts(&data);
    let mapped = dir.path().join("mapped.json");
    let log = profile(&model, &data, &mapped, &[], &[]);
    assert!(log.contains("weights bf16, memory-mapped"), "{log}");
    let copied = dir.path().join("copied.json");
    let log = profile(&model, &data, &copied, &["--dtype", "f32"], &[]);
    assert!(log.contains("weights f32, in memory"), "{log}");
    // The same weight values (bf16, or exactly converted to f32) choose the same experts.
    let counts = |p: &Path| -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        v["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["count"].clone())
            .collect()
    };
    assert_eq!(counts(&mapped), counts(&copied));

    // Logits of the mapped bf16 model match the f32 copy's closely.
    let trace = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "trace",
            "--model",
            &model.to_str().unwrap(),
            "--ids",
            "1,7,42,99,300",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = moescope(&args, &[]);
        ok(&o);
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (a, b) = (trace(&[]), trace(&["--dtype", "f32"]));
    let la = a["last_token_logits"].as_array().unwrap();
    let lb = b["last_token_logits"].as_array().unwrap();
    assert_eq!(la.len(), lb.len());
    let d = la
        .iter()
        .zip(lb)
        .map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs())
        .fold(0.0, f64::max);
    assert!(d < 1e-3, "logits differ by {d}");

    // KV-cached decoding (matrix-vector products straight from the bf16 weights) picks the
    // tokens the f32 copy picks.
    let generate = |extra: &[&str]| -> String {
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "The court held",
            "--max-new-tokens",
            "6",
        ];
        args.extend_from_slice(extra);
        let o = moescope(&args, &[]);
        ok(&o);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (mapped, copied) = (generate(&[]), generate(&["--dtype", "f32"]));
    assert!(
        mapped.starts_with("The court held") && mapped.len() > 14,
        "{mapped}"
    );
    assert_eq!(mapped, copied);
}

#[test]
fn broken_shard_sets_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let p = dir.path().join(name);
        copy_dir(&fixture("olmoe_sharded"), &p);
        p
    };
    let fails = |p: &Path, needles: &[&str]| {
        let o = moescope(&["info", "--model", &s(p)], &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{}: should fail", p.display());
        assert!(!err.contains("panicked"), "{err}");
        for n in needles {
            assert!(err.contains(n), "expected {n:?} in: {err}");
        }
    };

    let p = fresh("missing");
    std::fs::remove_file(p.join("model-00002-of-00003.safetensors")).unwrap();
    fails(
        &p,
        &[
            "shard model-00002-of-00003.safetensors",
            "index.json",
            "is missing",
        ],
    );

    let p = fresh("truncated");
    let shard = p.join("model-00003-of-00003.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 100]).unwrap();
    fails(
        &p,
        &[
            "model-00003-of-00003.safetensors",
            "the header describes",
            "it may be truncated or still downloading",
        ],
    );

    // A complete file whose header gives a tensor a shape its byte range cannot hold.
    let p = fresh("misshapen");
    let shard = p.join("model-00001-of-00003.safetensors");
    let header = r#"{"model.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 12]);
    std::fs::write(&shard, bytes).unwrap();
    let o = moescope(&["info", "--model", &s(&p)], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    for needle in [
        "model-00001-of-00003.safetensors",
        "tensor model.norm.weight has shape [4] of F32, which takes 16 bytes",
        "span 12 bytes",
    ] {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
    assert!(!err.contains("downloading"), "{err}");

    // A model without MoE layers.
    let p = fresh("no_moe");
    let cfg = p.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["num_hidden_layers"] = 0.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    for cmd in ["info", "trace"] {
        let mut args = vec![cmd, "--model", p.to_str().unwrap()];
        if cmd == "trace" {
            args.extend(["--ids", "1,2"]);
        }
        let o = moescope(&args, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{cmd} should fail");
        assert!(
            err.contains("config.json") && err.contains("has no MoE layers"),
            "{cmd}: {err}"
        );
    }

    let p = fresh("ghost");
    let index = p.join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    v["weight_map"]["model.layers.9.mlp.gate.weight"] = "model-00001-of-00003.safetensors".into();
    std::fs::write(&index, v.to_string()).unwrap();
    fails(
        &p,
        &[
            "model.safetensors.index.json",
            "model.layers.9.mlp.gate.weight",
            "no shard holds it",
        ],
    );
}
