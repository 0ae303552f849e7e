//! Training panel: selective LoRA on the current selection (or all experts, or DAS's two-stage
//! recipe), the hyper-parameters `moescope train` takes, Train / Cancel / Resume, the loss
//! plotted live as steps arrive, the finished run's numbers, and "Profile with adapter", which
//! reloads the model with the new adapter merged and profiles the same prompts again.

use std::path::PathBuf;

use egui_plot::{Legend, Line, Plot, PlotPoints};

use crate::data::DataOptions;
use crate::gui::dialogs::{DialogPurpose, Dialogs};
use crate::gui::state::{AppState, JobKind};
use crate::train::{ExpertChoice, LoraOptions, StepMetrics, TrainOptions};

/// Which experts the run adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertMode {
    Selection,
    All,
    TwoStageDas,
}

pub struct TrainingPanel {
    pub experts: ExpertMode,
    /// Training data; empty = the prompts loaded on the data panel.
    pub data_field: String,
    /// Train on this subject only (`None`: every subject).
    pub domain: Option<String>,
    pub out_field: String,
    pub lora: LoraOptions,
    pub lr: f64,
    pub max_steps: u64,
    pub batch_size: usize,
    pub max_tokens: usize,
    pub seed: u64,
    pub resume: bool,
    /// Also report held-out perplexity per subject before and after (the loaded prompts'
    /// file, when it is a file or folder on disk).
    pub eval_field: String,
}

impl Default for TrainingPanel {
    fn default() -> Self {
        Self {
            experts: ExpertMode::Selection,
            data_field: String::new(),
            domain: None,
            out_field: "adapter".into(),
            lora: LoraOptions::default(),
            lr: 1e-3,
            max_steps: 100,
            batch_size: 8,
            max_tokens: 128,
            seed: 0,
            resume: false,
            eval_field: String::new(),
        }
    }
}

/// Moving average of the loss over `window` steps (the plotted trend).
pub fn smoothed(steps: &[StepMetrics], window: usize) -> Vec<[f64; 2]> {
    let w = window.max(1);
    let mut sum = 0.0;
    steps
        .iter()
        .enumerate()
        .map(|(i, m)| {
            sum += m.loss;
            if i >= w {
                sum -= steps[i - w].loss;
            }
            [m.step as f64, sum / (i + 1).min(w) as f64]
        })
        .collect()
}

impl TrainingPanel {
    /// The data file the run trains on: the field, else the loaded prompts' source.
    fn data_path(&self, state: &AppState) -> Option<PathBuf> {
        let field = self.data_field.trim();
        if !field.is_empty() {
            return Some(PathBuf::from(field));
        }
        state
            .prompts
            .as_ref()
            .map(|p| PathBuf::from(&p.source))
            .filter(|p| p.exists())
    }

    /// The options the Train button sends, or why it cannot start.
    pub fn options(&self, state: &AppState) -> Result<TrainOptions, String> {
        let Some(info) = &state.model else {
            return Err("load a model first".into());
        };
        if state.adapter.is_some() {
            return Err(
                "the loaded model has an adapter merged in: load the base model to train a new adapter"
                    .into(),
            );
        }
        let experts = match self.experts {
            ExpertMode::Selection => {
                if state.selected.is_empty() {
                    return Err(
                        "the selection is empty: click cells on the heatmap or apply a rule".into(),
                    );
                }
                ExpertChoice::Given(Box::new(state.selection()?))
            }
            ExpertMode::All => ExpertChoice::All,
            ExpertMode::TwoStageDas => {
                if self.domain.is_none() {
                    return Err("the two-stage DAS recipe needs a domain".into());
                }
                ExpertChoice::TwoStageDas {
                    stage1_steps: None,
                    experts_per_layer: None,
                }
            }
        };
        let data = self
            .data_path(state)
            .ok_or("choose a training data file (or load a dataset on the data panel)")?;
        let out = PathBuf::from(self.out_field.trim());
        if out.as_os_str().is_empty() {
            return Err("choose an output folder".into());
        }
        let mut opts = TrainOptions::new(&info.id, experts, &data, &out);
        opts.data_options = DataOptions {
            subject_optional: true,
            subject_column: non_empty(&state.ui.subject_column),
            text_column: non_empty(&state.ui.text_column),
            max_per_subject: None,
        };
        opts.domain = self.domain.clone();
        opts.lora = self.lora.clone();
        opts.lr = self.lr;
        opts.max_steps = Some(self.max_steps.max(1));
        opts.batch_size = self.batch_size.max(1);
        opts.max_tokens = self.max_tokens.max(2);
        opts.seed = self.seed;
        opts.resume = self.resume;
        opts.checkpoint_every = 25;
        let eval = self.eval_field.trim();
        opts.eval_data = (!eval.is_empty()).then(|| PathBuf::from(eval));
        Ok(opts)
    }

