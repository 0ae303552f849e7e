//! Selective LoRA: PEFT interoperability both ways (fixtures from tests/fixtures/make_peft.py),
//! training that lowers the loss, cancel and resume, and bad input.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;
use moescope::model::adapter::AdapterFormChoice;
use moescope::model::device::DeviceChoice;
use moescope::selection::accounting::AdapterScope;
use moescope::train::{
    ExpertChoice, LoraOptions, TrainError, TrainEvent, TrainOptions, Trainer, run_training,
};
use serde_json::Value;

use common::{assert_fails, copy_dir, fixture, logits_of, max_logit_diff, moescope};

/// Fixtures with per-expert adapters made by PEFT on transformers 4.57 (tests/fixtures/make_peft.py).
const FIXTURES: [&str; 5] = [
    "olmoe",
    "qwen2_moe",
    "qwen3_moe",
    "mixtral",
    "deepseek_v2_group",
];

/// Fixtures with fused adapters made by PEFT on transformers 5 (make_peft_fused.py).
const FUSED_FIXTURES: [&str; 6] = [
    "olmoe",
    "qwen3_moe",
    "mixtral",
    "qwen3_5_moe",
    "minimax_m2",
    "gemma4",
];

/// The fused fixtures MoEScope trains (not Qwen3.5: no training through gated DeltaNet).
const TRAINABLE_FUSED_FIXTURES: [&str; 5] =
    ["olmoe", "qwen3_moe", "mixtral", "minimax_m2", "gemma4"];

/// The forms PEFT on transformers 5 loads for a fused fixture: Qwen3.5 and Gemma 4 checkpoints
/// store their experts fused, so transformers has no per-expert conversion for them and only
/// the fused form loads.
fn transformers5_forms(name: &str) -> &'static [&'static str] {
    if matches!(name, "qwen3_5_moe" | "gemma4") {
        &["fused"]
    } else {
        &["fused", "padded"]
    }
}

fn adapters_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/adapters")
        .join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/mmlu_pro_sample.parquet")
}

/// Logits `[t][vocab]` of the fixture with `adapter` merged, for `ids`.
fn logits_with(name: &str, adapter: Option<&Path>, ids: &[u32]) -> Vec<Vec<f32>> {
    logits_of(&fixture(name), adapter, ids)
}

