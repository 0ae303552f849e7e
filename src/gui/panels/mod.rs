//! One file per panel: the side panel's [`model`] and [`data`], and one per central tab —
//! [`heatmap`], [`subjects`], [`balance`] (expert load balance, the "Load" tab), [`das`],
//! [`tokens`], [`selection`], [`steering`], [`eval`], [`training`]. A panel reads and changes
//! the [`crate::gui::state::AppState`] and never another panel.

pub mod balance;
pub mod das;
pub mod data;
pub mod eval;
pub mod heatmap;
pub mod model;
pub mod selection;
pub mod steering;
pub mod subjects;
pub mod tokens;
pub mod training;

pub use balance::BalancePanel;
pub use das::DasPanel;
pub use data::DataPanel;
pub use eval::{EvalPanel, SteeredColumn};
pub use heatmap::HeatmapPanel;
pub use model::ModelPanel;
pub use selection::SelectionPanel;
pub use steering::SteeringPanel;
pub use subjects::SubjectsPanel;
pub use tokens::TokensPanel;
pub use training::TrainingPanel;
