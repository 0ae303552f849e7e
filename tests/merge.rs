//! `moescope merge`: PEFT-made adapters merged into four families give PEFT's logits with no
//! adapter loaded; the merged folder keeps the model's hub layout (files, shards, index, tensor
//! names / dtypes / shapes / order, metadata) and changes only the adapted tensors; fused
//! expert tensors (Qwen3.5-MoE rows, gpt-oss interleaved columns) take each expert's slice;
//! bf16 stays bf16; bad input is refused before anything is written and a cancelled merge
//! leaves nothing behind.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use moescope::model::adapter::{Adapter, AdapterSettings, AdapterTarget, LoraPair};
use moescope::model::device::DeviceChoice;
use moescope::model::merge::{MergeError, MergeRequest, MergeSummary, merge_adapter};
use moescope::selection::accounting::AdapterScope;
use moescope::train::{ExpertChoice, LoraOptions, TrainOptions, run_training};
use serde_json::Value;

use common::{assert_fails, bf16_copy, copy_dir, fixture, logits_of, max_logit_diff, moescope};

/// The adapter in `dir` read for the model folder `model` (its config.json alone).
fn load_adapter(dir: &Path, model: &Path) -> Adapter {
    let config = model.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let family = moescope::model::loader::detect_family(&config, &json).unwrap();
    let (layout, _) = moescope::model::families::layout_from_config(family, &text).unwrap();
    Adapter::load(
        dir,
        AdapterTarget {
            family,
            layout: &layout,
        },
    )
    .unwrap()
}

const PEFT_FIXTURES: [&str; 4] = ["olmoe", "qwen2_moe", "mixtral", "deepseek_v2_group"];

fn adapters_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/adapters")
        .join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn request(model: &Path, adapter: &Path, out: &Path) -> MergeRequest {
    MergeRequest {
        model: model.display().to_string(),
        revision: None,
        adapter: adapter.to_path_buf(),
        out: out.to_path_buf(),
        force: false,
    }
}

fn merge(model: &Path, adapter: &Path, out: &Path) -> MergeSummary {
    let never = AtomicBool::new(false);
    merge_adapter(&request(model, adapter, out), &never, &mut |_| {})
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()))
}

fn reference_ids(model: &Path) -> Vec<u32> {
    serde_json::from_value(read_json(&model.join("reference.json"))["input_ids"].clone()).unwrap()
}

/// One shard's header: tensor names in file order with dtype, shape and offsets, and the
/// metadata; plus each tensor's bytes.
struct ShardContents {
    header: Value,
    header_bytes: Vec<u8>,
    tensors: BTreeMap<String, (String, Vec<usize>, Vec<u8>)>,
}

fn read_shard(path: &Path) -> ShardContents {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let dtype = format!("{:?}", v.dtype());
            (name, (dtype, v.shape().to_vec(), v.data().to_vec()))
        })
        .collect();
    ShardContents {
        header,
        header_bytes: bytes[..8 + n].to_vec(),
        tensors,
    }
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Checks that `merged` has `model`'s layout: the same files (the non-weight ones byte for
/// byte), the same shards with identical headers (names, order, dtypes, shapes, offsets,
/// metadata); returns the tensors whose bytes differ.
fn changed_tensors(model: &Path, merged: &Path) -> BTreeSet<String> {
    assert_eq!(
        file_names(model),
        file_names(merged),
        "{merged:?}: file list"
    );
    let mut changed = BTreeSet::new();
    for name in file_names(model) {
        let (a, b) = (model.join(&name), merged.join(&name));
        if !name.ends_with(".safetensors") {
            assert_eq!(
                std::fs::read(&a).unwrap(),
                std::fs::read(&b).unwrap(),
                "{name}"
            );
            continue;
        }
        let (a, b) = (read_shard(&a), read_shard(&b));
        assert_eq!(a.header_bytes, b.header_bytes, "{name}: header");
        assert_eq!(a.header["__metadata__"], b.header["__metadata__"]);
        assert_eq!(
            a.tensors.keys().collect::<Vec<_>>(),
            b.tensors.keys().collect::<Vec<_>>()
        );
        for (tensor, (dtype, shape, data)) in &a.tensors {
            let (d2, s2, data2) = &b.tensors[tensor];
            assert_eq!((dtype, shape), (d2, s2), "{tensor}");
            if data != data2 {
                changed.insert(tensor.clone());
            }
        }
    }
    changed
}

