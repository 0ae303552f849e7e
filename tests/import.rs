//! `moescope import`: routing files in each engine's documented format (written by
//! `tests/fixtures/import/make_import.py`, with the counts an independent reading gives), a round
//! trip through MoEScope's own traces of a fixture model, bad input, and count-only profiles
//! through report and select.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, moescope, moescope_env};
use moescope::import::RoutingShape;
use moescope::profile::{RoutingProfile, SequenceTrace};
use serde_json::Value;

fn import_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs `moescope import --format FORMAT FILES... --model MODEL --out OUT EXTRA...`.
fn run_import(
    format: &str,
    files: &[PathBuf],
    model: &Path,
    extra: &[&str],
    out: &Path,
) -> (Vec<String>, std::process::Output) {
    let mut args = vec!["import".to_string(), "--format".into(), format.into()];
    args.extend(files.iter().map(|f| s(f)));
    args.extend(["--model".into(), s(model), "--out".into(), s(out)]);
    args.extend(extra.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = moescope(&argv);
    (args, output)
}

/// Runs `moescope import` and returns the profile (panics with stderr on failure).
fn import(
    format: &str,
    files: &[PathBuf],
    model: &Path,
    extra: &[&str],
    out: &Path,
) -> RoutingProfile {
    let (args, o) = run_import(format, files, model, extra, out);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    RoutingProfile::load(out).unwrap()
}

/// Runs `moescope import` expecting failure; returns stderr and checks nothing was written.
fn import_fails(
    format: &str,
    files: &[PathBuf],
    model: &Path,
    extra: &[&str],
    out: &Path,
) -> String {
    let (args, o) = run_import(format, files, model, extra, out);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(!out.exists(), "{} was written", out.display());
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn check_expected(profile: &RoutingProfile, expected: &Value, what: &str) {
    let subjects = expected["subjects"].as_object().unwrap();
    assert_eq!(profile.subjects.len(), subjects.len(), "{what}: subjects");
    for (name, e) in subjects {
        let got = profile
            .subject(name)
            .unwrap_or_else(|| panic!("{what}: no subject {name}"));
        assert_eq!(
            got.tokens,
            e["tokens"].as_u64().unwrap(),
            "{what}: {name} tokens"
        );
        let count: Vec<Vec<u64>> = serde_json::from_value(e["count"].clone()).unwrap();
        assert_eq!(got.count, count, "{what}: {name} counts");
        assert!(
            got.mass.is_none() && got.score.is_none(),
            "{what}: count only"
        );
    }
    let source = profile.source.as_ref().unwrap();
    assert_eq!(
        source.skipped_positions,
        expected["skipped"].as_u64().unwrap(),
        "{what}: skipped positions"
    );
    assert!(profile.is_count_only());
    assert_eq!(profile.model.moe_layers, vec![1, 2, 3, 4]);
}

#[test]
fn every_engine_format_imports_to_the_counts_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let fx = import_dir();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
    let model = fx.join("config.json");
    // (format, key in expected.json, files, extra arguments, words of the layer mapping)
    type Case<'a> = (&'a str, &'a str, Vec<&'a str>, &'a [&'a str], &'a str);
    let cases: [Case; 8] = [
        (
            "vllm",
            "vllm_http.jsonl",
            vec!["vllm_http.jsonl"],
            &[],
            "4 MoE layers",
        ),
        (
            "vllm",
            "vllm_offline.jsonl",
            vec!["vllm_offline.jsonl"],
            &["--subject", "chat"],
            "all decoder layers",
        ),
        (
            "sglang",
            "sglang.jsonl",
            vec!["sglang.jsonl"],
            &[],
            "all decoder layers",
        ),
        (
            "sglang",
            "sglang.jsonl --positions prompt",
            vec!["sglang.jsonl"],
            &["--positions", "prompt"],
            "all decoder layers",
        ),
        (
            "sglang",
            "sglang_stat.pt",
            vec!["sglang_stat.pt"],
            &["--subject", "math"],
            "all decoder layers",
        ),
        (
            "sglang",
            "sglang_per_token.pt",
            vec!["sglang_per_token.pt"],
            &["--subject", "code"],
            "all decoder layers",
        ),
        (
            "megatron",
            "router_trace_rank*.jsonl",
            vec!["router_trace_rank0.jsonl", "router_trace_rank1.jsonl"],
            &["--subject", "law"],
            "0-based",
        ),
        (
            "llama-cpp",
            "moe_trace.csv",
            vec!["moe_trace.csv"],
            &["--subject", "math"],
            "0-based",
        ),
    ];
    for (i, (format, key, files, extra, mapping)) in cases.into_iter().enumerate() {
        let files: Vec<PathBuf> = files.iter().map(|f| fx.join(f)).collect();
        let out = dir.path().join(format!("{i}.json"));
        let p = import(format, &files, &model, extra, &out);
        check_expected(&p, &expected[key], key);
        let source = p.source.as_ref().unwrap();
        assert_eq!(source.format, format);
        assert!(
            source.layer_mapping.contains(mapping),
            "{key}: {}",
            source.layer_mapping
        );
    }
}

