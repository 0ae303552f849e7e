//! `checkpoint.safetensors`: every adapted module's LoRA pair, the AdamW moments of the
//! trainable ones and, in the file's metadata, the run's state (step, which modules are still
//! trained, the experts chosen, the run's identity). One file written through a temporary file
//! and a rename, so a crash or Ctrl-C mid-write leaves the previous checkpoint intact.

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::error::{Result, TrainError};
use super::metrics::read_metrics;
use super::trainer::Trainer;
use crate::model::adapter::LoraPair;
use crate::model::adapter::peft::{safetensors_bytes, tensor_from_view};
use crate::selection::Selection;

const FORMAT: &str = "moescope-train-checkpoint";
const VERSION: u32 = 1;
const META_KEY: &str = "moescope";

#[derive(Debug, Serialize, Deserialize)]
struct ModuleState {
    name: String,
    trainable: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    format: String,
    version: u32,
    step: u64,
    adam_steps: u64,
    modules: Vec<ModuleState>,
    selection: Option<Selection>,
    identity: serde_json::Value,
}

impl Trainer {
    /// Writes `checkpoint.safetensors` atomically.
    pub fn checkpoint(&self) -> Result<()> {
        save(self)
    }

    /// Restores the LoRA pairs, the optimiser state and the step from the checkpoint.
    pub(super) fn restore(&mut self) -> Result<()> {
        restore(self)
    }
}

fn save(t: &Trainer) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for m in &t.modules {
        tensors.push((format!("lora/{}/A", m.name), m.a.as_tensor().detach()));
        tensors.push((format!("lora/{}/B", m.name), m.b.as_tensor().detach()));
    }
    let trainable = t.modules.iter().filter(|m| m.trainable);
    let names = trainable.flat_map(|m| [format!("{}/A", m.name), format!("{}/B", m.name)]);
    for (name, (m1, m2)) in names.zip(&t.optimizer.moments) {
        tensors.push((format!("adam/{name}/m"), m1.clone()));
        tensors.push((format!("adam/{name}/v"), m2.clone()));
    }
    let state = State {
        format: FORMAT.into(),
        version: VERSION,
        step: t.step,
        adam_steps: t.optimizer.steps,
        modules: t
            .modules
            .iter()
            .map(|m| ModuleState {
                name: m.name.clone(),
                trainable: m.trainable,
            })
            .collect(),
        selection: t.selection.clone(),
        identity: t.opts.identity(),
    };
    let meta = serde_json::to_string(&state).map_err(|e| TrainError::Io(e.to_string()))?;
    let bytes = safetensors_bytes(&tensors, Some(HashMap::from([(META_KEY.into(), meta)])))?;
    let path = t.opts.checkpoint_path();
    crate::io::write_atomic(&path, &bytes).map_err(|e| {
        TrainError::Io(format!(
            "{}: cannot write the checkpoint: {e}",
            path.display()
        ))
    })
}

fn restore(t: &mut Trainer) -> Result<()> {
    let path = t.opts.checkpoint_path();
    let bad = |m: String| TrainError::Invalid(format!("{}: {m}", path.display()));
    let bytes = std::fs::read(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a valid checkpoint: {e}")))?;
    let state: State = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| bad("no training state in the file's metadata".into()))
        .and_then(|s| {
            serde_json::from_str(s).map_err(|e| bad(format!("unreadable training state: {e}")))
        })?;
    if state.format != FORMAT || state.version != VERSION {
        return Err(bad(format!(
            "format {} v{} is not a {FORMAT} v{VERSION}",
            state.format, state.version
        )));
    }
    let identity = t.opts.identity();
    if state.identity != identity {
        let differs: Vec<String> = identity
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| state.identity.get(k.as_str()) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: {} now, {} in the checkpoint",
                    v,
                    state
                        .identity
                        .get(k.as_str())
                        .unwrap_or(&serde_json::Value::Null)
                )
            })
            .collect();
        return Err(bad(format!(
            "the checkpoint belongs to a run with other settings ({}); resume with the same settings or choose another --out",
            differs.join("; ")
        )));
    }
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a valid checkpoint: {e}")))?;
    let get = |key: &str| -> Result<Tensor> {
        let view = st
            .tensor(key)
            .map_err(|_| bad(format!("tensor '{key}' is missing")))?;
        Ok(tensor_from_view(&view)?)
    };
    let mut frozen = BTreeMap::new();
    let mut trainable = BTreeMap::new();
    for m in &state.modules {
        let pair = LoraPair {
            a: get(&format!("lora/{}/A", m.name))?,
            b: get(&format!("lora/{}/B", m.name))?,
        };
        if m.trainable {
            trainable.insert(m.name.clone(), pair);
        } else {
            frozen.insert(m.name.clone(), pair);
        }
    }
    let frozen_names: Vec<String> = state
        .modules
        .iter()
        .filter(|m| !m.trainable)
        .map(|m| m.name.clone())
        .collect();
    let trainable_names: Vec<String> = state
        .modules
        .iter()
        .filter(|m| m.trainable)
        .map(|m| m.name.clone())
        .collect();
    t.attach(&frozen_names, &frozen, false)?;
    t.attach(&trainable_names, &trainable, true)?;
    t.reset_optimizer()?;
    let device = t.device.clone();
    let names: Vec<String> = t
        .modules
        .iter()
        .filter(|m| m.trainable)
        .flat_map(|m| [format!("{}/A", m.name), format!("{}/B", m.name)])
        .collect();
    for (name, slot) in names.iter().zip(t.optimizer.moments.iter_mut()) {
        *slot = (
            get(&format!("adam/{name}/m"))?.to_device(&device)?,
            get(&format!("adam/{name}/v"))?.to_device(&device)?,
        );
    }
    t.optimizer.steps = state.adam_steps;
    t.step = state.step;
    t.selection = state.selection;
    // Metrics past the checkpoint belong to steps that will be redone.
    let metrics_path = t.opts.metrics_path();
    t.history = read_metrics(&metrics_path, t.step);
    let mut text = String::new();
    for m in &t.history {
        text.push_str(&serde_json::to_string(m).map_err(|e| TrainError::Io(e.to_string()))?);
        text.push('\n');
    }
    crate::io::write_atomic(&metrics_path, text.as_bytes())
        .map_err(|e| TrainError::Io(format!("{}: {e}", metrics_path.display())))?;
    Ok(())
}