fn weight_names(adapter: &Adapter) -> BTreeSet<String> {
    adapter
        .modules
        .keys()
        .map(|m| format!("{m}.weight"))
        .collect()
}

#[test]
fn peft_made_adapters_merge_into_checkpoints_that_give_pefts_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for name in PEFT_FIXTURES {
        let model = fixture(name);
        let adapter_dir = adapters_dir(name).join("peft");
        let out = tmp.path().join(name);
        let summary = merge(&model, &adapter_dir, &out);
        let adapter = load_adapter(&adapter_dir, &model);
        assert_eq!(summary.modules, adapter.modules.len());
        assert_eq!(summary.tensors_changed, adapter.modules.len(), "{name}");
        assert!(
            summary.files_skipped.is_empty(),
            "{:?}",
            summary.files_skipped
        );

        let want = read_json(&adapters_dir(name).join("peft_logits.json"));
        let ids: Vec<u32> = serde_json::from_value(want["input_ids"].clone()).unwrap();
        let want: Vec<Vec<f32>> = serde_json::from_value(want["logits"].clone()).unwrap();
        let got = logits_of(&out, None, &ids);
        let d = max_logit_diff(&got, &want);
        eprintln!("{name}: merged vs PEFT's logits, max difference {d:e}");
        assert!(
            d < 1e-4,
            "{name}: merged logits differ from PEFT's by {d:e}"
        );

        assert_eq!(
            changed_tensors(&model, &out),
            weight_names(&adapter),
            "{name}: exactly the adapted tensors change"
        );
    }
}

/// An adapter for `model` trained for two steps on all experts and attention.
fn train_two_steps(model: &Path, out: &Path) {
    let data =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/mmlu_pro_sample.parquet");
    let mut opts = TrainOptions::new(&model.display().to_string(), ExpertChoice::All, &data, out);
    opts.load.device = DeviceChoice::Cpu;
    opts.lora = LoraOptions {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        scope: AdapterScope {
            attention: true,
            router: true,
            shared_experts: false,
            num_decoder_layers: None,
        },
    };
    opts.lr = 1e-2;
    opts.warmup_ratio = 0.0;
    opts.max_steps = Some(2);
    opts.batch_size = 2;
    let never = AtomicBool::new(false);
    run_training(opts, &never, &mut |_| {}).unwrap();
}

#[test]
fn a_sharded_checkpoint_keeps_its_shards_and_index() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("olmoe_sharded");
    let adapter_dir = tmp.path().join("adapter");
    train_two_steps(&model, &adapter_dir);
    let out = tmp.path().join("merged");
    let summary = merge(&model, &adapter_dir, &out);
    assert_eq!(
        summary.shards,
        [
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors"
        ]
    );
    let changed = changed_tensors(&model, &out);
    let adapter = load_adapter(&adapter_dir, &model);
    assert!(!changed.is_empty());
    // Experts no token was routed to keep B = 0 after two steps: their tensors stay as they are.
    assert!(changed.is_subset(&weight_names(&adapter)), "{changed:?}");
    assert_eq!(summary.tensors_changed, adapter.modules.len());
    // Tensors changed in more than one shard.
    let index = read_json(&out.join("model.safetensors.index.json"));
    let shards_touched: BTreeSet<&str> = changed
        .iter()
        .map(|t| index["weight_map"][t].as_str().unwrap())
        .collect();
    assert!(shards_touched.len() > 1, "{shards_touched:?}");

    let ids = reference_ids(&model);
    let d = max_logit_diff(
        &logits_of(&out, None, &ids),
        &logits_of(&model, Some(&adapter_dir), &ids),
    );
    eprintln!("olmoe_sharded: merged vs adapter at load, max difference {d:e}");
    assert!(d < 1e-4, "merged vs adapter applied at load: {d:e}");
}

