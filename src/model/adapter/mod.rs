//! PEFT LoRA adapters: reading, merging into a model and writing an adapter folder
//! ([`peft`]), and the one `adapter_config.json` builder ([`config`], tensor-free, also used by
//! selection exports).

pub mod config;
pub mod peft;

pub use config::{AdapterSettings, peft_config};
pub use peft::{Adapter, CONFIG_FILE, LoraPair, WEIGHTS_FILE, files};
