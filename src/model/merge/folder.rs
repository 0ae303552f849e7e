//! The folders around a merge: which of the model folder's files are carried over and which are
//! left out ([`FolderFiles`]), where the output may go ([`Destination`]: never the model's own
//! folder, never over a non-empty folder unless asked), the `DIR.partial-*` sibling the output
//! is built in, and putting it in place at the end ([`Destination::install`]), so that a failed
//! or cancelled merge leaves no trace.

use std::path::{Component, Path, PathBuf};

use super::error::{MergeError, Result};

/// File extensions of weight formats other than the checkpoint's safetensors: left out of the
/// merged folder, which holds the merged safetensors only.
const OTHER_WEIGHT_FORMATS: [&str; 11] = [
    "bin",
    "pt",
    "pth",
    "ckpt",
    "gguf",
    "h5",
    "msgpack",
    "onnx",
    "ot",
    "npz",
    "safetensors",
];

/// The model folder's entries besides the checkpoint's shards.
#[derive(Debug, Default)]
pub struct FolderFiles {
    /// Copied as they are (config, generation config, tokenizer files, chat template, the
    /// shard index…), with their sizes.
    pub copied: Vec<(PathBuf, u64)>,
    /// Left out: other weight formats (and their indexes) and sub-folders, by name (folders
    /// with a trailing `/`).
    pub skipped: Vec<String>,
}

impl FolderFiles {
    /// Sorts `dir`'s entries; `shards` are the checkpoint's weight files (written by the merge
    /// itself) and `index` its `model.safetensors.index.json`, if any.
    pub fn list(dir: &Path, shards: &[PathBuf], index: Option<&Path>) -> Result<Self> {
        let shard_names: Vec<&std::ffi::OsStr> =
            shards.iter().filter_map(|p| p.file_name()).collect();
        let index_name = index.and_then(Path::file_name);
        let mut files = Self::default();
        let entries = std::fs::read_dir(dir).map_err(|e| MergeError::io(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| MergeError::io(dir, e))?;
            let path = entry.path();
            let name = entry.file_name();
            if shard_names.contains(&name.as_os_str()) {
                continue;
            }
            let text = name.to_string_lossy().into_owned();
            // Follows symbolic links (a hub cache snapshot links every file to a blob).
            let meta = std::fs::metadata(&path).map_err(|e| MergeError::io(&path, e))?;
            if meta.is_dir() {
                files.skipped.push(format!("{text}/"));
            } else if Some(name.as_os_str()) != index_name && is_other_weights(&text) {
                files.skipped.push(text);
            } else if meta.is_file() {
                files.copied.push((path, meta.len()));
            }
        }
        files.copied.sort();
        files.skipped.sort();
        Ok(files)
    }

    pub fn bytes(&self) -> u64 {
        self.copied.iter().map(|(_, n)| n).sum()
    }
}

/// Whether a file name is a weight file of another format, or the index of one
/// (`pytorch_model.bin.index.json`).
fn is_other_weights(name: &str) -> bool {
    let stem = name.strip_suffix(".index.json").unwrap_or(name);
    Path::new(stem).extension().is_some_and(|ext| {
        OTHER_WEIGHT_FORMATS
            .iter()
            .any(|w| ext.eq_ignore_ascii_case(w))
    })
}

/// `path` made absolute with symbolic links resolved, for the part of it that exists; the rest
/// is appended with `.` and `..` folded.
fn resolved(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).map_err(|e| MergeError::io(path, e))?;
    let mut existing = absolute.as_path();
    let mut rest: Vec<Component> = Vec::new();
    loop {
        if let Ok(found) = existing.canonicalize() {
            let mut out = found;
            for c in rest.iter().rev() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    other => out.push(other.as_os_str()),
                }
            }
            return Ok(out);
        }
        let Some(parent) = existing.parent() else {
            return Ok(absolute);
        };
        rest.extend(existing.components().next_back());
        existing = parent;
    }
}

/// Where the merged folder goes, checked before anything is read or written.
#[derive(Debug)]
pub struct Destination {
    /// The folder asked for.
    pub out: PathBuf,
    /// Its parent folder (created if missing), where the partial sibling is built.
    parent: PathBuf,
    /// Its last component.
    name: String,
    /// It exists already (an empty folder, or any folder with `--force`).
    exists: bool,
}

