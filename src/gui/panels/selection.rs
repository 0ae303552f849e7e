//! Selection panel: apply a rule (hot / mass / coverage / greedy / DAS / random) with a budget,
//! or edit by clicking the heatmap; selected count, LoRA parameters and reduction vs all
//! experts, coverage; save / load selection files; export PEFT and ESFT configs.
//!
//! On a profile without routing mass (imported routing, counts only) the mass rule is listed
//! disabled, saying why, DAS is computed on counts and coverage is of activations only.

use std::path::PathBuf;

use crate::analysis::HotSignal;
use crate::analysis::das::default_das_signal;
use crate::gui::state::AppState;
use crate::gui::widgets::text::human;
use crate::model::adapter::AdapterFormChoice;
use crate::profile::{RoutingProfile, RoutingSignal};
use crate::selection::accounting::require_layout;
use crate::selection::export::{resolve_adapter_form, write_esft_config, write_peft_adapter};
use crate::selection::{
    Accounting, AccountingOptions, EsftOptions, PeftOptions, Selection, SelectionRule, account,
    select,
};

/// The rules offered, in the combo box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    HotCount,
    HotMass,
    Coverage,
    Greedy,
    Das,
    Random,
}

impl RuleKind {
    pub const ALL: [RuleKind; 6] = [
        RuleKind::HotCount,
        RuleKind::HotMass,
        RuleKind::Coverage,
        RuleKind::Greedy,
        RuleKind::Das,
        RuleKind::Random,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RuleKind::HotCount => "hot top-k (count)",
            RuleKind::HotMass => "hot top-k (mass)",
            RuleKind::Coverage => "coverage threshold",
            RuleKind::Greedy => "greedy budget",
            RuleKind::Das => "DAS top-k",
            RuleKind::Random => "random (seeded)",
        }
    }

    /// The rule's name for `profile`: DAS says when it is computed on counts.
    pub fn label(self, profile: &RoutingProfile) -> &'static str {
        match self {
            RuleKind::Das if default_das_signal(profile) == RoutingSignal::Count => {
                "DAS top-k (on counts)"
            }
            r => r.name(),
        }
    }

    /// Why the rule cannot run on `profile` (`None` when it can): the mass rule needs routing
    /// mass, which count-only profiles do not carry.
    pub fn unavailable_reason(self, profile: &RoutingProfile) -> Option<String> {
        (self == RuleKind::HotMass && !profile.has(RoutingSignal::Mass)).then(|| {
            format!(
                "Not available: this profile carries {}, without {}. Use hot top-k (count) \
                 instead.",
                profile.signals_caption(),
                RoutingSignal::Mass.describe()
            )
        })
    }
}

/// What the cached accounting was computed for: profile generation, LoRA rank, selected cells.
type AccountingKey = (u64, usize, Vec<(usize, usize)>);

pub struct SelectionPanel {
    pub rule: RuleKind,
    /// Experts per layer for k-based rules.
    pub k: usize,
    /// Coverage threshold (share).
    pub threshold: f64,
    pub seed: u64,
    /// `None` = pooled; for DAS, the domain.
    pub data: Option<String>,
    pub path_field: String,
    pub peft_dir: String,
    /// Form of the exported PEFT folder.
    pub peft_form: AdapterFormChoice,
    pub esft_file: String,
    cache: Option<(AccountingKey, Result<Accounting, String>)>,
}

impl Default for SelectionPanel {
    fn default() -> Self {
        Self {
            rule: RuleKind::HotCount,
            k: 0,
            threshold: 0.6,
            seed: 0,
            data: None,
            path_field: "selection.json".into(),
            peft_dir: "adapter".into(),
            peft_form: AdapterFormChoice::Auto,
            esft_file: "esft_experts.json".into(),
            cache: None,
        }
    }
}

