//! Eval panel: a multiple-choice dataset (MMLU / MMLU-Pro layout, as `moescope eval` reads),
//! at most N questions per subject, Run with progress and Cancel; per subject the unsteered and
//! the steered accuracy (the Steering tab's table), their difference and 95 % bootstrap
//! intervals; the report saved as JSON.

use std::path::PathBuf;

use crate::inference::eval::{Estimate, SubjectResult};
use crate::steering::ApplyTo;

use super::dialogs::{DialogPurpose, Dialogs};
use super::state::{AppState, JobKind};
use super::steering_panel::SteeringPanel;

pub struct EvalPanel {
    /// The dataset file.
    pub data_field: String,
    /// At most this many questions per subject; 0 = all.
    pub limit: usize,
    pub report_field: String,
}

impl Default for EvalPanel {
    fn default() -> Self {
        Self {
            data_field: String::new(),
            limit: 50,
            report_field: "eval_report.json".into(),
        }
    }
}

fn pct(e: &Estimate) -> String {
    format!("{:.1}%", 100.0 * e.value)
}

fn ci(e: &Estimate) -> String {
    format!("[{:.1}, {:.1}]", 100.0 * e.ci_low, 100.0 * e.ci_high)
}

impl EvalPanel {
    /// Starts the eval job with the Steering tab's spec.
    pub fn run(&mut self, state: &mut AppState, steering: &SteeringPanel) {
        let path = PathBuf::from(self.data_field.trim());
        let spec = steering.spec(state);
        let limit = (self.limit > 0).then_some(self.limit);
        state.run_eval(&path, spec, limit);
    }

    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        state: &mut AppState,
        dialogs: &mut Dialogs,
        steering: &SteeringPanel,
    ) {
        ui.heading("Multiple-choice evaluation");
        ui.label(
            "Scores each question by the log-probability of each option letter after the \
             prompt, without and with the Steering tab's table; 95 % bootstrap intervals.",
        );
        ui.horizontal(|ui| {
            let label = ui.label("Eval data");
            ui.add(
                egui::TextEdit::singleline(&mut self.data_field)
                    .hint_text("MMLU / MMLU-Pro file: JSONL, CSV or Parquet")
                    .desired_width(360.0),
            )
            .labelled_by(label.id);
            if ui
                .button("Browse…")
                .on_hover_text("choose a multiple-choice dataset")
                .clicked()
            {
                dialogs.pick_file(
                    DialogPurpose::EvalData,
                    &["jsonl", "json", "csv", "parquet"],
                );
            }
        });
        ui.horizontal(|ui| {
            ui.add(
                egui::DragValue::new(&mut self.limit)
                    .range(0..=100_000)
                    .prefix("max questions per subject "),
            )
            .on_hover_text("at most this many questions per subject; 0 = all");
            if self.limit == 0 {
                ui.weak("(all)");
            }
        });
        ui.horizontal_wrapped(|ui| {
            ui.label(format!("Steered column: {}.", steering.summary()));
            ui.weak("Edit it on the Steering tab.");
        });
        if steering.rows.is_empty() || steering.strength == 0.0 {
            ui.colored_label(
                ui.visuals().warn_fg_color,
                "The steering table is empty or its strength is 0: steered equals unsteered.",
            );
        } else if steering.apply_to == ApplyTo::Generated {
            ui.colored_label(
                ui.visuals().warn_fg_color,
                "The table steers generated tokens only; scoring reads prompt tokens, so \
                 steered equals unsteered. Apply it to the prompt (or both) on the Steering tab.",
            );
        }
        let running = state.job(JobKind::Eval).cloned();
        ui.horizontal(|ui| {
            if ui
                .add_enabled(
                    state.model.is_some() && running.is_none(),
                    egui::Button::new("Run eval"),
                )
                .clicked()
            {
                self.run(state, steering);
            }
            if ui
                .add_enabled(running.is_some(), egui::Button::new("Cancel eval"))
                .clicked()
            {
                state.cancel();
            }
            if let Some(job) = &running {
                let bar = match job.fraction() {
                    Some(f) => egui::ProgressBar::new(f).show_percentage(),
                    None => egui::ProgressBar::new(0.0).animate(true),
                };
                ui.add(bar.desired_width(260.0).text(job.label.clone()));
            } else if state.model.is_none() {
                ui.weak("load a model to evaluate");
            }
        });
        ui.separator();
        let Some(out) = state.eval_output.clone() else {
            return;
        };
        let Some(report) = out.report.clone() else {
            if running.is_none() {
                ui.weak(format!("{}: no result (cancelled or failed)", out.data));
            }
            return;
        };
        ui.label(format!(
            "{} · {} questions · steering: {} · {} bootstrap resamples, seed {}",
            out.data, report.overall.questions, out.steering, report.resamples, report.seed
        ));
        if report.truncated > 0 {
            ui.weak(format!(
                "{} questions were cut from the left to fit the model's context",
                report.truncated
            ));
        }
        egui::ScrollArea::vertical()
            .id_salt("eval_results")
            .max_height(ui.available_height() - 40.0)
            .show(ui, |ui| {
                egui::Grid::new("eval_table")
                    .striped(true)
                    .num_columns(8)
                    .show(ui, |ui| {
                        for h in [
                            "subject",
                            "questions",
                            "unsteered",
                            "95% CI",
                            "steered",
                            "95% CI",
                            "delta",
                            "95% CI",
                        ] {
                            ui.strong(h);
                        }
                        ui.end_row();
                        for s in &report.subjects {
                            result_row(ui, s, false);
                        }
                        result_row(ui, &report.overall, true);
                    });
            });
        ui.horizontal(|ui| {
            let label = ui.label("Report file");
            ui.add(egui::TextEdit::singleline(&mut self.report_field).desired_width(220.0))
                .labelled_by(label.id);
            if ui.button("Save report").clicked() {
                let path = PathBuf::from(self.report_field.trim());
                let json = serde_json::json!({
                    "model": state.model.as_ref().map(|m| m.id.clone()),
                    "data": out.data,
                    "steering": out.steering,
                    "report": &*report,
                });
                let written = serde_json::to_vec_pretty(&json)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| {
                        crate::io::write_atomic(&path, &bytes).map_err(|e| e.to_string())
                    });
                match written {
                    Ok(()) => state.info(format!("saved the eval report to {}", path.display())),
                    Err(e) => state.error(format!("{}: cannot write: {e}", path.display())),
                }
            }
        });
    }
}

fn result_row(ui: &mut egui::Ui, s: &SubjectResult, overall: bool) {
    let text = |ui: &mut egui::Ui, t: String| {
        if overall {
            ui.strong(t);
        } else {
            ui.label(t);
        }
    };
    text(ui, s.subject.clone());
    text(ui, s.questions.to_string());
    text(ui, pct(&s.unsteered));
    ui.weak(ci(&s.unsteered));
    match (&s.steered, &s.delta) {
        (Some(st), Some(d)) => {
            text(ui, pct(st));
            ui.weak(ci(st));
            let t = format!("{:+.1} pp", 100.0 * d.value);
            // Colour a difference whose interval excludes 0.
            if d.ci_low > 0.0 {
                ui.colored_label(egui::Color32::from_rgb(80, 180, 90), t);
            } else if d.ci_high < 0.0 {
                ui.colored_label(ui.visuals().error_fg_color, t);
            } else {
                text(ui, t);
            }
            ui.weak(format!(
                "[{:+.1}, {:+.1}]",
                100.0 * d.ci_low,
                100.0 * d.ci_high
            ));
        }
        _ => {
            for _ in 0..4 {
                ui.weak("-");
            }
        }
    }
    ui.end_row();
}
