//! Hugging Face hub checkpoints: the standard HF cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`,
//! else `~/.cache/huggingface/hub`), lookups that need no network when the files are cached, and
//! downloads through `hf-hub` otherwise (none when `HF_HUB_OFFLINE=1`).
//!
//! Only data files are fetched (config, tokenizer and its chat template, safetensors); no code
//! from a model repo is ever run. A local `.gguf` file is a model too ([`FileLayout::Gguf`]).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::{ModelError, Result};

/// The files of a model, wherever they live.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user named (folder, hub id or GGUF file).
    pub id: String,
    pub layout: FileLayout,
}

/// How a model's files are laid out.
#[derive(Debug, Clone)]
pub enum FileLayout {
    /// An HF checkpoint: config, tokenizer and safetensors.
    Hf {
        config: PathBuf,
        tokenizer: PathBuf,
        /// `model.safetensors`, or every shard named by `model.safetensors.index.json`.
        weights: Vec<PathBuf>,
        /// `model.safetensors.index.json`, for sharded checkpoints.
        index: Option<PathBuf>,
    },
    /// A GGUF file (the first or any part of a split model), with the `tokenizer.json` beside
    /// it when there is one (else the tokenizer comes from the file's metadata).
    Gguf {
        file: PathBuf,
        tokenizer: Option<PathBuf>,
    },
}

impl ModelFiles {
    /// A GGUF file named `file`.
    pub fn gguf(file: &Path) -> Self {
        let tokenizer = file.with_file_name("tokenizer.json");
        Self {
            id: file.display().to_string(),
            layout: FileLayout::Gguf {
                file: file.to_path_buf(),
                tokenizer: tokenizer.is_file().then_some(tokenizer),
            },
        }
    }

    /// Whether the model comes from a GGUF file.
    pub fn is_gguf(&self) -> bool {
        matches!(self.layout, FileLayout::Gguf { .. })
    }
}

/// Whether `path` names a GGUF file by its extension.
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Reports download progress (bytes) per file.
pub trait DownloadProgress {
    fn on_file(&mut self, file: &str, total_bytes: usize);
    fn on_bytes(&mut self, bytes: usize);
}

/// The HF hub cache folder, honouring `HF_HUB_CACHE` and `HF_HOME`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    Cache::default().path().clone()
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
}

/// Whether `s` names a hub repo (`owner/name`) rather than a local path.
pub fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && *p != "."
                && *p != ".."
        })
        && !Path::new(s).exists()
}

/// Finds a file of `repo_id` at `revision` in the cache, without network.
/// A revision may be a branch/tag (resolved through `refs/`) or a commit hash (a snapshot).
fn cached_file(cache: &Path, repo_id: &str, revision: &str, file: &str) -> Option<PathBuf> {
    let p = snapshot_dir(cache, repo_id, revision).join(file);
    p.exists().then_some(p)
}

/// The cache folder of `repo_id` at `revision` (a branch or tag resolved through `refs/`, or a
/// commit hash), whether or not it exists.
fn snapshot_dir(cache: &Path, repo_id: &str, revision: &str) -> PathBuf {
    let repo_dir = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    repo_dir.join("snapshots").join(commit)
}

struct ProgressAdapter<'a>(&'a mut dyn DownloadProgress);

impl hf_hub::api::Progress for ProgressAdapter<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.on_file(filename, size);
    }

    fn update(&mut self, size: usize) {
        self.0.on_bytes(size);
    }

    fn finish(&mut self) {}
}

/// One hub repo at one revision: files come from the cache, else are downloaded (never when
/// `HF_HUB_OFFLINE` is set).
struct HubRepo<'p> {
    repo_id: String,
    revision: String,
    cache: PathBuf,
    api: Option<hf_hub::api::sync::ApiRepo>,
    progress: Option<&'p mut dyn DownloadProgress>,
}

impl<'p> HubRepo<'p> {
    fn new(
        repo_id: &str,
        revision: Option<&str>,
        progress: Option<&'p mut dyn DownloadProgress>,
    ) -> Self {
        Self {
            repo_id: repo_id.to_string(),
            revision: revision.unwrap_or("main").to_string(),
            cache: cache_dir(),
            api: None,
            progress,
        }
    }

