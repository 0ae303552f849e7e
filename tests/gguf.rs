//! GGUF files made by llama.cpp's own converter from the HF fixtures
//! (`tests/fixtures/make_gguf.py`): an F32 file routes exactly like the HF checkpoint it came
//! from, a Q8_0 file chooses the same experts for nearly every (token, layer), split files
//! load as one model, every ggml block type decodes as gguf-py decodes it, and bad files are
//! clear errors naming the file.

mod common;

use std::path::{Path, PathBuf};

use common::reference::{check_model, reference, run_recorded};
use moescope::model::device::DeviceChoice;
use moescope::model::router::RecordedRoute;
use moescope::model::{LoadOptions, LoadedModel, Output, load_model};

fn gguf(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(file)
}

fn load_gguf(file: &str) -> LoadedModel {
    let opts = LoadOptions {
        model: gguf(file).display().to_string(),
        device: DeviceChoice::Cpu,
        ..Default::default()
    };
    load_model(&opts, None).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn load_error(path: &Path) -> String {
    let opts = LoadOptions {
        model: path.display().to_string(),
        ..Default::default()
    };
    match load_model(&opts, None) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// The F32 conversion of fixture `name` against the HF reference.
fn check_f32(name: &str) {
    check_model(name, load_gguf(&format!("{name}-f32.gguf")));
}

#[test]
fn olmoe_f32_routes_like_hf() {
    check_f32("olmoe");
}

#[test]
fn deepseek_v2_lite_f32_routes_like_hf() {
    check_f32("deepseek_v2_lite");
}

#[test]
fn deepseek_v3_f32_routes_like_hf() {
    check_f32("deepseek_v3");
}

#[test]
fn kimi_k2_f32_routes_like_hf() {
    check_f32("kimi_k2");
}

#[test]
fn qwen3_moe_f32_routes_like_hf() {
    check_f32("qwen3_moe_all");
}

#[test]
fn qwen2_moe_f32_with_shared_expert_routes_like_hf() {
    check_f32("qwen2_moe_all");
}

#[test]
fn glm4_moe_f32_routes_like_hf() {
    check_f32("glm4_moe");
}

#[test]
fn minimax_m2_f32_routes_like_hf() {
    check_f32("minimax_m2");
}

#[test]
fn olmoe_split_parts_load_as_one_model() {
    check_model("olmoe", load_gguf("olmoe-f32-split-00001-of-00002.gguf"));
}

/// Text for comparing two files' routing: a few hundred tokens of varied prose.
const AGREEMENT_TEXT: &str = "The committee met on a cold Tuesday in March to discuss the \
    budget. Revenue had grown 4.2% while costs rose faster, so the treasurer proposed cutting \
    travel by a third. In the lab, the enzyme assay ran at 37 °C for 90 minutes; absorbance \
    was read at 405 nm. fn main() { let x = vec![1, 2, 3]; println!(\"{:?}\", x); } The \
    defendant argued that the contract was void for lack of consideration, citing precedent \
    from 1893. Photosynthesis converts light into chemical energy stored in glucose. Mix the \
    flour and butter until crumbly, then add cold water a spoonful at a time.";

/// Share of (token, MoE layer) rows where `a` and `b` choose the same set of experts on
/// [`AGREEMENT_TEXT`].
fn same_expert_sets(a: &mut LoadedModel, b: &mut LoadedModel) -> f64 {
    let ids = moescope::model::tokenize::encode(&a.tokenizer, AGREEMENT_TEXT).unwrap();
    let (mut same, mut rows) = (0, 0);
    // Pieces that fit the fixtures' 256-position context.
    for piece in ids.chunks(128) {
        let (a_routes, _) = run(a, piece);
        let (b_routes, _) = run(b, piece);
        for (x, y) in a_routes.iter().zip(&b_routes) {
            let k = x.top_k;
            for t in 0..piece.len() {
                let mut ours = x.topk_indices[t * k..(t + 1) * k].to_vec();
                let mut theirs = y.topk_indices[t * k..(t + 1) * k].to_vec();
                ours.sort_unstable();
                theirs.sort_unstable();
                same += usize::from(ours == theirs);
                rows += 1;
            }
        }
    }
    same as f64 / rows as f64
}

/// llama.cpp's quantizer asked for Q4_K_M on these narrow fixtures falls back to Q5_0, Q5_1,
/// Q8_0 and F16 tensor by tensor (rows of 64 are not whole k-quant blocks), as it does for such
/// shapes in real files: coarser types, so a lower bar than Q8_0's (these random routers have
/// small margins between experts; a broken decoder agrees on almost no row).
#[test]
fn q4_k_m_files_choose_the_same_experts_as_f32_for_most_tokens() {
    for name in [
        "olmoe",
        "mixtral",
        "qwen3_moe_all",
        "qwen2_moe_all",
        "deepseek_v3",
        "kimi_k2",
        "glm4_moe",
        "minimax_m2",
    ] {
        let mut f32 = load_gguf(&format!("{name}-f32.gguf"));
        let mut q4 = load_gguf(&format!("{name}-q4_k_m.gguf"));
        let share = same_expert_sets(&mut f32, &mut q4);
        println!("{name} Q4_K_M: {share:.3} of (token, layer) rows choose the F32 file's experts");
        assert!(share >= 0.4, "{name} Q4_K_M: {share:.3} of rows agree");
    }
}

#[test]
fn q8_0_files_choose_the_same_experts_as_f32_for_nearly_every_token() {
    for name in [
        "olmoe",
        "mixtral",
        "qwen3_moe_all",
        "qwen2_moe_all",
        "deepseek_v2_lite",
        "deepseek_v3",
        "kimi_k2",
        "glm4_moe",
        "minimax_m2",
        "gpt_oss",
    ] {
        let mut f32 = load_gguf(&format!("{name}-f32.gguf"));
        let mut q8 = load_gguf(&format!("{name}-q8_0.gguf"));
        let share = same_expert_sets(&mut f32, &mut q8);
        println!("{name} Q8_0: {share:.3} of (token, layer) rows choose the F32 file's experts");
        assert!(share >= 0.9, "{name} Q8_0: {share:.3} of rows agree");
    }
}

/// Runs `ids` through `m`: each MoE layer's routing and all logits.
fn run(m: &mut LoadedModel, ids: &[u32]) -> (Vec<RecordedRoute>, Vec<f32>) {
    run_recorded(m, ids, Output::AllLogits)
}

/// The fixture `name` loaded from a copy of its folder whose config.json `edit` changed.
fn load_edited(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> LoadedModel {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&common::fixture(name), dir.path());
    let cfg = dir.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&cfg, json.to_string()).unwrap();
    let opts = LoadOptions {
        model: dir.path().display().to_string(),
        ..Default::default()
    };
    load_model(&opts, None).unwrap()
}

/// `a` and `b` choose the same experts with the same router logits and give the same
/// logits on fixture `name`'s reference input.
fn assert_same_routing(name: &str, a: &mut LoadedModel, b: &mut LoadedModel) {
    let ids = reference(name).input_ids;
    let (a_routes, a_logits) = run(a, &ids);
    let (b_routes, b_logits) = run(b, &ids);
    assert_eq!(a_routes.len(), b_routes.len());
    for (layer, (x, y)) in a_routes.iter().zip(&b_routes).enumerate() {
        assert_eq!(
            x.topk_indices, y.topk_indices,
            "{name} MoE layer {layer}: chosen experts"
        );
        let d = common::reference::max_abs_diff(&x.logits, &y.logits);
        assert!(
            d < 1e-5,
            "{name} MoE layer {layer}: router logits differ by {d}"
        );
    }
    let d = common::reference::max_abs_diff(&a_logits, &b_logits);
    assert!(d < 1e-4, "{name}: logits differ by {d}");
}

/// The Mixtral fixture uses a 6-token sliding window, which llama.cpp's `llama` architecture
/// does not have (the converter drops it): the F32 file must match the HF checkpoint run
/// without the window, with llama.cpp's q/k row permutation undone.
#[test]
fn mixtral_f32_matches_the_checkpoint_without_its_window() {
    let mut hf = load_edited("mixtral", |c| c["sliding_window"] = serde_json::Value::Null);
    assert_same_routing("mixtral", &mut hf, &mut load_gguf("mixtral-f32.gguf"));
}

/// llama.cpp runs gpt-oss with its released SwiGLU clamp (7.0) whatever the checkpoint's
/// config says, and the converter does not store it; the fixture's is 2.0. MXFP4 experts are
/// kept packed (ggml type 39) and decoded in place.
#[test]
fn gpt_oss_mxfp4_matches_the_checkpoint_with_the_released_clamp() {
    let mut hf = load_edited("gpt_oss", |c| c["swiglu_limit"] = 7.0.into());
    assert_same_routing("gpt_oss", &mut hf, &mut load_gguf("gpt_oss-f32.gguf"));
}

/// Every ggml block type MoEScope reads decodes as gguf-py's `dequantize` does: random but
/// valid blocks of each type in `quant_blocks.gguf`, each beside its F32 decoding.
#[test]
fn every_block_type_decodes_as_gguf_py_does() {
    use moescope::model::gguf::{GgmlTensor, GgufFile};
    use moescope::model::mxfp4::ByteView;
    let file = GgufFile::open(&gguf("quant_blocks.gguf")).unwrap();
    let by_name = |n: &str| file.tensors.iter().find(|t| t.name == n).unwrap();
    let mut types = Vec::new();
    for t in file.tensors.iter().filter(|t| t.name.ends_with(".weight")) {
        let stem = t.name.trim_end_matches(".weight");
        let expected = by_name(&format!("{stem}.expected"));
        let bytes = ByteView::Mapped {
            map: file.map.clone(),
            start: t.start,
            end: t.end,
        };
        let got = GgmlTensor::new(bytes, t.ggml_type, t.shape.clone(), &t.name)
            .unwrap()
            .to_tensor(&candle_core::Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want: Vec<f32> = file.map[expected.start..expected.end]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got, want, "{}", t.ggml_type.name());
        types.push(t.ggml_type.name());
    }
    types.sort_unstable();
    assert_eq!(
        types,
        [
            "BF16", "F16", "MXFP4", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0"
        ]
    );
}

/// Bad files are errors naming the file and the problem, before anything is built.
#[test]
fn bad_gguf_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(gguf("olmoe-f32.gguf")).unwrap();
    // Truncated mid-tensor.
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let err = load_error(&cut);
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );
    // A missing part of a split model.
    let first = dir.path().join("m-00001-of-00002.gguf");
    std::fs::copy(gguf("olmoe-f32-split-00001-of-00002.gguf"), &first).unwrap();
    let err = load_error(&first);
    assert!(
        err.contains("m-00002-of-00002.gguf") && err.contains("missing"),
        "{err}"
    );
    // Not a GGUF at all.
    let fake = dir.path().join("fake.gguf");
    std::fs::write(&fake, b"{\"not\": \"gguf\"}").unwrap();
    let err = load_error(&fake);
    assert!(
        err.contains("fake.gguf") && err.contains("not a GGUF file"),
        "{err}"
    );
}

