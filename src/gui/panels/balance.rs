//! Expert load-balance panel (the "Load" tab): per-layer CV, cold share, coverage@k and
//! normalised entropy, and the global CV against the mean layer CV.

use egui_plot::{HLine, Legend, Line, Plot, PlotPoints};

use crate::analysis::balance::{LayerLoad, LoadSummary, layer_loads, load_summary};
use crate::gui::state::AppState;

/// What the cached balance statistics were computed for: profile generation, subject, k.
type BalanceKey = (u64, Option<String>, usize);

pub struct BalancePanel {
    /// `None` = pooled.
    subject: Option<String>,
    k: usize,
    cache: Option<(BalanceKey, (Vec<LayerLoad>, LoadSummary))>,
}

impl Default for BalancePanel {
    fn default() -> Self {
        Self {
            subject: None,
            k: 8,
            cache: None,
        }
    }
}

impl BalancePanel {
    pub fn ui(&mut self, ui: &mut egui::Ui, state: &mut AppState) {
        let Some(profile) = state.profile.clone() else {
            ui.label("No profile yet.");
            return;
        };
        let n = profile.model.num_experts.max(1);
        ui.horizontal(|ui| {
            let load_subject_label = ui.label("Data");
            egui::ComboBox::from_id_salt("load_subject")
                .selected_text(self.subject.clone().unwrap_or_else(|| "pooled".into()))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.subject, None, "pooled");
                    for s in &profile.subjects {
                        ui.selectable_value(&mut self.subject, Some(s.name.clone()), &s.name);
                    }
                })
                .response
                .labelled_by(load_subject_label.id);
            ui.label("coverage k");
            ui.add(egui::Slider::new(&mut self.k, 1..=n));
        });
        if self
            .subject
            .as_ref()
            .is_some_and(|s| profile.subject(s).is_none())
        {
            self.subject = None;
        }
        let key = (state.profile_generation, self.subject.clone(), self.k);
        if self.cache.as_ref().is_none_or(|(k, _)| *k != key) {
            let data = match &self.subject {
                Some(s) => profile
                    .subject(s)
                    .cloned()
                    .unwrap_or_else(|| profile.pooled()),
                None => profile.pooled(),
            };
            let loads = layer_loads(&data.count, &profile.model.moe_layers, self.k);
            let summary = load_summary(&data.count, &loads);
            self.cache = Some((key, (loads, summary)));
        }
        let Some((_, (loads, summary))) = &self.cache else {
            return;
        };
        ui.label(format!(
            "global CV {:.3} · mean layer CV {:.3}{} · mean cold share {:.1}% · mean coverage@{} {:.1}% · mean entropy {:.3}",
            summary.global_cv,
            summary.mean_layer_cv,
            summary
                .layer_to_global_ratio
                .map_or(String::new(), |r| format!(" ({r:.2}× global)")),
            summary.mean_cold_share * 100.0,
            self.k,
            summary.mean_coverage * 100.0,
            summary.mean_entropy
        ));
        let line = |name: &str, f: fn(&LayerLoad) -> f64| {
            Line::new(
                name.to_string(),
                loads
                    .iter()
                    .map(|l| [l.layer as f64, f(l)])
                    .collect::<PlotPoints>(),
            )
        };
        let h = (ui.available_height() / 2.0 - 10.0).max(120.0);
        Plot::new("cv_plot")
            .height(h)
            .legend(Legend::default())
            .x_axis_label("layer")
            .y_axis_label("CV")
            .show(ui, |plot| {
                plot.line(line("layer CV", |l| l.cv));
                plot.hline(HLine::new("global CV", summary.global_cv));
            });
        Plot::new("share_plot")
            .height(h)
            .legend(Legend::default())
            .x_axis_label("layer")
            .y_axis_label("share")
            .include_y(0.0)
            .include_y(1.0)
            .show(ui, |plot| {
                plot.line(line("cold share", |l| l.cold_share));
                plot.line(line(&format!("coverage@{}", self.k), |l| l.coverage));
                plot.line(line("normalised entropy", |l| l.entropy));
            });
    }
}
