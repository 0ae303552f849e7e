//! Megatron-LM router traces (`--moe-routing-trace-path DIR`): `router_trace_rank{r}.jsonl`, one
//! line per (step, block, layer) and rank with `num_tokens`, `topk` and `top_indices`
//! [num_tokens][topk]. Every rank's file is read and merged; `layer` is the MoE layer's index
//! in `decoder.layers` (mapped at the end, 0- or 1-based). Multi-token-prediction records
//! (`"block": "mtp"`) are not decoder layers: they are left out and counted in a note.

use serde::Deserialize;

use super::nested_ints::NestedInts;
use super::reading::{
    ImportOptions, Monitor, Result, for_each_json_line, line_error, record_subject,
};
use super::tally::Tally;

#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    block: Option<String>,
    layer: Option<usize>,
    num_tokens: Option<usize>,
    topk: Option<usize>,
    top_indices: Option<NestedInts>,
}

pub fn read(tally: &mut Tally, options: &ImportOptions, monitor: &mut Monitor<'_>) -> Result<()> {
    let mut mtp = 0u64;
    for path in &options.files {
        for_each_json_line(
            path,
            monitor,
            "a Megatron-LM router trace",
            |line, record: Record| {
                let bad = line_error(path, line);
                let (Some(layer), Some(indices)) = (record.layer, record.top_indices.as_ref())
                else {
                    return Err(bad(
                        "no layer and top_indices: not a Megatron-LM router trace record \
                     (router_trace_rank{r}.jsonl)"
                            .into(),
                    ));
                };
                tally.records += 1;
                if record.block.as_deref() == Some("mtp") {
                    mtp += 1;
                    return Ok(());
                }
                let top_k = tally.shape().top_k;
                let tokens = indices.rows();
                if tokens > 0 {
                    let [_, k] = indices.dims[..] else {
                        return Err(bad(format!(
                            "top_indices is a {}-dimensional array, not [num_tokens][topk]",
                            indices.dims.len()
                        )));
                    };
                    if k != top_k || record.topk.is_some_and(|t| t != k) {
                        return Err(bad(format!(
                            "rows of {k} experts (topk {}), but the model's top-k is {top_k}",
                            record.topk.map_or("absent".into(), |t| t.to_string())
                        )));
                    }
                }
                if let Some(n) = record.num_tokens
                    && n != tokens
                {
                    return Err(bad(format!(
                        "num_tokens is {n}, but top_indices has {tokens} rows"
                    )));
                }
                let subject = record_subject(record.subject.as_deref(), options, path, line)?;
                let subject = tally.subject(subject);
                tally
                    .add_layer_ids(
                        subject,
                        layer,
                        indices.values.iter().map(|&v| i64::from(v)),
                        tokens as u64,
                    )
                    .map_err(|e| {
                        bad(format!(
                            "expert {e} in layer {layer}, but the model has {} experts",
                            tally.shape().num_experts
                        ))
                    })
            },
        )?;
    }
    if mtp > 0 {
        tally.notes.push(format!(
            "{mtp} multi-token-prediction (mtp) records left out: they are not decoder layers"
        ));
    }
    Ok(())
}