/// A deterministic pseudo-random `[rows, cols]` matrix of values in ±`bound`.
fn matrix(seed: usize, (rows, cols): (usize, usize), bound: f32) -> Tensor {
    let values: Vec<f32> = (0..rows * cols)
        .map(|i| bound * ((i * 7919 + seed * 104_729) as f32 * 0.618_034).sin())
        .collect();
    Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
}

/// An adapter of rank 4 on `modules` (name, in, out).
fn random_adapter(modules: &[(&str, usize, usize)], dir: &Path) -> Adapter {
    let rank = 4;
    let adapter = Adapter {
        settings: AdapterSettings {
            rank,
            alpha: 8.0,
            dropout: 0.0,
            use_rslora: false,
            base_model: String::new(),
        },
        modules: modules
            .iter()
            .enumerate()
            .map(|(i, &(name, inp, out))| {
                let pair = LoraPair {
                    a: matrix(2 * i, (rank, inp), 0.5),
                    b: matrix(2 * i + 1, (out, rank), 0.2),
                };
                (name.to_string(), pair)
            })
            .collect(),
    };
    adapter.save(dir).unwrap();
    adapter
}

/// `elements` of the f32 tensor `name` of a single-file checkpoint.
fn f32_tensor(model: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let shard = read_shard(&model.join("model.safetensors"));
    let (dtype, shape, data) = &shard.tensors[name];
    assert_eq!(dtype, "F32");
    let values = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (shape.clone(), values)
}

#[test]
fn fused_qwen3_5_experts_take_each_experts_slice() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("qwen3_5_moe");
    let adapter_dir = tmp.path().join("adapter");
    let text = "model.language_model.layers";
    // H = 64, expert intermediate I = 32, shared expert 48, 16 experts.
    let modules = [
        (format!("{text}.0.mlp.experts.0.gate_proj"), 64, 32),
        (format!("{text}.0.mlp.experts.0.up_proj"), 64, 32),
        (format!("{text}.0.mlp.experts.0.down_proj"), 32, 64),
        (format!("{text}.0.mlp.experts.5.up_proj"), 64, 32),
        (format!("{text}.3.mlp.experts.15.gate_proj"), 64, 32),
        (format!("{text}.3.mlp.experts.15.down_proj"), 32, 64),
        (format!("{text}.1.mlp.shared_expert.down_proj"), 48, 64),
        (format!("{text}.0.linear_attn.in_proj_qkv"), 64, 128),
        (format!("{text}.3.self_attn.q_proj"), 64, 256),
        (format!("{text}.2.mlp.gate"), 64, 16),
    ];
    let named: Vec<(&str, usize, usize)> = modules
        .iter()
        .map(|(n, i, o)| (n.as_str(), *i, *o))
        .collect();
    random_adapter(&named, &adapter_dir);
    let out = tmp.path().join("merged");
    let summary = merge(&model, &adapter_dir, &out);
    assert_eq!(summary.modules, modules.len());
    // Two layers' fused tensors: layer 0 gate_up + down, layer 3 gate_up + down.
    assert_eq!(summary.tensors_changed, 4 + 4);

    let ids = reference_ids(&model);
    let base = logits_of(&model, None, &ids);
    let with_adapter = logits_of(&model, Some(&adapter_dir), &ids);
    assert!(
        max_logit_diff(&base, &with_adapter) > 1e-2,
        "the adapter moves the logits"
    );
    let d = max_logit_diff(&logits_of(&out, None, &ids), &with_adapter);
    eprintln!("qwen3_5_moe: merged vs adapter at load, max difference {d:e}");
    assert!(d < 1e-4, "merged vs adapter applied at load: {d:e}");

    let changed = changed_tensors(&model, &out);
    assert!(changed.contains(&format!("{text}.0.mlp.experts.gate_up_proj")));
    assert_eq!(changed.len(), 8, "{changed:?}");
    // Within layer 0's gate_up_proj [16, 64, 32 + 32]: expert 0 all rows, expert 5 its up rows
    // (32..64) only, every other expert untouched.
    let name = format!("{text}.0.mlp.experts.gate_up_proj");
    let (shape, before) = f32_tensor(&model, &name);
    let (_, after) = f32_tensor(&out, &name);
    assert_eq!(shape, [16, 64, 64]);
    let per_expert = 64 * 64;
    let rows_changed = |e: usize| -> Vec<usize> {
        (0..64)
            .filter(|r| {
                let at = e * per_expert + r * 64;
                before[at..at + 64] != after[at..at + 64]
            })
            .collect()
    };
    assert_eq!(rows_changed(0), (0..64).collect::<Vec<_>>());
    assert_eq!(rows_changed(5), (32..64).collect::<Vec<_>>());
    for e in [1, 4, 6, 15] {
        assert!(rows_changed(e).is_empty(), "expert {e}");
    }
}

