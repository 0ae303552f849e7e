//! SGLang (`--enable-return-routed-experts`, request field `return_routed_experts: true`).
//!
//! - `/generate` responses, one per line (or a JSON array of them): `meta_info.routed_experts`
//!   is base64 of a row-major array (`meta_info.routed_experts_dtype`, int32 by default) of
//!   shape (rows, num_hidden_layers × top_k); row p is the routing of input token p, which
//!   produced token p + 1, so a request has prompt + completion − 1 rows. Dense layers hold
//!   placeholders. `/v1/completions` responses carry the same per choice, in `sgl_ext` (or
//!   `meta_info`), with the lengths in `usage`.
//! - The expert-distribution recorder's dumps (`torch.save` `.pt` files, told apart by their
//!   zip signature): `stat` mode's `logical_count` [steps, layers, experts] counts, and
//!   `per_token` mode's `records[i].topk_ids_of_layer` [layers, tokens, slots] physical expert
//!   ids (−1 padded), mapped to logical ids through `last_physical_to_logical_map`.

use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use super::reading::{
    ImportError, ImportOptions, Monitor, Positions, Result, display, for_each_parsed_line,
    line_error, record_subject,
};
use super::tally::{FixedLayers, LayerMap, Tally};
use super::torch_file::{TensorRef, TorchFile, Value};

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    routed_experts: Option<String>,
    #[serde(default)]
    routed_experts_dtype: Option<String>,
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    sgl_ext: Option<Meta>,
    #[serde(default)]
    meta_info: Option<Meta>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    meta_info: Option<Meta>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    prompt_routed_experts: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    One(Box<Record>),
    Many(Vec<Record>),
}

/// Reads every file into `tally`; returns the layer map the responses' width gave.
pub fn read(
    tally: &mut Tally,
    options: &ImportOptions,
    monitor: &mut Monitor<'_>,
) -> Result<Option<LayerMap>> {
    let mut layer_map = FixedLayers::default();
    for path in &options.files {
        if is_zip(path)? {
            read_dump(tally, options, path, &mut layer_map)?;
            monitor.advance(std::fs::metadata(path).map_or(0, |m| m.len()))?;
            continue;
        }
        let parse = |line: u64, text: &[u8]| -> Result<Vec<Response>> {
            parse_line(text).map_err(|msg| ImportError::Line {
                path: display(path),
                line,
                msg,
            })
        };
        for_each_parsed_line(path, monitor, parse, |line, responses| {
            let bad = line_error(path, line);
            for response in responses {
                let subject = tally.begin_request(record_subject(
                    response.subject.as_deref(),
                    options,
                    path,
                    line,
                )?);
                for routed in response.routed {
                    let ids = &routed.ids;
                    let layers = engine_layers(ids.len(), routed.prompt, routed.completion, tally)
                        .map_err(&bad)?;
                    let m = layer_map.map(layers, tally.shape()).map_err(&bad)?;
                    let k = tally.shape().top_k;
                    let width = layers * k;
                    let rows = ids.len() / width;
                    let (from, to) = match (options.positions, routed.prompt) {
                        (Positions::All, _) => (0, rows),
                        (Positions::Prompt, Some(p)) => (0, (p as usize).min(rows)),
                        (Positions::Generated, Some(p)) => ((p as usize).min(rows), rows),
                        (_, None) => {
                            return Err(bad(
                                "the response has no prompt_tokens, so prompt and generated \
                                 rows cannot be told apart; use --positions all"
                                    .into(),
                            ));
                        }
                    };
                    tally
                        .add_positions(subject, &ids[from * width..to * width], k, m)
                        .map_err(|e| {
                            bad(format!(
                                "row {} has expert {}, but the model has {} experts",
                                from + e.position,
                                e.expert,
                                tally.shape().num_experts
                            ))
                        })?;
                }
            }
            Ok(())
        })?;
    }
    Ok(layer_map.into_map())
}

/// One response of a line, its routed experts decoded.
struct Response {
    subject: Option<String>,
    routed: Vec<Routed>,
}

/// One `routed_experts` array with the token counts that say which rows are the prompt's.
struct Routed {
    ids: Vec<i32>,
    prompt: Option<u64>,
    completion: Option<u64>,
}

