//! The explorer GUI (eframe + wgpu).
//!
//! - [`args`]: the `moescope gui` options;
//! - [`app`]: opening the window, and the shell (side panel, tabs, status bar), calling
//!   [`screenshot`] when `scripts/screenshots.sh` drives it;
//! - [`state`]: the data (persisted [`UiState`], per-run [`AppState`]); [`jobs`] starts worker
//!   jobs, [`events`] applies worker events, [`file_io`] reads and writes prompt and profile
//!   files, [`selection_edit`] edits the expert selection;
//! - [`panels`]: one file per panel; [`widgets`]: pieces the panels share; [`dialogs`]: native
//!   file dialogs.
//!
//! The GUI never touches the model: it sends [`crate::worker::Command`]s and drains
//! [`crate::worker::Event`]s in `App::logic`. Heatmaps are drawn by [`crate::render`].

pub mod app;
pub mod args;
pub mod dialogs;
pub mod events;
pub mod file_io;
pub mod jobs;
pub mod panels;
pub mod screenshot;
pub mod selection_edit;
pub mod state;
pub mod widgets;

pub use app::{MoeScopeApp, run};
pub use args::GuiArgs;
pub use state::{AppState, HeatmapMetric, Tab, UiState};