#[test]
fn files_without_subjects_are_named_after_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let fx = import_dir();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
    let out = dir.path().join("p.json");
    let files = [fx.join("sglang_stat.pt"), fx.join("sglang_per_token.pt")];
    let p = import("sglang", &files, &fx.join("config.json"), &[], &out);
    assert_eq!(p.subject_names(), vec!["sglang_stat", "sglang_per_token"]);
    for (name, key, subject) in [
        ("sglang_stat", "sglang_stat.pt", "math"),
        ("sglang_per_token", "sglang_per_token.pt", "code"),
    ] {
        let e = &expected[key]["subjects"][subject];
        let got = p.subject(name).unwrap();
        assert_eq!(got.tokens, e["tokens"].as_u64().unwrap(), "{name}");
        let count: Vec<Vec<u64>> = serde_json::from_value(e["count"].clone()).unwrap();
        assert_eq!(got.count, count, "{name}");
    }
}

/// Profiles the DeepSeek-V3 fixture (first layer dense) with traces.
fn engine_profile(dir: &Path) -> (RoutingProfile, Vec<SequenceTrace>) {
    let data = dir.join("d.jsonl");
    std::fs::write(
        &data,
        concat!(
            "{\"subject\": \"law\", \"text\": \"The court held the contract void for mistake.\"}\n",
            "{\"subject\": \"law\", \"text\": \"A tort is a civil wrong done to another.\"}\n",
            "{\"subject\": \"math\", \"text\": \"The derivative of x squared is two x.\"}\n",
            "{\"subject\": \"code\", \"text\": \"fn main() { println!(\\\"hi\\\"); }\"}\n",
        ),
    )
    .unwrap();
    let (out, traces) = (dir.join("p.json"), dir.join("t.jsonl"));
    let o = moescope(&[
        "profile",
        "--model",
        &s(&fixture("deepseek_v3")),
        "--data",
        &s(&data),
        "--out",
        &s(&out),
        "--traces",
        &s(&traces),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, seqs) = moescope::profile::traces::read_traces(&traces).unwrap();
    (RoutingProfile::load(&out).unwrap(), seqs)
}

#[test]
fn moescope_traces_written_in_each_engine_format_import_back_to_the_same_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (profile, traces) = engine_profile(dir.path());
    let model = fixture("deepseek_v3");
    let shape = RoutingShape::from_config_file(&model.join("config.json"), "m").unwrap();
    assert_eq!(shape.moe_layers, profile.model.moe_layers);
    let (layers, k) = (shape.num_layers, shape.top_k);
    // Per sequence, per token, every MoE layer's experts.
    let tokens = |t: &SequenceTrace| -> Vec<Vec<Vec<u32>>> {
        (0..t.token_ids.len())
            .map(|p| t.layers.iter().map(|l| l.indices[p].clone()).collect())
            .collect()
    };
    let all_layers = |moe: &[Vec<u32>], dense: i64| -> Vec<Vec<i64>> {
        (0..layers)
            .map(|l| match shape.moe_layers.iter().position(|&m| m == l) {
                Some(row) => moe[row].iter().map(|&e| i64::from(e)).collect(),
                None => vec![dense; k],
            })
            .collect()
    };
    let mut vllm = String::new();
    let mut sglang = String::new();
    let mut csv = String::new();
    let mut megatron = String::new();
    for (i, t) in traces.iter().enumerate() {
        let rows = tokens(t);
        vllm +=
            &serde_json::json!({"subject": t.subject, "prompt_routed_experts": rows}).to_string();
        vllm += "\n";
        // SGLang: every decoder layer, dense 0, int32; row p is token p's routing. Writing
        // every position (as prompt + 1 generated token would give) keeps the counts equal.
        let flat: Vec<u8> = rows
            .iter()
            .flat_map(|r| all_layers(r, 0).into_iter().flatten())
            .flat_map(|v| (v as i32).to_le_bytes())
            .collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(flat);
        sglang += &serde_json::json!({"subject": t.subject, "meta_info": {"routed_experts": b64,
            "prompt_tokens": rows.len(), "completion_tokens": 1}})
        .to_string();
        sglang += "\n";
        for (row, &layer) in shape.moe_layers.iter().enumerate() {
            let top: Vec<&Vec<u32>> = rows.iter().map(|r| &r[row]).collect();
            megatron += &serde_json::json!({"step": i, "stage": "pre_dispatch", "block": "decoder",
                "layer": layer, "rank": 0, "num_tokens": top.len(), "topk": k, "top_indices": top,
                "subject": t.subject})
            .to_string();
            megatron += "\n";
            if t.subject == "law" {
                for e in top.iter().flat_map(|v| v.iter()) {
                    csv += &format!("{layer},{e}\n");
                }
            }
        }
    }
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let files = [
        ("vllm", write("v.jsonl", &vllm), vec![]),
        ("sglang", write("s.jsonl", &sglang), vec![]),
        (
            "megatron",
            write("router_trace_rank0.jsonl", &megatron),
            vec![],
        ),
    ];
    for (format, file, extra) in files {
        let out = dir.path().join(format!("{format}.json"));
        let p = import(format, &[file], &model, &extra, &out);
        for subject in &profile.subjects {
            let got = p.subject(&subject.name).unwrap();
            assert_eq!(got.count, subject.count, "{format}: {}", subject.name);
            assert_eq!(got.tokens, subject.tokens, "{format}: {}", subject.name);
        }
    }
    let out = dir.path().join("csv.json");
    let p = import(
        "llama-cpp",
        &[write("t.csv", &csv)],
        &model,
        &["--subject", "law"],
        &out,
    );
    let law = profile.subject("law").unwrap();
    assert_eq!(p.subject("law").unwrap().count, law.count);
    assert_eq!(p.subject("law").unwrap().tokens, law.tokens);
}

