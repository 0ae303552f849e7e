//! Editing the expert selection: toggling and adding cells, replacing it with a rule's
//! selection, and reading it back as a [`Selection`] or as the heatmap's mask.

use crate::gui::state::AppState;
use crate::selection::{Selection, SelectionModel, SelectionRule};

impl AppState {
    /// Toggles (decoder layer, expert) in the selection.
    pub fn toggle(&mut self, layer: usize, expert: usize) {
        if !self.selected.remove(&(layer, expert)) {
            self.selected.insert((layer, expert));
        }
        self.selection_rule = SelectionRule::Explicit;
    }

    /// Adds cells to the selection.
    pub fn add_cells(&mut self, cells: impl IntoIterator<Item = (usize, usize)>) {
        self.selected.extend(cells);
        self.selection_rule = SelectionRule::Explicit;
    }

    pub fn clear_selection(&mut self) {
        self.selected.clear();
        self.selection_rule = SelectionRule::Explicit;
    }

    /// Replaces the selection with one made by a rule.
    pub fn set_selection(&mut self, selection: &Selection) {
        self.selected = selection.cells().collect();
        self.selection_rule = selection.rule.clone();
        self.selection_data = selection.data.clone();
    }

    /// The selection as a [`Selection`] for the profile's model.
    pub fn selection(&self) -> Result<Selection, String> {
        let Some(p) = &self.profile else {
            return Err("no profile: profile a dataset or open a profile first".into());
        };
        let mut experts = crate::selection::LayerExperts::new();
        for &(l, e) in &self.selected {
            experts.entry(l).or_default().insert(e);
        }
        let mut s = Selection::new(
            SelectionModel::from(&p.model),
            self.selection_rule.clone(),
            experts,
        )
        .map_err(|e| format!("{e:#}"))?;
        s.data = self.selection_data.clone();
        s.source_profile = self.profile_path.as_ref().map(|p| p.display().to_string());
        Ok(s)
    }

    /// Row-major (moe layer row × expert) selection mask for the heatmap.
    pub fn selection_mask(&self) -> Vec<bool> {
        let Some(p) = &self.profile else {
            return Vec::new();
        };
        let n = p.model.num_experts;
        let mut mask = vec![false; p.model.moe_layers.len() * n];
        for (row, layer) in p.model.moe_layers.iter().enumerate() {
            for e in 0..n {
                mask[row * n + e] = self.selected.contains(&(*layer, e));
            }
        }
        mask
    }
}
