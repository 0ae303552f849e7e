//! PEFT LoRA adapters on disk: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Keys are PEFT's: `base_model.model.<module>.lora_A.weight` (`[r, in]`) and
//! `base_model.model.<module>.lora_B.weight` (`[out, r]`), `<module>` the full HF module name
//! (`model.layers.3.mlp.experts.5.gate_proj`). The scale is `lora_alpha / r` (or
//! `lora_alpha / √r` with `use_rslora`). Reading checks everything against the model the adapter
//! is applied to and names the file and the module when something does not fit; writing goes
//! through a temporary file and a rename, so an interrupted write never leaves half an adapter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::config::{AdapterForm, AdapterSettings, PeftTargets, peft_config};
use super::fused::{
    AdapterTarget, FusedNames, FusedSlot, LoraPair, SlotKey, drop_zero_components, pad_experts,
};
use crate::model::error::{ModelError, Result};
use crate::model::info::ModelInfo;
use crate::model::lora::LoraDelta;
use crate::model::moe_model::MoeModel;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";

/// A LoRA adapter: settings and one pair per module, by full module name.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub settings: AdapterSettings,
    pub modules: BTreeMap<String, LoraPair>,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> ModelError {
    ModelError::msg(format!("{}: {what}", path.display()))
}

impl Adapter {
    pub fn num_params(&self) -> u64 {
        self.modules
            .values()
            .map(|p| (p.a.elem_count() + p.b.elem_count()) as u64)
            .sum()
    }