    fn api(&mut self) -> Result<&hf_hub::api::sync::ApiRepo> {
        if self.api.is_none() {
            let api = ApiBuilder::from_cache(Cache::new(self.cache.clone()))
                .with_progress(false)
                .build()
                .map_err(|e| {
                    ModelError::msg(format!(
                        "{}: cannot start the HF hub client: {e}",
                        self.repo_id
                    ))
                })?;
            self.api = Some(api.repo(Repo::with_revision(
                self.repo_id.clone(),
                RepoType::Model,
                self.revision.clone(),
            )));
        }
        Ok(self.api.as_ref().expect("set above"))
    }

    /// `file` of the repo: from the cache, else downloaded; `None` when it is not `required`
    /// and cannot be had.
    fn fetch(&mut self, file: &str, required: bool) -> Result<Option<PathBuf>> {
        let (repo_id, revision) = (self.repo_id.clone(), self.revision.clone());
        if let Some(p) = cached_file(&self.cache, &repo_id, &revision, file) {
            return Ok(Some(p));
        }
        if offline() {
            return if required {
                Err(ModelError::msg(format!(
                    "{repo_id}: '{file}' (revision {revision}) is not in the HF cache at {} and HF_HUB_OFFLINE is set",
                    self.cache.display()
                )))
            } else {
                Ok(None)
            };
        }
        let mut progress = self.progress.take();
        let got = match progress.as_deref_mut() {
            Some(p) => self.api()?.download_with_progress(file, ProgressAdapter(p)),
            None => self.api()?.get(file),
        };
        self.progress = progress;
        match got {
            Ok(p) => Ok(Some(p)),
            Err(_) if !required => Ok(None),
            Err(e) => Err(ModelError::msg(format!(
                "{repo_id}: '{file}' (revision {revision}) is not in the HF cache at {} and could not be downloaded: {e}",
                self.cache.display()
            ))),
        }
    }

    /// The repo's `.gguf` files (paths in the repo): listed by the hub, or, offline or when the
    /// hub cannot be reached, those in the cached snapshot.
    fn gguf_files(&mut self) -> Vec<String> {
        let listed = if offline() {
            None
        } else {
            self.api()
                .ok()
                .and_then(|api| api.info().ok())
                .map(|info| info.siblings.into_iter().map(|s| s.rfilename).collect())
        };
        let mut files: Vec<String> = listed.unwrap_or_else(|| {
            let snapshot = snapshot_dir(&self.cache, &self.repo_id, &self.revision);
            let mut found = Vec::new();
            list_files(&snapshot, &snapshot, &mut found);
            found
        });
        files.retain(|f| is_gguf_path(Path::new(f)));
        files.sort();
        files
    }
}

/// Every file under `dir`, as paths relative to `root` with `/` separators.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            list_files(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
}

/// Only the `config.json` of a model: a folder's, a file given directly, or a hub repo's (from
/// the cache, else downloaded alone — no tokenizer or weights).
pub fn resolve_config(model: &str, revision: Option<&str>) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        let config = path.join("config.json");
        return if config.is_file() {
            Ok(config)
        } else {
            Err(ModelError::msg(format!(
                "{}: no config.json in this folder",
                path.display()
            )))
        };
    }
    if !looks_like_hub_id(model) {
        return Err(ModelError::msg(format!(
            "{model}: no such file or folder, and not a hub id (owner/name)"
        )));
    }
    let mut repo = HubRepo::new(model, revision, None);
    Ok(repo.fetch("config.json", true)?.expect("required"))
}

/// Resolves a hub id to its files, using the cache first and downloading what is missing.
pub fn resolve_hub(
    repo_id: &str,
    revision: Option<&str>,
    progress: Option<&mut dyn DownloadProgress>,
) -> Result<ModelFiles> {
    let mut repo = HubRepo::new(repo_id, revision, progress);
    let config = repo.fetch("config.json", true)?.expect("required");
    let tokenizer = repo.fetch("tokenizer.json", true)?.expect("required");
    // The chat template and special tokens, read beside tokenizer.json in the snapshot.
    for file in ["tokenizer_config.json", "chat_template.jinja"] {
        repo.fetch(file, false)?;
    }
    let index = repo.fetch("model.safetensors.index.json", false)?;
    let weights = match &index {
        Some(index) => {
            let shards = shard_names(index)?;
            let mut paths = Vec::with_capacity(shards.len());
            for s in shards {
                paths.push(repo.fetch(&s, true)?.expect("required"));
            }
            paths
        }
        None => vec![repo.fetch("model.safetensors", true)?.expect("required")],
    };
    Ok(ModelFiles {
        id: repo_id.to_string(),
        layout: FileLayout::Hf {
            config,
            tokenizer,
            weights,
            index,
        },
    })
}