fn expected_logits(path: &Path) -> (Vec<u32>, Vec<Vec<f32>>) {
    let v = read_json(path);
    let ids = v["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let logits = serde_json::from_value(v["logits"].clone()).unwrap();
    (ids, logits)
}

/// MoEScope's logits for the fixture `name` with `adapter` merged equal PEFT's, recorded in
/// `peft_logits` (within 1e-4); returns the input ids and PEFT's logits.
fn assert_gives_pefts_logits(
    name: &str,
    adapter: &Path,
    peft_logits: &Path,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let (ids, want) = expected_logits(peft_logits);
    let d = max_logit_diff(&logits_with(name, Some(adapter), &ids), &want);
    assert!(
        d < 1e-4,
        "{name} ({}): max logit difference to PEFT {d:e}",
        adapter.display()
    );
    (ids, want)
}

/// The PEFT-made adapters in `adapter` folders give PEFT's logits in `logits_file`, which
/// differ from the base model's.
fn assert_peft_made_adapters_give_pefts_logits(names: &[&str], adapter: &str, logits_file: &str) {
    for name in names {
        let dir = adapters_dir(name);
        let (ids, want) =
            assert_gives_pefts_logits(name, &dir.join(adapter), &dir.join(logits_file));
        assert!(
            max_logit_diff(&logits_with(name, None, &ids), &want) > 0.1,
            "{name}: the fixture adapter should move the logits"
        );
    }
}

#[test]
fn peft_made_adapters_give_pefts_logits() {
    assert_peft_made_adapters_give_pefts_logits(&FIXTURES, "peft", "peft_logits.json");
}

#[test]
fn peft_fused_adapters_on_transformers5_give_pefts_logits() {
    assert_peft_made_adapters_give_pefts_logits(
        &FUSED_FIXTURES,
        "peft_fused",
        "peft_fused_logits.json",
    );
}

#[test]
fn moescope_fused_and_padded_adapters_give_the_logits_peft_computes_on_transformers5() {
    for name in FUSED_FIXTURES {
        let dir = adapters_dir(name);
        let forms = transformers5_forms(name);
        for form in forms {
            assert_gives_pefts_logits(
                name,
                &dir.join(format!("moescope_{form}")),
                &dir.join(format!("moescope_{form}_in_peft_logits.json")),
            );
        }
    }
}

#[test]
fn moescope_written_adapters_give_the_logits_peft_computes_with_them() {
    for name in FIXTURES {
        let dir = adapters_dir(name);
        assert_gives_pefts_logits(
            name,
            &dir.join("moescope"),
            &dir.join("moescope_in_peft_logits.json"),
        );
    }
}

/// `moescope convert-adapter` of `adapter` (for the fixture `name`) to `form` in `out`.
fn convert_adapter(name: &str, adapter: &Path, form: &str, out: &Path) {
    let run = moescope(&[
        "convert-adapter",
        "--model",
        fixture(name).to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--form",
        form,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{name} {form}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// The `(layer, expert)` cells an adapter folder adapts, read from its per-expert conversion
/// (which drops experts whose update is zero).
fn adapted_cells(name: &str, adapter: &Path) -> Vec<(usize, usize)> {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("per-expert");
    convert_adapter(name, adapter, "per-expert", &out);
    let pattern =
        regex::Regex::new(r"layers\.(\d+)\.(?:(?:mlp|block_sparse_moe)\.)?experts\.(\d+)\.")
            .unwrap();
    let mut cells: Vec<(usize, usize)> = tensor_shapes(&out.join("adapter_model.safetensors"))
        .keys()
        .filter_map(|key| {
            let c = pattern.captures(key)?;
            Some((c[1].parse().unwrap(), c[2].parse().unwrap()))
        })
        .collect();
    cells.sort();
    cells.dedup();
    cells
}

/// PEFT trained (3 AdamW steps, weight decay on) the padded and fused folders
/// `select --peft-config` wrote (make_peft_fused.py): the saved adapters adapt exactly the
/// selected experts, and MoEScope gives PEFT's logits with them.
#[test]
fn adapters_peft_trained_from_select_folders_adapt_only_the_selected_experts() {
    for name in FUSED_FIXTURES {
        let dir = adapters_dir(name);
        let spec = read_json(&dir.join("spec_fused.json"));
        let mut want_cells: Vec<(usize, usize)> = spec["experts"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(layer, experts)| {
                let layer: usize = layer.parse().unwrap();
                experts
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |e| (layer, e.as_u64().unwrap() as usize))
            })
            .collect();
        want_cells.sort();
        let forms = transformers5_forms(name);
        for form in forms {
            let adapter = dir.join(format!("peft_from_select_{form}"));
            assert_eq!(adapted_cells(name, &adapter), want_cells, "{name} ({form})");
            assert_gives_pefts_logits(
                name,
                &adapter,
                &dir.join(format!("peft_from_select_{form}_logits.json")),
            );
        }
    }
}

/// A selection file for `spec.json`'s cells.
fn write_selection(name: &str, spec: &Value, path: &Path) {
    let loaded = common::load(name);
    let info = loaded.model.info();
    let sel = serde_json::json!({
        "format": "moescope-selection",
        "version": 1,
        "model": {
            "id": info.id, "architecture": info.architecture,
            "moe_layers": info.moe_layers, "num_experts": info.num_experts,
        },
        "rule": {"name": "explicit"},
        "experts": spec["experts"],
    });
    std::fs::write(path, serde_json::to_vec(&sel).unwrap()).unwrap();
}

fn tensor_shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec()))
        .collect()
}

