//! Router steering at inference time (DESIGN.md "Training and steering defaults": DSMoE logit
//! bias, SteerMoE force on / off).
//!
//! - [`spec`]: the steering spec file ([`SteeringSpec`], `moescope-steering` v1), built by
//!   hand, from a selection or from a DAS ranking, resolved into the routing layer's steering;
//! - [`diff`]: the per-layer routing change between an unsteered and a steered pass;
//! - [`compare`]: unsteered then steered generation and the routing difference, the one
//!   function the CLI's `steer` and the GUI's worker run;
//! - [`error`]: what goes wrong ([`SteerError`]).
//!
//! Generation and multiple-choice evaluation themselves live in [`crate::inference`].

pub mod compare;
pub mod diff;
pub mod error;
pub mod spec;

pub use error::{Result, SteerError};
pub use spec::{
    ActiveSteering, ApplyTo, ExpertSteer, STEERING_FORMAT, STEERING_VERSION, SteerAction,
    SteeringSpec,
};