/// A GGUF file of a hub repo, `owner/repo:SELECTOR`: the selector is the file's path in the
/// repo (`…/model-Q4_K_M.gguf`) or a quant tag (`Q4_K_M`, as llama.cpp's `-hf` takes it) that
/// names exactly one file or one split set. Every part of a split file is fetched; a
/// `tokenizer.json` beside the file is used when the repo has one.
pub fn resolve_hub_gguf(
    repo_id: &str,
    selector: &str,
    revision: Option<&str>,
    progress: Option<&mut dyn DownloadProgress>,
) -> Result<ModelFiles> {
    let mut repo = HubRepo::new(repo_id, revision, progress);
    let id = format!("{repo_id}:{selector}");
    let chosen = if is_gguf_path(Path::new(selector)) {
        selector.to_string()
    } else {
        let files = repo.gguf_files();
        let tag = selector.to_ascii_lowercase();
        let matching: Vec<&String> = files
            .iter()
            .filter(|f| f.to_ascii_lowercase().contains(&tag))
            .collect();
        // Parts of one split set count as one file: its first part.
        let mut firsts: Vec<String> = matching
            .iter()
            .map(|f| split_first_part(f).unwrap_or_else(|| (*f).clone()))
            .collect();
        firsts.dedup();
        match firsts.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(ModelError::msg(format!(
                    "{id}: no .gguf file of {repo_id} matches {selector:?} (its .gguf files: {})",
                    if files.is_empty() {
                        "none found".to_string()
                    } else {
                        files.join(", ")
                    }
                )));
            }
            many => {
                return Err(ModelError::msg(format!(
                    "{id}: {selector:?} matches several files of {repo_id}: {}; name one",
                    many.join(", ")
                )));
            }
        }
    };
    let file = repo.fetch(&chosen, true)?.expect("required");
    if let Some(count) = split_count(&chosen) {
        for part in 1..=count {
            let name = split_part_name(&chosen, part, count);
            repo.fetch(&name, true)?;
        }
    }
    let dir = Path::new(&chosen)
        .parent()
        .map(|d| d.to_string_lossy().into_owned())
        .filter(|d| !d.is_empty());
    let tokenizer_name = match dir {
        Some(d) => format!("{d}/tokenizer.json"),
        None => "tokenizer.json".to_string(),
    };
    let tokenizer = repo.fetch(&tokenizer_name, false)?;
    Ok(ModelFiles {
        id,
        layout: FileLayout::Gguf { file, tokenizer },
    })
}

/// `(k, n)` of a split-part name `…-0000k-of-0000n.gguf`.
fn split_numbers(name: &str) -> Option<(u32, u32)> {
    let stem = name.strip_suffix(".gguf")?;
    let (rest, n) = stem.rsplit_once("-of-")?;
    let (_, k) = rest.rsplit_once('-')?;
    (k.len() == 5 && n.len() == 5).then_some(())?;
    Some((k.parse().ok()?, n.parse().ok()?))
}

fn split_count(name: &str) -> Option<u32> {
    split_numbers(name).map(|(_, n)| n).filter(|&n| n > 1)
}

/// Part `k` of `n` of the split set `name` belongs to.
fn split_part_name(name: &str, k: u32, n: u32) -> String {
    let stem = name.strip_suffix(".gguf").unwrap_or(name);
    let prefix = stem
        .rsplit_once("-of-")
        .and_then(|(rest, _)| rest.rsplit_once('-'))
        .map_or(stem, |(p, _)| p);
    format!("{prefix}-{k:05}-of-{n:05}.gguf")
}

