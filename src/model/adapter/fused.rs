//! The transformers-5 ("fused") form of an adapter, and how a family's modules are named there.
//!
//! transformers 5 keeps a layer's routed experts in one module (`model.layers.L.mlp.experts`)
//! holding two 3-D parameters, `gate_up_proj` `[E, 2I, H]` (expert e's gate rows, then its up
//! rows) and `down_proj` `[E, H, I]`; routers are modules holding a `weight` parameter rather
//! than `nn.Linear`s; Mixtral's, MiniMax-M2's and PhiMoE's `block_sparse_moe` blocks are named
//! `mlp` (PhiMoE's router `mlp.router`). PEFT adapts such parameters with `target_parameters`
//! (its `ParamWrapper`): for a parameter `[E, out, in]` and rank r, `lora_A.weight` is
//! `[E·r, in]` (expert e's A = rows `e·r .. (e+1)·r`) and `lora_B.weight` is `[out, E·r]` with
//! expert e's B in the columns `k·E + e`, k = 0..r (interleaved); the update of expert e is
//! `scale · B_e · A_e`. When both parameters of one module are targeted, PEFT wraps the module
//! twice: `gate_up_proj`'s pair is saved under `experts.base_layer.lora_*`, `down_proj`'s
//! under `experts.lora_*`.
//!
//! MoEScope's adapters are per expert and per projection. Converting to the fused form is exact:
//! expert e's gate and up pairs (rank r each) become one rank-2r pair of `gate_up_proj`
//! (`A = [A_gate; A_up]`, `B = [[B_gate, 0], [0, B_up]]`), written with a `rank_pattern` /
//! `alpha_pattern` entry so its scale stays the adapter's; experts without an adapter get zero
//! rows and columns, so they contribute exactly nothing. Reading goes the other way, for
//! MoEScope's own files and for adapters PEFT trained on fused experts (there `gate` and `up`
//! share expert e's A); rank components that are zero on either side are dropped, so a
//! converted adapter reads back with its own ranks.

use std::collections::BTreeMap;

use candle_core::{DType, Device, IndexOp, Tensor};

use crate::model::error::{ModelError, Result};
use crate::model::info::{Family, ModuleLayout};

/// One adapted module's low-rank pair.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// `[r, in]`, f32 on the CPU.
    pub a: Tensor,
    /// `[out, r]`, f32 on the CPU.
    pub b: Tensor,
}

impl LoraPair {
    /// A pair adapting nothing, and (both factors zero, so zero gradients) staying so when
    /// trained: `A` `[rank, in_dim]` and `B` `[out_dim, rank]` zero.
    pub fn zeros(rank: usize, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            a: Tensor::zeros((rank, in_dim), DType::F32, &Device::Cpu)?,
            b: Tensor::zeros((out_dim, rank), DType::F32, &Device::Cpu)?,
        })
    }
}

/// Where a Qwen3.5 checkpoint keeps its language model.
const QWEN3_5_NESTED: &str = "model.language_model.";

/// The model an adapter is read for or written for: the family decides how transformers 5
/// names modules, the layout how MoEScope (and the checkpoint) does.
#[derive(Debug, Clone, Copy)]
pub struct AdapterTarget<'a> {
    pub family: Family,
    pub layout: &'a ModuleLayout,
}

impl AdapterTarget<'_> {
    /// `name` in the layout's naming: a Qwen3.5 layout under `model.language_model` also takes
    /// the text model's `model.…` names (what `AutoModelForCausalLM`, and adapters made on it,
    /// call the same modules). Other names are returned as they are.
    pub fn checkpoint_name(&self, name: &str) -> String {
        let nested_layout = self.family == Family::Qwen3_5Moe
            && self.layout.expert_prefix.starts_with(QWEN3_5_NESTED);
        match name.strip_prefix("model.") {
            Some(rest) if nested_layout && !name.starts_with(QWEN3_5_NESTED) => {
                format!("{QWEN3_5_NESTED}{rest}")
            }
            _ => name.to_string(),
        }
    }
}

/// What a fused-form tensor pair adapts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FusedSlot {
    /// A layer's experts' `gate_up_proj` (`true`) or `down_proj` (`false`).
    Experts { layer: usize, gate_up: bool },
    /// A router's `weight` parameter (its module name in MoEScope's naming).
    Router(String),
    /// An `nn.Linear` (attention, shared experts, Gemma 4's router), MoEScope's name.
    Module(String),
}

