//! [`merge_adapter`]: a model folder (or hub id) plus a PEFT LoRA adapter in, the merged
//! checkpoint out, streamed. Each shard is read through a memory map and written from start to
//! end: its header and every untouched tensor byte for byte, each adapted tensor copied out,
//! given its updates (`W + scale · B · A` in f32, rounded back to the tensor's dtype) and
//! written in its place. Tensor sizes do not change, so the header (names, order, dtypes,
//! shapes, offsets, `__metadata__`) is the original's. At most one tensor and one module's
//! update are in memory; pages of the input are released as they are copied.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use memmap2::Mmap;

use super::error::{MergeError, Result};
use super::folder::{Destination, FolderFiles, set_default_permissions};
use super::placement::{StoredDtype, add_update};
use super::plan::{Checkpoint, Edit, ModelShape, Shard, plan};
use crate::model::adapter::{Adapter, LoraPair, WEIGHTS_FILE};
use crate::model::hub::{self, FileLayout};
use crate::model::memory::{human_bytes, release_pages};
use crate::model::weights::MmapWeights;

/// What to merge, and where to.
#[derive(Debug, Clone)]
pub struct MergeRequest {
    /// A model folder or a hub id (from the cache, else downloaded).
    pub model: String,
    /// Hub revision of `model`.
    pub revision: Option<String>,
    /// The PEFT adapter folder.
    pub adapter: PathBuf,
    /// The merged model folder to write.
    pub out: PathBuf,
    /// Replace `out` when it exists and is not empty (once the merge has succeeded).
    pub force: bool,
}

/// Bytes written so far of all the merged folder's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeProgress {
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// What a finished merge did.
#[derive(Debug, Clone)]
pub struct MergeSummary {
    pub out: PathBuf,
    /// Adapter modules folded in.
    pub modules: usize,
    /// Checkpoint tensors whose values changed (a fused expert tensor counts once).
    pub tensors_changed: usize,
    pub tensors_total: usize,
    /// Shard files written.
    pub shards: Vec<String>,
    /// Other files copied, by name.
    pub files_copied: Vec<String>,
    /// Entries of the model folder left out (other weight formats, sub-folders).
    pub files_skipped: Vec<String>,
    pub bytes_written: u64,
    pub seconds: f64,
    /// An existing output folder was replaced (`--force`).
    pub replaced: bool,
}

/// Progress reports and cancellation checks while bytes are written.
struct Monitor<'a> {
    cancel: &'a AtomicBool,
    on_progress: &'a mut dyn FnMut(MergeProgress),
    done: u64,
    total: u64,
}

