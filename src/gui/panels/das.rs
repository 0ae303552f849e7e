//! DAS panel: domain and general pickers, the signal DAS is computed on (routing scores, or
//! counts for profiles without scores: "DAS on counts"), the ranked (layer, expert) table,
//! C-DAS@k and "select top-k".

use std::collections::BTreeSet;

use crate::analysis::das::{
    CumulativeDas, ExpertDas, GeneralSet, cumulative_das, default_das_signal, domain_advantage,
    top_das_experts,
};
use crate::gui::state::AppState;
use crate::profile::{RoutingProfile, RoutingSignal};
use crate::selection::{SelectionRule, select};

/// The ranked experts and C-DAS of one (domain, general) choice, or why there are none.
type DasResult = Result<(Vec<ExpertDas>, CumulativeDas), String>;

pub struct DasPanel {
    domain: Option<String>,
    /// Empty = every other subject.
    general: BTreeSet<String>,
    k: usize,
    cache: Option<(Key, DasResult)>,
}

type Key = (u64, Option<String>, BTreeSet<String>, usize);

impl Default for DasPanel {
    fn default() -> Self {
        Self {
            domain: None,
            general: BTreeSet::new(),
            k: 4,
            cache: None,
        }
    }
}

const TABLE_ROWS: usize = 200;

impl DasPanel {
    pub fn ui(&mut self, ui: &mut egui::Ui, state: &mut AppState) {
        let Some(profile) = state.profile.clone() else {
            ui.label("No profile yet.");
            return;
        };
        if profile.subjects.len() < 2 {
            ui.label(
                "DAS compares a domain with general data: the profile needs two subjects or more.",
            );
            return;
        }
        if self
            .domain
            .as_ref()
            .is_none_or(|d| profile.subject(d).is_none())
        {
            self.domain = profile.subjects.first().map(|s| s.name.clone());
        }
        self.general
            .retain(|g| profile.subject(g).is_some() && Some(g) != self.domain.as_ref());
        let n = profile.model.num_experts.max(1);
        self.k = self.k.clamp(1, n);
        ui.horizontal_wrapped(|ui| {
            let das_domain_label = ui.label("Domain");
            egui::ComboBox::from_id_salt("das_domain")
                .selected_text(self.domain.clone().unwrap_or_default())
                .show_ui(ui, |ui| {
                    for s in &profile.subjects {
                        ui.selectable_value(&mut self.domain, Some(s.name.clone()), &s.name);
                    }
                })
                .response
                .labelled_by(das_domain_label.id);
            let das_general_label = ui.label("General");
            let general_text = if self.general.is_empty() {
                "all other subjects".to_string()
            } else {
                self.general.iter().cloned().collect::<Vec<_>>().join(", ")
            };
            egui::ComboBox::from_id_salt("das_general")
                .selected_text(general_text)
                .show_ui(ui, |ui| {
                    for s in &profile.subjects {
                        if Some(&s.name) == self.domain.as_ref() {
                            continue;
                        }
                        let mut on = self.general.contains(&s.name);
                        if ui.checkbox(&mut on, &s.name).changed() {
                            if on {
                                self.general.insert(s.name.clone());
                            } else {
                                self.general.remove(&s.name);
                            }
                        }
                    }
                })
                .response
                .labelled_by(das_general_label.id);
            ui.add(egui::Slider::new(&mut self.k, 1..=n).text("k"));
        });
        let signal = default_das_signal(&profile);
        ui.weak(signal_caption(&profile, signal));
        let key: Key = (
            state.profile_generation,
            self.domain.clone(),
            self.general.clone(),
            self.k,
        );
        if self.cache.as_ref().is_none_or(|(k, _)| *k != key) {
            let general_names: Vec<String> = self.general.iter().cloned().collect();
            let result = domain_advantage(
                &profile,
                self.domain.as_deref().unwrap_or_default(),
                &GeneralSet::from_names(&general_names),
                signal,
            )
            .map(|d| {
                (
                    top_das_experts(&d.das, &profile.model.moe_layers, TABLE_ROWS),
                    cumulative_das(&d.das, self.k),
                )
            })
            .map_err(|e| e.to_string());
            self.cache = Some((key, result));
        }
        let Some((_, result)) = &self.cache else {
            return;
        };
        let (ranked, cdas) = match result {
            Ok(r) => r,
            Err(e) => {
                ui.colored_label(ui.visuals().warn_fg_color, e.as_str());
                return;
            }
        };
        ui.horizontal(|ui| {
            ui.label(format!(
                "C-DAS@{} = {:.3} (÷L = {:.3})",
                cdas.k, cdas.total, cdas.per_layer_mean
            ));
            if ui
                .button(format!("Select top-{} per layer", self.k))
                .clicked()
            {
                let rule = SelectionRule::Das {
                    domain: self.domain.clone().unwrap_or_default(),
                    general: self.general.iter().cloned().collect(),
                    k: self.k,
                    signal,
                };
                match select(&profile, &rule, None) {
                    Ok(s) => {
                        state.info(format!(
                            "selected {} experts by {}",
                            s.len(),
                            das_name(signal)
                        ));
                        state.set_selection(&s);
                    }
                    Err(e) => state.error(format!("{e:#}")),
                }
            }
        });
        ui.separator();
        egui::ScrollArea::vertical().show(ui, |ui| {
            egui::Grid::new("das_table")
                .striped(true)
                .num_columns(5)
                .show(ui, |ui| {
                    ui.strong("rank");
                    ui.strong("layer");
                    ui.strong("expert");
                    ui.strong(das_name(signal));
                    ui.strong("selected");
                    ui.end_row();
                    for (i, e) in ranked.iter().enumerate() {
                        ui.label((i + 1).to_string());
                        ui.label(e.layer.to_string());
                        ui.label(e.expert.to_string());
                        ui.label(format!("{:+.5}", e.das));
                        let on = state.selected.contains(&(e.layer, e.expert));
                        if ui
                            .selectable_label(on, if on { "selected" } else { "select" })
                            .clicked()
                        {
                            state.toggle(e.layer, e.expert);
                        }
                        ui.end_row();
                    }
                });
        });
    }
}

/// DAS named by its signal (`DAS on counts`).
fn das_name(signal: RoutingSignal) -> &'static str {
    match signal {
        RoutingSignal::Count => "DAS on counts",
        RoutingSignal::Mass => "DAS on routing mass",
        RoutingSignal::Score => "DAS",
    }
}

/// The line saying what DAS is computed on for `profile`.
fn signal_caption(profile: &RoutingProfile, signal: RoutingSignal) -> String {
    match signal {
        RoutingSignal::Score => "DAS on routing scores: mean score per token of the domain minus \
                                 the general set's"
            .to_string(),
        RoutingSignal::Count => {
            let origin = match &profile.source {
                Some(src) => format!(" (imported from {})", src.format),
                None => String::new(),
            };
            format!(
                "DAS on counts: share of the domain's tokens choosing each expert minus the \
                 general set's — this profile has no routing scores{origin}"
            )
        }
        RoutingSignal::Mass => "DAS on routing mass: mean routing weight per token of the \
                                domain minus the general set's"
            .to_string(),
    }
}