/// Module and parameter names of one model in transformers 5.
pub struct FusedNames<'a> {
    /// Its layout's expert projections are gate, up and down, in that order ([`Self::new`]
    /// checks), so a projection's index in the layout is its role.
    target: AdapterTarget<'a>,
}

impl<'a> FusedNames<'a> {
    /// Refuses families whose transformers-5 experts are not `[E, 2I, H]` / `[E, H, I]`
    /// gate-then-up (gpt-oss keeps them transposed with gate and up interleaved, and biased).
    pub fn new(target: AdapterTarget<'a>) -> Result<Self> {
        if target.family == Family::GptOss {
            return Err(ModelError::msg(
                "gpt-oss experts are stored transposed with gate and up interleaved and biases; \
                 the fused (transformers 5) adapter form is not written or read for them: use the \
                 per-expert form",
            ));
        }
        let projections = &target.layout.expert_projections;
        let fits = projections.len() == 3
            && projections[0].in_features == projections[1].in_features
            && projections[0].out_features == projections[1].out_features
            && projections[2].in_features == projections[0].out_features
            && projections[2].out_features == projections[0].in_features;
        if !fits {
            return Err(ModelError::msg(format!(
                "{}: the experts are not gate / up / down projections, so they have no fused \
                 gate_up_proj / down_proj form",
                target.family.architecture()
            )));
        }
        Ok(Self { target })
    }

    fn layout(&self) -> &ModuleLayout {
        self.target.layout
    }

    /// (hidden, intermediate) of one expert.
    fn expert_dims(&self) -> (usize, usize) {
        let gate = &self.layout().expert_projections[0];
        (gate.in_features, gate.out_features)
    }

    /// MoEScope's (the checkpoint's) module name → transformers 5's.
    ///
    /// Qwen3.5 checkpoints keep the language model under `model.language_model`, which
    /// `AutoModelForCausalLM` (the text model PEFT fine-tunes) names `model`.
    pub fn to_transformers5(&self, name: &str) -> String {
        match self.target.family {
            Family::Qwen3_5Moe => match name.strip_prefix(QWEN3_5_NESTED) {
                Some(rest) => format!("model.{rest}"),
                None => name.to_string(),
            },
            Family::Mixtral | Family::MiniMaxM2 => name.replace(".block_sparse_moe.", ".mlp."),
            Family::PhiMoe => {
                let renamed = name.replace(".block_sparse_moe.", ".mlp.");
                match renamed.strip_suffix(".mlp.gate") {
                    Some(layer) => format!("{layer}.mlp.router"),
                    None => renamed,
                }
            }
            _ => name.to_string(),
        }
    }

    /// transformers 5's module name → MoEScope's (either Qwen3.5 naming is read).
    pub fn from_transformers5(&self, name: &str) -> String {
        match self.target.family {
            Family::Qwen3_5Moe => self.target.checkpoint_name(name),
            Family::Mixtral | Family::MiniMaxM2 => name.replace(".mlp.", ".block_sparse_moe."),
            Family::PhiMoe => {
                let renamed = match name.strip_suffix(".mlp.router") {
                    Some(layer) => format!("{layer}.mlp.gate"),
                    None => name.to_string(),
                };
                renamed.replace(".mlp.", ".block_sparse_moe.")
            }
            _ => name.to_string(),
        }
    }

    /// The transformers-5 name of layer `layer`'s experts module.
    pub fn experts_module(&self, layer: usize) -> String {
        let prefix = self
            .layout()
            .expert_prefix
            .replace("{layer}", &layer.to_string());
        let container = prefix.strip_suffix(".{expert}").unwrap_or(&prefix);
        self.to_transformers5(container)
    }

    /// Is the router a plain `nn.Linear` in transformers 5 (Gemma 4's `router.proj`)? Other
    /// families' routers are modules with a `weight` parameter, adapted as a parameter.
    fn router_is_linear(&self) -> bool {
        self.target.family == Family::Gemma4
    }

    /// The MoE layer whose router `name` (MoEScope's naming) is.
    fn router_layer(&self, name: &str) -> Option<usize> {
        match_template(&self.layout().router, name).map(|c| c[0])
    }

    /// (layer, expert, role index 0 gate / 1 up / 2 down) of a routed expert projection.
    fn expert_projection(&self, name: &str) -> Option<(usize, usize, usize)> {
        expert_cell(self.layout(), name)
    }

