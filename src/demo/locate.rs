//! Finding the shipped demo folder (`assets/demo/`) wherever the binary runs from.
//!
//! Order: the `MOESCOPE_DEMO` environment variable (if set, it must be right: no fallback);
//! then `assets/demo` next to the executable and in each of its ancestors (so
//! `target/release/moescope` finds the crate root's); then the crate root baked in at compile
//! time (`CARGO_MANIFEST_DIR`). The small `config.json` is embedded in the binary
//! ([`DEMO_CONFIG_JSON`]); the weights stay on disk. When nothing is found, the error lists every
//! place looked at and how to get the demo (Git LFS, a clone, or `moescope train-demo`).

use std::path::{Path, PathBuf};

use super::config::DemoConfig;
use super::{DemoError, Result};

/// Environment variable naming the demo folder; checked first.
pub const DEMO_DIR_ENV: &str = "MOESCOPE_DEMO";

/// The shipped demo's `config.json`, embedded at compile time.
pub const DEMO_CONFIG_JSON: &str = include_str!("../../assets/demo/config.json");

/// The files a demo folder must have.
pub const DEMO_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// How many ancestors of the executable's folder are searched.
const MAX_ANCESTORS: usize = 6;

/// The embedded demo config.
pub fn demo_config() -> Result<DemoConfig> {
    DemoConfig::from_hf_json(DEMO_CONFIG_JSON)
}

/// Why a candidate folder is not a usable demo folder, or `None` if it is.
pub fn check_demo_dir(dir: &Path) -> Option<String> {
    if !dir.is_dir() {
        return Some("no such folder".into());
    }
    for f in DEMO_FILES {
        let p = dir.join(f);
        let Ok(meta) = std::fs::metadata(&p) else {
            return Some(format!("{f} is missing"));
        };
        if f == "model.safetensors" && meta.len() < 1024 && is_lfs_pointer(&p) {
            return Some("model.safetensors is a Git LFS pointer, not the weights".into());
        }
    }
    if !dir.join("prompts").is_dir() {
        return Some("prompts/ is missing".into());
    }
    None
}

fn is_lfs_pointer(p: &Path) -> bool {
    std::fs::read(p).is_ok_and(|b| b.starts_with(b"version https://git-lfs"))
}

/// The folders searched after the environment variable, in order.
pub fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let exe = exe.canonicalize().unwrap_or(exe);
        if let Some(dir) = exe.parent() {
            for a in dir.ancestors().take(MAX_ANCESTORS) {
                out.push(a.join("assets").join("demo"));
            }
        }
    }
    let baked = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("demo");
    if !out.contains(&baked) {
        out.push(baked);
    }
    out
}

/// The demo folder, or an error that says where it looked and how to get the demo.
pub fn demo_dir() -> Result<PathBuf> {
    if let Some(v) = std::env::var_os(DEMO_DIR_ENV).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(v);
        return match check_demo_dir(&dir) {
            None => Ok(dir),
            Some(why) => Err(DemoError::msg(format!(
                "{DEMO_DIR_ENV}={} is not a demo folder: {why}{}",
                dir.display(),
                hint(why.contains("LFS"))
            ))),
        };
    }
    let mut looked = Vec::new();
    let mut lfs = false;
    for dir in candidates() {
        match check_demo_dir(&dir) {
            None => return Ok(dir),
            Some(why) => {
                lfs |= why.contains("LFS");
                looked.push(format!("  {}: {why}", dir.display()));
            }
        }
    }
    Err(DemoError::msg(format!(
        "the demo model was not found. Looked in (after ${DEMO_DIR_ENV}, which is not set):\n{}{}",
        looked.join("\n"),
        hint(lfs)
    )))
}

fn hint(lfs: bool) -> String {
    let mut s = String::from("\nTo get it:");
    if lfs {
        s.push_str(
            "\n  - the weights are stored with Git LFS: run `git lfs install && git lfs pull` in the repository",
        );
    }
    s.push_str(
        "\n  - run MoEScope from a clone of its repository (the demo is in assets/demo/), or set \
         MOESCOPE_DEMO=/path/to/assets/demo\
         \n  - or train it yourself (about 40 minutes on 2 CPU cores): \
         `scripts/build_demo_corpus.sh /tmp/demo-corpus && \
         moescope train-demo --corpus /tmp/demo-corpus --out assets/demo`",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_config_parses() {
        let c = demo_config().unwrap();
        assert!(c.num_experts >= 2 && c.num_hidden_layers >= 1);
    }

    #[test]
    fn check_names_the_problem() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            check_demo_dir(&d.path().join("nope")).unwrap(),
            "no such folder"
        );
        assert_eq!(check_demo_dir(d.path()).unwrap(), "config.json is missing");
        for f in DEMO_FILES {
            std::fs::write(d.path().join(f), "{}").unwrap();
        }
        std::fs::write(
            d.path().join("model.safetensors"),
            "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n",
        )
        .unwrap();
        assert!(check_demo_dir(d.path()).unwrap().contains("Git LFS"));
        std::fs::write(d.path().join("model.safetensors"), vec![0u8; 2048]).unwrap();
        assert_eq!(check_demo_dir(d.path()).unwrap(), "prompts/ is missing");
        std::fs::create_dir(d.path().join("prompts")).unwrap();
        assert!(check_demo_dir(d.path()).is_none());
    }

    #[test]
    fn candidates_include_the_crate_root() {
        let c = candidates();
        assert!(
            c.contains(
                &Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("assets")
                    .join("demo")
            )
        );
    }
}
