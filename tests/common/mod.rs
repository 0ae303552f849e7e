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