    /// Is `name` an attention, shared-expert or (linear) router module of the layout?
    fn is_other_module(&self, name: &str) -> bool {
        let layout = self.layout();
        let under = |template: &str| {
            let pieces: Vec<&str> = template.split("{layer}").collect();
            match pieces.as_slice() {
                [head, tail] => name.strip_prefix(head).is_some_and(|rest| {
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    digits > 0 && rest[digits..].starts_with(&format!("{tail}."))
                }),
                _ => false,
            }
        };
        self.router_layer(name).is_some()
            || under(&layout.attention_prefix)
            || layout.shared_expert_prefix.as_deref().is_some_and(under)
    }

    /// The MoE layer whose experts module (transformers-5 name) `module` is.
    fn experts_layer(&self, module: &str) -> Option<usize> {
        let ours = self.from_transformers5(module);
        let template = self.layout().expert_prefix.as_str();
        let template = template.strip_suffix(".{expert}").unwrap_or(template);
        match_template(template, &ours).map(|c| c[0])
    }

    /// What a saved pair under transformers-5 module `module` (with `.base_layer` segments
    /// removed) adapts, told from the pair's shapes: `gate_up_proj` is `[·, H]` → `[2I, ·]`,
    /// `down_proj` `[·, I]` → `[H, ·]`, and these never coincide.
    pub(crate) fn slot_of(&self, module: &str, a_in: usize, b_out: usize) -> Option<FusedSlot> {
        if let Some(layer) = self.experts_layer(module) {
            let (h, i) = self.expert_dims();
            return if (a_in, b_out) == (h, 2 * i) {
                Some(FusedSlot::Experts {
                    layer,
                    gate_up: true,
                })
            } else if (a_in, b_out) == (i, h) {
                Some(FusedSlot::Experts {
                    layer,
                    gate_up: false,
                })
            } else {
                None
            };
        }
        let ours = self.from_transformers5(module);
        if self.router_layer(&ours).is_some() && !self.router_is_linear() {
            return Some(FusedSlot::Router(ours));
        }
        Some(FusedSlot::Module(ours))
    }

    /// The PEFT pattern key (`target_parameters` entry / `rank_pattern` key) of a slot.
    pub(crate) fn parameter_key(&self, slot: &FusedSlot) -> String {
        match slot {
            FusedSlot::Experts { layer, gate_up } => format!(
                "{}.{}",
                self.experts_module(*layer),
                if *gate_up {
                    "gate_up_proj"
                } else {
                    "down_proj"
                }
            ),
            FusedSlot::Router(name) => format!("{}.weight", self.to_transformers5(name)),
            FusedSlot::Module(name) => self.to_transformers5(name),
        }
    }

    /// Splits MoEScope's per-module pairs into fused slots. Expert pairs are grouped per layer
    /// and projection; other modules map one to one. Every module must be one of the model's.
    pub(crate) fn group(
        &self,
        modules: &BTreeMap<String, LoraPair>,
    ) -> Result<BTreeMap<SlotKey, Vec<ExpertPair>>> {
        let mut slots: BTreeMap<SlotKey, Vec<ExpertPair>> = BTreeMap::new();
        for (name, pair) in modules {
            let key = if let Some((layer, expert, role)) = self.expert_projection(name) {
                slots
                    .entry(SlotKey::Experts {
                        layer,
                        gate_up: role < 2,
                    })
                    .or_default()
                    .push((expert, role, pair.clone()));
                continue;
            } else if self.router_layer(name).is_some() && !self.router_is_linear() {
                SlotKey::Router(name.clone())
            } else if self.is_other_module(name) {
                SlotKey::Module(name.clone())
            } else {
                return Err(ModelError::msg(format!(
                    "module '{name}' is not one of {}'s experts, routers, attention or shared \
                     experts (as named in {}.*)",
                    self.target.family.architecture(),
                    self.layout().expert_prefix
                )));
            };
            slots.entry(key).or_default().push((0, 0, pair.clone()));
        }
        Ok(slots)
    }

