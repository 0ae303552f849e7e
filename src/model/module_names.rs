//! Full HF module names of a model's linear layers (`model.layers.3.mlp.experts.5.gate_proj`),
//! as [`crate::model::MoeModel::linears_mut`] lists them for LoRA and adapters.

use super::layers::Linear;

/// Pushes `prefix.name` for every linear layer a module owns.
pub(crate) fn push_named<'a>(
    out: &mut Vec<(String, &'a mut Linear)>,
    prefix: &str,
    named: impl IntoIterator<Item = (&'a str, &'a mut Linear)>,
) {
    for (name, linear) in named {
        out.push((format!("{prefix}.{name}"), linear));
    }
}