/// Parses a line (one response or an array of them) and decodes its routed experts.
fn parse_line(text: &[u8]) -> std::result::Result<Vec<Response>, String> {
    let records = match serde_json::from_slice::<Line>(text) {
        Ok(Line::One(r)) => vec![*r],
        Ok(Line::Many(r)) => r,
        Err(e) => return Err(format!("not an SGLang response line: {e}")),
    };
    let mut bytes = Vec::new();
    records
        .into_iter()
        .map(|record| {
            let usage = record.usage.as_ref();
            let mut metas: Vec<&Meta> = record.meta_info.iter().collect();
            for c in &record.choices {
                metas.extend(c.sgl_ext.iter().chain(&c.meta_info));
            }
            metas.retain(|m| m.routed_experts.is_some());
            if metas.is_empty() {
                let hint = if record.prompt_routed_experts.is_some() {
                    " (it has prompt_routed_experts: a vLLM response? use --format vllm)"
                } else {
                    " (was the server started with --enable-return-routed-experts and the \
                     request sent with \"return_routed_experts\": true?)"
                };
                return Err(format!(
                    "no meta_info.routed_experts: not an SGLang response with routed experts{hint}"
                ));
            }
            let routed = metas
                .into_iter()
                .map(|meta| {
                    let mut ids = Vec::new();
                    decode(meta, &mut bytes, &mut ids)?;
                    Ok(Routed {
                        ids,
                        prompt: meta.prompt_tokens.or(usage.and_then(|u| u.prompt_tokens)),
                        completion: meta
                            .completion_tokens
                            .or(usage.and_then(|u| u.completion_tokens)),
                    })
                })
                .collect::<std::result::Result<_, String>>()?;
            Ok(Response {
                subject: record.subject.clone(),
                routed,
            })
        })
        .collect()
}

/// Decodes `meta.routed_experts` into `ids`.
fn decode(meta: &Meta, bytes: &mut Vec<u8>, ids: &mut Vec<i32>) -> std::result::Result<(), String> {
    let text = meta.routed_experts.as_deref().unwrap_or_default();
    bytes.clear();
    base64::engine::general_purpose::STANDARD
        .decode_vec(text, bytes)
        .map_err(|e| format!("meta_info.routed_experts is not base64: {e}"))?;
    let dtype = meta.routed_experts_dtype.as_deref().unwrap_or("int32");
    let dtype = dtype.strip_prefix("torch.").unwrap_or(dtype);
    let size = match dtype {
        "int32" | "uint32" => 4,
        "int16" | "uint16" => 2,
        "int8" | "uint8" => 1,
        "int64" => 8,
        other => {
            return Err(format!(
                "routed_experts_dtype '{other}' is not an integer type MoEScope reads (int32, \
                 int16, uint16, int8, uint8, int64)"
            ));
        }
    };
    if !bytes.len().is_multiple_of(size) {
        return Err(format!(
            "routed_experts holds {} bytes, not a whole number of {dtype} values",
            bytes.len()
        ));
    }
    ids.clear();
    ids.extend(bytes.chunks_exact(size).map(|b| {
        match dtype {
            "int32" => i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            "uint32" => {
                i32::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(i32::MAX)
            }
            "int16" => i32::from(i16::from_le_bytes([b[0], b[1]])),
            "uint16" => i32::from(u16::from_le_bytes([b[0], b[1]])),
            "int8" => i32::from(b[0] as i8),
            "uint8" => i32::from(b[0]),
            _ => i64::from_le_bytes(b.try_into().expect("8 bytes"))
                .clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
        }
    }));
    Ok(())
}

/// The engine layers per row of `values` ids: the model's decoder layers (SGLang's layout) or
/// its MoE layers, whichever makes whole rows (and matches the token counts when known).
fn engine_layers(
    values: usize,
    prompt: Option<u64>,
    completion: Option<u64>,
    tally: &Tally,
) -> std::result::Result<usize, String> {
    let shape = tally.shape();
    let k = shape.top_k;
    let mut candidates = vec![shape.num_layers];
    if shape.moe_layers.len() != shape.num_layers {
        candidates.push(shape.moe_layers.len());
    }
    let expected_rows = prompt.map(|p| p + completion.unwrap_or(0));
    let fits = |l: usize| {
        let width = l * k;
        values.is_multiple_of(width)
            && expected_rows.is_none_or(|r| {
                let rows = (values / width) as u64;
                rows == r || rows + 1 == r
            })
    };
    candidates
        .iter()
        .copied()
        .find(|&l| fits(l))
        .ok_or_else(|| {
            let rows = match expected_rows {
                Some(r) => format!(
                    " for {} rows (prompt + completion − 1)",
                    r.saturating_sub(1)
                ),
                None => String::new(),
            };
            format!(
                "routed_experts holds {values} values{rows}, which is not whole rows of \
             layers × top-k: the model has {} decoder layers ({} MoE) × top-{k}",
                shape.num_layers,
                shape.moe_layers.len()
            )
        })
}

/// True for zip archives (`torch.save` files start with `PK`).
fn is_zip(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|source| ImportError::Io {
        path: display(path),
        source,
    })?;
    let n = f.read(&mut magic).map_err(|source| ImportError::Io {
        path: display(path),
        source,
    })?;
    Ok(n == 4 && magic == *b"PK\x03\x04")
}