    /// The fused `[E·R, in]` / `[out, E·R]` pair of one layer's `gate_up_proj` (`gate_up`) or
    /// `down_proj` from per-expert pairs `(expert, role, pair)`, R the largest rank an expert
    /// needs (gate + up ranks for `gate_up_proj`); experts without pairs are zero.
    pub(crate) fn fuse_experts(
        &self,
        num_experts: usize,
        gate_up: bool,
        experts: &[(usize, usize, LoraPair)],
    ) -> Result<(Tensor, Tensor)> {
        let (h, i) = self.expert_dims();
        let (in_dim, out_dim) = if gate_up { (h, 2 * i) } else { (i, h) };
        // Per expert: its (row offset in B, pair) blocks, stacked along the rank.
        let mut per_expert: BTreeMap<usize, Vec<(usize, &LoraPair)>> = BTreeMap::new();
        for (expert, role, pair) in experts {
            if *expert >= num_experts {
                return Err(ModelError::msg(format!(
                    "expert {expert} is out of range: the model has {num_experts} experts"
                )));
            }
            let row = if *role == 1 { i } else { 0 };
            per_expert.entry(*expert).or_default().push((row, pair));
        }
        for blocks in per_expert.values_mut() {
            blocks.sort_by_key(|(row, _)| *row);
        }
        let rank = per_expert
            .values()
            .map(|blocks| blocks.iter().map(|(_, p)| p.a.dims()[0]).sum::<usize>())
            .max()
            .unwrap_or(0);
        let mut a = vec![0f32; num_experts * rank * in_dim];
        let mut b = vec![0f32; out_dim * rank * num_experts];
        for (&e, blocks) in &per_expert {
            let mut k0 = 0;
            for (row, pair) in blocks {
                let r = pair.a.dims()[0];
                let pa: Vec<Vec<f32>> = pair.a.to_dtype(DType::F32)?.to_vec2()?;
                let pb: Vec<Vec<f32>> = pair.b.to_dtype(DType::F32)?.to_vec2()?;
                for (k, a_row) in pa.iter().enumerate() {
                    let start = (e * rank + k0 + k) * in_dim;
                    a[start..start + in_dim].copy_from_slice(a_row);
                }
                for (o, b_row) in pb.iter().enumerate() {
                    for (k, &v) in b_row.iter().enumerate().take(r) {
                        b[(row + o) * rank * num_experts + (k0 + k) * num_experts + e] = v;
                    }
                }
                k0 += r;
            }
        }
        Ok((
            Tensor::from_vec(a, (num_experts * rank, in_dim), &Device::Cpu)?,
            Tensor::from_vec(b, (out_dim, rank * num_experts), &Device::Cpu)?,
        ))
    }

    /// Per-expert pairs of one fused `[E·r, in]` / `[out, E·r]` pair: `(name, pair)` for each
    /// expert with a non-zero update, zero rank components dropped; `gate_up_proj` splits into
    /// the gate (rows `0..I` of B) and up (rows `I..2I`) projections, sharing A.
    pub(crate) fn split_experts(
        &self,
        layer: usize,
        gate_up: bool,
        rank: usize,
        a: &Tensor,
        b: &Tensor,
    ) -> Result<Vec<(String, LoraPair)>> {
        let (rows, in_dim) = a.dims2()?;
        let (out_dim, cols) = b.dims2()?;
        if rank == 0 || !rows.is_multiple_of(rank) || rows != cols {
            return Err(ModelError::msg(format!(
                "lora_A is [{rows}, {in_dim}] and lora_B [{out_dim}, {cols}]: not experts × rank \
                 {rank}"
            )));
        }
        let num_experts = rows / rank;
        let (_, i) = self.expert_dims();
        let b3 = b.reshape((out_dim, rank, num_experts))?;
        let layout = self.layout();
        let name = |e: usize, role: usize| {
            layout.expert_module(layer, e, &layout.expert_projections[role].name)
        };
        let mut out = Vec::new();
        for e in 0..num_experts {
            let a_e = a.narrow(0, e * rank, rank)?;
            let b_e = b3.i((.., .., e))?.contiguous()?;
            let parts = if gate_up {
                vec![(0, b_e.narrow(0, 0, i)?), (1, b_e.narrow(0, i, i)?)]
            } else {
                vec![(2, b_e)]
            };
            for (role, b_part) in parts {
                if let Some(pair) = drop_zero_components(&a_e, &b_part)? {
                    out.push((name(e, role), pair));
                }
            }
        }
        Ok(out)
    }
}

/// `(expert, role, pair)`: one routed expert's projection (role 0 gate, 1 up, 2 down); other
/// modules are filed as `(0, 0, pair)`.
pub(crate) type ExpertPair = (usize, usize, LoraPair);

/// How [`FusedNames::group`] files a module.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SlotKey {
    Experts { layer: usize, gate_up: bool },
    Router(String),
    Module(String),
}

impl SlotKey {
    pub(crate) fn slot(&self) -> FusedSlot {
        match self {
            SlotKey::Experts { layer, gate_up } => FusedSlot::Experts {
                layer: *layer,
                gate_up: *gate_up,
            },
            SlotKey::Router(n) => FusedSlot::Router(n.clone()),
            SlotKey::Module(n) => FusedSlot::Module(n.clone()),
        }
    }
}