#[test]
fn gpt_oss_interleaved_experts_merge_and_mxfp4_ones_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // The dequantised fixture: gate_up_proj [8, H = 64, 2·I = 128], down_proj [8, I, H].
    let model = fixture("gpt_oss_bf16");
    let adapter_dir = tmp.path().join("adapter");
    let modules = [
        ("model.layers.0.mlp.experts.2.gate_proj", 64, 64),
        ("model.layers.0.mlp.experts.2.up_proj", 64, 64),
        ("model.layers.1.mlp.experts.7.down_proj", 64, 64),
        ("model.layers.1.mlp.experts.3.up_proj", 64, 64),
        ("model.layers.0.self_attn.q_proj", 64, 64),
    ];
    random_adapter(&modules, &adapter_dir);
    let out = tmp.path().join("merged");
    let summary = merge(&model, &adapter_dir, &out);
    assert_eq!(summary.tensors_changed, 4);
    let ids = reference_ids(&model);
    let with_adapter = logits_of(&model, Some(&adapter_dir), &ids);
    assert!(max_logit_diff(&logits_of(&model, None, &ids), &with_adapter) > 1e-3);
    let d = max_logit_diff(&logits_of(&out, None, &ids), &with_adapter);
    eprintln!("gpt_oss_bf16: merged vs adapter at load, max difference {d:e}");
    assert!(d < 1e-4, "merged vs adapter applied at load: {d:e}");

    // The MXFP4 checkpoint: an adapter on attention alone merges; one on experts is refused,
    // naming the packed tensor.
    let mxfp4 = fixture("gpt_oss");
    let attention = tmp.path().join("attention");
    random_adapter(&modules[4..], &attention);
    merge(&mxfp4, &attention, &tmp.path().join("attention_merged"));
    let never = AtomicBool::new(false);
    let err = merge_adapter(
        &request(&mxfp4, &adapter_dir, &tmp.path().join("refused")),
        &never,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("model.layers.0.mlp.experts.gate_up_proj_blocks"),
        "{err}"
    );
    assert!(err.contains("MXFP4"), "{err}");
    assert!(!tmp.path().join("refused").exists());
}