fn options_for(name: &str, spec: &Value, selection: &Path, out: &Path) -> TrainOptions {
    let mut opts = TrainOptions::new(
        &fixture(name).display().to_string(),
        ExpertChoice::Selection(selection.to_path_buf()),
        &data(),
        out,
    );
    opts.load.device = DeviceChoice::Cpu;
    opts.lora = LoraOptions {
        rank: spec["rank"].as_u64().unwrap() as usize,
        alpha: spec["alpha"].as_f64().unwrap(),
        dropout: 0.0,
        scope: AdapterScope {
            attention: spec["attention"].as_bool().unwrap(),
            router: spec["router"].as_bool().unwrap(),
            shared_experts: spec["shared"].as_bool().unwrap(),
            num_decoder_layers: None,
        },
    };
    opts.max_steps = Some(1);
    opts.batch_size = 2;
    opts.adapter_form = AdapterFormChoice::PerExpert;
    opts
}

/// The adapter `train --adapter-form fused|padded` writes has the keys, shapes and config of the
/// committed one PEFT loaded on transformers 5 (make_peft_fused.py), the fused form's unselected
/// experts are exactly zero, and reading it back gives the per-expert adapter of the same run.
#[test]
fn trained_fused_and_padded_adapters_have_the_layout_peft_loaded() {
    for name in TRAINABLE_FUSED_FIXTURES {
        let dir = adapters_dir(name);
        let spec = read_json(&dir.join("spec_fused.json"));
        let tmp = tempfile::tempdir().unwrap();
        let sel = tmp.path().join("selection.json");
        write_selection(name, &spec, &sel);
        let mut per_form = Vec::new();
        for form in [
            AdapterFormChoice::PerExpert,
            AdapterFormChoice::Padded,
            AdapterFormChoice::Fused,
        ] {
            let out = tmp.path().join(format!("{form:?}"));
            let mut opts = options_for(name, &spec, &sel, &out);
            opts.adapter_form = form;
            let never = AtomicBool::new(false);
            run_training(opts, &never, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
            per_form.push(out);
        }
        let forms = transformers5_forms(name);
        for (out, committed) in [(&per_form[1], "padded"), (&per_form[2], "fused")] {
            if !forms.contains(&committed) {
                continue;
            }
            let committed = dir.join(format!("moescope_{committed}"));
            assert_eq!(
                tensor_shapes(&out.join("adapter_model.safetensors")),
                tensor_shapes(&committed.join("adapter_model.safetensors")),
                "{name}: keys and shapes of {}",
                committed.display()
            );
            let mut ours = read_json(&out.join("adapter_config.json"));
            let mut theirs = read_json(&committed.join("adapter_config.json"));
            for cfg in [&mut ours, &mut theirs] {
                cfg.as_object_mut()
                    .unwrap()
                    .remove("base_model_name_or_path");
            }
            assert_eq!(ours, theirs, "{name}: config of {}", committed.display());
        }
        // The fused lora_A rows of experts outside the selection are zero, the others are not.
        let fused = adapter_tensors(&per_form[2]);
        let cells: BTreeMap<String, Vec<usize>> =
            serde_json::from_value(spec["experts"].clone()).unwrap();
        let num_experts = common::load(name).model.info().num_experts;
        let mut checked = 0;
        for (key, values) in &fused {
            let Some(module) = key.strip_suffix(".lora_A.weight") else {
                continue;
            };
            let module = module.replace(".base_layer", "");
            // `….layers.L.mlp.experts`, or Gemma 4's `….layers.L.experts`.
            let Some(layer) = module
                .strip_suffix(".mlp.experts")
                .or_else(|| module.strip_suffix(".experts"))
                .and_then(|m| m.rsplit('.').next())
            else {
                continue;
            };
            let chosen = &cells[layer];
            let per_expert = values.len() / num_experts;
            for e in 0..num_experts {
                let zero = values[e * per_expert..(e + 1) * per_expert]
                    .iter()
                    .all(|&v| v == 0.0);
                assert_eq!(zero, !chosen.contains(&e), "{name}: {key} expert {e}");
            }
            checked += 1;
        }
        assert_eq!(checked, 2 * cells.len(), "{name}: fused expert tensors");
        // All three forms apply the same update.
        let ids: Vec<u32> = serde_json::from_value(spec["input_ids"].clone()).unwrap();
        let reference = logits_with(name, Some(&per_form[0]), &ids);
        for out in &per_form[1..] {
            let d = max_logit_diff(&logits_with(name, Some(out), &ids), &reference);
            assert!(
                d < 1e-5,
                "{name}: {} differs from per-expert by {d:e}",
                out.display()
            );
        }
    }
}

#[test]
fn trained_adapters_have_exactly_pefts_keys_shapes_and_config() {
    for name in FIXTURES {
        let dir = adapters_dir(name);
        let spec = read_json(&dir.join("spec.json"));
        let tmp = tempfile::tempdir().unwrap();
        let sel = tmp.path().join("selection.json");
        write_selection(name, &spec, &sel);
        let out = tmp.path().join("run");
        let never = AtomicBool::new(false);
        run_training(options_for(name, &spec, &sel, &out), &never, &mut |_| {})
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            tensor_shapes(&out.join("adapter_model.safetensors")),
            tensor_shapes(&dir.join("peft/adapter_model.safetensors")),
            "{name}: keys and shapes"
        );
        let ours = read_json(&out.join("adapter_config.json"));
        let peft = read_json(&dir.join("peft/adapter_config.json"));
        // PEFT shortens long target lists to suffixes when it saves (`gate` for every
        // `…mlp.gate`); compare the modules each list selects, matched as PEFT matches them
        // (the full name, or a suffix after a dot).
        let mut loaded = common::load(name);
        let all: Vec<String> = loaded
            .model
            .linears_mut()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let matched = |v: &Value| {
            let targets: Vec<String> = serde_json::from_value(v.clone()).unwrap();
            all.iter()
                .filter(|n| {
                    targets
                        .iter()
                        .any(|t| *n == t || n.ends_with(&format!(".{t}")))
                })
                .cloned()
                .collect::<Vec<_>>()
        };
        let ours_modules = matched(&ours["target_modules"]);
        assert_eq!(ours_modules, matched(&peft["target_modules"]), "{name}");
        let spec_targets: Vec<String> =
            serde_json::from_value(spec["target_modules"].clone()).unwrap();
        assert_eq!(ours_modules.len(), spec_targets.len(), "{name}");
        for key in [
            "peft_type",
            "task_type",
            "r",
            "lora_alpha",
            "bias",
            "use_dora",
            "use_rslora",
            "fan_in_fan_out",
        ] {
            assert_eq!(ours[key], peft[key], "{name}: {key}");
        }
    }
}