/// The first part's name when `name` is a part of a split set.
fn split_first_part(name: &str) -> Option<String> {
    let n = split_count(name)?;
    Some(split_part_name(name, 1, n))
}

/// The shard file names listed in a `model.safetensors.index.json`, sorted and deduplicated.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| ModelError::msg(format!("{}: cannot read: {e}", index.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::msg(format!("{}: not valid JSON: {e}", index.display())))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::msg(format!("{}: no \"weight_map\" object", index.display())))?;
    let mut names: Vec<String> = map
        .values()
        .map(|f| {
            f.as_str()
                .filter(|s| !s.contains('/') && !s.contains('\\') && !s.starts_with('.'))
                .map(str::to_string)
                .ok_or_else(|| {
                    ModelError::msg(format!("{}: bad shard file name {f}", index.display()))
                })
        })
        .collect::<Result<_>>()?;
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(ModelError::msg(format!(
            "{}: weight_map is empty",
            index.display()
        )));
    }
    Ok(names)
}

/// Resolves a local model folder to its files.
pub fn resolve_dir(dir: &Path) -> Result<ModelFiles> {
    let need = |name: &str, what: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(ModelError::msg(format!(
                "{}: missing {name} ({what})",
                dir.display()
            )))
        }
    };
    let config = need("config.json", "the model's configuration")?;
    let tokenizer = need(
        "tokenizer.json",
        "the tokenizer; MoEScope reads HF fast-tokenizer files",
    )?;
    let index = dir.join("model.safetensors.index.json");
    let index = index.is_file().then_some(index);
    let weights = if let Some(index) = &index {
        let mut paths = Vec::new();
        for s in shard_names(index)? {
            let p = dir.join(&s);
            if !p.is_file() {
                return Err(ModelError::msg(format!(
                    "{}: shard {s} named in model.safetensors.index.json is missing",
                    dir.display()
                )));
            }
            paths.push(p);
        }
        paths
    } else {
        vec![need(
            "model.safetensors",
            "the weights (or model.safetensors.index.json for shards)",
        )?]
    };
    Ok(ModelFiles {
        id: dir.display().to_string(),
        layout: FileLayout::Hf {
            config,
            tokenizer,
            weights,
            index,
        },
    })
}

/// Resolves what the user typed: an existing folder, else a hub id.
pub fn resolve(
    model: &str,
    revision: Option<&str>,
    progress: Option<&mut dyn DownloadProgress>,
) -> Result<ModelFiles> {
    let path = Path::new(model);
    if path.is_dir() {
        return resolve_dir(path);
    }
    if path.is_file() && is_gguf_path(path) {
        return Ok(ModelFiles::gguf(path));
    }
    if path.exists() {
        return Err(ModelError::msg(format!(
            "{model}: is a file but not a .gguf; --model takes a model folder (config.json, tokenizer.json, *.safetensors), a GGUF file or a hub id"
        )));
    }
    if looks_like_hub_id(model) {
        return resolve_hub(model, revision, progress);
    }
    if let Some((repo_id, selector)) = model.split_once(':')
        && looks_like_hub_id(repo_id)
        && !selector.is_empty()
    {
        return resolve_hub_gguf(repo_id, selector, revision, progress);
    }
    if is_gguf_path(path) {
        return Err(ModelError::msg(format!("{model}: no such GGUF file")));
    }
    Err(ModelError::msg(format!(
        "{model}: no such folder or file, and not a hub id of the form owner/name (or owner/name:FILE_OR_QUANT for a GGUF repo)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_part_names_follow_llama_cpps_pattern() {
        let name = "Q4_K_M/Qwen3-30B-A3B-Q4_K_M-00002-of-00003.gguf";
        assert_eq!(split_numbers(name), Some((2, 3)));
        assert_eq!(
            split_first_part(name).as_deref(),
            Some("Q4_K_M/Qwen3-30B-A3B-Q4_K_M-00001-of-00003.gguf")
        );
        assert_eq!(split_count("model-Q8_0.gguf"), None);
        assert_eq!(split_count("x-00001-of-00001.gguf"), None);
    }

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert!(looks_like_hub_id("allenai/OLMoE-1B-7B-0924"));
        assert!(!looks_like_hub_id("./model"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("../x"));
        assert!(!looks_like_hub_id("plain"));
    }
}
