//! Helpers shared by the integration tests: the fixture model folders and the `moescope` binary.
#![allow(dead_code)] // each test binary uses its own subset

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
    Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("runs")
}
