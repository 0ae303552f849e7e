//! `report`, `select` and `compare` driven as a user drives them, on profiles the engine makes
//! from the fixture models: every output shape the issue names, PEFT / ESFT exports that list
//! exactly the selected experts, and bad input getting a clear error, a non-zero exit code and no
//! output file.

mod common;

use common::{fixture, moescope};
use std::path::{Path, PathBuf};
use std::process::Output;

use moescope::profile::RoutingProfile;
use moescope::selection::Selection;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn succeeds(args: &[&str]) -> String {
    let o = moescope(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

/// Runs and expects failure with every `needle` in stderr and no panic.
fn fails_with(args: &[&str], needles: &[&str]) {
    let o = moescope(args);
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "{args:?} should fail; stdout: {}",
        stdout(&o)
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected {n:?} in: {err}");
    }
}

/// Profiles three subjects with `model`, writing the profile and traces into `dir`.
fn profile(dir: &Path, model: &str) -> (PathBuf, PathBuf) {
    let data = dir.join("d.jsonl");
    std::fs::write(
        &data,
        concat!(
            "{\"subject\": \"law\", \"text\": \"The court held the contract void for mistake.\"}\n",
            "{\"subject\": \"law\", \"text\": \"A tort is a civil wrong done to another.\"}\n",
            "{\"subject\": \"math\", \"text\": \"The derivative of x squared is two x.\"}\n",
            "{\"subject\": \"math\", \"text\": \"Every prime above two is odd.\"}\n",
            "{\"subject\": \"code\", \"text\": \"fn main() { println!(\\\"hi\\\"); }\"}\n",
        ),
    )
    .unwrap();
    let out = dir.join(format!("{model}.json"));
    let traces = dir.join(format!("{model}.jsonl"));
    succeeds(&[
        "profile",
        "--model",
        &s(&fixture(model)),
        "--data",
        &s(&data),
        "--out",
        &s(&out),
        "--traces",
        &s(&traces),
    ]);
    (out, traces)
}

#[test]
fn report_json_tables_and_csv_on_an_engine_profile() {
    let dir = tempfile::tempdir().unwrap();
    let (p, traces) = profile(dir.path(), "olmoe");
    let profile = RoutingProfile::load(&p).unwrap();

    let text = succeeds(&["report", &s(&p)]);
    assert!(text.contains("mean pairwise Jaccard"), "{text}");
    assert!(text.contains("Load per MoE layer"), "{text}");

    let out = succeeds(&[
        "report",
        &s(&p),
        "--json",
        "--top-layers",
        "2",
        "--traces",
        &s(&traces),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let subjects = v["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 3);
    for subject in subjects {
        assert_eq!(
            subject["kl"].as_array().unwrap().len(),
            profile.num_layers()
        );
        let top = subject["top_layers"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        for layer in top {
            let layer = layer.as_u64().unwrap() as usize;
            assert!(
                profile.model.moe_layers.contains(&layer),
                "decoder index {layer}"
            );
        }
    }
    assert!(v["top_layer_jaccard"]["mean_pairwise"].is_number());
    let appearances: u64 = v["top_layer_jaccard"]["layer_appearances"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(appearances, 3 * 2);
    assert_eq!(v["layers"].as_array().unwrap().len(), profile.num_layers());
    assert!(v["global_cv"].is_number());
    assert_eq!(v["hot_set_jaccard"]["values"].as_array().unwrap().len(), 3);
    assert!(v["count_mass_agreement"]["pooled"]["mean_jaccard"].is_number());
    assert_eq!(v["das"].as_array().unwrap().len(), 3);
    let t = &v["traces"];
    assert_eq!(t["sequences"], 5);
    assert_eq!(
        t["subsample_stability"]["trial_jaccards"]
            .as_array()
            .unwrap()
            .len(),
        50
    );
    let layer_experts = profile.num_layers() * profile.model.num_experts;
    assert_eq!(t["top_tokens"].as_array().unwrap().len(), layer_experts);

    let csv = dir.path().join("csv");
    succeeds(&["report", &s(&p), "--csv", &s(&csv), "--traces", &s(&traces)]);
    for f in [
        "summary.csv",
        "kl.csv",
        "layers.csv",
        "das.csv",
        "top_tokens.csv",
        "co_activation.csv",
    ] {
        assert!(csv.join(f).is_file(), "{f}");
    }
}

#[test]
fn select_writes_a_selection_peft_config_and_esft_config() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = profile(dir.path(), "olmoe");
    let profile = RoutingProfile::load(&p).unwrap();
    let layout = profile
        .model
        .layout
        .clone()
        .expect("engine profiles record the layout");
    let sel = dir.path().join("s.json");
    let adapter = dir.path().join("adapter");
    let esft = dir.path().join("esft.json");
    let text = succeeds(&[
        "select",
        &s(&p),
        "--rule",
        "hot",
        "--budget",
        "0.25",
        "--rank",
        "8",
        "--out",
        &s(&sel),
        "--peft-config",
        &s(&adapter),
        "--esft",
        &s(&esft),
    ]);
    assert!(text.contains("trainable parameters"), "{text}");
    assert!(text.contains("reduction vs LoRA on all experts"), "{text}");

    let selection = Selection::load(&sel).unwrap();
    let k = ((profile.model.num_experts as f64) * 0.25).round().max(1.0) as usize;
    for layer in &profile.model.moe_layers {
        assert_eq!(selection.experts[layer].len(), k, "layer {layer}");
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 8);
    let targets: Vec<String> = config["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let mut expected: Vec<String> = selection
        .cells()
        .flat_map(|(l, e)| {
            ["gate_proj", "up_proj", "down_proj"]
                .map(|proj| format!("model.layers.{l}.mlp.experts.{e}.{proj}"))
        })
        .collect();
    expected.sort();
    assert_eq!(targets, expected);
    assert!(layout.expert_prefix.contains("mlp.experts"));
    let esft: serde_json::Value = serde_json::from_slice(&std::fs::read(&esft).unwrap()).unwrap();
    assert_eq!(
        esft["experts"].as_object().unwrap().len(),
        profile.model.moe_layers.len()
    );

    for rule in [
        ["--rule", "mass"],
        ["--rule", "coverage"],
        ["--rule", "greedy"],
        ["--rule", "random"],
    ] {
        succeeds(&["select", &s(&p), rule[0], rule[1], "--out", &s(&sel)]);
    }
    succeeds(&[
        "select",
        &s(&p),
        "--rule",
        "das",
        "--domain",
        "math",
        "--out",
        &s(&sel),
    ]);
    assert!(matches!(
        Selection::load(&sel).unwrap().rule,
        moescope::selection::SelectionRule::Das { .. }
    ));
}

#[test]
fn mixtral_selection_uses_mixtral_module_names() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = profile(dir.path(), "mixtral");
    let adapter = dir.path().join("adapter");
    succeeds(&[
        "select",
        &s(&p),
        "--rule",
        "hot",
        "--k",
        "1",
        "--out",
        &s(&dir.path().join("s.json")),
        "--peft-config",
        &s(&adapter),
    ]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap())
            .unwrap();
    let first = config["target_modules"][0].as_str().unwrap();
    assert!(
        first.contains("block_sparse_moe.experts.") && first.ends_with(".w1"),
        "{first}"
    );
}

#[test]
fn compare_profiles_of_the_same_and_of_different_models() {
    let dir = tempfile::tempdir().unwrap();
    let (olmoe, olmoe_traces) = profile(dir.path(), "olmoe");
    let out = succeeds(&[
        "compare",
        &s(&olmoe),
        &s(&olmoe),
        "--json",
        "--traces",
        &s(&olmoe_traces),
        &s(&olmoe_traces),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["routing_consistency"], 0.0);
    assert_eq!(v["mean_hot_set_jaccard"], 1.0);
    assert_eq!(v["router_saturation"]["overall"], 1.0);
    assert_eq!(v["subjects"].as_array().unwrap().len(), 3);
    let text = succeeds(&["compare", &s(&olmoe), &s(&olmoe)]);
    assert!(text.contains("Routing consistency RC"), "{text}");

    let (mixtral, _) = profile(dir.path(), "mixtral");
    fails_with(
        &["compare", &s(&olmoe), &s(&mixtral)],
        &["olmoe.json", "mixtral.json", "differ"],
    );
}

#[test]
fn bad_input_gets_clear_errors_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = profile(dir.path(), "olmoe");
    let out = dir.path().join("out.json");
    let ps = s(&p);
    let os = s(&out);
    fails_with(
        &[
            "select", &ps, "--rule", "hot", "--budget", "0", "--out", &os,
        ],
        &["olmoe.json", "budget 0 is outside (0, 1]"],
    );
    fails_with(
        &[
            "select", &ps, "--rule", "hot", "--budget", "1.5", "--out", &os,
        ],
        &["budget 1.5"],
    );
    fails_with(
        &["report", &ps, "--budget", "-1"],
        &["budget -1 is outside"],
    );
    fails_with(
        &[
            "select", &ps, "--rule", "das", "--domain", "poetry", "--out", &os,
        ],
        &["unknown subject 'poetry'", "law, math, code"],
    );
    fails_with(
        &[
            "select",
            &ps,
            "--rule",
            "explicit",
            "--experts",
            "99:0",
            "--out",
            &os,
        ],
        &["layer 99"],
    );
    fails_with(
        &[
            "select",
            &ps,
            "--rule",
            "explicit",
            "--experts",
            "0:999",
            "--out",
            &os,
        ],
        &["expert 999 of layer 0"],
    );
    assert!(!out.exists(), "no selection written on error");

    // Another profile version and ragged rows.
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["version"] = 9.into();
    let bad = dir.path().join("v9.json");
    std::fs::write(&bad, v.to_string()).unwrap();
    fails_with(
        &["report", &s(&bad)],
        &["v9.json", "version 9 is not supported"],
    );
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["subjects"][0]["count"][0].as_array_mut().unwrap().pop();
    let ragged = dir.path().join("ragged.json");
    std::fs::write(&ragged, v.to_string()).unwrap();
    fails_with(
        &["compare", &ps, &s(&ragged)],
        &["ragged.json", "count row 0"],
    );
    fails_with(
        &["report", &s(&dir.path().join("missing.json"))],
        &["missing.json"],
    );
}