#[test]
fn a_bf16_checkpoint_is_merged_in_f32_and_rounded_back_to_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("olmoe_bf16");
    bf16_copy(&model);
    let adapter_dir = adapters_dir("olmoe").join("peft");
    let out = tmp.path().join("merged");
    merge(&model, &adapter_dir, &out);
    let adapter = load_adapter(&adapter_dir, &model);
    assert_eq!(changed_tensors(&model, &out), weight_names(&adapter));

    // Every merged element is bf16(W + scale · B·A), the sum taken in f32: within half a bf16
    // step of the exact value (a last-bit difference from another summation order allowed).
    let (before, after) = (
        read_shard(&model.join("model.safetensors")),
        read_shard(&out.join("model.safetensors")),
    );
    let bf16 = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(2)
            .map(|x| half::bf16::from_le_bytes([x[0], x[1]]).to_f32())
            .collect()
    };
    let scale = adapter.settings.scale() as f32;
    let mut exact = 0usize;
    let mut total = 0usize;
    for (module, pair) in &adapter.modules {
        let name = format!("{module}.weight");
        let (dtype, _, data) = &after.tensors[&name];
        assert_eq!(dtype, "BF16");
        let update: Vec<f32> = pair
            .b
            .matmul(&pair.a)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let w = bf16(&before.tensors[&name].2);
        let merged = bf16(data);
        for ((w, u), m) in w.iter().zip(&update).zip(&merged) {
            let want = half::bf16::from_f32(w + scale * u).to_f32();
            total += 1;
            if *m == want {
                exact += 1;
            } else {
                let step = (w + scale * u).abs() * 2f32.powi(-7);
                assert!((m - want).abs() <= step, "{name}: {m} vs {want}");
            }
        }
    }
    assert!(exact * 1000 >= total * 999, "{exact} of {total} exact");

    // MoEScope with the merged bf16 folder ≈ the bf16 base with the adapter merged at load.
    let ids = reference_ids(&fixture("olmoe"));
    let d = max_logit_diff(
        &logits_of(&out, None, &ids),
        &logits_of(&model, Some(&adapter_dir), &ids),
    );
    eprintln!(
        "olmoe in bf16: merged vs adapter at load, max difference {d:e}; {exact} of {total} elements exactly bf16(W + scale · B·A)"
    );
    assert!(d < 1e-3, "{d:e}");
}

#[test]
fn other_weight_formats_and_sub_folders_are_left_out_and_the_rest_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("olmoe");
    copy_dir(&fixture("olmoe"), &model);
    for extra in ["chat_template.jinja", "tokenizer.model", "merges.txt"] {
        std::fs::write(model.join(extra), extra).unwrap();
    }
    for skipped in [
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "model-f16.gguf",
    ] {
        std::fs::write(model.join(skipped), "weights").unwrap();
    }
    std::fs::create_dir(model.join("original")).unwrap();
    std::fs::write(model.join("original/consolidated.00.pth"), "x").unwrap();
    let out = tmp.path().join("merged");
    let summary = merge(&model, &adapters_dir("olmoe").join("peft"), &out);
    assert_eq!(
        summary.files_skipped,
        [
            "model-f16.gguf",
            "original/",
            "pytorch_model.bin",
            "pytorch_model.bin.index.json"
        ]
    );
    let names = file_names(&out);
    for kept in [
        "chat_template.jinja",
        "tokenizer.model",
        "merges.txt",
        "config.json",
    ] {
        assert!(names.contains(kept), "{kept}: {names:?}");
    }
    assert!(!names.contains("original") && !names.contains("pytorch_model.bin"));
}

/// Entries of `dir` (the output folders' parent): nothing half-written may remain there.
fn entries(dir: &Path) -> BTreeSet<String> {
    file_names(dir)
}

