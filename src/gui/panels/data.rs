//! Data panel: demo prompts or a JSONL / CSV / Parquet file (MMLU-Pro recognised), subject and
//! text columns chosen from a preview, prompts per subject, run / cancel profiling, save / open
//! profile files, and the loaded profile's summary (which routing signals it carries when not all
//! three and, for imported routing, where it came from).

use std::path::{Path, PathBuf};

use crate::gui::dialogs::{DialogPurpose, Dialogs};
use crate::gui::state::{AppState, JobKind};
use crate::profile::{ProfileSource, RoutingSignal};

#[derive(Default)]
pub struct DataPanel {
    pub dataset_field: String,
    pub profile_field: String,
    /// Columns and first rows of the dataset in the field (for the pickers).
    preview: Option<Preview>,
}

struct Preview {
    path: String,
    columns: Vec<String>,
    rows: Vec<Vec<(String, String)>>,
}

impl DataPanel {
    /// Reads columns and a few rows of `path` for the column pickers.
    pub fn preview(&mut self, state: &mut AppState, path: &Path) {
        let columns = crate::data::dataset_columns(path);
        let rows = crate::data::preview(path, 3);
        match (columns, rows) {
            (Ok(columns), Ok(rows)) => {
                self.preview = Some(Preview {
                    path: path.display().to_string(),
                    columns,
                    rows,
                });
            }
            (Err(e), _) | (_, Err(e)) => {
                self.preview = None;
                state.error(format!("{e:#}"));
            }
        }
    }

    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        state: &mut AppState,
        dialogs: &mut Dialogs,
        demo_prompts: Option<&Path>,
    ) {
        ui.heading("Data");
        if self.dataset_field.is_empty()
            && let Some(d) = &state.ui.last_dataset
        {
            self.dataset_field = d.clone();
        }
        ui.horizontal(|ui| {
            if let Some(dir) = demo_prompts
                && ui.button("Demo prompts").clicked()
            {
                match crate::data::load_prompt_dir(dir) {
                    Ok(p) => {
                        state.info(format!("{} demo prompts", p.len()));
                        state.set_prompts(p);
                    }
                    Err(e) => state.error(format!("{e:#}")),
                }
            }
            if ui.button("File…").clicked() {
                dialogs.pick_file(
                    DialogPurpose::Dataset,
                    &["jsonl", "json", "csv", "parquet", "txt"],
                );
            }
        });
        ui.horizontal(|ui| {
            let label = ui.label("Dataset");
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if ui.button("Read").clicked() {
                    let p = PathBuf::from(self.dataset_field.trim());
                    self.preview(state, &p);
                    state.load_prompts(&p);
                }
                ui.add(
                    egui::TextEdit::singleline(&mut self.dataset_field)
                        .hint_text(".jsonl / .csv / .parquet")
                        .desired_width(f32::INFINITY),
                )
                .labelled_by(label.id);
            });
        });
        if let Some(preview) = &self.preview {
            let mut reload = false;
            ui.horizontal(|ui| {
                reload |= column_picker(
                    ui,
                    "subject column",
                    &mut state.ui.subject_column,
                    &preview.columns,
                );
                reload |= column_picker(
                    ui,
                    "text column",
                    &mut state.ui.text_column,
                    &preview.columns,
                );
            });
            if reload {
                let p = PathBuf::from(&preview.path);
                state.load_prompts(&p);
            }
            egui::CollapsingHeader::new("preview")
                .default_open(false)
                .show(ui, |ui| {
                    egui::ScrollArea::horizontal().show(ui, |ui| {
                        egui::Grid::new("preview_grid")
                            .striped(true)
                            .show(ui, |ui| {
                                for c in &preview.columns {
                                    ui.strong(c);
                                }
                                ui.end_row();
                                for row in &preview.rows {
                                    for (_, v) in row {
                                        let short: String = v.chars().take(40).collect();
                                        ui.label(short);
                                    }
                                    ui.end_row();
                                }
                            });
                    });
                });
        }
        if let Some(prompts) = state.prompts.clone() {
            ui.label(format!("{} prompts from {}", prompts.len(), prompts.source));
            egui::CollapsingHeader::new(format!("{} subjects", prompts.subjects().len()))
                .id_salt("subject_counts")
                .show(ui, |ui| {
                    egui::Grid::new("subject_counts_grid")
                        .striped(true)
                        .show(ui, |ui| {
                            for (s, n) in prompts.counts() {
                                ui.label(s);
                                ui.label(n.to_string());
                                ui.end_row();
                            }
                        });
                });
        } else {
            ui.weak("no prompts");
        }
        ui.horizontal(|ui| {
            let label = ui.label("batch");
            ui.add(egui::DragValue::new(&mut state.ui.batch_size).range(1..=256))
                .labelled_by(label.id);
            let label = ui.label("max tokens");
            ui.add(egui::DragValue::new(&mut state.ui.max_tokens).range(0..=32768))
                .labelled_by(label.id)
                .on_hover_text("truncate prompts (0 = no limit)");
        });
        let profiling = state.job(JobKind::Profile).cloned();
        ui.horizontal(|ui| {
            let can_run = profiling.is_none() && state.model.is_some() && state.prompts.is_some();
            if ui
                .add_enabled(can_run, egui::Button::new("Run profiling"))
                .clicked()
            {
                state.run_profile();
            }
            if profiling.is_some() && ui.button("Cancel").clicked() {
                state.cancel();
            }
        });
        if let Some(job) = &profiling {
            ui.add(
                egui::ProgressBar::new(job.fraction().unwrap_or(0.0))
                    .show_percentage()
                    .text(job.label.clone()),
            );
        }
        ui.separator();
        let label = ui.label("Profile file");
        ui.add(
            egui::TextEdit::singleline(&mut self.profile_field)
                .hint_text("profile.json")
                .desired_width(f32::INFINITY),
        )
        .labelled_by(label.id);
        ui.horizontal(|ui| {
            if ui.button("Open").clicked() {
                if self.profile_field.trim().is_empty() {
                    dialogs.pick_file(DialogPurpose::OpenProfile, &["json"]);
                } else {
                    let p = PathBuf::from(self.profile_field.trim());
                    state.open_profile(&p);
                }
            }
            if ui
                .add_enabled(state.profile.is_some(), egui::Button::new("Save"))
                .clicked()
            {
                if self.profile_field.trim().is_empty() {
                    dialogs.save_file(DialogPurpose::SaveProfile, "profile.json");
                } else {
                    let p = PathBuf::from(self.profile_field.trim());
                    state.save_profile(&p);
                }
            }
        });
        if let Some(p) = &state.profile {
            let tokens: u64 = p.subjects.iter().map(|s| s.tokens).sum();
            ui.weak(format!(
                "profile: {} · {} subjects · {tokens} tokens",
                p.model.id,
                p.subjects.len()
            ));
            if p.signals.len() < RoutingSignal::ALL.len() || p.source.is_some() {
                ui.weak(format!("signals: {}", p.signals_caption()));
            }
            if let Some(src) = &p.source {
                source_ui(ui, src);
            }
        }
    }
}

