//! What a merge will change, decided from the safetensors headers alone: the checkpoint's
//! shards and tensors ([`Checkpoint`]), and for every adapter module the tensor and the
//! [`Placement`] its update goes to ([`MergePlan`]). A module is a tensor of its own
//! (`{module}.weight`, `[out, in]`) or one expert's slice of a fused expert tensor:
//!
//! - rows, gate before up (transformers 5's layout; Qwen3.5-MoE and Gemma 4 checkpoints):
//!   `…experts.gate_up_proj` `[E, 2·I, H]` holds expert `e`'s gate rows `0..I` then its up rows
//!   `I..2·I`; `…experts.down_proj` is `[E, H, I]`; a stacked `…experts.gate_proj` `[E, I, H]`
//!   is read the same way;
//! - columns, gate and up interleaved (gpt-oss, dequantised): `…experts.gate_up_proj`
//!   `[E, H, 2·I]` holds the gate in the even columns and up in the odd ones;
//!   `…experts.down_proj` is `[E, I, H]`.
//!
//! Weights the merge cannot write back in their own format are refused, by name, when the
//! adapter touches them: MXFP4 blocks (`*_blocks` / `*_scales`) and block-scaled float8
//! (`weight_scale_inv`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::error::{MergeError, Result};
use super::placement::{Placement, StoredDtype};
use crate::model::adapter::{Adapter, LoraPair};
use crate::model::info::{Family, ModuleLayout};
use crate::model::weights::file_name;

/// One tensor of a shard, as its header describes it.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

/// One safetensors file of the checkpoint.
#[derive(Debug, Clone)]
pub struct Shard {
    pub path: PathBuf,
    /// Bytes of the whole file.
    pub len: u64,
    /// In the order their data sits in the file.
    pub tensors: Vec<StoredTensor>,
}

impl Shard {
    pub fn file_name(&self) -> String {
        file_name(&self.path)
    }
}

/// The shards of a checkpoint and where each tensor is.
#[derive(Debug)]
pub struct Checkpoint {
    pub shards: Vec<Shard>,
    /// Tensor name → (shard, position in `Shard::tensors`).
    by_name: HashMap<String, (usize, usize)>,
}

impl Checkpoint {
    /// Reads the headers of `files` (already validated by the loader's checks).
    pub fn read(files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut by_name = HashMap::new();
        for (si, path) in files.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| MergeError::io(path, e))?;
            // SAFETY: read-only; the checkpoint must not change while it is merged (the same
            // contract as the loader's maps).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| MergeError::io(path, e))?;
            let (header_len, meta) =
                safetensors::SafeTensors::read_metadata(&map[..]).map_err(|e| {
                    MergeError::refused(format!("{}: not a safetensors file: {e}", path.display()))
                })?;
            let data_start = 8 + header_len;
            let mut tensors: Vec<StoredTensor> = meta
                .tensors()
                .into_iter()
                .map(|(name, info)| StoredTensor {
                    name,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                })
                .collect();
            tensors.sort_by_key(|t| (t.start, t.end));
            for (ti, t) in tensors.iter().enumerate() {
                by_name.insert(t.name.clone(), (si, ti));
            }
            shards.push(Shard {
                path: path.clone(),
                len: map.len() as u64,
                tensors,
            });
        }
        Ok(Self { shards, by_name })
    }

    pub fn get(&self, name: &str) -> Option<(usize, &StoredTensor)> {
        let &(si, ti) = self.by_name.get(name)?;
        Some((si, &self.shards[si].tensors[ti]))
    }

    /// The path of shard `shard`, for errors.
    fn shard_name(&self, shard: usize) -> String {
        self.shards[shard].path.display().to_string()
    }

    /// Bytes of all shards.
    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.len).sum()
    }
}

/// One module's update into one tensor.
#[derive(Debug, Clone)]
pub struct Edit {
    pub module: String,
    pub placement: Placement,
}

/// The edits of one tensor, by the tensor's name, per shard.
#[derive(Debug, Default)]
pub struct MergePlan {
    /// Per shard (same order as [`Checkpoint::shards`]): tensor name → its edits.
    pub edits: Vec<BTreeMap<String, Vec<Edit>>>,
}

impl MergePlan {
    pub fn tensors_changed(&self) -> usize {
        self.edits.iter().map(BTreeMap::len).sum()
    }
}