/// Reads a recorder dump (`stat` or `per_token` mode).
fn read_dump(
    tally: &mut Tally,
    options: &ImportOptions,
    path: &Path,
    layer_map: &mut FixedLayers,
) -> Result<()> {
    let bad = |msg: String| ImportError::File {
        path: display(path),
        msg,
    };
    let subject = super::reading::file_subject(path, options.subject.as_deref());
    let mut file = TorchFile::open(path).map_err(&bad)?;
    let root = std::mem::replace(&mut file.root, Value::None);
    let subject = tally.subject(&subject);
    if let Some(Value::Tensor(counts)) = root.get("logical_count") {
        let [_, layers, experts] = counts.shape[..] else {
            return Err(bad(format!(
                "logical_count has shape {:?}; the stat dump writes [steps, layers, experts]",
                counts.shape
            )));
        };
        check_experts(experts, tally).map_err(&bad)?;
        let m = layer_map.map(layers, tally.shape()).map_err(&bad)?;
        let values = file.read_i64(counts).map_err(&bad)?;
        let mut per_layer = vec![vec![0u64; experts]; layers];
        for step in values.chunks_exact(layers * experts) {
            for (acc, layer) in per_layer.iter_mut().zip(step.chunks_exact(experts)) {
                for (a, &c) in acc.iter_mut().zip(layer) {
                    *a += u64::try_from(c).map_err(|_| bad(format!("a negative count {c}")))?;
                }
            }
        }
        let mut tokens = None;
        for (engine_layer, counts) in per_layer.iter().enumerate() {
            if let Some(row) = m.rows[engine_layer] {
                tally.add_row_counts(subject, row, counts);
                tokens.get_or_insert(counts.iter().sum::<u64>() / tally.shape().top_k as u64);
            }
        }
        tally.add_tokens(subject, tokens.unwrap_or(0));
        tally.records += 1;
        return Ok(());
    }
    let Some(Value::List(records)) = root.get("records") else {
        return Err(bad(format!(
            "neither logical_count (stat mode) nor records (per_token mode): not an SGLang \
             expert-distribution dump (it holds: {})",
            root.keys().join(", ")
        )));
    };
    let physical_to_logical = match root.get("last_physical_to_logical_map") {
        Some(Value::Tensor(t)) => Some((t.clone(), file.read_i64(t).map_err(&bad)?)),
        _ => None,
    };
    let mut ids = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let Some(Value::Tensor(topk)) = record.get("topk_ids_of_layer") else {
            return Err(bad(format!(
                "records[{i}] has no topk_ids_of_layer: was the recorder in per_token mode? (it holds: {})",
                record.keys().join(", ")
            )));
        };
        let [layers, tokens, slots] = topk.shape[..] else {
            return Err(bad(format!(
                "records[{i}].topk_ids_of_layer has shape {:?}, not [layers, tokens, slots]",
                topk.shape
            )));
        };
        let m = layer_map.map(layers, tally.shape()).map_err(&bad)?;
        let values = file.read_i64(topk).map_err(&bad)?;
        ids.clear();
        ids.resize(tokens * layers * slots, -1);
        for l in 0..layers {
            for t in 0..tokens {
                for s in 0..slots {
                    let id = values[(l * tokens + t) * slots + s];
                    ids[(t * layers + l) * slots + s] =
                        logical(id, l, physical_to_logical.as_ref())
                            .map_err(|e| bad(format!("records[{i}], layer {l}, token {t}: {e}")))?;
                }
            }
        }
        tally.add_positions(subject, &ids, slots, m).map_err(|e| {
            bad(format!(
                "records[{i}], token {}: expert {}, but the model has {} experts",
                e.position,
                e.expert,
                tally.shape().num_experts
            ))
        })?;
        tally.records += 1;
    }
    Ok(())
}

/// A physical expert id as a logical one (−1 stays −1).
fn logical(
    id: i64,
    layer: usize,
    map: Option<&(TensorRef, Vec<i64>)>,
) -> std::result::Result<i32, String> {
    if id < 0 {
        return Ok(-1);
    }
    let Some((t, values)) = map else {
        return i32::try_from(id).map_err(|_| format!("expert id {id} is out of range"));
    };
    let [_, physical] = t.shape[..] else {
        return Err(format!(
            "last_physical_to_logical_map has shape {:?}, not [layers, physical experts]",
            t.shape
        ));
    };
    let at = layer * physical + id as usize;
    if id as usize >= physical || at >= values.len() {
        return Err(format!(
            "physical expert {id} is outside the map's {physical} physical experts"
        ));
    }
    i32::try_from(values[at]).map_err(|_| format!("logical id {} is out of range", values[at]))
}

fn check_experts(experts: usize, tally: &Tally) -> std::result::Result<(), String> {
    let n = tally.shape().num_experts;
    if experts != n {
        return Err(format!(
            "the dump counts {experts} experts per layer, but the model has {n}"
        ));
    }
    Ok(())
}
