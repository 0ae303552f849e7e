//! vLLM (≥ 0.21, `enable_return_routed_experts`): one response per line, either the
//! OpenAI-compatible HTTP response (`prompt_routed_experts` at the top level, `routed_experts`
//! in each of `choices`) or the offline `RequestOutput` saved as JSON (`routed_experts` in each
//! of `outputs`). Arrays are `[tokens][layers][top_k]`; vLLM ≥ 0.21 lists MoE layers only,
//! earlier versions every decoder layer (dense ones as placeholders). Prefix-cache hits are −1
//! and are skipped.

use serde::Deserialize;

use super::nested_ints::NestedInts;
use super::reading::{
    ImportOptions, Monitor, Result, for_each_json_line, line_error, record_subject,
};
use super::tally::{FixedLayers, LayerMap, Tally};

#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    prompt_routed_experts: Option<NestedInts>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    outputs: Vec<Choice>,
    /// A single `CompletionOutput` saved on its own.
    #[serde(default)]
    routed_experts: Option<NestedInts>,
    #[serde(default)]
    meta_info: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    routed_experts: Option<NestedInts>,
}

/// Reads every file into `tally`; returns the layer map the arrays' width gave.
pub fn read(
    tally: &mut Tally,
    options: &ImportOptions,
    monitor: &mut Monitor<'_>,
) -> Result<Option<LayerMap>> {
    let mut layer_map = FixedLayers::default();
    for path in &options.files {
        for_each_json_line(path, monitor, "a vLLM response", |line, record: Record| {
            let bad = line_error(path, line);
            let generated = record
                .choices
                .iter()
                .chain(&record.outputs)
                .filter_map(|c| c.routed_experts.as_ref())
                .chain(record.routed_experts.as_ref());
            let mut arrays: Vec<&NestedInts> = Vec::new();
            let has_any =
                record.prompt_routed_experts.is_some() || generated.clone().next().is_some();
            if !has_any {
                let hint = if record.meta_info.is_some() {
                    " (it has meta_info: an SGLang response? use --format sglang)"
                } else {
                    " (was the engine started with --enable-return-routed-experts?)"
                };
                return Err(bad(format!(
                    "no prompt_routed_experts or routed_experts: not a vLLM response with routed experts{hint}"
                )));
            }
            if options.positions.prompt() {
                arrays.extend(record.prompt_routed_experts.as_ref());
            }
            if options.positions.generated() {
                arrays.extend(generated);
            }
            let subject = tally.begin_request(record_subject(
                record.subject.as_deref(),
                options,
                path,
                line,
            )?);
            for a in arrays {
                if a.rows() == 0 {
                    continue;
                }
                let [_, layers, k] = a.dims[..] else {
                    return Err(bad(format!(
                        "routed experts are a {}-dimensional array; vLLM writes [tokens][layers][top_k]",
                        a.dims.len()
                    )));
                };
                let top_k = tally.shape().top_k;
                if k != top_k {
                    return Err(bad(format!(
                        "rows of {layers} layers × {k} experts, but the model's top-k is {top_k}"
                    )));
                }
                let m = layer_map.map(layers, tally.shape()).map_err(&bad)?;
                tally.add_positions(subject, &a.values, k, m).map_err(|e| {
                    bad(format!(
                        "token {} has expert {} (slot {}), but the model has {} experts",
                        e.position,
                        e.expert,
                        e.slot,
                        tally.shape().num_experts
                    ))
                })?;
            }
            Ok(())
        })?;
    }
    Ok(layer_map.into_map())
}
