//! llama.cpp's moe-trace CSV: one `layer,expert` row per chosen expert (layer = the `blk.N`
//! block index), no token column, an optional `layer,expert` header. A layer's tokens are its
//! rows ÷ top-k. The file has no subjects: `--subject`, else the file's name.

use super::reading::{
    ImportError, ImportOptions, Monitor, Result, display, for_each_line, line_error,
};
use super::tally::Tally;

pub fn read(tally: &mut Tally, options: &ImportOptions, monitor: &mut Monitor<'_>) -> Result<()> {
    let n = tally.shape().num_experts;
    let k = tally.shape().top_k as u64;
    for path in &options.files {
        let subject = tally.subject(&super::reading::file_subject(
            path,
            options.subject.as_deref(),
        ));
        // Rows per layer of this file, counted as they come, added at the end.
        let mut per_layer: Vec<Vec<u64>> = Vec::new();
        for_each_line(path, monitor, |line, text| {
            let bad = line_error(path, line);
            let mut fields = text.split(|&b| b == b',');
            let (Some(a), Some(b), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(bad(format!(
                    "'{}' is not a layer,expert row (llama.cpp moe-trace CSV)",
                    String::from_utf8_lossy(text)
                )));
            };
            let (a, b) = (a.trim_ascii(), b.trim_ascii());
            if line == 1 && a == b"layer" && b == b"expert" {
                return Ok(());
            }
            let number = |field: &[u8], what: &str| -> Result<usize> {
                std::str::from_utf8(field)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "{what} '{}' is not a number (llama.cpp moe-trace rows are layer,expert)",
                            String::from_utf8_lossy(field)
                        ))
                    })
            };
            let (layer, expert) = (number(a, "layer")?, number(b, "expert")?);
            if expert >= n {
                return Err(bad(format!(
                    "expert {expert} in layer {layer}, but the model has {n} experts"
                )));
            }
            if layer >= per_layer.len() {
                if layer > 100_000 {
                    return Err(bad(format!("layer {layer} is not a layer number")));
                }
                per_layer.resize(layer + 1, Vec::new());
            }
            let counts = &mut per_layer[layer];
            if counts.is_empty() {
                counts.resize(n, 0);
            }
            counts[expert] += 1;
            Ok(())
        })?;
        for (layer, counts) in per_layer.iter().enumerate() {
            if counts.is_empty() {
                continue;
            }
            let rows: u64 = counts.iter().sum();
            if !rows.is_multiple_of(k) {
                return Err(ImportError::File {
                    path: display(path),
                    msg: format!(
                        "layer {layer} has {rows} rows, not a whole number of tokens at top-{k}"
                    ),
                });
            }
            tally.add_layer_counts(subject, layer, counts);
        }
        tally.records += 1;
    }
    Ok(())
}