/// The pair without the rank components whose A row or B column is all zero; `None` when no
/// component is left (the update is zero).
pub(crate) fn drop_zero_components(a: &Tensor, b: &Tensor) -> Result<Option<LoraPair>> {
    let a_nonzero: Vec<f32> = a.abs()?.max(1)?.to_vec1()?;
    let b_nonzero: Vec<f32> = b.abs()?.max(0)?.to_vec1()?;
    let keep: Vec<u32> = (0..a_nonzero.len())
        .filter(|&k| a_nonzero[k] > 0.0 && b_nonzero[k] > 0.0)
        .map(|k| k as u32)
        .collect();
    if keep.is_empty() {
        return Ok(None);
    }
    if keep.len() == a_nonzero.len() {
        return Ok(Some(LoraPair {
            a: a.contiguous()?,
            b: b.contiguous()?,
        }));
    }
    let index = Tensor::new(keep.as_slice(), a.device())?;
    Ok(Some(LoraPair {
        a: a.index_select(&index, 0)?,
        b: b.index_select(&index, 1)?,
    }))
}

/// (layer, expert, index in the layout's expert projections) of a routed expert's module.
pub(crate) fn expert_cell(layout: &ModuleLayout, name: &str) -> Option<(usize, usize, usize)> {
    let (module, proj) = name.rsplit_once('.')?;
    let captures = match_template(&layout.expert_prefix, module)?;
    let projection = layout
        .expert_projections
        .iter()
        .position(|p| p.name == proj)?;
    Some((captures[0], captures[1], projection))
}

/// `modules` with a zero pair of rank `rank` for every expert projection missing from a layer
/// that has any adapted expert (the padded per-expert form).
pub(crate) fn pad_experts(
    layout: &ModuleLayout,
    modules: &BTreeMap<String, LoraPair>,
    num_experts: usize,
    rank: usize,
) -> Result<BTreeMap<String, LoraPair>> {
    let layers: std::collections::BTreeSet<usize> = modules
        .keys()
        .filter_map(|name| expert_cell(layout, name).map(|(layer, _, _)| layer))
        .collect();
    let mut padded = modules.clone();
    for layer in layers {
        for expert in 0..num_experts {
            for p in &layout.expert_projections {
                let name = layout.expert_module(layer, expert, &p.name);
                if let std::collections::btree_map::Entry::Vacant(slot) = padded.entry(name) {
                    slot.insert(LoraPair::zeros(rank, p.in_features, p.out_features)?);
                }
            }
        }
    }
    Ok(padded)
}