impl Monitor<'_> {
    fn check(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(MergeError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Counts `bytes` more written and reports; errors once cancelled.
    fn advance(&mut self, bytes: u64) -> Result<()> {
        self.done += bytes;
        (self.on_progress)(MergeProgress {
            bytes_done: self.done,
            bytes_total: self.total,
        });
        self.check()
    }
}

/// Bytes copied between two progress reports and cancellation checks.
const COPY_CHUNK: usize = 16 << 20;

/// Merges `request.adapter` into `request.model`, writing `request.out`. Checks everything
/// (output location, adapter against the checkpoint, free space) before writing; builds the
/// folder as a `DIR.partial-*` sibling and renames it at the end, so an error or a
/// cancellation (`cancel` set) leaves nothing behind.
pub fn merge_adapter(
    request: &MergeRequest,
    cancel: &AtomicBool,
    on_progress: &mut dyn FnMut(MergeProgress),
) -> Result<MergeSummary> {
    let started = Instant::now();
    let files = hub::resolve(&request.model, request.revision.as_deref(), None)?;
    let FileLayout::Hf {
        config,
        weights,
        index,
        ..
    } = &files.layout
    else {
        return Err(MergeError::refused(format!(
            "{}: a GGUF model; merge writes safetensors; merge into the HF checkpoint the GGUF \
             was made from",
            files.id
        )));
    };
    let model_dir = config.parent().unwrap_or(Path::new(".")).to_path_buf();
    let destination =
        Destination::check(&request.out, &model_dir, &request.adapter, request.force)?;

    let config_text = std::fs::read_to_string(config).map_err(|e| MergeError::io(config, e))?;
    let config_json: serde_json::Value = serde_json::from_str(&config_text)
        .map_err(|e| MergeError::refused(format!("{}: not valid JSON: {e}", config.display())))?;
    let family = crate::model::loader::detect_family(config, &config_json)?;
    let (layout, _) = crate::model::families::layout_from_config(family, &config_text)?;
    let target = crate::model::adapter::AdapterTarget {
        family,
        layout: &layout,
    };
    let adapter = Adapter::load(&request.adapter, target)?;

    // The loader's checks (complete files, offsets in bounds, the index against the shards),
    // then the headers in file order.
    let validated = MmapWeights::open(weights)?;
    if let Some(index) = index {
        validated.check_index(index)?;
    }
    drop(validated);
    let checkpoint = Checkpoint::read(weights)?;
    // The adapter may be named by its folder or by its adapter_config.json.
    let adapter_dir = match request.adapter.is_file() {
        true => request.adapter.parent().unwrap_or(Path::new(".")),
        false => request.adapter.as_path(),
    };
    let adapter_file = adapter_dir.join(WEIGHTS_FILE);
    let plan = plan(
        &checkpoint,
        &adapter,
        &ModelShape::new(family, &layout),
        &adapter_file,
    )?;
    let folder = FolderFiles::list(&model_dir, weights, index.as_deref())?;

    let total = checkpoint.bytes() + folder.bytes();
    if let Some(free) = destination.free_bytes()
        && free < total
    {
        return Err(MergeError::refused(format!(
            "{}: the merged checkpoint needs {} and its file system has {} free",
            request.out.display(),
            human_bytes(total),
            human_bytes(free)
        )));
    }
    let mut monitor = Monitor {
        cancel,
        on_progress,
        done: 0,
        total,
    };
    monitor.check()?;
    let partial = destination.partial()?;
    for (path, len) in &folder.copied {
        let name = path.file_name().expect("listed files have names");
        let to = partial.path().join(name);
        std::fs::copy(path, &to).map_err(|e| MergeError::io(&to, e))?;
        monitor.advance(*len)?;
    }
    let scale = adapter.settings.scale() as f32;
    for (shard, edits) in checkpoint.shards.iter().zip(&plan.edits) {
        write_shard(shard, edits, &adapter, scale, partial.path(), &mut monitor)?;
    }
    // Synced once all are written, so that the OS writes one shard back while the next is read.
    sync_folder(partial.path())?;
    monitor.check()?;
    let replaced = destination.install(partial)?;
    Ok(MergeSummary {
        out: request.out.clone(),
        modules: adapter.modules.len(),
        tensors_changed: plan.tensors_changed(),
        tensors_total: checkpoint.shards.iter().map(|s| s.tensors.len()).sum(),
        shards: checkpoint.shards.iter().map(Shard::file_name).collect(),
        files_copied: folder
            .copied
            .iter()
            .map(|(p, _)| crate::model::weights::file_name(p))
            .collect(),
        files_skipped: folder.skipped,
        bytes_written: total,
        seconds: started.elapsed().as_secs_f64(),
        replaced,
    })
}

/// `B · A` of one module, `[out, in]` row-major f32 (unscaled).
fn update_of(pair: &LoraPair) -> Result<Vec<f32>> {
    Ok(pair.b.matmul(&pair.a)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Writes `shard` into `dir` under its own name: through a temporary file, renamed once
/// complete (and synced with the whole folder by [`sync_folder`]).
fn write_shard(
    shard: &Shard,
    edits: &BTreeMap<String, Vec<Edit>>,
    adapter: &Adapter,
    scale: f32,
    dir: &Path,
    monitor: &mut Monitor<'_>,
) -> Result<()> {
    let source = &shard.path;
    let file = std::fs::File::open(source).map_err(|e| MergeError::io(source, e))?;
    // SAFETY: read-only; the checkpoint must not change while it is merged.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| MergeError::io(source, e))?;
    if map.len() as u64 != shard.len {
        return Err(MergeError::refused(format!(
            "{}: the file changed while it was being merged",
            source.display()
        )));
    }
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    let mut builder = tempfile::Builder::new();
    builder.prefix(".").suffix(".tmp");
    set_default_permissions(&mut builder, 0o666);
    let mut tmp = builder
        .tempfile_in(dir)
        .map_err(|e| MergeError::io(dir, e))?;
    let tmp_path = tmp.path().to_path_buf();
    let io = |e| MergeError::io(&tmp_path, e);
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let mut at = 0usize;
        for tensor in &shard.tensors {
            let Some(tensor_edits) = edits.get(&tensor.name) else {
                continue;
            };
            copy_range(&map, at..tensor.start, &mut out, &tmp_path, monitor)?;
            let dtype = StoredDtype::from_safetensors(tensor.dtype)
                .expect("the plan only edits float tensors");
            let mut bytes = map[tensor.start..tensor.end].to_vec();
            release_pages(&map, tensor.start, tensor.end);
            for edit in tensor_edits {
                monitor.check()?;
                let update = update_of(&adapter.modules[&edit.module])?;
                add_update(&mut bytes, dtype, edit.placement, &update, scale);
            }
            out.write_all(&bytes).map_err(io)?;
            monitor.advance(bytes.len() as u64)?;
            at = tensor.end;
        }
        copy_range(&map, at..map.len(), &mut out, &tmp_path, monitor)?;
        out.flush().map_err(io)?;
    }
    let target = dir.join(shard.file_name());
    tmp.persist(&target)
        .map_err(|e| MergeError::io(&target, e.error))?;
    Ok(())
}

/// Flushes every file of `dir`, and `dir` itself, to disk.
fn sync_folder(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| MergeError::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| MergeError::io(dir, e))?.path();
        let file = std::fs::File::open(&path).map_err(|e| MergeError::io(&path, e))?;
        file.sync_all().map_err(|e| MergeError::io(&path, e))?;
    }
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| MergeError::io(dir, e))?;
    Ok(())
}

/// Asks the OS to start reading the chunk of `map` at `from`, so that it arrives while the
/// current one is written.
fn prefetch(map: &Mmap, from: usize) {
    if from < map.len() {
        #[cfg(unix)]
        let _ = map.advise_range(
            memmap2::Advice::WillNeed,
            from,
            COPY_CHUNK.min(map.len() - from),
        );
    }
}

/// Copies `range` of `map` to `out` (the file at `path`) in chunks, releasing the pages read.
fn copy_range(
    map: &Mmap,
    range: std::ops::Range<usize>,
    out: &mut impl Write,
    path: &Path,
    monitor: &mut Monitor<'_>,
) -> Result<()> {
    let mut at = range.start;
    while at < range.end {
        let end = range.end.min(at + COPY_CHUNK);
        prefetch(map, end);
        out.write_all(&map[at..end])
            .map_err(|e| MergeError::io(path, e))?;
        release_pages(map, at, end);
        monitor.advance((end - at) as u64)?;
        at = end;
    }
    Ok(())
}
