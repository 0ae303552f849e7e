//! Tokens panel: type a prompt (or take one from the data), see its tokens; click a token to see
//! its experts and weights in every layer; colour tokens by the expert chosen in a layer.

use egui::Color32;

use crate::gui::state::{AppState, JobKind};

#[derive(Default)]
pub struct TokensPanel {
    pub prompt: String,
    pub selected_token: Option<usize>,
    /// Colour tokens by their top expert in this MoE layer row.
    pub colour_row: Option<usize>,
}

/// A distinct colour per expert id (golden-angle hues).
pub fn expert_color(expert: usize) -> Color32 {
    let hue = (expert as f32 * 0.618_034).fract();
    egui::ecolor::Hsva::new(hue, 0.55, 0.85, 1.0).into()
}

impl TokensPanel {
    pub fn ui(&mut self, ui: &mut egui::Ui, state: &mut AppState) {
        ui.horizontal(|ui| {
            ui.label("Prompt");
            ui.add(
                // Multi-line: prompts from the data often hold newlines.
                egui::TextEdit::multiline(&mut self.prompt)
                    .desired_rows(2)
                    .hint_text("type a prompt")
                    .desired_width(ui.available_width() - 220.0),
            );
            let tracing = state.job(JobKind::Trace).is_some();
            if ui
                .add_enabled(
                    state.model.is_some() && !tracing,
                    egui::Button::new("Route"),
                )
                .clicked()
            {
                let p = self.prompt.clone();
                state.trace(&p);
                self.selected_token = None;
            }
            if let Some(prompts) = state.prompts.clone() {
                egui::ComboBox::from_id_salt("prompt_pick")
                    .selected_text("from data")
                    .show_ui(ui, |ui| {
                        for subject in prompts.subjects() {
                            if let Some(p) = prompts.prompts_for(&subject).next() {
                                let short: String = p
                                    .text
                                    .chars()
                                    .take(60)
                                    .map(|c| if c.is_whitespace() { ' ' } else { c })
                                    .collect();
                                if ui
                                    .selectable_label(false, format!("{subject}: {short}"))
                                    .clicked()
                                {
                                    self.prompt = p.text.clone();
                                }
                            }
                        }
                    })
                    .response
                    .on_hover_text("pick a prompt from the data");
            }
        });
        if state.model.is_none() {
            ui.weak("load a model to route prompts");
        }
        let Some(trace) = state.trace.clone() else {
            return;
        };
        ui.horizontal(|ui| {
            let colour_layer_label = ui.label("Colour tokens by the top expert of");
            let text = self
                .colour_row
                .and_then(|r| trace.layers.get(r))
                .map_or("none".to_string(), |l| format!("layer {l}"));
            egui::ComboBox::from_id_salt("colour_layer")
                .selected_text(text)
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.colour_row, None, "none");
                    for (row, l) in trace.layers.iter().enumerate() {
                        ui.selectable_value(&mut self.colour_row, Some(row), format!("layer {l}"));
                    }
                })
                .response
                .labelled_by(colour_layer_label.id);
        });
        ui.separator();
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing.x = 2.0;
            for (i, t) in trace.tokens.iter().enumerate() {
                let shown = t.text.replace('\n', "\\n").replace('\t', "\\t");
                let shown = if shown.trim().is_empty() {
                    "·".repeat(shown.chars().count().max(1))
                } else {
                    shown
                };
                let mut text = egui::RichText::new(shown).monospace();
                if let Some(row) = self.colour_row
                    && let Some(&(e, _)) = t.experts.get(row).and_then(|x| x.first())
                {
                    text = text.background_color(expert_color(e)).color(Color32::BLACK);
                }
                if ui
                    .selectable_label(self.selected_token == Some(i), text)
                    .on_hover_text(format!("token {i}, id {}", t.id))
                    .clicked()
                {
                    self.selected_token = Some(i);
                }
            }
        });
        ui.separator();
        let Some(tok) = self.selected_token.and_then(|i| trace.tokens.get(i)) else {
            ui.weak("click a token to see its experts in every layer");
            return;
        };
        ui.heading(format!("token {:?} (id {})", tok.text, tok.id));
        egui::ScrollArea::vertical().show(ui, |ui| {
            egui::Grid::new("token_experts")
                .striped(true)
                .show(ui, |ui| {
                    ui.strong("layer");
                    ui.strong("experts (weight)");
                    ui.end_row();
                    for (row, experts) in tok.experts.iter().enumerate() {
                        ui.label(
                            trace
                                .layers
                                .get(row)
                                .map_or(String::new(), |l| l.to_string()),
                        );
                        ui.horizontal(|ui| {
                            for &(e, w) in experts {
                                let selected = trace
                                    .layers
                                    .get(row)
                                    .is_some_and(|&l| state.selected.contains(&(l, e)));
                                let mut t = egui::RichText::new(format!("E{e} {w:.3}"))
                                    .background_color(expert_color(e))
                                    .color(Color32::BLACK);
                                if selected {
                                    t = t.strong().underline();
                                }
                                ui.label(t);
                            }
                        });
                        ui.end_row();
                    }
                });
        });
    }
}