/// `convert-adapter` takes the committed fused adapter to the per-expert form and back to the
/// same keys and shapes, and every form applies the same update (Qwen3.5, whose checkpoint is
/// fused and nested under `model.language_model`, read through transformers 5's flat names).
#[test]
fn converted_adapters_keep_their_update_across_forms() {
    for name in ["qwen3_5_moe", "olmoe"] {
        let dir = adapters_dir(name);
        let committed = dir.join("moescope_fused");
        let tmp = tempfile::tempdir().unwrap();
        let per_expert = tmp.path().join("per-expert");
        let fused = tmp.path().join("fused");
        convert_adapter(name, &committed, "per-expert", &per_expert);
        convert_adapter(name, &per_expert, "fused", &fused);
        assert_eq!(
            tensor_shapes(&fused.join("adapter_model.safetensors")),
            tensor_shapes(&committed.join("adapter_model.safetensors")),
            "{name}"
        );
        let ids: Vec<u32> =
            serde_json::from_value(read_json(&dir.join("spec_fused.json"))["input_ids"].clone())
                .unwrap();
        let reference = logits_with(name, Some(&committed), &ids);
        for out in [&per_expert, &fused] {
            let d = max_logit_diff(&logits_with(name, Some(out), &ids), &reference);
            assert!(d < 1e-5, "{name}: {} differs by {d:e}", out.display());
        }
    }
}

