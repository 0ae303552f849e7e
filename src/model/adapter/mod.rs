//! PEFT LoRA adapters: reading, merging into a model and writing an adapter folder
//! ([`peft`]), transformers 5's fused-expert form and its naming ([`fused`]), and the one
//! `adapter_config.json` builder with the choice of form ([`config`], tensor-free, also used by
//! selection exports), and PEFT's initialisation of a fresh pair ([`init`]).

pub mod config;
pub mod fused;
pub mod init;
pub mod peft;

pub use config::{
    AdapterForm, AdapterFormChoice, AdapterSettings, PeftTargets, detect_form, peft_config,
};
pub use fused::{AdapterTarget, LoraPair};
pub use peft::{Adapter, CONFIG_FILE, WEIGHTS_FILE, files};
