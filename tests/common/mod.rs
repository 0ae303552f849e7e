//! Helpers shared by the integration tests: the fixture model folders and the `moescope` binary.
#![allow(dead_code)] // each test binary uses its own subset

pub mod reference;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use moescope::model::device::DeviceChoice;
use moescope::model::{LoadOptions, LoadedModel, load_model};

/// `tests/fixtures/models/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

/// The fixture model `name`, loaded on the CPU through the normal loader.
pub fn load(name: &str) -> LoadedModel {
    let opts = LoadOptions {
        model: fixture(name).display().to_string(),
        device: DeviceChoice::Cpu,
        ..Default::default()
    };
    load_model(&opts, None).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs the `moescope` binary offline.
pub fn moescope(args: &[&str]) -> Output {
    moescope_env(args, &[])
}

/// [`moescope`] with extra environment variables.
pub fn moescope_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .envs(env.iter().copied())
        .output()
        .expect("runs")
}

/// Copies the files of folder `from` into `to` (created).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Logits `[t][vocab]` of the model at `model` (folder or file), with `adapter` merged at load,
/// for one sequence `ids`.
pub fn logits_of(model: &Path, adapter: Option<&Path>, ids: &[u32]) -> Vec<Vec<f32>> {
    use moescope::model::router::NoHook;
    use moescope::model::{Batch, Output, RouteCtx};
    let opts = LoadOptions {
        model: model.display().to_string(),
        device: DeviceChoice::Cpu,
        adapter: adapter.map(Path::to_path_buf),
        ..Default::default()
    };
    let mut loaded = load_model(&opts, None).unwrap_or_else(|e| panic!("{model:?}: {e}"));
    let batch = Batch::from_sequences(&[ids.to_vec()], &loaded.device).unwrap();
    let mut hook = NoHook;
    let logits = loaded
        .model
        .forward(&batch, Output::AllLogits, &mut RouteCtx::new(&mut hook))
        .unwrap()
        .unwrap();
    logits.squeeze(0).unwrap().to_vec2().unwrap()
}

/// The largest absolute difference between two `[t][vocab]` logit tables of the same shape.
pub fn max_logit_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// A finished `moescope` run failed, without a panic, and its error names every one of
/// `needles`.
pub fn assert_fails(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {err}");
    for n in needles {
        assert!(err.contains(n), "error should mention '{n}': {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// A copy of the OLMoE fixture (every file) with every tensor stored as bf16, rounded to
/// nearest, the header's `{"format": "pt"}` metadata kept.
pub fn bf16_copy(to: &Path) {
    let from = fixture("olmoe");
    copy_dir(&from, to);
    let bytes = std::fs::read(from.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let bf16: Vec<u8> = view
                .data()
                .chunks_exact(4)
                .flat_map(|b| {
                    half::bf16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes()
                })
                .collect();
            (name, view.shape().to_vec(), bf16)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, shape, d)| {
            let v =
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape.clone(), d)
                    .unwrap();
            (n.clone(), v)
        })
        .collect();
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    safetensors::serialize_to_file(views, metadata, &to.join("model.safetensors")).unwrap();
}
