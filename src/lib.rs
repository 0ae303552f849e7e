//! MoEScope: look inside Mixture-of-Experts language models.
//!
//! The library behind the `moescope` binary. See `ARCHITECTURE.md` for what each module owns.

pub mod analysis;
pub mod cli;
pub mod data;
pub mod demo;
pub mod gui;
pub mod import;
pub mod inference;
pub mod io;
pub mod model;
pub mod profile;
pub mod render;
pub mod selection;
pub mod steering;
pub mod train;
pub mod worker;