#[test]
fn bad_input_is_an_error_naming_the_file_and_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fx = import_dir();
    let model = fx.join("config.json");
    let out = dir.path().join("p.json");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    // Another engine's file.
    let err = import_fails("vllm", &[fx.join("sglang.jsonl")], &model, &[], &out);
    assert!(
        err.contains("sglang.jsonl:1:") && err.contains("--format sglang"),
        "{err}"
    );
    let err = import_fails("sglang", &[fx.join("vllm_http.jsonl")], &model, &[], &out);
    assert!(
        err.contains("vllm_http.jsonl:1:") && err.contains("--format vllm"),
        "{err}"
    );
    let err = import_fails("megatron", &[fx.join("moe_trace.csv")], &model, &[], &out);
    assert!(err.contains("moe_trace.csv:1:"), "{err}");
    // Rows of the wrong width: 3 layers, and 3 experts per layer at top-4.
    let line = |rows: &str| format!("{{\"subject\": \"a\", \"prompt_routed_experts\": {rows}}}\n");
    let f = write(
        "w.jsonl",
        &(line("[[[0,1,2,3],[0,1,2,3],[0,1,2,3],[0,1,2,3]]]")
            + &line("[[[0,1,2,3],[0,1,2,3],[0,1,2,3]]]")),
    );
    let err = import_fails("vllm", &[f], &model, &[], &out);
    assert!(
        err.contains("w.jsonl:2:") && err.contains("3 layers per token"),
        "{err}"
    );
    let f = write("k.jsonl", &line("[[[0,1,2],[0,1,2],[0,1,2],[0,1,2]]]"));
    let err = import_fails("vllm", &[f], &model, &[], &out);
    assert!(
        err.contains("k.jsonl:1:") && err.contains("top-k is 4"),
        "{err}"
    );
    // An expert the model does not have.
    let f = write(
        "e.jsonl",
        &("\n".to_string() + &line("[[[0,1,2,3],[0,1,2,3],[0,1,2,16],[0,1,2,3]]]")),
    );
    let err = import_fails("vllm", &[f], &model, &[], &out);
    assert!(
        err.contains("e.jsonl:2:") && err.contains("expert 16"),
        "{err}"
    );
    let f = write("e.csv", "1,3\n2,99\n");
    let err = import_fails("llama-cpp", &[f], &model, &["--subject", "x"], &out);
    assert!(
        err.contains("e.csv:2:") && err.contains("expert 99"),
        "{err}"
    );
    // An unknown dtype and a width that is not whole rows.
    let f = write(
        "d.jsonl",
        "{\"subject\": \"a\", \"meta_info\": {\"routed_experts\": \"AAAA\", \"routed_experts_dtype\": \"float16\"}}\n",
    );
    let err = import_fails("sglang", &[f], &model, &[], &out);
    assert!(
        err.contains("d.jsonl:1:") && err.contains("'float16'"),
        "{err}"
    );
    let f = write(
        "r.jsonl",
        "{\"subject\": \"a\", \"meta_info\": {\"routed_experts\": \"AAAAAAAAAAA=\"}}\n",
    );
    let err = import_fails("sglang", &[f], &model, &[], &out);
    assert!(
        err.contains("r.jsonl:1:") && err.contains("not whole rows"),
        "{err}"
    );
    // A Megatron record whose topk is not the model's.
    let f = write(
        "router_trace_rank0.jsonl",
        "{\"layer\": 1, \"num_tokens\": 1, \"topk\": 2, \"top_indices\": [[0, 1]]}\n",
    );
    let err = import_fails("megatron", &[f], &model, &["--subject", "x"], &out);
    assert!(
        err.contains("router_trace_rank0.jsonl:1:") && err.contains("top-k is 4"),
        "{err}"
    );
    // No subject anywhere; a torch file that is not a recorder dump; a model without MoE layers.
    let err = import_fails("vllm", &[fx.join("vllm_offline.jsonl")], &model, &[], &out);
    assert!(
        err.contains("vllm_offline.jsonl:1:") && err.contains("--subject"),
        "{err}"
    );
    let err = import_fails(
        "sglang",
        &[fixture("olmoe").join("model.safetensors")],
        &model,
        &[],
        &out,
    );
    assert!(err.contains("model.safetensors"), "{err}");
    let dense = write(
        "config.json",
        r#"{"model_type": "olmoe", "num_hidden_layers": 0, "num_experts": 8, "num_experts_per_tok": 2}"#,
    );
    let err = import_fails("vllm", &[fx.join("vllm_http.jsonl")], &dense, &[], &out);
    assert!(
        err.contains("config.json") && err.contains("no MoE layers"),
        "{err}"
    );
}