impl SelectionPanel {
    /// The rule with the panel's parameters, for `profile` (DAS on counts when it has no
    /// routing scores).
    pub fn rule(&self, profile: &RoutingProfile) -> SelectionRule {
        let k = self.k.max(1);
        match self.rule {
            RuleKind::HotCount => SelectionRule::Hot {
                signal: HotSignal::Count,
                k,
            },
            RuleKind::HotMass => SelectionRule::Hot {
                signal: HotSignal::Mass,
                k,
            },
            RuleKind::Coverage => SelectionRule::Coverage {
                signal: HotSignal::Count,
                threshold: self.threshold,
            },
            RuleKind::Greedy => SelectionRule::Greedy {
                signal: HotSignal::Count,
                k,
            },
            RuleKind::Das => SelectionRule::Das {
                domain: self.data.clone().unwrap_or_default(),
                general: Vec::new(),
                k,
                signal: default_das_signal(profile),
            },
            RuleKind::Random => SelectionRule::Random { k, seed: self.seed },
        }
    }

    /// Applies the panel's rule to the profile, replacing the selection.
    /// Fits the rule's parameters to `profile`'s model: k defaults to 25 % of the routed
    /// experts, the DAS domain to the first subject.
    fn fit_to(&mut self, profile: &RoutingProfile) {
        let n = profile.model.num_experts.max(1);
        if self.k == 0 || self.k > n {
            self.k = (n / 4).max(1);
        }
        if self.rule == RuleKind::Das && self.data.is_none() {
            self.data = profile.subjects.first().map(|s| s.name.clone());
        }
    }

    /// Switches from a rule the profile cannot run (the mass rule on a count-only profile) to
    /// its count version, saying so.
    fn fit_rule_to(&mut self, state: &mut AppState, profile: &RoutingProfile) {
        if self.rule.unavailable_reason(profile).is_some() {
            state.info(format!(
                "the selection rule is now {}: the profile has no routing mass ({})",
                RuleKind::HotCount.name(),
                profile.signals_caption()
            ));
            self.rule = RuleKind::HotCount;
        }
    }