/// Where an imported profile's routing came from: files, records, positions counted and
/// skipped, and how the engine's layers map to the model's (wrapped lines: the mapping can be
/// long).
fn source_ui(ui: &mut egui::Ui, src: &ProfileSource) {
    egui::CollapsingHeader::new(format!("imported from {}", src.format))
        .id_salt("profile_source")
        .default_open(true)
        .show(ui, |ui| {
            ui.label(format!("files: {}", files_text(&src.files)));
            ui.label(format!(
                "{} records, {} token positions",
                src.records, src.tokens
            ));
            ui.label(format!(
                "skipped positions: {} (no routing recorded: prefix-cache hits, padding)",
                src.skipped_positions
            ));
            ui.label(format!("layer mapping: {}", src.layer_mapping));
        });
}

/// The first few file names, and how many more.
fn files_text(files: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = files
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if files.len() > SHOWN {
        text.push_str(&format!(" and {} more", files.len() - SHOWN));
    }
    text
}

/// A combo box over `columns` (plus "auto"); true when the choice changed.
fn column_picker(ui: &mut egui::Ui, label: &str, value: &mut String, columns: &[String]) -> bool {
    let before = value.clone();
    let shown = if value.is_empty() {
        "auto".to_string()
    } else {
        value.clone()
    };
    egui::ComboBox::from_label(label)
        .selected_text(shown)
        .show_ui(ui, |ui| {
            ui.selectable_value(value, String::new(), "auto");
            for c in columns {
                ui.selectable_value(value, c.clone(), c);
            }
        });
    *value != before
}