/// The numbers a `{layer}` / `{expert}` template captures from `name`, in order; `None` when
/// `name` does not fit the template.
pub(crate) fn match_template(template: &str, name: &str) -> Option<Vec<usize>> {
    let mut captures = Vec::new();
    let mut rest = name;
    let mut pieces = template.split('{');
    let first = pieces.next()?;
    rest = rest.strip_prefix(first)?;
    for piece in pieces {
        let (_, literal) = piece.split_once('}')?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        captures.push(rest[..digits].parse().ok()?);
        rest = rest[digits..].strip_prefix(literal)?;
    }
    rest.is_empty().then_some(captures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::info::Projection;

    fn layout(moe: &str, names: [&str; 3]) -> ModuleLayout {
        ModuleLayout {
            expert_prefix: format!("model.layers.{{layer}}.{moe}.experts.{{expert}}"),
            expert_projections: vec![
                Projection::new(names[0], 4, 3),
                Projection::new(names[1], 4, 3),
                Projection::new(names[2], 3, 4),
            ],
            shared_expert_prefix: None,
            shared_expert_projections: vec![],
            attention_prefix: "model.layers.{layer}.self_attn".into(),
            attention_projections: vec![],
            attention_overrides: Default::default(),
            router: format!("model.layers.{{layer}}.{moe}.gate"),
            router_in: 4,
        }
    }

    fn t(rows: &[&[f32]]) -> Tensor {
        let cols = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn templates_capture_layer_and_expert() {
        let tpl = "model.layers.{layer}.mlp.experts.{expert}";
        assert_eq!(
            match_template(tpl, "model.layers.12.mlp.experts.7"),
            Some(vec![12, 7])
        );
        assert_eq!(
            match_template(tpl, "model.layers.12.mlp.experts.7.w1"),
            None
        );
        assert_eq!(match_template(tpl, "model.layers.x.mlp.experts.7"), None);
        assert_eq!(match_template("a.{layer}", "a."), None);
    }

    #[test]
    fn mixtral_and_phimoe_names_map_both_ways() {
        let mix = layout("block_sparse_moe", ["w1", "w3", "w2"]);
        let names = FusedNames::new(AdapterTarget {
            family: Family::Mixtral,
            layout: &mix,
        })
        .unwrap();
        assert_eq!(names.experts_module(3), "model.layers.3.mlp.experts");
        assert_eq!(
            names.to_transformers5("model.layers.3.block_sparse_moe.gate"),
            "model.layers.3.mlp.gate"
        );
        assert_eq!(
            names.from_transformers5("model.layers.3.mlp.gate"),
            "model.layers.3.block_sparse_moe.gate"
        );
        let phi = FusedNames::new(AdapterTarget {
            family: Family::PhiMoe,
            layout: &mix,
        })
        .unwrap();
        assert_eq!(
            phi.to_transformers5("model.layers.3.block_sparse_moe.gate"),
            "model.layers.3.mlp.router"
        );
        assert_eq!(
            phi.from_transformers5("model.layers.3.mlp.router"),
            "model.layers.3.block_sparse_moe.gate"
        );
        assert_eq!(
            phi.slot_of("model.layers.3.mlp.router", 4, 8),
            Some(FusedSlot::Router(
                "model.layers.3.block_sparse_moe.gate".into()
            ))
        );
        assert_eq!(
            phi.slot_of("model.layers.3.mlp.experts", 4, 6),
            Some(FusedSlot::Experts {
                layer: 3,
                gate_up: true
            })
        );
        assert_eq!(
            phi.slot_of("model.layers.3.mlp.experts", 3, 4),
            Some(FusedSlot::Experts {
                layer: 3,
                gate_up: false
            })
        );
        assert_eq!(phi.slot_of("model.layers.3.mlp.experts", 4, 4), None);
    }

    /// Expert 1 of 2 with gate (rank 1) and up (rank 1): hand-built fused pair, then back.
    #[test]
    fn gate_and_up_fuse_block_diagonally_and_split_back() {
        let lay = layout("mlp", ["gate_proj", "up_proj", "down_proj"]);
        let names = FusedNames::new(AdapterTarget {
            family: Family::Olmoe,
            layout: &lay,
        })
        .unwrap();
        let gate = LoraPair {
            a: t(&[&[1., 2., 3., 4.]]),
            b: t(&[&[1.], &[2.], &[3.]]),
        };
        let up = LoraPair {
            a: t(&[&[5., 6., 7., 8.]]),
            b: t(&[&[4.], &[5.], &[6.]]),
        };
        let (a, b) = names
            .fuse_experts(2, true, &[(1, 0, gate.clone()), (1, 1, up.clone())])
            .unwrap();
        // Rank 2 per expert: A rows [e0k0, e0k1, e1k0, e1k1]; B columns k·E + e.
        assert_eq!(
            a.to_vec2::<f32>().unwrap(),
            vec![
                vec![0.; 4],
                vec![0.; 4],
                vec![1., 2., 3., 4.],
                vec![5., 6., 7., 8.]
            ]
        );
        assert_eq!(
            b.to_vec2::<f32>().unwrap(),
            vec![
                vec![0., 1., 0., 0.],
                vec![0., 2., 0., 0.],
                vec![0., 3., 0., 0.],
                vec![0., 0., 0., 4.],
                vec![0., 0., 0., 5.],
                vec![0., 0., 0., 6.],
            ]
        );
        let back = names.split_experts(5, true, 2, &a, &b).unwrap();
        let names_back: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names_back,
            [
                "model.layers.5.mlp.experts.1.gate_proj",
                "model.layers.5.mlp.experts.1.up_proj"
            ]
        );
        for ((_, got), want) in back.iter().zip([&gate, &up]) {
            assert_eq!(
                got.a.to_vec2::<f32>().unwrap(),
                want.a.to_vec2::<f32>().unwrap()
            );
            assert_eq!(
                got.b.to_vec2::<f32>().unwrap(),
                want.b.to_vec2::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn gpt_oss_has_no_fused_form() {
        let lay = layout("mlp", ["gate_proj", "up_proj", "down_proj"]);
        let err = FusedNames::new(AdapterTarget {
            family: Family::GptOss,
            layout: &lay,
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("per-expert"), "{err}");
    }
}