#[test]
fn the_cli_merges_replaces_with_force_and_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("olmoe");
    let adapter = adapters_dir("olmoe").join("peft");
    let (m, a) = (model.to_str().unwrap(), adapter.to_str().unwrap());
    let out_dir = tmp.path().join("merged");
    let out = out_dir.to_str().unwrap();
    let run = |args: &[&str]| moescope(&[&["merge"], args].concat());

    let first = run(&["--model", m, "--adapter", a, "--out", out]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("merged 24 adapter modules into 24 of 102 tensors"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 shard file(s), 6 other file(s) copied"),
        "{stdout}"
    );

    // An existing non-empty folder: refused, then replaced with --force.
    std::fs::write(out_dir.join("stale.txt"), "old").unwrap();
    assert_fails(
        &run(&["--model", m, "--adapter", a, "--out", out]),
        &[out, "--force"],
    );
    let forced = run(&["--model", m, "--adapter", a, "--out", out, "--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert!(String::from_utf8_lossy(&forced.stdout).contains("(replaced)"));
    assert!(!out_dir.join("stale.txt").exists());
    assert_eq!(entries(tmp.path()), BTreeSet::from(["merged".to_string()]));

    // The model folder itself, or a folder inside it.
    let inside = model.join("merged");
    assert_fails(
        &run(&[
            "--model",
            m,
            "--adapter",
            a,
            "--out",
            inside.to_str().unwrap(),
        ]),
        &["inside the model folder"],
    );
    assert!(!inside.exists());
    assert_fails(
        &run(&["--model", m, "--adapter", a, "--out", m, "--force"]),
        &["is the model folder"],
    );

    // An adapter for another model: the module and the adapter file are named.
    let mixtral = adapters_dir("mixtral").join("peft");
    let other = tmp.path().join("other");
    assert_fails(
        &run(&[
            "--model",
            m,
            "--adapter",
            mixtral.to_str().unwrap(),
            "--out",
            other.to_str().unwrap(),
        ]),
        &[
            "mixtral/peft/adapter_model.safetensors",
            "model.layers.0.block_sparse_moe.experts.1.w1",
            "is not in the checkpoint",
        ],
    );

    // A lora_B one row too tall (non-zero: a zero pair adapts nothing and is dropped on
    // reading): module, shapes and both files are named.
    let broken = tmp.path().join("broken");
    let mut pairs = load_adapter(&adapter, &model);
    let q = pairs
        .modules
        .get_mut("model.layers.0.self_attn.q_proj")
        .unwrap();
    q.b = Tensor::ones((65, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    pairs.save(&broken).unwrap();
    assert_fails(
        &run(&[
            "--model",
            m,
            "--adapter",
            broken.to_str().unwrap(),
            "--out",
            other.to_str().unwrap(),
        ]),
        &[
            "broken/adapter_model.safetensors",
            "model.layers.0.self_attn.q_proj",
            "[65, 4]",
            "[65, 64]",
            "[64, 64]",
            "olmoe/model.safetensors",
        ],
    );

    // A GGUF model.
    let gguf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/minimax_m2-f32.gguf");
    assert_fails(
        &run(&[
            "--model",
            gguf.to_str().unwrap(),
            "--adapter",
            a,
            "--out",
            other.to_str().unwrap(),
        ]),
        &[
            "merge writes safetensors",
            "HF checkpoint the GGUF was made from",
        ],
    );

    // Block-scaled float8 weights touched by the adapter.
    let fp8 = fixture("deepseek_v3_fp8");
    let fp8_adapter = tmp.path().join("fp8_adapter");
    let gate = read_shard(&fp8.join("model.safetensors")).tensors
        ["model.layers.1.mlp.experts.0.gate_proj.weight"]
        .1
        .clone();
    random_adapter(
        &[("model.layers.1.mlp.experts.0.gate_proj", gate[1], gate[0])],
        &fp8_adapter,
    );
    assert_fails(
        &run(&[
            "--model",
            fp8.to_str().unwrap(),
            "--adapter",
            fp8_adapter.to_str().unwrap(),
            "--out",
            other.to_str().unwrap(),
        ]),
        &[
            "model.layers.1.mlp.experts.0.gate_proj.weight",
            "weight_scale_inv",
            "float8",
        ],
    );

    // None of the refused merges left anything next to the output.
    assert!(!other.exists());
    assert_eq!(
        entries(tmp.path()),
        BTreeSet::from_iter(["broken", "fp8_adapter", "merged"].map(String::from))
    );
}

#[test]
fn a_cancelled_merge_leaves_no_folder_and_no_partial_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let cancel = AtomicBool::new(false);
    let mut reports = 0;
    let err = merge_adapter(
        &request(
            &fixture("olmoe_sharded"),
            &adapters_dir("olmoe").join("peft"),
            &out,
        ),
        &cancel,
        &mut |p| {
            reports += 1;
            assert!(p.bytes_done <= p.bytes_total);
            // Stop halfway, among the shards (the small files are copied first).
            if p.bytes_done > p.bytes_total / 2 {
                cancel.store(true, Ordering::Relaxed);
            }
        },
    )
    .unwrap_err();
    assert!(matches!(err, MergeError::Cancelled), "{err}");
    assert!(reports > 1);
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}
