//! Command-line front ends over the library: one module per group of subcommands.

pub mod compare;
pub mod demo;
pub mod engine;
pub mod report;
pub mod select;
pub mod steer;
pub mod train;
