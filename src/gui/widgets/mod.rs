//! Reusable pieces the panels draw with: the routing-difference view of a steered run, and text
//! helpers.

pub mod routing_diff;
pub mod text;

pub use routing_diff::RoutingDiffView;
