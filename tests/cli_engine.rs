//! The engine's commands driven as a user drives them: `info`, `trace`, `profile` on the fixture
//! models (single file, sharded, hub cache), and every kind of bad input getting a clear error,
//! a non-zero exit code and no partial output.

mod common;

use common::{copy_dir, fixture};
use std::path::Path;
use std::process::{Command, Output};

fn moescope(args: &[&str]) -> Output {
    moescope_env(args, &[])
}

fn moescope_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moescope"));
    cmd.args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_CACHE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A tensor's dtype, shape and bytes, owned.
type OwnedTensor = (safetensors::Dtype, Vec<usize>, Vec<u8>);

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and expects failure with every `needle` in stderr.
fn fails_with(args: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let o = moescope_env(args, env);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected {n:?} in: {err}");
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn info_describes_every_fixture() {
    for (name, arch, layers) in [
        ("olmoe", "OlmoeForCausalLM", "3 (3 MoE"),
        ("olmoe_sharded", "OlmoeForCausalLM", "3 (3 MoE"),
        ("qwen2_moe", "Qwen2MoeForCausalLM", "dense: [1]"),
        ("qwen3_moe", "Qwen3MoeForCausalLM", "dense: [0]"),
        ("mixtral", "MixtralForCausalLM", "2 (2 MoE"),
        ("deepseek_v2_lite", "DeepseekV2ForCausalLM", "dense: [0]"),
        ("deepseek_v2_group", "DeepseekV2ForCausalLM", "dense: [0]"),
        ("deepseek_v3", "DeepseekV3ForCausalLM", "dense: [0]"),
        ("deepseek_v3_fp8", "DeepseekV3ForCausalLM", "dense: [0]"),
        ("kimi_k2", "DeepseekV3ForCausalLM", "dense: [0]"),
        ("glm4_moe", "Glm4MoeForCausalLM", "dense: [0]"),
        ("minimax_m2", "MiniMaxM2ForCausalLM", "3 (3 MoE"),
        ("phimoe", "PhiMoEForCausalLM", "3 (3 MoE"),
        ("gpt_oss", "GptOssForCausalLM", "sliding 4 attention, MoE"),
        (
            "gemma4",
            "Gemma4ForConditionalGeneration",
            "full attention, MoE",
        ),
        (
            "qwen3_5_moe",
            "Qwen3_5MoeForConditionalGeneration",
            "linear attention, MoE",
        ),
    ] {
        let o = moescope(&["info", "--model", &s(&fixture(name))]);
        let out = stdout(&o);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(out.contains(arch) && out.contains(layers), "{name}: {out}");
        assert!(
            out.contains("active per token") && out.contains("device           cpu"),
            "{name}: {out}"
        );
    }
    let o = moescope(&["info", "--json", "--model", &s(&fixture("qwen2_moe"))]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["moe_layers"], serde_json::json!([0, 2]));
    assert_eq!(v["num_shared_experts"], 1);
    assert!(v["active_params"].as_u64().unwrap() < v["total_params"].as_u64().unwrap());
}

/// `moescope trace … | head -c 1`: the reader closes the pipe after the first byte; the command
/// ends quietly instead of panicking in `println!`.
#[test]
#[cfg(unix)]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    // Output well over a pipe's 64 KiB buffer, so that writes happen after the reader is gone.
    let ids = (1..=120)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut child = Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args([
            "trace",
            "--model",
            &s(&fixture("olmoe")),
            "--ids",
            &ids,
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(first[0], b'{');
    assert!(err.is_empty(), "stderr: {err}");
    assert!(
        status.success() || status.signal() == Some(13),
        "ended by {status:?}"
    );
}

#[test]
fn trace_json_has_the_documented_shape() {
    let o = moescope(&[
        "trace",
        "--model",
        &s(&fixture("mixtral")),
        "--ids",
        "1,5,9,200,3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[1]["layer"], 1);
    assert_eq!(layers[0]["router_logits"].as_array().unwrap().len(), 5);
    assert_eq!(layers[0]["router_logits"][0].as_array().unwrap().len(), 8);
    assert_eq!(layers[0]["topk_indices"][4].as_array().unwrap().len(), 2);
    let w: f64 = layers[0]["topk_weights"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!((w - 1.0).abs() < 1e-5, "mixtral renormalises: {w}");
    assert_eq!(v["last_token_logits"].as_array().unwrap().len(), 512);

    let o = moescope(&[
        "trace",
        "--model",
        &s(&fixture("olmoe")),
        "--text",
        "The river bank was steep.",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("layer 2"));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn profile_writes_a_valid_profile_and_traces() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    write(
        &data,
        concat!(
            "{\"subject\": \"law\", \"text\": \"The court held the contract void.\"}\n",
            "{\"subject\": \"law\", \"text\": \"A tort is a civil wrong.\"}\n",
            "{\"subject\": \"code\", \"text\": \"fn main() { println!(\\\"hi\\\"); }\"}\n",
        ),
    );
    for model in [
        "olmoe_sharded",
        "deepseek_v2_group",
        "deepseek_v3_fp8",
        "kimi_k2",
        "glm4_moe",
        "minimax_m2",
        "phimoe",
        "gpt_oss",
        "gemma4",
        "qwen3_5_moe",
    ] {
        let out = dir.path().join(format!("{model}.json"));
        let traces = dir.path().join(format!("{model}.jsonl"));
        let o = moescope(&[
            "profile",
            "--model",
            &s(&fixture(model)),
            "--data",
            &s(&data),
            "--out",
            &s(&out),
            "--batch-size",
            "2",
            "--traces",
            &s(&traces),
        ]);
        assert!(o.status.success(), "{model}: {}", stderr(&o));
        let p = moescope::profile::RoutingProfile::load(&out).unwrap();
        assert_eq!(p.subject_names(), vec!["law", "code"]);
        let law = p.subject("law").unwrap();
        assert_eq!(law.sequences, 2);
        for (row, counts) in law.count.iter().enumerate() {
            assert_eq!(
                counts.iter().sum::<u64>(),
                law.tokens * p.model.top_k as u64,
                "{model} row {row}"
            );
        }
        let report = moescope(&["report", &s(&out)]);
        assert!(report.status.success(), "{model}: {}", stderr(&report));
        // Generation runs the KV-cached decoding path of every layer kind.
        let o = moescope(&[
            "generate",
            "-m",
            &s(&fixture(model)),
            "-p",
            "The court held",
            "--max-new-tokens",
            "3",
            "--no-stop",
        ]);
        assert!(o.status.success(), "{model}: {}", stderr(&o));
        let (_, t) = moescope::profile::traces::read_traces(&traces).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.iter().map(|x| x.token_ids.len() as u64).sum::<u64>(),
            p.pooled().tokens
        );
    }
}

/// Chat records are profiled on the text the model sees: the rendering of its chat template
/// (a copy of the fixture given a ChatML chat_template.jinja), or the plain "role: content"
/// layout for the fixture, which has none (said once).
#[test]
fn profile_routes_chat_data_as_the_model_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let templated = dir.path().join("olmoe_chatml");
    copy_dir(&fixture("olmoe"), &templated);
    std::fs::write(
        templated.join("chat_template.jinja"),
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content | trim + '<|im_end|>\\n' }}{% endfor %}",
    )
    .unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/chat_sample.jsonl");
    let conversations: Vec<Vec<(String, String)>> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let text = |k: &str| m[k].as_str().unwrap().to_string();
                    (text("role"), text("content"))
                })
                .collect()
        })
        .collect();
    let tokenizer =
        tokenizers::Tokenizer::from_file(fixture("olmoe").join("tokenizer.json")).unwrap();
    let encode = |text: String| tokenizer.encode(text, true).unwrap().get_ids().to_vec();
    let chatml = |c: &Vec<(String, String)>| {
        c.iter()
            .map(|(role, content)| format!("<|im_start|>{role}\n{content}<|im_end|>\n"))
            .collect::<String>()
    };
    let plain = |c: &Vec<(String, String)>| {
        c.iter()
            .map(|(role, content)| format!("{role}: {content}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (model, note, render) in [
        (
            templated.clone(),
            "rendered with the chat template of",
            &chatml as &dyn Fn(&Vec<(String, String)>) -> String,
        ),
        (fixture("olmoe"), "has no chat template", &plain),
    ] {
        let out = dir.path().join("p.json");
        let traces = dir.path().join("t.jsonl");
        let o = moescope(&[
            "profile",
            "--model",
            &s(&model),
            "--data",
            &s(&data),
            "--out",
            &s(&out),
            "--traces",
            &s(&traces),
        ]);
        assert!(o.status.success(), "{}: {}", model.display(), stderr(&o));
        assert_eq!(stderr(&o).matches(note).count(), 1, "{}", stderr(&o));
        let p = moescope::profile::RoutingProfile::load(&out).unwrap();
        assert_eq!(p.subject_names(), vec!["math", "cooking", "law", "travel"]);
        let (_, t) = moescope::profile::traces::read_traces(&traces).unwrap();
        let mut seen: Vec<Vec<u32>> = t.into_iter().map(|x| x.token_ids).collect();
        let mut expected: Vec<Vec<u32>> = conversations.iter().map(|c| encode(render(c))).collect();
        seen.sort();
        expected.sort();
        assert_eq!(seen, expected, "{}", model.display());
    }
}

#[test]
fn hub_ids_load_from_the_cache_offline() {
    let cache = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.path().join("models--tiny--olmoe");
    copy_dir(&fixture("olmoe"), &repo.join("snapshots").join(commit));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    write(&repo.join("refs/main"), commit);
    let env = [("HF_HUB_CACHE", cache.path().to_str().unwrap())];
    let o = moescope_env(&["info", "--model", "tiny/olmoe"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("tiny/olmoe"));
    let o = moescope_env(
        &["info", "--model", "tiny/olmoe", "--revision", commit],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // HF_HOME/hub is used when HF_HUB_CACHE is not set.
    let home = tempfile::tempdir().unwrap();
    copy_dir(
        &repo.join("snapshots").join(commit),
        &home
            .path()
            .join("hub/models--tiny--olmoe/snapshots")
            .join(commit),
    );
    std::fs::create_dir_all(home.path().join("hub/models--tiny--olmoe/refs")).unwrap();
    write(
        &home.path().join("hub/models--tiny--olmoe/refs/main"),
        commit,
    );
    let o = moescope_env(
        &["info", "--model", "tiny/olmoe"],
        &[("HF_HOME", home.path().to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    fails_with(
        &["info", "--model", "tiny/other"],
        &env,
        &["tiny/other", "not in the HF cache", "HF_HUB_OFFLINE"],
    );
    fails_with(
        &["info", "--model", "tiny/olmoe", "--revision", "v2"],
        &env,
        &["revision v2"],
    );
}

/// Rewrites the safetensors file `file` with tensor `name` changed by `change`, or left out
/// when `change` is `None`.
fn rewrite_tensor(
    file: &Path,
    name: &str,
    change: Option<&dyn Fn(&safetensors::tensor::TensorView<'_>) -> OwnedTensor>,
) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, OwnedTensor)> = Vec::new();
    for (n, view) in st.tensors() {
        let tensor = match (n == name, change) {
            (true, None) => continue,
            (true, Some(change)) => change(&view),
            (false, _) => (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
        };
        owned.push((n, tensor));
    }
    assert!(
        owned.len() < st.len() || change.is_some(),
        "{name} is not in {}",
        file.display()
    );
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, (dt, sh, d))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, sh.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, file).unwrap();
}

/// A checkpoint of each newer family with a tensor missing or of the wrong shape names the
/// tensor; a float8 weight without its block scales names both.
#[test]
fn bad_checkpoints_of_newer_families_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    for (fixture_name, tensor) in [
        (
            "deepseek_v3",
            "model.layers.1.mlp.gate.e_score_correction_bias",
        ),
        ("kimi_k2", "model.layers.2.mlp.experts.5.down_proj.weight"),
        ("glm4_moe", "model.layers.1.self_attn.q_norm.weight"),
        (
            "minimax_m2",
            "model.layers.0.block_sparse_moe.e_score_correction_bias",
        ),
    ] {
        let p = dir.path().join(format!("{fixture_name}_missing"));
        copy_dir(&fixture(fixture_name), &p);
        rewrite_tensor(&p.join("model.safetensors"), tensor, None);
        fails_with(&["info", "--model", &s(&p)], &[], &[tensor]);
        let p = dir.path().join(format!("{fixture_name}_shape"));
        copy_dir(&fixture(fixture_name), &p);
        rewrite_tensor(
            &p.join("model.safetensors"),
            tensor,
            Some(&|v| {
                let mut shape = v.shape().to_vec();
                shape[0] -= 1;
                let keep = v.data().len() / (shape[0] + 1) * shape[0];
                (v.dtype(), shape, v.data()[..keep].to_vec())
            }),
        );
        fails_with(&["info", "--model", &s(&p)], &[], &[tensor, "shape"]);
    }
    let p = dir.path().join("fp8_no_scales");
    copy_dir(&fixture("deepseek_v3_fp8"), &p);
    let weight = "model.layers.1.mlp.experts.3.up_proj.weight";
    rewrite_tensor(
        &p.join("model.safetensors"),
        &format!("{weight}_scale_inv"),
        None,
    );
    fails_with(
        &["trace", "--model", &s(&p), "--text", "hello"],
        &[],
        &[weight, "float8", "weight_scale_inv"],
    );
}

#[test]
fn bad_model_folders_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let p = dir.path().join(name);
        copy_dir(&fixture("olmoe"), &p);
        p
    };

    let p = fresh("no_weights");
    std::fs::remove_file(p.join("model.safetensors")).unwrap();
    fails_with(
        &["info", "--model", &s(&p)],
        &[],
        &["no_weights", "missing model.safetensors"],
    );

    let p = fresh("no_tokenizer");
    std::fs::remove_file(p.join("tokenizer.json")).unwrap();
    fails_with(
        &["info", "--model", &s(&p)],
        &[],
        &["missing tokenizer.json"],
    );

    let p = fresh("truncated");
    let bytes = std::fs::read(p.join("model.safetensors")).unwrap();
    std::fs::write(p.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &["info", "--model", &s(&p)],
        &[],
        &[
            "truncated/model.safetensors",
            "the header describes",
            "it may be truncated or still downloading",
        ],
    );

    // Rewrite the checkpoint with one tensor of the wrong shape, and one of an integer dtype.
    let rewrite =
        |p: &Path,
         bad_name: &str,
         change: &dyn Fn(&safetensors::tensor::TensorView<'_>) -> OwnedTensor| {
            rewrite_tensor(&p.join("model.safetensors"), bad_name, Some(change))
        };
    let p = fresh("bad_shape");
    rewrite(&p, "model.layers.1.mlp.gate.weight", &|v| {
        let shape = v.shape().to_vec();
        let row = shape[1] * 4;
        (
            v.dtype(),
            vec![shape[0] - 1, shape[1]],
            v.data()[..v.data().len() - row].to_vec(),
        )
    });
    fails_with(
        &["info", "--model", &s(&p)],
        &[],
        &["bad_shape", "model.layers.1.mlp.gate.weight", "shape"],
    );

    let p = fresh("bad_dtype");
    rewrite(&p, "model.norm.weight", &|v| {
        (
            safetensors::Dtype::I32,
            v.shape().to_vec(),
            v.data().to_vec(),
        )
    });
    fails_with(
        &["info", "--model", &s(&p)],
        &[],
        &["model.norm.weight", "I32", "float"],
    );

    let p = fresh("llama");
    let cfg = std::fs::read_to_string(p.join("config.json")).unwrap();
    write(
        &p.join("config.json"),
        &cfg.replace("OlmoeForCausalLM", "LlamaForCausalLM")
            .replace("\"olmoe\"", "\"llama\""),
    );
    fails_with(
        &["info", "--model", &s(&p)],
        &[],
        &[
            "llama/config.json",
            "LlamaForCausalLM",
            "supported",
            "MixtralForCausalLM",
            "DeepseekV2ForCausalLM",
        ],
    );

    fails_with(
        &["info", "--model", "/nonexistent/folder"],
        &[],
        &["/nonexistent/folder", "no such folder"],
    );
}

#[test]
fn bad_datasets_fail_without_writing_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.json");
    let model = s(&fixture("olmoe"));
    let run = |data: &Path, extra: &[&str], needles: &[&str]| {
        let mut args = vec![
            "profile",
            "--model",
            model.as_str(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        fails_with(&args, &[], needles);
        assert!(!out.exists(), "a failed profile left {}", out.display());
    };

    let p = dir.path().join("cols.jsonl");
    write(&p, "{\"topic_name\": \"law\", \"body\": \"x\"}\n");
    run(&p, &[], &["cols.jsonl", "body"]);
    run(
        &p,
        &["--subject-column", "topic_name", "--text-column", "missing"],
        &["cols.jsonl", "missing"],
    );

    let p = dir.path().join("empty.jsonl");
    write(
        &p,
        "{\"subject\": \"law\", \"text\": \"fine\"}\n{\"subject\": \"law\", \"text\": \"   \"}\n",
    );
    run(&p, &[], &["empty.jsonl", "empty"]);

    let p = dir.path().join("latin1.csv");
    std::fs::write(&p, b"subject,text\nlaw,caf\xe9 au lait\n").unwrap();
    run(&p, &[], &["latin1.csv", "UTF-8"]);

    let p = dir.path().join("long.jsonl");
    let long = "word ".repeat(400);
    write(
        &p,
        &format!("{{\"subject\": \"law\", \"text\": \"{long}\"}}\n"),
    );
    run(
        &p,
        &[],
        &["long.jsonl", "prompt 1", "context of 256", "--max-tokens"],
    );
    // Truncation makes it fit.
    let o = moescope(&[
        "profile",
        "--model",
        &model,
        "--data",
        p.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-tokens",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(&out).unwrap();

    run(&dir.path().join("absent.jsonl"), &[], &["absent.jsonl"]);
}

#[test]
fn half_precision_runs_and_stays_close_to_f32() {
    for model in ["qwen3_moe", "deepseek_v2_group"] {
        let path = s(&fixture(model));
        let f32_out = moescope(&[
            "trace",
            "--model",
            &path,
            "--ids",
            "1,7,42,99,300",
            "--json",
        ]);
        assert!(f32_out.status.success(), "{}", stderr(&f32_out));
        let full: serde_json::Value = serde_json::from_slice(&f32_out.stdout).unwrap();
        for dtype in ["bf16", "f16"] {
            let o = moescope(&[
                "trace",
                "--model",
                &path,
                "--ids",
                "1,7,42,99,300",
                "--json",
                "--dtype",
                dtype,
            ]);
            assert!(o.status.success(), "{model} {dtype}: {}", stderr(&o));
            let half: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let a = full["layers"][0]["router_logits"][0].as_array().unwrap();
            let b = half["layers"][0]["router_logits"][0].as_array().unwrap();
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs())
                .fold(0.0, f64::max);
            assert!(
                d > 0.0 && d < 0.1,
                "{model} {dtype}: router logits differ by {d}"
            );
        }
    }
    fails_with(
        &["info", "--model", &s(&fixture("olmoe")), "--dtype", "f8"],
        &[],
        &["unknown dtype"],
    );
}