    pub fn apply(&mut self, state: &mut AppState) {
        let Some(profile) = state.profile.clone() else {
            state.error("no profile: profile a dataset or open a profile first");
            return;
        };
        self.fit_to(&profile);
        self.fit_rule_to(state, &profile);
        let data = match self.rule {
            RuleKind::Das | RuleKind::Random => None,
            _ => self.data.as_deref(),
        };
        match select(&profile, &self.rule(&profile), data) {
            Ok(s) => {
                state.info(format!(
                    "{}: {} experts",
                    self.rule.label(&profile),
                    s.len()
                ));
                state.set_selection(&s);
            }
            Err(e) => state.error(format!("{e:#}")),
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, state: &mut AppState) {
        let Some(profile) = state.profile.clone() else {
            ui.label("No profile yet.");
            return;
        };
        let n = profile.model.num_experts.max(1);
        self.fit_to(&profile);
        self.fit_rule_to(state, &profile);
        ui.heading("Rule");
        ui.horizontal_wrapped(|ui| {
            egui::ComboBox::from_id_salt("rule_kind")
                .selected_text(self.rule.label(&profile))
                .show_ui(ui, |ui| {
                    for r in RuleKind::ALL {
                        match r.unavailable_reason(&profile) {
                            None => {
                                ui.selectable_value(&mut self.rule, r, r.label(&profile));
                            }
                            Some(reason) => {
                                ui.add_enabled(
                                    false,
                                    egui::Button::selectable(false, r.label(&profile)),
                                )
                                .on_disabled_hover_text(reason);
                            }
                        }
                    }
                })
                .response
                .on_hover_text("selection rule");
            match self.rule {
                RuleKind::Coverage => {
                    ui.add(egui::Slider::new(&mut self.threshold, 0.05..=1.0).text("coverage"));
                }
                _ => {
                    ui.add(egui::Slider::new(&mut self.k, 1..=n).text("experts per layer"));
                }
            }
            if self.rule == RuleKind::Random {
                ui.add(egui::DragValue::new(&mut self.seed).prefix("seed "));
            }
            if self.rule != RuleKind::Random {
                let label = if self.rule == RuleKind::Das {
                    "domain"
                } else {
                    "data"
                };
                egui::ComboBox::from_label(label)
                    .selected_text(self.data.clone().unwrap_or_else(|| "pooled".into()))
                    .show_ui(ui, |ui| {
                        if self.rule != RuleKind::Das {
                            ui.selectable_value(&mut self.data, None, "pooled");
                        }
                        for s in &profile.subjects {
                            ui.selectable_value(&mut self.data, Some(s.name.clone()), &s.name);
                        }
                    });
            }
            if ui.button("Apply rule").clicked() {
                self.apply(state);
            }
            if ui.button("Clear").clicked() {
                state.clear_selection();
            }
        });
        ui.separator();
        ui.heading("Selection");
        ui.add(egui::Slider::new(&mut state.ui.lora_rank, 1..=256).text("LoRA rank"));
        let cells: Vec<(usize, usize)> = state.selected.iter().copied().collect();
        let fresh = self.cache.as_ref().is_none_or(|((g, r, c), _)| {
            *g != state.profile_generation || *r != state.ui.lora_rank || *c != cells
        });
        if fresh {
            let acc = state.selection().and_then(|s| {
                account(&s, &profile, &AccountingOptions::new(state.ui.lora_rank))
                    .map_err(|e| format!("{e:#}"))
            });
            self.cache = Some((
                (state.profile_generation, state.ui.lora_rank, cells.clone()),
                acc,
            ));
        }
        let total = profile.model.moe_layers.len() * n;
        ui.label(format!(
            "{} of {total} experts selected ({}){}",
            cells.len(),
            rule_text(&state.selection_rule),
            state
                .selection_data
                .as_ref()
                .map_or(String::new(), |d| format!(" on {d}"))
        ));
        if let Some((_, acc)) = &self.cache {
            match acc {
                Ok(a) => {
                    egui::Grid::new("accounting")
                        .num_columns(2)
                        .striped(true)
                        .show(ui, |ui| {
                            ui.label("LoRA parameters");
                            ui.label(format!(
                                "{} ({})",
                                human(a.selected.total),
                                a.selected.total
                            ));
                            ui.end_row();
                            ui.label("all-experts LoRA");
                            ui.label(human(a.all_experts.total));
                            ui.end_row();
                            ui.label("reduction");
                            ui.label(format!("{:.1}%", a.total_reduction * 100.0));
                            ui.end_row();
                            ui.label("adapter size");
                            ui.label(format!("{:.2} MB", a.adapter_bytes as f64 / 1e6));
                            ui.end_row();
                            ui.label("coverage (pooled)");
                            ui.label(match a.pooled_coverage.mass_share {
                                Some(mass) => format!(
                                    "{:.1}% of activations, {:.1}% of routing mass",
                                    a.pooled_coverage.count_share * 100.0,
                                    mass * 100.0
                                ),
                                None => format!(
                                    "{:.1}% of activations (no routing mass: counts only)",
                                    a.pooled_coverage.count_share * 100.0
                                ),
                            });
                            ui.end_row();
                            for c in &a.coverage {
                                ui.weak(&c.subject);
                                ui.weak(match c.mass_share {
                                    Some(mass) => format!(
                                        "{:.1}% / {:.1}%",
                                        c.count_share * 100.0,
                                        mass * 100.0
                                    ),
                                    None => format!("{:.1}%", c.count_share * 100.0),
                                });
                                ui.end_row();
                            }
                        });
                }
                Err(e) => {
                    ui.colored_label(ui.visuals().warn_fg_color, e);
                }
            }
        }
        ui.separator();
        ui.heading("Files");
        ui.horizontal(|ui| {
            let label = ui.label("Selection file");
            ui.add(egui::TextEdit::singleline(&mut self.path_field).desired_width(220.0))
                .labelled_by(label.id);
            if ui.button("Save selection").clicked() {
                let path = PathBuf::from(self.path_field.trim());
                match state
                    .selection()
                    .and_then(|s| s.save(&path).map_err(|e| format!("{e:#}")))
                {
                    Ok(()) => state.info(format!("saved selection to {}", path.display())),
                    Err(e) => state.error(e),
                }
            }
            if ui.button("Load selection").clicked() {
                let path = PathBuf::from(self.path_field.trim());
                match Selection::load(&path)
                    .and_then(|s| s.validate_for(&profile.model).map(|()| s))
                {
                    Ok(s) => {
                        state.info(format!(
                            "loaded {} experts from {}",
                            s.len(),
                            path.display()
                        ));
                        state.set_selection(&s);
                    }
                    Err(e) => state.error(format!("{e:#}")),
                }
            }
        });
        ui.horizontal(|ui| {
            let label = ui.label("PEFT folder");
            ui.add(egui::TextEdit::singleline(&mut self.peft_dir).desired_width(220.0))
                .labelled_by(label.id);
            egui::ComboBox::from_id_salt("peft_form")
                .selected_text(self.peft_form.label())
                .show_ui(ui, |ui| {
                    for choice in AdapterFormChoice::ALL {
                        ui.selectable_value(&mut self.peft_form, choice, choice.label());
                    }
                })
                .response
                .on_hover_text(
                    "per-expert: transformers 4.x; padded: vLLM / SGLang; fused: transformers 5 \
                     target_parameters (padded and fused also write initial weights, zero \
                     outside the selection); auto: from the model",
                );
            if ui.button("Export PEFT adapter").clicked() {
                let dir = PathBuf::from(self.peft_dir.trim());
                let mut opts = PeftOptions::moe_sieve(&profile.model.id);
                opts.rank = state.ui.lora_rank;
                opts.alpha = 2.0 * state.ui.lora_rank as f64;
                let form = resolve_adapter_form(
                    self.peft_form,
                    &profile.model.architecture,
                    &opts.base_model,
                );
                let result = state.selection().and_then(|s| {
                    let layout = require_layout(&profile.model).map_err(|e| format!("{e:#}"))?;
                    write_peft_adapter(&dir, &s, layout, &opts, form, self.seed)
                        .map_err(|e| format!("{e:#}"))
                });
                match result {
                    Ok(paths) => state.info(format!(
                        "wrote {} ({} form: {})",
                        paths
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        form.label(),
                        form.loads_in()
                    )),
                    Err(e) => state.error(e),
                }
            }
        });
        ui.horizontal(|ui| {
            let label = ui.label("ESFT file");
            ui.add(egui::TextEdit::singleline(&mut self.esft_file).desired_width(220.0))
                .labelled_by(label.id);
            if ui.button("Export ESFT config").clicked() {
                let path = PathBuf::from(self.esft_file.trim());
                let result = state.selection().and_then(|s| {
                    write_esft_config(&path, &s, &EsftOptions::default())
                        .map_err(|e| format!("{e:#}"))
                });
                match result {
                    Ok(()) => state.info(format!("wrote {}", path.display())),
                    Err(e) => state.error(e),
                }
            }
        });
    }
}

fn rule_text(rule: &SelectionRule) -> String {
    match rule {
        SelectionRule::Hot { signal, k } => format!("hot top-{k} by {signal}"),
        SelectionRule::Coverage { threshold, .. } => {
            format!("coverage ≥ {:.0}%", threshold * 100.0)
        }
        SelectionRule::Greedy { k, .. } => format!("greedy budget {k}·L"),
        SelectionRule::Das {
            domain, k, signal, ..
        } => {
            let das = match signal {
                RoutingSignal::Count => "DAS on counts",
                RoutingSignal::Mass => "DAS on routing mass",
                RoutingSignal::Score => "DAS",
            };
            format!("{das} top-{k} for {domain}")
        }
        SelectionRule::Random { k, seed } => format!("random {k} per layer, seed {seed}"),
        SelectionRule::RandomMatched { seed, .. } => format!("random matched, seed {seed}"),
        SelectionRule::Explicit => "by hand".into(),
    }
}