fn olmoe_options(out: &Path, steps: u64) -> TrainOptions {
    let mut opts = TrainOptions::new(
        &fixture("olmoe").display().to_string(),
        ExpertChoice::All,
        &data(),
        out,
    );
    opts.load.device = DeviceChoice::Cpu;
    opts.lora.rank = 4;
    opts.lora.alpha = 8.0;
    opts.lora.dropout = 0.1;
    opts.max_steps = Some(steps);
    opts.batch_size = 2;
    opts.lr = 1e-2;
    opts.checkpoint_every = 2;
    opts
}

fn adapter_tensors(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let t = Tensor::from_raw_buffer(
                v.data(),
                candle_core::DType::F32,
                v.shape(),
                &candle_core::Device::Cpu,
            )
            .unwrap();
            (k, t.flatten_all().unwrap().to_vec1().unwrap())
        })
        .collect()
}

#[test]
fn training_lowers_the_loss_and_a_cancelled_run_resumes_to_the_same_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let full = tmp.path().join("full");
    let summary = run_training(olmoe_options(&full, 12), &never, &mut |_| {}).unwrap();
    assert_eq!(summary.steps, 12);
    assert!(
        summary.final_loss < summary.first_loss,
        "loss {} -> {}",
        summary.first_loss,
        summary.final_loss
    );
    let metrics = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 12);

    // Cancel after step 5: a checkpoint at step 5, no adapter.
    let cut = tmp.path().join("cut");
    let cancel = AtomicBool::new(false);
    let err = run_training(olmoe_options(&cut, 12), &cancel, &mut |e| {
        if let TrainEvent::Step(m) = e
            && m.step == 5
        {
            cancel.store(true, Ordering::Relaxed);
        }
    })
    .unwrap_err();
    assert!(
        matches!(err, TrainError::Cancelled { step: 5, .. }),
        "{err}"
    );
    assert!(cut.join("checkpoint.safetensors").exists());
    assert!(!cut.join("adapter_model.safetensors").exists());

    // Starting again without --resume refuses to clobber the checkpoint.
    let err = run_training(olmoe_options(&cut, 12), &never, &mut |_| {}).expect_err("refuses");
    assert!(err.to_string().contains("--resume"), "{err}");

    // Resuming finishes the same run: same adapter as the uninterrupted one.
    let mut opts = olmoe_options(&cut, 12);
    opts.resume = true;
    let mut trainer = Trainer::new(opts, &mut |_| {}).unwrap();
    assert_eq!(trainer.step, 5);
    trainer.run(&never, &mut |_| {}).unwrap();
    let (a, b) = (adapter_tensors(&full), adapter_tensors(&cut));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, va) in &a {
        let d = va
            .iter()
            .zip(&b[k])
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-6, "{k}: resumed run differs by {d}");
    }
    assert_eq!(
        std::fs::read_to_string(cut.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        12
    );

    // Resuming with other settings is refused, naming the difference.
    let mut other = olmoe_options(&cut, 12);
    other.resume = true;
    other.lora.rank = 2;
    let err = Trainer::new(other, &mut |_| {}).err().expect("refuses");
    assert!(err.to_string().contains("rank"), "{err}");
}