#[test]
fn config_only_shapes_match_the_loaded_models() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let mut names: Vec<String> = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 19, "{names:?}");
    for name in &names {
        let name = name.as_str();
        let dir = fixture(name);
        let shape = RoutingShape::from_config_file(&dir.join("config.json"), name).unwrap();
        let loaded = common::load(name);
        let info = loaded.model.info();
        assert_eq!(shape.moe_layers, info.moe_layers, "{name}");
        assert_eq!(shape.num_layers, info.num_layers, "{name}");
        assert_eq!(shape.num_experts, info.num_experts, "{name}");
        assert_eq!(shape.top_k, info.top_k, "{name}");
        assert_eq!(shape.score_fn, info.score_fn, "{name}");
        let model = shape.profile_model();
        assert_eq!(model.architecture, info.architecture, "{name}");
        assert_eq!(model.layout.as_ref(), Some(&info.layout), "{name}");
        assert_eq!(model.attention_kinds, info.attention_kinds, "{name}");
    }
}

#[test]
fn count_only_profiles_report_and_select_on_counts() {
    let dir = tempfile::tempdir().unwrap();
    let fx = import_dir();
    let p = dir.path().join("p.json");
    import(
        "vllm",
        &[fx.join("vllm_http.jsonl")],
        &fx.join("config.json"),
        &[],
        &p,
    );
    let run = |args: &[&str]| {
        let o = moescope(args);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (ok, text) = run(&["report", &s(&p)]);
    assert!(ok, "{text}");
    assert!(
        text.contains("imported from vllm") && text.contains("counts only"),
        "{text}"
    );
    assert!(text.contains("DAS) on counts"), "{text}");
    assert!(text.contains("no count-vs-mass agreement"), "{text}");
    let (ok, json) = run(&["report", &s(&p), "--json"]);
    assert!(ok, "{json}");
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["signals"], serde_json::json!(["count"]));
    assert_eq!(v["das"][0]["signal"], "count");
    assert!(v.get("count_mass_agreement").is_none());
    let (ok, text) = run(&["report", &s(&p), "--das-signal", "score"]);
    assert!(
        !ok && text.contains("routing scores") && text.contains("DAS on counts"),
        "{text}"
    );

    let (ok, text) = run(&["compare", &s(&p), &s(&p)]);
    assert!(
        ok && text.contains("on counts: a profile has no routing scores"),
        "{text}"
    );

    let sel = dir.path().join("s.json");
    let (ok, text) = run(&[
        "select",
        &s(&p),
        "--rule",
        "das",
        "--domain",
        "law",
        "--k",
        "2",
        "--out",
        &s(&sel),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("DAS on counts"), "{text}");
    let (ok, text) = run(&[
        "select",
        &s(&p),
        "--rule",
        "mass",
        "--k",
        "2",
        "--out",
        &s(&sel),
    ]);
    assert!(
        !ok && text.contains("routing mass") && text.contains("by count instead"),
        "{text}"
    );
    let peft = dir.path().join("peft");
    let (ok, text) = run(&[
        "select",
        &s(&p),
        "--rule",
        "hot",
        "--k",
        "2",
        "--out",
        &s(&sel),
        "--peft-config",
        &s(&peft),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("n/a (counts only)"), "{text}");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap())
            .unwrap();
    let targets = config["target_modules"].as_array().unwrap();
    // 2 experts × 4 MoE layers × 3 projections, named as the model's checkpoint names them.
    assert_eq!(targets.len(), 24, "{targets:?}");
    assert!(
        targets.iter().any(|t| t
            .as_str()
            .unwrap()
            .starts_with("model.layers.1.mlp.experts.")),
        "{targets:?}"
    );
}

#[test]
fn a_hub_model_needs_only_its_config_in_the_cache() {
    // An HF cache holding deepseek-ai/DeepSeek-V3-shaped config.json and nothing else: no
    // tokenizer, no weights. Offline, the import reads the config from the snapshot.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny--moe-routing");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::copy(import_dir().join("config.json"), snap.join("config.json")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let out = cache.path().join("p.json");
    let file = import_dir().join("vllm_http.jsonl");
    let args = [
        "import",
        "--format",
        "vllm",
        &s(&file),
        "--model",
        "tiny/moe-routing",
        "--out",
        &s(&out),
    ];
    let o = moescope_env(&args, &[("HF_HUB_CACHE", cache.path().to_str().unwrap())]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = RoutingProfile::load(&out).unwrap();
    assert_eq!(p.model.id, "tiny/moe-routing");
    assert!(p.model.layout.is_some());
    let missing = [
        "import",
        "--format",
        "vllm",
        &s(&file),
        "--model",
        "tiny/absent",
        "--out",
        &s(&out),
    ];
    let o = moescope_env(
        &missing,
        &[("HF_HUB_CACHE", cache.path().to_str().unwrap())],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("tiny/absent") && err.contains("config.json"),
        "{err}"
    );
}