impl Destination {
    /// Checks `out` against the model folder and the adapter folder: not the model folder or
    /// inside it; an existing folder only if empty, or with `force` when it holds neither the
    /// model nor the adapter.
    pub fn check(out: &Path, model_dir: &Path, adapter: &Path, force: bool) -> Result<Self> {
        let shown = out.display();
        let target = resolved(out)?;
        let model = resolved(model_dir)?;
        if target.starts_with(&model) {
            let relation = if target == model { "is" } else { "is inside" };
            return Err(MergeError::refused(format!(
                "--out {shown} {relation} the model folder {}; write the merged checkpoint \
                 elsewhere",
                model_dir.display()
            )));
        }
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| MergeError::refused(format!("--out {shown} names no folder")))?;
        let parent = target
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| MergeError::refused(format!("--out {shown} has no parent folder")))?;
        let exists = match std::fs::symlink_metadata(out) {
            Err(_) => false,
            Ok(meta) if !meta.is_dir() => {
                return Err(MergeError::refused(format!(
                    "--out {shown} exists and is not a folder"
                )));
            }
            Ok(_) => {
                let empty = std::fs::read_dir(out)
                    .map_err(|e| MergeError::io(out, e))?
                    .next()
                    .is_none();
                if !empty && !force {
                    return Err(MergeError::refused(format!(
                        "--out {shown} exists and is not empty; choose another folder, or pass \
                         --force to replace it once the merge has succeeded"
                    )));
                }
                let adapter_dir = resolved(adapter)?;
                for (what, inside) in [("model", &model), ("adapter", &adapter_dir)] {
                    if inside.starts_with(&target) {
                        return Err(MergeError::refused(format!(
                            "--out {shown} holds the {what} ({}); replacing it would delete it",
                            inside.display()
                        )));
                    }
                }
                true
            }
        };
        Ok(Self {
            out: out.to_path_buf(),
            parent,
            name,
            exists,
        })
    }

    /// A new, empty `DIR.partial-*` folder beside the output, removed when dropped.
    pub fn partial(&self) -> Result<tempfile::TempDir> {
        std::fs::create_dir_all(&self.parent).map_err(|e| MergeError::io(&self.parent, e))?;
        let prefix = format!("{}.partial-", self.name);
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix);
        set_default_permissions(&mut builder, 0o777);
        builder
            .tempdir_in(&self.parent)
            .map_err(|e| MergeError::io(&self.parent, e))
    }

    /// Free bytes on the output's file system, where the OS says.
    pub fn free_bytes(&self) -> Option<u64> {
        let mut dir = self.parent.as_path();
        while !dir.exists() {
            dir = dir.parent()?;
        }
        free_bytes(dir)
    }

    /// Renames the finished `partial` folder to the output; an existing output folder is moved
    /// aside first and deleted only once the new one is in place (restored if that fails).
    /// Returns whether a folder was replaced.
    pub fn install(&self, partial: tempfile::TempDir) -> Result<bool> {
        let target = self.parent.join(&self.name);
        if !self.exists {
            std::fs::rename(partial.path(), &target).map_err(|e| MergeError::io(&target, e))?;
            let _ = partial.keep();
            return Ok(false);
        }
        let holder = tempfile::Builder::new()
            .prefix(&format!("{}.replaced-", self.name))
            .tempdir_in(&self.parent)
            .map_err(|e| MergeError::io(&self.parent, e))?;
        let old = holder.path().join(&self.name);
        std::fs::rename(&target, &old).map_err(|e| MergeError::io(&target, e))?;
        if let Err(e) = std::fs::rename(partial.path(), &target) {
            let _ = std::fs::rename(&old, &target);
            return Err(MergeError::io(&target, e));
        }
        let _ = partial.keep();
        // `holder` (with the old folder in it) is deleted when it goes out of scope.
        Ok(true)
    }
}

/// New files and folders get the usual permissions (`mode` less the umask) rather than the
/// owner-only ones of temporary files.
pub fn set_default_permissions(builder: &mut tempfile::Builder, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    let _ = (builder, mode);
}

#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a valid C string; `stats` is written by statvfs before it is read.
    unsafe {
        let mut stats: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stats) != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
        Some(stats.f_bavail as u64 * stats.f_frsize as u64)
    }
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_weight_formats_and_their_indexes_are_recognised() {
        for name in [
            "pytorch_model.bin",
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model.bin.index.json",
            "consolidated.00.pth",
            "model-Q4_K_M.gguf",
            "consolidated.safetensors",
            "flax_model.msgpack",
        ] {
            assert!(is_other_weights(name), "{name}");
        }
        for name in [
            "config.json",
            "tokenizer.model",
            "chat_template.jinja",
            "merges.txt",
            "generation_config.json",
        ] {
            assert!(!is_other_weights(name), "{name}");
        }
    }

    #[test]
    fn paths_that_do_not_exist_yet_resolve_below_their_existing_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(base.join("model")).unwrap();
        let out = tmp.path().join("model/../model/sub/./new");
        assert_eq!(resolved(&out).unwrap(), base.join("model/sub/new"));
    }

    #[test]
    fn the_output_folder_is_never_the_model_folder_or_inside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        let adapter = tmp.path().join("adapter");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        for out in [model.clone(), model.join("merged"), model.join("a/b")] {
            let err = Destination::check(&out, &model, &adapter, true).unwrap_err();
            assert!(err.to_string().contains("the model folder"), "{err}");
        }
        // With --force a folder holding the model is still refused.
        let err = Destination::check(tmp.path(), &model, &adapter, true).unwrap_err();
        assert!(err.to_string().contains("holds the model"), "{err}");
        let err = Destination::check(tmp.path(), &model, &adapter, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        // An empty folder is fine, and so is a new one.
        std::fs::create_dir(tmp.path().join("empty")).unwrap();
        assert!(Destination::check(&tmp.path().join("empty"), &model, &adapter, false).is_ok());
        assert!(Destination::check(&tmp.path().join("new"), &model, &adapter, false).is_ok());
    }
}