#[test]
fn adapter_changes_routing_seen_by_trace_and_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = adapters_dir("olmoe").join("peft");
    let model = fixture("olmoe");
    let (m, a) = (model.to_str().unwrap(), adapter.to_str().unwrap());
    let trace = |extra: &[&str]| -> Value {
        let mut args = vec!["trace", "-m", m, "--ids", "3,50,70,90,110", "--json"];
        args.extend_from_slice(extra);
        let out = moescope(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let base = trace(&[]);
    let adapted = trace(&["--adapter", a]);
    // The fixture adapter adapts the routers: their logits change.
    assert_ne!(
        base["layers"][0]["router_logits"],
        adapted["layers"][0]["router_logits"]
    );
    let p = tmp.path().join("p.json");
    let out = moescope(&[
        "profile",
        "-m",
        m,
        "--adapter",
        a,
        "--data",
        data().to_str().unwrap(),
        "--out",
        p.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(p.exists());
}

fn train_cli(extra: &[&str]) -> std::process::Output {
    let model = fixture("olmoe");
    let d = data();
    let mut args = vec![
        "train",
        "-m",
        model.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--max-steps",
        "1",
    ];
    args.extend_from_slice(extra);
    moescope(&args)
}

/// A dataset of text alone (no subject column) trains directly.
#[test]
fn text_only_data_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("law.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"The court held that the contract was void.\"}\n{\"text\": \"Appeal dismissed with costs.\"}\n",
    )
    .unwrap();
    let out_dir = tmp.path().join("adapter");
    let model = fixture("olmoe");
    let out = moescope(&[
        "train",
        "-m",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--all-experts",
        "--max-steps",
        "1",
        "--rank",
        "2",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out_dir.join("adapter_model.safetensors").exists());
}

/// The classic ChatML template (as OpenHermes and others ship it).
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Chat records (`messages`) train directly: on the fixture, which has no chat template (the
/// plain layout, said once), and on a copy of it given a chat_template.jinja.
#[test]
fn chat_messages_data_trains_with_or_without_a_chat_template() {
    let tmp = tempfile::tempdir().unwrap();
    let templated = tmp.path().join("olmoe_chatml");
    copy_dir(&fixture("olmoe"), &templated);
    std::fs::write(templated.join("chat_template.jinja"), CHATML).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/chat_sample.jsonl");
    for (model, note) in [
        (fixture("olmoe"), "has no chat template"),
        (templated.clone(), "rendered with the chat template of"),
    ] {
        let out_dir = tmp.path().join(format!(
            "adapter_{}",
            model.file_name().unwrap().to_string_lossy()
        ));
        let out = moescope(&[
            "train",
            "-m",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--all-experts",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--rank",
            "2",
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{}: {said}", model.display());
        assert_eq!(said.matches(note).count(), 1, "{said}");
        let summary = read_json(&out_dir.join("training.json"));
        assert_eq!(summary["steps"], 2, "{summary}");
        let metrics = std::fs::read_to_string(out_dir.join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count(), 2);
        assert!(out_dir.join("adapter_model.safetensors").exists());
    }
}

#[test]
fn bad_input_gets_clear_errors_and_leaves_nothing_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |s: &str| tmp.path().join(s).display().to_string();

    // Rank 0 and a rank larger than a projection (OLMoE fixture experts are [I, H] small).
    assert_fails(
        &train_cli(&["--all-experts", "--out", &t("r0"), "--rank", "0"]),
        &["rank"],
    );
    assert_fails(
        &train_cli(&["--all-experts", "--out", &t("rbig"), "--rank", "4096"]),
        &["rank 4096", "experts.0"],
    );
    assert!(!tmp.path().join("rbig/adapter_model.safetensors").exists());

    // A selection made for another model.
    let sel = tmp.path().join("mixtral_sel.json");
    let spec = read_json(&adapters_dir("mixtral").join("spec.json"));
    write_selection("mixtral", &spec, &sel);
    assert_fails(
        &train_cli(&[
            "--selection",
            sel.to_str().unwrap(),
            "--out",
            &t("other"),
            "--rank",
            "2",
        ]),
        &["mixtral_sel.json", "another model", "MixtralForCausalLM"],
    );

    // A dataset without text.
    let csv = tmp.path().join("no_text.csv");
    std::fs::write(&csv, "subject,label\nlaw,1\n").unwrap();
    let model = fixture("olmoe");
    let out = moescope(&[
        "train",
        "-m",
        model.to_str().unwrap(),
        "--all-experts",
        "--data",
        csv.to_str().unwrap(),
        "--out",
        &t("notext"),
    ]);
    assert_fails(&out, &["no_text.csv"]);

    // An unwritable output folder (a path below a regular file).
    let file = tmp.path().join("a_file");
    std::fs::write(&file, "x").unwrap();
    assert_fails(
        &train_cli(&["--all-experts", "--out", &format!("{}/run", file.display())]),
        &["a_file/run", "output folder"],
    );

    // An adapter whose shapes do not fit: OLMoE's adapter on Mixtral (other module names),
    // and an OLMoE adapter with a transposed tensor.
    let mixtral = fixture("mixtral");
    let olmoe_adapter = adapters_dir("olmoe").join("peft");
    let out = moescope(&[
        "trace",
        "-m",
        mixtral.to_str().unwrap(),
        "--adapter",
        olmoe_adapter.to_str().unwrap(),
        "--ids",
        "1,2,3",
        "--json",
    ]);
    assert_fails(
        &out,
        &["olmoe/peft", "adapter module", "is not a linear layer"],
    );
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::copy(
        olmoe_adapter.join("adapter_config.json"),
        broken.join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(olmoe_adapter.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (k, v) in st.tensors() {
        let t = Tensor::from_raw_buffer(
            v.data(),
            candle_core::DType::F32,
            v.shape(),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let t = if k.contains("layers.0.self_attn.q_proj.lora_B") {
            Tensor::ones(
                (t.dim(0).unwrap() + 1, t.dim(1).unwrap()),
                t.dtype(),
                t.device(),
            )
            .unwrap()
        } else {
            t
        };
        tensors.push((k, t));
    }
    let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, broken.join("adapter_model.safetensors")).unwrap();
    let out = moescope(&[
        "trace",
        "-m",
        model.to_str().unwrap(),
        "--adapter",
        broken.to_str().unwrap(),
        "--ids",
        "1,2,3",
    ]);
    assert_fails(
        &out,
        &["broken", "model.layers.0.self_attn.q_proj", "do not fit"],
    );

    // A folder that is not an adapter.
    let out = moescope(&[
        "trace",
        "-m",
        model.to_str().unwrap(),
        "--adapter",
        tmp.path().to_str().unwrap(),
        "--ids",
        "1,2,3",
    ]);
    assert_fails(&out, &["adapter_config.json"]);
}

#[test]
fn two_stage_das_trains_attention_and_router_then_the_top_das_experts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("das");
    let mut opts = TrainOptions::new(
        &fixture("olmoe").display().to_string(),
        ExpertChoice::TwoStageDas {
            stage1_steps: Some(2),
            experts_per_layer: Some(2),
        },
        &data(),
        &out,
    );
    opts.load.device = DeviceChoice::Cpu;
    opts.lora.rank = 2;
    opts.lora.alpha = 4.0;
    opts.domain = Some("law".into());
    opts.max_steps = Some(4);
    opts.batch_size = 2;
    let mut stages = Vec::new();
    let never = AtomicBool::new(false);
    let summary = run_training(opts, &never, &mut |e| {
        if let TrainEvent::Stage { stage, .. } = e {
            stages.push(stage);
        }
    })
    .unwrap();
    assert_eq!(stages, vec![1, 2]);
    assert_eq!(summary.adapted_experts, 2 * 3);
    let sel = read_json(&out.join("selection.json"));
    assert_eq!(sel["rule"]["name"], "das");
    let cfg = read_json(&out.join("adapter_config.json"));
    let targets: Vec<String> = serde_json::from_value(cfg["target_modules"].clone()).unwrap();
    assert!(targets.iter().any(|t| t.ends_with("self_attn.q_proj")));
    assert!(targets.iter().any(|t| t.ends_with("mlp.gate")));
    assert_eq!(
        targets.iter().filter(|t| t.contains(".experts.")).count(),
        2 * 3 * 3
    );
}