/// How a family stores fused expert tensors (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedLayout {
    /// `gate_up_proj` `[E, 2·I, H]`, gate rows then up rows; `down_proj` `[E, H, I]`.
    RowsGateThenUp,
    /// `gate_up_proj` `[E, H, 2·I]`, gate and up interleaved columns; `down_proj` `[E, I, H]`.
    ColumnsInterleaved,
}

impl FusedLayout {
    pub fn of(family: Family) -> Self {
        match family {
            Family::GptOss => Self::ColumnsInterleaved,
            _ => Self::RowsGateThenUp,
        }
    }
}

/// Which part of a gated expert a projection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Gate,
    Up,
    Down,
}

/// What the model is, as far as the plan needs: how its fused expert tensors are laid out and
/// what its expert projections are called (gate, up, down).
#[derive(Debug, Clone)]
pub struct ModelShape {
    pub fused: FusedLayout,
    pub expert_projection_names: Vec<String>,
}

impl ModelShape {
    pub fn new(family: Family, layout: &ModuleLayout) -> Self {
        Self {
            fused: FusedLayout::of(family),
            expert_projection_names: layout
                .expert_projections
                .iter()
                .map(|p| p.name.clone())
                .collect(),
        }
    }

    /// Gate, up or down, by the layout's names (in that order) or the usual ones.
    fn role(&self, projection: &str) -> Option<Role> {
        let roles = [Role::Gate, Role::Up, Role::Down];
        if self.expert_projection_names.len() == 3
            && let Some(i) = self
                .expert_projection_names
                .iter()
                .position(|n| n == projection)
        {
            return Some(roles[i]);
        }
        match projection {
            "gate_proj" | "w1" => Some(Role::Gate),
            "up_proj" | "w3" => Some(Role::Up),
            "down_proj" | "w2" => Some(Role::Down),
            _ => None,
        }
    }
}

/// `(…experts, e, projection)` of `…experts.{e}.{projection}`.
fn expert_parts(module: &str) -> Option<(&str, usize, &str)> {
    let (head, projection) = module.rsplit_once('.')?;
    let (experts, e) = head.rsplit_once('.')?;
    let e: usize = e.parse().ok()?;
    experts
        .rsplit('.')
        .next()
        .is_some_and(|last| last == "experts")
        .then_some((experts, e, projection))
}

const FP8_SCALE_SUFFIX: &str = "_scale_inv";
const MXFP4_BLOCKS: &str = "_blocks";

/// Plans every module of `adapter` into `checkpoint`; `adapter_file` names the adapter in
/// errors.
pub fn plan(
    checkpoint: &Checkpoint,
    adapter: &Adapter,
    shape: &ModelShape,
    adapter_file: &Path,
) -> Result<MergePlan> {
    let mut plan = MergePlan {
        edits: vec![BTreeMap::new(); checkpoint.shards.len()],
    };
    for (module, pair) in &adapter.modules {
        let (shard, tensor, placement) = locate(checkpoint, shape, module, pair)
            .map_err(|why| MergeError::refused(format!("{}: {why}", adapter_file.display())))?;
        plan.edits[shard].entry(tensor).or_default().push(Edit {
            module: module.clone(),
            placement,
        });
    }
    Ok(plan)
}

/// `[out, in]` of a pair's update.
fn update_dims(pair: &LoraPair) -> (usize, usize) {
    (pair.b.dims()[0], pair.a.dims()[1])
}

