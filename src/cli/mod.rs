//! Command-line front ends over the library: one module per group of subcommands, plus what
//! several of them share (`inputs`: reading profiles and traces; `output`: number formats and
//! plain-text tables).

pub mod adapter;
pub mod compare;
pub mod demo;
pub mod engine;
pub mod import;
mod inputs;
pub mod merge;
mod output;
pub mod report;
pub mod select;
pub mod steer;
pub mod train;

#[cfg(test)]
mod test_fixtures;
