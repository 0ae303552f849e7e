//! Model panel: hub id, folder or GGUF file (pickers), recent models, load progress, the
//! `info` summary (with how each class of tensors is stored, for quantised files).

use crate::gui::dialogs::{DialogPurpose, Dialogs};
use crate::gui::state::{AppState, JobKind};
use crate::gui::widgets::text::human;

#[derive(Default)]
pub struct ModelPanel {
    /// The model field (hub id, folder or GGUF file).
    pub model_field: String,
}

impl ModelPanel {
    pub fn ui(&mut self, ui: &mut egui::Ui, state: &mut AppState, dialogs: &mut Dialogs) {
        ui.heading("Model");
        if self.model_field.is_empty() && !state.ui.last_model.is_empty() {
            self.model_field = state.ui.last_model.clone();
        }
        ui.horizontal(|ui| {
            let label = ui.label("Model");
            // Button first, right to left, so the field takes exactly what is left.
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if ui
                    .button("GGUF…")
                    .on_hover_text("a .gguf file (llama.cpp, LM Studio, Ollama)")
                    .clicked()
                {
                    dialogs.pick_file(DialogPurpose::ModelFolder, &["gguf"]);
                }
                if ui.button("Folder…").clicked() {
                    dialogs.pick_folder(DialogPurpose::ModelFolder);
                }
                ui.add(
                    egui::TextEdit::singleline(&mut self.model_field)
                        .hint_text("hub id, folder or .gguf file")
                        .desired_width(f32::INFINITY),
                )
                .labelled_by(label.id);
            });
        });
        let loading = state.job(JobKind::Load).is_some();
        ui.horizontal(|ui| {
            if ui
                .add_enabled(!loading, egui::Button::new("Load model"))
                .clicked()
            {
                let m = self.model_field.clone();
                state.load_model(&m);
            }
            if !state.ui.recent_models.is_empty() {
                egui::ComboBox::from_id_salt("recent_models")
                    .selected_text("recent")
                    .show_ui(ui, |ui| {
                        for m in state.ui.recent_models.clone() {
                            if ui.selectable_label(false, &m).clicked() {
                                self.model_field = m;
                            }
                        }
                    })
                    .response
                    .on_hover_text("recently loaded models");
            }
        });
        if let Some(job) = state.job(JobKind::Load) {
            let bar = match job.fraction() {
                Some(f) => egui::ProgressBar::new(f).text(job.label.clone()),
                None => egui::ProgressBar::new(0.0)
                    .animate(true)
                    .text(job.label.clone()),
            };
            ui.add(bar);
        }
        match &state.model {
            Some(info) => {
                egui::Grid::new("model_info")
                    .num_columns(2)
                    .striped(true)
                    .show(ui, |ui| {
                        let rows = [
                            ("model", info.id.clone()),
                            ("architecture", info.architecture.clone()),
                            (
                                "layers",
                                format!("{} ({} MoE)", info.num_layers, info.moe_layers.len()),
                            ),
                            (
                                "experts",
                                format!(
                                    "{} routed, top-{}, {} shared",
                                    info.num_experts, info.top_k, info.num_shared_experts
                                ),
                            ),
                            ("hidden size", info.hidden_size.to_string()),
                            ("vocab", info.vocab_size.to_string()),
                            (
                                "parameters",
                                format!(
                                    "{} total, {} active",
                                    human(info.total_params),
                                    human(info.active_params)
                                ),
                            ),
                            ("router", format!("{:?}", info.score_fn)),
                            ("device", info.device.clone()),
                            (
                                "weights",
                                if info.mapped {
                                    format!("{}, memory-mapped, read in place", info.dtype)
                                } else {
                                    format!("{}, in memory", info.dtype)
                                },
                            ),
                        ];
                        for (k, v) in rows {
                            ui.weak(k);
                            ui.label(v);
                            ui.end_row();
                        }
                        for s in &info.storage {
                            ui.weak(format!("  {}", s.class));
                            ui.label(&s.format);
                            ui.end_row();
                        }
                    });
            }
            None => {
                ui.weak("no model loaded");
            }
        }
    }
}