/// The shard, tensor and placement of `module`'s update, or why there is none.
fn locate(
    checkpoint: &Checkpoint,
    shape: &ModelShape,
    module: &str,
    pair: &LoraPair,
) -> std::result::Result<(usize, String, Placement), String> {
    let (out, inp) = update_dims(pair);
    let weight = format!("{module}.weight");
    if let Some((si, t)) = checkpoint.get(&weight) {
        writable(checkpoint, si, t, module)?;
        if t.shape != [out, inp] {
            return Err(format!(
                "adapter module '{module}' (lora_A {:?}, lora_B {:?}: an update of [{out}, {inp}]) \
                 does not fit tensor {weight} {:?} in {}",
                pair.a.dims(),
                pair.b.dims(),
                t.shape,
                checkpoint.shard_name(si)
            ));
        }
        return Ok((si, weight, Placement::whole(out, inp)));
    }
    let missing = || {
        format!(
            "adapter module '{module}' is not in the checkpoint (no tensor {weight}{})",
            match expert_parts(module) {
                Some((experts, _, _)) =>
                    format!(", and no fused {experts}.gate_up_proj / {experts}.down_proj"),
                None => String::new(),
            }
        )
    };
    let Some((experts, e, projection)) = expert_parts(module) else {
        return Err(missing());
    };
    let Some(role) = shape.role(projection) else {
        return Err(missing());
    };
    // A fused pair (gate_up_proj + down_proj), else one stacked tensor per projection.
    let fused_name = match role {
        Role::Gate | Role::Up => format!("{experts}.gate_up_proj"),
        Role::Down => format!("{experts}.down_proj"),
    };
    let stacked_name = format!("{experts}.{projection}");
    for name in [&fused_name, &stacked_name] {
        let blocks = format!("{name}{MXFP4_BLOCKS}");
        if let Some((si, _)) = checkpoint.get(&blocks) {
            return Err(format!(
                "adapter module '{module}' is a slice of {name}, which {} stores as MXFP4 \
                 ({blocks} with its scales); merging would mean re-quantising it. Merge into a \
                 dequantised (bf16) copy of the checkpoint instead",
                checkpoint.shard_name(si)
            ));
        }
    }
    let (tensor_name, fused) = if checkpoint.get(&fused_name).is_some() {
        (fused_name, role != Role::Down)
    } else if checkpoint.get(&stacked_name).is_some() {
        (stacked_name, false)
    } else {
        return Err(missing());
    };
    let (si, t) = checkpoint.get(&tensor_name).expect("checked above");
    writable(checkpoint, si, t, module)?;
    // Experts kept as separate gate / up / down stacks are [E, out, in] whatever the family.
    let layout = match checkpoint.get(&format!("{experts}.gate_up_proj")) {
        Some(_) => shape.fused,
        None => FusedLayout::RowsGateThenUp,
    };
    let placement =
        expert_slice(layout, role, fused, &t.shape, e, (out, inp)).map_err(|expected| {
            format!(
                "adapter module '{module}' (lora_A {:?}, lora_B {:?}: an update of [{out}, {inp}]) \
                 does not fit tensor {tensor_name} {:?} in {}: expert {e}'s {} needs {expected}",
                pair.a.dims(),
                pair.b.dims(),
                t.shape,
                checkpoint.shard_name(si),
                match role {
                    Role::Gate => "gate",
                    Role::Up => "up",
                    Role::Down => "down",
                }
            )
        })?;
    Ok((si, tensor_name, placement))
}

/// Refuses tensors that cannot be written back in their own dtype; `module` is the adapter
/// module that would change `t`.
fn writable(
    checkpoint: &Checkpoint,
    shard: usize,
    t: &StoredTensor,
    module: &str,
) -> std::result::Result<(), String> {
    if StoredDtype::from_safetensors(t.dtype).is_some() {
        return Ok(());
    }
    let file = checkpoint.shard_name(shard);
    let scales = format!("{}{FP8_SCALE_SUFFIX}", t.name);
    if checkpoint.get(&scales).is_some() {
        return Err(format!(
            "adapter module '{module}' changes tensor {} in {file}, which is block-scaled float8 \
             ({:?} with {scales}); merging would mean re-quantising it. Merge into a \
             dequantised (bf16) copy of the checkpoint instead",
            t.name, t.dtype
        ));
    }
    Err(format!(
        "adapter module '{module}' changes tensor {} in {file}, which is stored as {:?}; a \
         merge writes f32, f16 or bf16 tensors",
        t.name, t.dtype
    ))
}