    fn start(&mut self, state: &mut AppState) {
        match self.options(state) {
            Ok(opts) => {
                state.start_training(opts);
            }
            Err(e) => state.error(e),
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, state: &mut AppState, dialogs: &mut Dialogs) {
        ui.heading("Selective LoRA");
        ui.label(
            "LoRA (W + (alpha/r) B A) on the chosen experts' projections only; the base model \
             stays frozen and each token runs through its routed experts only. Writes a PEFT \
             adapter, a checkpoint every 25 steps and metrics.jsonl into the output folder.",
        );
        egui::ScrollArea::vertical()
            .id_salt("training_scroll")
            .show(ui, |ui| {
                self.settings_ui(ui, state, dialogs);
                ui.separator();
                self.progress_ui(ui, state);
            });
    }

    fn settings_ui(&mut self, ui: &mut egui::Ui, state: &mut AppState, dialogs: &mut Dialogs) {
        ui.horizontal_wrapped(|ui| {
            ui.label("Experts");
            ui.radio_value(
                &mut self.experts,
                ExpertMode::Selection,
                format!("current selection ({} cells)", state.selected.len()),
            );
            ui.radio_value(&mut self.experts, ExpertMode::All, "all experts");
            ui.radio_value(
                &mut self.experts,
                ExpertMode::TwoStageDas,
                "two-stage DAS (attention + router, then top-DAS experts of the domain)",
            );
        });
        ui.horizontal_wrapped(|ui| {
            ui.label("Also adapt");
            ui.checkbox(&mut self.lora.scope.attention, "attention");
            ui.checkbox(&mut self.lora.scope.router, "router");
            ui.checkbox(&mut self.lora.scope.shared_experts, "shared experts");
        });
        ui.horizontal(|ui| {
            let label = ui.label("Training data");
            let hint = state
                .prompts
                .as_ref()
                .map_or("JSONL / CSV / Parquet / .txt".to_string(), |p| {
                    format!("(the loaded prompts: {})", p.source)
                });
            ui.add(
                egui::TextEdit::singleline(&mut self.data_field)
                    .hint_text(hint)
                    .desired_width(360.0),
            )
            .labelled_by(label.id);
            if ui
                .button("Browse…")
                .on_hover_text("choose the training data")
                .clicked()
            {
                dialogs.pick_file(
                    DialogPurpose::TrainData,
                    &["jsonl", "json", "csv", "tsv", "parquet", "txt"],
                );
            }
        });
        let subjects: Vec<String> = state
            .prompts
            .as_ref()
            .map(|p| p.subjects())
            .unwrap_or_default();
        ui.horizontal(|ui| {
            let label = ui.label("Domain");
            egui::ComboBox::from_id_salt("train_domain")
                .selected_text(self.domain.clone().unwrap_or_else(|| "all subjects".into()))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.domain, None, "all subjects");
                    for s in &subjects {
                        ui.selectable_value(&mut self.domain, Some(s.clone()), s);
                    }
                })
                .response
                .labelled_by(label.id);
        });
        ui.horizontal(|ui| {
            let label = ui.label("Output folder");
            ui.add(egui::TextEdit::singleline(&mut self.out_field).desired_width(360.0))
                .labelled_by(label.id);
            if ui
                .button("Browse…")
                .on_hover_text("choose the output folder")
                .clicked()
            {
                dialogs.pick_folder(DialogPurpose::TrainOut);
            }
        });
        ui.horizontal(|ui| {
            let label = ui.label("Held-out data");
            ui.add(
                egui::TextEdit::singleline(&mut self.eval_field)
                    .hint_text("optional: perplexity per subject before and after")
                    .desired_width(360.0),
            )
            .labelled_by(label.id);
        });
        ui.horizontal_wrapped(|ui| {
            ui.add(
                egui::DragValue::new(&mut self.lora.rank)
                    .range(1..=1024)
                    .prefix("rank "),
            )
            .on_hover_text("LoRA rank r");
            ui.add(
                egui::DragValue::new(&mut self.lora.alpha)
                    .range(0.0..=4096.0)
                    .prefix("alpha "),
            )
            .on_hover_text("LoRA alpha: the update is scaled by alpha / r");
            ui.add(
                egui::DragValue::new(&mut self.lora.dropout)
                    .range(0.0..=0.9)
                    .speed(0.01)
                    .prefix("dropout "),
            )
            .on_hover_text("LoRA dropout on the adapted modules' inputs");
            ui.add(
                egui::DragValue::new(&mut self.lr)
                    .range(1e-6..=1.0)
                    .speed(1e-5)
                    .custom_formatter(|v, _| format!("{v:.1e}"))
                    .prefix("lr "),
            )
            .on_hover_text("peak learning rate (linear warm-up, then linear decay)");
            ui.add(
                egui::DragValue::new(&mut self.max_steps)
                    .range(1..=1_000_000)
                    .prefix("steps "),
            )
            .on_hover_text("optimiser steps");
            ui.add(
                egui::DragValue::new(&mut self.batch_size)
                    .range(1..=512)
                    .prefix("batch "),
            )
            .on_hover_text("sequences per step");
            ui.add(
                egui::DragValue::new(&mut self.max_tokens)
                    .range(2..=32_768)
                    .prefix("max tokens "),
            )
            .on_hover_text("tokens per sequence (longer texts are cut)");
            ui.add(egui::DragValue::new(&mut self.seed).prefix("seed "))
                .on_hover_text("seed of the initialisation, data order and dropout");
        });
        if let (Some(info), ExpertMode::Selection) = (&state.model, self.experts) {
            let per_expert: u64 = info
                .layout
                .expert_projections
                .iter()
                .map(|p| (self.lora.rank * (p.in_features + p.out_features)) as u64)
                .sum();
            let all = per_expert * (info.moe_layers.len() * info.num_experts) as u64;
            let mine = per_expert * state.selected.len() as u64;
            ui.label(format!(
                "Expert LoRA parameters: {mine} ({:.1} % of the {all} of all-expert LoRA)",
                100.0 * mine as f64 / all.max(1) as f64
            ));
        }
        let running = state.job(JobKind::Train).cloned();
        ui.horizontal(|ui| {
            if ui
                .add_enabled(
                    running.is_none() && !state.is_busy(),
                    egui::Button::new("Train"),
                )
                .on_hover_text("start training with these settings")
                .clicked()
            {
                self.start(state);
            }
            if ui
                .add_enabled(running.is_some(), egui::Button::new("Cancel training"))
                .on_hover_text("stop after the current step and write a checkpoint")
                .clicked()
            {
                state.cancel();
            }
            ui.checkbox(&mut self.resume, "Resume")
                .on_hover_text("continue from the checkpoint in the output folder");
            if let Some(job) = &running {
                let bar = match job.fraction() {
                    Some(f) => egui::ProgressBar::new(f).show_percentage(),
                    None => egui::ProgressBar::new(0.0).animate(true),
                };
                ui.add(bar.desired_width(260.0).text(job.label.clone()));
            }
        });
    }

    fn progress_ui(&mut self, ui: &mut egui::Ui, state: &mut AppState) {
        let Some(t) = state.training.clone() else {
            ui.weak("No training run yet.");
            return;
        };
        if !t.stage.is_empty() {
            ui.label(&t.stage);
        }
        ui.horizontal_wrapped(|ui| {
            ui.label(format!("status: {}", t.status));
            if let Some(m) = t.steps.last() {
                ui.label(format!(
                    "step {} · loss {:.4} · lr {:.2e} · {:.0} tokens/s",
                    m.step, m.loss, m.lr, m.tokens_per_sec
                ));
                let (_, last) = t.stage_steps;
                if t.summary.is_none() && last > m.step && m.elapsed_sec > 0.0 {
                    let per_step = t
                        .steps
                        .iter()
                        .rev()
                        .take(10)
                        .map(|m| m.elapsed_sec)
                        .sum::<f64>()
                        / t.steps.len().min(10) as f64;
                    ui.label(format!("eta {:.0} s", per_step * (last - m.step) as f64));
                }
            }
        });
        if let Some(stopped) = &t.stopped {
            ui.colored_label(ui.visuals().warn_fg_color, stopped);
        }
        let raw: PlotPoints = t.steps.iter().map(|m| [m.step as f64, m.loss]).collect();
        let trend: PlotPoints = smoothed(&t.steps, 10).into_iter().collect();
        Plot::new("training_loss")
            .height(220.0)
            .legend(Legend::default())
            .x_axis_label("step")
            .y_axis_label("loss")
            .allow_scroll(false)
            .show(ui, |plot| {
                plot.line(Line::new("loss", raw));
                plot.line(Line::new("mean of 10 steps", trend));
            });
        if let Some(s) = &t.summary {
            egui::Grid::new("training_summary")
                .num_columns(2)
                .striped(true)
                .show(ui, |ui| {
                    let mut row = |k: &str, v: String| {
                        ui.label(k);
                        ui.label(v);
                        ui.end_row();
                    };
                    row("adapter", s.adapter_dir.clone());
                    row(
                        "form",
                        format!(
                            "{} (loads in {})",
                            s.adapter_form.label(),
                            s.adapter_form.loads_in()
                        ),
                    );
                    row(
                        "adapted",
                        format!(
                            "{} modules ({} experts)",
                            s.adapted_modules, s.adapted_experts
                        ),
                    );
                    row(
                        "parameters",
                        format!("{} ({} bytes)", s.trainable_params, s.adapter_bytes),
                    );
                    row(
                        "loss",
                        format!(
                            "{:.4} -> {:.4} (mean of first / last 10 steps)",
                            s.first_loss, s.final_loss
                        ),
                    );
                    row(
                        "time",
                        format!("{:.1} s, {:.0} tokens/s", s.train_seconds, s.tokens_per_sec),
                    );
                    for h in &s.heldout {
                        row(
                            &format!("ppl {}", h.subject),
                            format!("{:.2} -> {:.2}", h.before, h.after),
                        );
                    }
                });
            ui.horizontal(|ui| {
                let can = !state.is_busy() && state.prompts.is_some();
                if ui
                    .add_enabled(can, egui::Button::new("Profile with adapter"))
                    .on_hover_text(
                        "reload the model with this adapter merged and profile the loaded \
                         prompts again (save the current profile first to compare them)",
                    )
                    .clicked()
                {
                    state.auto_profile = true;
                    state.load_model_with_adapter(&t.model, Some(t.out.clone()));
                }
                if state.adapter.is_some()
                    && ui
                        .button("Back to the base model")
                        .on_hover_text("reload the model without the adapter")
                        .clicked()
                {
                    state.load_model(&t.model);
                }
            });
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64, loss: f64) -> StepMetrics {
        StepMetrics {
            stage: 0,
            step,
            loss,
            lr: 0.0,
            grad_norm: 0.0,
            tokens: 1,
            tokens_per_sec: 1.0,
            elapsed_sec: 1.0,
        }
    }

    #[test]
    fn smoothing_averages_the_last_window() {
        // Losses 4, 2, 6, 0 with a window of 2 → 4, 3, 4, 3.
        let s = smoothed(&[step(1, 4.0), step(2, 2.0), step(3, 6.0), step(4, 0.0)], 2);
        assert_eq!(s, vec![[1.0, 4.0], [2.0, 3.0], [3.0, 4.0], [4.0, 3.0]]);
    }
}