    /// Reads an adapter folder (or the path of its `adapter_config.json`) for the model
    /// `target` names, in either form: per-expert `target_modules`, or transformers 5's fused
    /// `target_parameters` (written by MoEScope or trained by PEFT), which is split back into
    /// per-expert pairs. `rank_pattern` / `alpha_pattern` entries are honoured; every pair is
    /// returned at the adapter's own scale (a module with another scale has its B rescaled).
    pub fn load(dir: &Path, target: AdapterTarget<'_>) -> Result<Self> {
        let dir = if dir.is_file() {
            dir.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            dir.to_path_buf()
        };
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            bad(
                &cfg_path,
                format!("cannot read the adapter config ({e}); an adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE}"),
            )
        })?;
        let cfg: Value = serde_json::from_str(&text)
            .map_err(|e| bad(&cfg_path, format!("not valid JSON: {e}")))?;
        let settings = parse_settings(&cfg_path, &cfg)?;
        let patterns = Patterns::parse(&cfg_path, &cfg)?;
        let fused = cfg
            .get("target_parameters")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        let weights_path = dir.join(WEIGHTS_FILE);
        let saved = read_pairs(&weights_path)?;
        let mut modules = BTreeMap::new();
        let mut add = |name: String, pair: LoraPair, scale: f64| -> Result<()> {
            let pair = if (scale - settings.scale()).abs() > f64::EPSILON * scale.abs() {
                LoraPair {
                    a: pair.a,
                    b: (pair.b * (scale / settings.scale()))?,
                }
            } else {
                pair
            };
            if modules.insert(name.clone(), pair).is_some() {
                return Err(bad(
                    &weights_path,
                    format!("module '{name}' is adapted twice"),
                ));
            }
            Ok(())
        };
        let names = if fused {
            Some(FusedNames::new(target).map_err(|e| bad(&cfg_path, e))?)
        } else {
            None
        };
        for (path, pair) in saved {
            let Some(names) = &names else {
                let (rank, alpha) = patterns.rank_alpha(&path, &settings);
                check_rank(&weights_path, &path, &pair, rank)?;
                // The padded form's zero pairs of unselected experts adapt nothing.
                if let Some(pair) = drop_zero_components(&pair.a, &pair.b)? {
                    add(
                        target.checkpoint_name(&path),
                        pair,
                        settings.scale_for(rank, alpha),
                    )?;
                }
                continue;
            };
            let module = path.replace(".base_layer", "");
            let (a_in, b_out) = (pair.a.dims()[1], pair.b.dims()[0]);
            let Some(slot) = names.slot_of(&module, a_in, b_out) else {
                return Err(bad(
                    &weights_path,
                    format!(
                        "'{path}': lora_A {:?} and lora_B {:?} fit neither the experts' \
                         gate_up_proj nor their down_proj",
                        pair.a.dims(),
                        pair.b.dims()
                    ),
                ));
            };
            let key = names.parameter_key(&slot);
            let (rank, alpha) = patterns.rank_alpha(&key, &settings);
            let scale = settings.scale_for(rank, alpha);
            match slot {
                FusedSlot::Experts { layer, gate_up } => {
                    let experts = names
                        .split_experts(layer, gate_up, rank, &pair.a, &pair.b)
                        .map_err(|e| bad(&weights_path, format!("'{path}': {e}")))?;
                    for (name, expert_pair) in experts {
                        add(name, expert_pair, scale)?;
                    }
                }
                FusedSlot::Router(name) | FusedSlot::Module(name) => {
                    check_rank(&weights_path, &path, &pair, rank)?;
                    add(name, pair, scale)?;
                }
            }
        }
        if modules.is_empty() {
            return Err(bad(
                &weights_path,
                "the adapter's updates are all zero: it adapts nothing",
            ));
        }
        Ok(Self { settings, modules })
    }

    /// Writes the folder (created if missing) in the per-expert form: config and weights, each
    /// atomically.
    pub fn save(&self, dir: &Path) -> Result<u64> {
        let mut targets = PeftTargets::modules(&self.modules.keys().cloned().collect::<Vec<_>>());
        let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(self.modules.len() * 2);
        for (m, p) in &self.modules {
            self.note_rank(&mut targets, m, p.a.dims()[0]);
            push_pair(&mut tensors, m, p);
        }
        self.write(dir, &targets, &tensors)
    }

    /// Writes the folder in `form` for the model `target` names, with `num_experts` routed
    /// experts per MoE layer (the fused form holds every expert, zero where not adapted).
    pub fn save_as(
        &self,
        dir: &Path,
        form: AdapterForm,
        target: AdapterTarget<'_>,
        num_experts: usize,
    ) -> Result<u64> {
        match form {
            AdapterForm::PerExpert => return self.save(dir),
            AdapterForm::Padded => {
                let modules = pad_experts(
                    target.layout,
                    &self.modules,
                    num_experts,
                    self.settings.rank,
                )?;
                let padded = Adapter {
                    settings: self.settings.clone(),
                    modules,
                };
                return padded.save(dir);
            }
            AdapterForm::Fused => {}
        }
        let names = FusedNames::new(target).map_err(|e| bad(dir, e))?;
        let slots = names.group(&self.modules)?;
        let mut targets = PeftTargets::default();
        let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(slots.len() * 2);
        for (slot_key, members) in &slots {
            let slot = slot_key.slot();
            let key = names.parameter_key(&slot);
            let (tensor_path, pair) = match &slot {
                FusedSlot::Experts { layer, gate_up } => {
                    let (a, b) = names.fuse_experts(num_experts, *gate_up, members)?;
                    let module = names.experts_module(*layer);
                    // PEFT nests two parameter wrappers on one module: gate_up_proj's (the
                    // inner one) is saved under `base_layer`.
                    let both = slots.contains_key(&SlotKey::Experts {
                        layer: *layer,
                        gate_up: !*gate_up,
                    });
                    let path = if *gate_up && both {
                        format!("{module}.base_layer")
                    } else {
                        module
                    };
                    targets.parameters.push(key.clone());
                    (path, LoraPair { a, b })
                }
                FusedSlot::Router(_) => {
                    targets.parameters.push(key.clone());
                    let path = key.strip_suffix(".weight").unwrap_or(&key).to_string();
                    (path, members[0].2.clone())
                }
                FusedSlot::Module(_) => {
                    targets.modules.push(key.clone());
                    (key.clone(), members[0].2.clone())
                }
            };
            let rank = match &slot {
                FusedSlot::Experts { .. } => pair.a.dims()[0] / num_experts,
                _ => pair.a.dims()[0],
            };
            self.note_rank(&mut targets, &key, rank);
            push_pair(&mut tensors, &tensor_path, &pair);
        }
        self.write(dir, &targets, &tensors)
    }

    /// Records a module's rank (and the alpha keeping the adapter's scale) when it is not `r`.
    fn note_rank(&self, targets: &mut PeftTargets, key: &str, rank: usize) {
        if rank != self.settings.rank {
            targets.rank_pattern.insert(key.to_string(), rank);
            targets
                .alpha_pattern
                .insert(key.to_string(), self.settings.alpha_for(rank));
        }
    }

    fn write(
        &self,
        dir: &Path,
        targets: &PeftTargets,
        tensors: &[(String, Tensor)],
    ) -> Result<u64> {
        std::fs::create_dir_all(dir).map_err(|e| bad(dir, format!("cannot create: {e}")))?;
        let cfg = serde_json::to_vec_pretty(&peft_config(&self.settings, targets))
            .map_err(|e| ModelError::msg(e.to_string()))?;
        let bytes = safetensors_bytes(tensors, None)?;
        let weights_path = dir.join(WEIGHTS_FILE);
        crate::io::write_atomic(&weights_path, &bytes)
            .map_err(|e| bad(&weights_path, format!("cannot write: {e}")))?;
        let cfg_path = dir.join(CONFIG_FILE);
        crate::io::write_atomic(&cfg_path, &cfg)
            .map_err(|e| bad(&cfg_path, format!("cannot write: {e}")))?;
        Ok(bytes.len() as u64)
    }

    /// Checks every module against `model` (exists, shapes fit); `origin` names the adapter in
    /// errors. Modules a routing-only load left out (experts of the last MoE layer, which
    /// cannot change routing) are allowed when `allow_unloaded_experts`.
    fn check_against(
        &self,
        origin: &Path,
        model: &mut dyn MoeModel,
        allow_unloaded_experts: bool,
    ) -> Result<()> {
        let info = model.info().clone();
        let shapes: BTreeMap<String, (usize, usize)> = model
            .linears_mut()
            .into_iter()
            .map(|(n, l)| (n, (l.out_dim(), l.in_dim())))
            .collect();
        for (module, pair) in &self.modules {
            let Some(&(out, inp)) = shapes.get(module) else {
                if allow_unloaded_experts && is_layout_expert_module(&info, module) {
                    continue;
                }
                return Err(bad(
                    origin,
                    format!(
                        "adapter module '{module}' is not a linear layer of {} ({})",
                        info.id, info.architecture
                    ),
                ));
            };
            let (ad, bd) = (pair.a.dims(), pair.b.dims());
            if ad[1] != inp || bd[0] != out {
                return Err(bad(
                    origin,
                    format!(
                        "module '{module}': lora_A {ad:?} and lora_B {bd:?} do not fit the model's [{out}, {inp}] weight (expected lora_A [r, {inp}], lora_B [{out}, r])"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Folds the adapter into `model`'s weights (inference: no extra cost per token).
    pub fn merge_into(
        &self,
        origin: &Path,
        model: &mut dyn MoeModel,
        allow_unloaded_experts: bool,
    ) -> Result<()> {
        self.check_against(origin, model, allow_unloaded_experts)?;
        let scale = self.settings.scale();
        for (name, linear) in model.linears_mut() {
            if let Some(pair) = self.modules.get(&name) {
                let device = linear.weight.device().clone();
                let delta = LoraDelta {
                    a: pair.a.to_device(&device)?,
                    b: pair.b.to_device(&device)?,
                    scale,
                    dropout: None,
                };
                linear.merge_lora(&delta)?;
            }
        }
        Ok(())
    }
}

fn push_pair(tensors: &mut Vec<(String, Tensor)>, module: &str, pair: &LoraPair) {
    tensors.push((
        format!("{KEY_PREFIX}{module}.lora_A.weight"),
        pair.a.clone(),
    ));
    tensors.push((
        format!("{KEY_PREFIX}{module}.lora_B.weight"),
        pair.b.clone(),
    ));
}

fn check_rank(path: &Path, module: &str, pair: &LoraPair, rank: usize) -> Result<()> {
    if pair.a.dims()[0] != rank {
        return Err(bad(
            path,
            format!(
                "module '{module}' has rank {} but {CONFIG_FILE} gives it r = {rank}",
                pair.a.dims()[0]
            ),
        ));
    }
    Ok(())
}

/// The saved pairs of a weights file by key path (between `base_model.model.` and
/// `.lora_A.weight`), as f32 CPU matrices with matching ranks.
fn read_pairs(weights_path: &Path) -> Result<BTreeMap<String, LoraPair>> {
    let bytes =
        std::fs::read(weights_path).map_err(|e| bad(weights_path, format!("cannot read: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(weights_path, format!("not a valid safetensors file: {e}")))?;
    let mut halves: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (key, view) in st.tensors() {
        let Some(rest) = key.strip_prefix(KEY_PREFIX) else {
            return Err(bad(
                weights_path,
                format!("unexpected tensor '{key}' (PEFT keys start with '{KEY_PREFIX}')"),
            ));
        };
        let (module, which) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else {
            return Err(bad(
                weights_path,
                format!("tensor '{key}' is not a LoRA A/B weight (only plain LoRA is supported)"),
            ));
        };
        let t = tensor_from_view(&view)
            .and_then(|t| Ok(t.to_dtype(DType::F32)?))
            .map_err(|e| bad(weights_path, format!("tensor '{key}': {e}")))?;
        if t.rank() != 2 {
            return Err(bad(
                weights_path,
                format!("tensor '{key}' has shape {:?}, expected a matrix", t.dims()),
            ));
        }
        let slot = halves.entry(module.to_string()).or_default();
        if which == 0 {
            slot.0 = Some(t);
        } else {
            slot.1 = Some(t);
        }
    }
    if halves.is_empty() {
        return Err(bad(weights_path, "the adapter holds no LoRA tensors"));
    }
    let mut pairs = BTreeMap::new();
    for (module, (a, b)) in halves {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(bad(
                weights_path,
                format!("module '{module}' has only one of lora_A / lora_B"),
            ));
        };
        if a.dims()[0] != b.dims()[1] {
            return Err(bad(
                weights_path,
                format!(
                    "module '{module}': lora_A is {:?} and lora_B is {:?}; their ranks differ",
                    a.dims(),
                    b.dims()
                ),
            ));
        }
        pairs.insert(module, LoraPair { a, b });
    }
    Ok(pairs)
}

/// `rank_pattern` and `alpha_pattern`: PEFT gives a module or parameter the value of the
/// first key matching its name as the regex `(.*\.)?(key)$`.
struct Patterns {
    rank: Vec<(regex::Regex, usize)>,
    alpha: Vec<(regex::Regex, f64)>,
}

impl Patterns {
    fn parse(path: &Path, cfg: &Value) -> Result<Self> {
        fn entries<T>(
            path: &Path,
            cfg: &Value,
            field: &str,
            value: impl Fn(&Value) -> Option<T>,
        ) -> Result<Vec<(regex::Regex, T)>> {
            let Some(map) = cfg.get(field).and_then(Value::as_object) else {
                return Ok(Vec::new());
            };
            map.iter()
                .map(|(key, v)| {
                    let re = regex::Regex::new(&format!(r"^(.*\.)?({key})$")).map_err(|e| {
                        bad(
                            path,
                            format!("{field} key '{key}' is not a valid pattern: {e}"),
                        )
                    })?;
                    let v = value(v).ok_or_else(|| {
                        bad(path, format!("{field} value for '{key}' is not a number"))
                    })?;
                    Ok((re, v))
                })
                .collect()
        }
        Ok(Self {
            rank: entries(path, cfg, "rank_pattern", |v| {
                v.as_u64().filter(|&r| r > 0).map(|r| r as usize)
            })?,
            alpha: entries(path, cfg, "alpha_pattern", Value::as_f64)?,
        })
    }

    /// The rank and alpha PEFT gives `name`.
    fn rank_alpha(&self, name: &str, settings: &AdapterSettings) -> (usize, f64) {
        let rank = self
            .rank
            .iter()
            .find(|(re, _)| re.is_match(name))
            .map_or(settings.rank, |(_, r)| *r);
        let alpha = self
            .alpha
            .iter()
            .find(|(re, _)| re.is_match(name))
            .map_or(settings.alpha, |(_, a)| *a);
        (rank, alpha)
    }
}

/// Is `module` one of the routed or shared experts' projections in the model's layout?
fn is_layout_expert_module(info: &ModelInfo, module: &str) -> bool {
    let layout = &info.layout;
    info.moe_layers.iter().any(|&l| {
        (0..info.num_experts).any(|e| {
            layout
                .expert_projections
                .iter()
                .any(|p| layout.expert_module(l, e, &p.name) == module)
        }) || layout.shared_expert_prefix.as_ref().is_some_and(|prefix| {
            let prefix = prefix.replace("{layer}", &l.to_string());
            module
                .strip_prefix(&prefix)
                .is_some_and(|rest| rest.starts_with('.'))
        })
    })
}

fn parse_settings(path: &Path, cfg: &Value) -> Result<AdapterSettings> {
    let get = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    match get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        Some(other) => {
            return Err(bad(
                path,
                format!("peft_type is '{other}'; only LORA adapters are supported"),
            ));
        }
        None => return Err(bad(path, "no peft_type: not a PEFT adapter config")),
    }
    let rank = get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad(path, "'r' (the LoRA rank) is missing or not a whole number"))?
        as usize;
    if rank == 0 {
        return Err(bad(path, "'r' is 0; a LoRA rank must be at least 1"));
    }
    let alpha = get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad(path, "'lora_alpha' is missing or not a number"))?;
    for flag in ["use_dora", "fan_in_fan_out"] {
        if get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(bad(path, format!("'{flag}: true' is not supported")));
        }
    }
    Ok(AdapterSettings {
        rank,
        alpha,
        dropout: get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        use_rslora: get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
        base_model: get("base_model_name_or_path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    })
}

/// A safetensors view as a CPU tensor (f32, f16 or bf16).
pub(crate) fn tensor_from_view(view: &safetensors::tensor::TensorView<'_>) -> Result<Tensor> {
    use safetensors::Dtype;
    let dtype = match view.dtype() {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        other => {
            return Err(ModelError::msg(format!(
                "dtype {other:?} is not supported (f32, f16 or bf16)"
            )));
        }
    };
    Ok(Tensor::from_raw_buffer(
        view.data(),
        dtype,
        view.shape(),
        &Device::Cpu,
    )?)
}

/// Serialises named tensors (moved to the CPU, written in their dtype) with optional metadata.
pub(crate) fn safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let owned = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<Vec<(String, Tensor)>>>()?;
    safetensors::tensor::serialize(owned, metadata)
        .map_err(|e| ModelError::msg(format!("cannot serialise tensors: {e}")))
}

/// The adapter folder's files, for messages.
pub fn files(dir: &Path) -> [PathBuf; 2] {
    [dir.join(CONFIG_FILE), dir.join(WEIGHTS_FILE)]
}