/// Expert `e`'s `[out, inp]` slice of a fused (`gate_up_proj` when `fused`) or per-projection
/// stacked expert tensor of `dims`; else the shape it would need.
fn expert_slice(
    layout: FusedLayout,
    role: Role,
    fused: bool,
    dims: &[usize],
    e: usize,
    (out, inp): (usize, usize),
) -> std::result::Result<Placement, String> {
    let &[experts, d1, d2] = dims else {
        return Err("a tensor of shape [experts, rows, columns]".into());
    };
    let need = |shape: String| Err(format!("{shape} with more than {e} experts"));
    if e >= experts {
        return need(format!("[E, {d1}, {d2}]"));
    }
    match (layout == FusedLayout::ColumnsInterleaved, fused) {
        // [E, 2·out, in]: gate rows then up rows.
        (false, true) => {
            if (d1, d2) != (2 * out, inp) {
                return need(format!("[E, {}, {inp}]", 2 * out));
            }
            let half = match role {
                Role::Up => out * inp,
                _ => 0,
            };
            Ok(Placement {
                offset: e * d1 * d2 + half,
                ..Placement::whole(out, inp)
            })
        }
        // [E, out, in].
        (false, false) => {
            if (d1, d2) != (out, inp) {
                return need(format!("[E, {out}, {inp}]"));
            }
            Ok(Placement {
                offset: e * d1 * d2,
                ..Placement::whole(out, inp)
            })
        }
        // [E, in, 2·out]: output feature o of the gate is column 2·o, of up 2·o + 1.
        (true, true) => {
            if (d1, d2) != (inp, 2 * out) {
                return need(format!("[E, {inp}, {}]", 2 * out));
            }
            Ok(Placement {
                offset: e * d1 * d2 + usize::from(role == Role::Up),
                rows: out,
                cols: inp,
                row_stride: 2,
                col_stride: d2,
            })
        }
        // [E, in, out].
        (true, false) => {
            if (d1, d2) != (inp, out) {
                return need(format!("[E, {inp}, {out}]"));
            }
            Ok(Placement {
                offset: e * d1 * d2,
                rows: out,
                cols: inp,
                row_stride: 1,
                col_stride: d2,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expert_module_names_are_split_at_the_expert_index() {
        assert_eq!(
            expert_parts("model.layers.3.mlp.experts.5.gate_proj"),
            Some(("model.layers.3.mlp.experts", 5, "gate_proj"))
        );
        assert_eq!(
            expert_parts("model.layers.3.block_sparse_moe.experts.12.w2"),
            Some(("model.layers.3.block_sparse_moe.experts", 12, "w2"))
        );
        assert_eq!(
            expert_parts("model.layers.3.mlp.shared_expert.up_proj"),
            None
        );
        assert_eq!(expert_parts("model.layers.0.self_attn.q_proj"), None);
    }

    #[test]
    fn rows_layout_puts_up_after_the_gate_and_down_per_expert() {
        let rows = FusedLayout::RowsGateThenUp;
        // gate_up [4, 2·3, 5]; expert 2's up rows start at 2·6·5 + 3·5.
        let up = expert_slice(rows, Role::Up, true, &[4, 6, 5], 2, (3, 5)).unwrap();
        assert_eq!(up.offset, 2 * 30 + 15);
        assert_eq!((up.row_stride, up.col_stride), (5, 1));
        let gate = expert_slice(rows, Role::Gate, true, &[4, 6, 5], 2, (3, 5)).unwrap();
        assert_eq!(gate.offset, 60);
        assert_eq!(gate.end(), 60 + 15);
        // down [4, 5, 3]: out 5, in 3.
        let down = expert_slice(rows, Role::Down, false, &[4, 5, 3], 3, (5, 3)).unwrap();
        assert_eq!((down.offset, down.end()), (45, 60));
        // Transposed shapes and missing experts are refused with the shape that would fit.
        let err = expert_slice(rows, Role::Gate, true, &[4, 5, 6], 0, (3, 5)).unwrap_err();
        assert!(err.contains("[E, 6, 5]"), "{err}");
        let err = expert_slice(rows, Role::Gate, true, &[4, 6, 5], 4, (3, 5)).unwrap_err();
        assert!(err.contains("more than 4 experts"), "{err}");
    }

    #[test]
    fn columns_layout_interleaves_gate_and_up_and_transposes_down() {
        let cols = FusedLayout::ColumnsInterleaved;
        // gate_up [2, H = 5, 2·I = 6]: expert 1's up feature o, input i at 30 + i·6 + 2·o + 1.
        let up = expert_slice(cols, Role::Up, true, &[2, 5, 6], 1, (3, 5)).unwrap();
        assert_eq!(
            (up.offset, up.row_stride, up.col_stride, up.rows, up.cols),
            (31, 2, 6, 3, 5)
        );
        assert_eq!(up.end(), 30 + 4 * 6 + 2 * 2 + 1 + 1);
        // down [2, I = 3, H = 5]: output o (of 5), input i (of 3) at 15 + i·5 + o.
        let down = expert_slice(cols, Role::Down, false, &[2, 3, 5], 1, (5, 3)).unwrap();
        assert_eq!((down.offset, down.row_stride, down.col_stride), (15, 1, 5));
        assert_eq!(down.end(), 30);
    }
}