/// The whole loop on a quantised file from the command line: profile, report, select, a
/// steering spec from the selection, steer, eval; training is refused with the reason.
#[test]
fn profile_report_select_steer_and_eval_a_q8_0_file() {
    use common::moescope;
    let ok = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let model = gguf("olmoe-q8_0.gguf").display().to_string();
    std::fs::write(
        p("d.jsonl"),
        concat!(
            "{\"subject\": \"law\", \"text\": \"The court held the contract void.\"}\n",
            "{\"subject\": \"code\", \"text\": \"fn main() { println!(\\\"hi\\\"); }\"}\n",
        ),
    )
    .unwrap();
    ok(&moescope(&[
        "profile",
        "--model",
        &model,
        "--data",
        &p("d.jsonl"),
        "--out",
        &p("prof.json"),
    ]));
    let profile = moescope::profile::RoutingProfile::load(Path::new(&p("prof.json"))).unwrap();
    assert_eq!(profile.subject_names(), vec!["law", "code"]);
    let o = moescope(&["info", "--model", &model]);
    ok(&o);
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(info.contains("GGUF Q8_0"), "{info}");
    assert!(
        info.lines()
            .any(|l| l.contains("routed experts") && l.trim_end().ends_with("Q8_0")),
        "{info}"
    );
    ok(&moescope(&["report", &p("prof.json")]));
    ok(&moescope(&[
        "select",
        &p("prof.json"),
        "--rule",
        "hot",
        "--k",
        "2",
        "--out",
        &p("sel.json"),
    ]));
    ok(&moescope(&[
        "steer-spec",
        "--selection",
        &p("sel.json"),
        "--bias",
        "3",
        "--out",
        &p("spec.json"),
        "--model",
        &model,
    ]));
    let o = moescope(&[
        "steer",
        "-m",
        &model,
        "-p",
        "The court held",
        "--steer",
        &p("spec.json"),
        "--max-new-tokens",
        "4",
        "--no-stop",
        "--json",
    ]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["routing_change"][0]["mass_onto"].as_f64().unwrap() > 0.0);
    let data =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/mmlu_pro_sample.parquet");
    ok(&moescope(&[
        "eval",
        "-m",
        &model,
        "--data",
        &data.display().to_string(),
        "--steer",
        &p("spec.json"),
        "--subjects",
        "math",
        "--json",
    ]));
    let o = moescope(&[
        "train",
        "--model",
        &model,
        "--data",
        &p("d.jsonl"),
        "--selection",
        &p("sel.json"),
        "--out",
        &p("adapter"),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("olmoe-q8_0.gguf") && err.contains("not supported"),
        "{err}"
    );
}

/// A file cut anywhere, or with any header byte flipped, is an error or a model, never a
/// panic: every offset and count is checked against the file before it is used.
#[test]
fn cut_or_corrupted_files_never_panic() {
    let bytes = std::fs::read(gguf("olmoe-q8_0.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    let try_load = |data: &[u8]| {
        std::fs::write(&path, data).unwrap();
        let opts = LoadOptions {
            model: path.display().to_string(),
            ..Default::default()
        };
        std::panic::catch_unwind(|| load_model(&opts, None).map(|_| ()))
            .unwrap_or_else(|_| panic!("panicked on {} bytes", data.len()))
    };
    for cut in (0..bytes.len()).step_by(bytes.len() / 97 + 1) {
        let err = try_load(&bytes[..cut]).err().map(|e| e.to_string());
        let err = err.unwrap_or_else(|| panic!("a file cut at {cut} bytes loaded"));
        assert!(err.contains("bad.gguf"), "{err}");
    }
    // Flip bytes through the header (metadata, tensor directory): errors or, where the flip
    // lands in a value that does not matter, a model.
    let header_end = 40_000.min(bytes.len());
    for at in (0..header_end).step_by(397) {
        let mut data = bytes.clone();
        data[at] ^= 0xA5;
        let _ = try_load(&data);
    }
}

/// `owner/repo:QUANT` or `owner/repo:FILE.gguf` finds a GGUF file of a hub repo in the HF
/// cache (offline here), every part of a split one; a tag naming several files, or none, is
/// an error listing the repo's files.
#[test]
fn hub_gguf_repos_load_from_the_cache_by_quant_tag_or_file_name() {
    use common::moescope_env;
    let cache = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.path().join("models--tiny--olmoe-GGUF");
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(snap.join("F32")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    std::fs::copy(gguf("olmoe-q8_0.gguf"), snap.join("olmoe-Q8_0.gguf")).unwrap();
    std::fs::copy(gguf("olmoe-q4_k_m.gguf"), snap.join("olmoe-Q4_K_M.gguf")).unwrap();
    for part in ["00001", "00002"] {
        std::fs::copy(
            gguf(&format!("olmoe-f32-split-{part}-of-00002.gguf")),
            snap.join(format!("F32/olmoe-F32-{part}-of-00002.gguf")),
        )
        .unwrap();
    }
    let env = [("HF_HUB_CACHE", cache.path().to_str().unwrap())];
    let info = |model: &str| moescope_env(&["info", "--model", model], &env);
    for (model, want) in [
        ("tiny/olmoe-GGUF:Q8_0", "GGUF Q8_0"),
        ("tiny/olmoe-GGUF:q4_k_m", "Q5_0"),
        ("tiny/olmoe-GGUF:olmoe-Q8_0.gguf", "GGUF Q8_0"),
        ("tiny/olmoe-GGUF:F32", "GGUF F32"),
    ] {
        let o = info(model);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains(want) && out.contains(model), "{model}: {out}");
    }
    let o = info("tiny/olmoe-GGUF:olmoe");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("matches several files"),
        "{err}"
    );
    let o = info("tiny/olmoe-GGUF:IQ2_XS");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no .gguf file") && err.contains("olmoe-Q8_0.gguf"),
        "{err}"
    );
}
