//! Device choice: CPU by default; CUDA or Metal when built with the `cuda` / `metal` features;
//! the dtype names the command line accepts.

use candle_core::{DType, Device};

use super::error::{ModelError, Result};

/// Which device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The best device this build supports (CUDA, then Metal, then CPU).
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, ordinal) = match s.split_once(':') {
            Some((n, o)) => (
                n,
                o.parse()
                    .map_err(|_| format!("bad device ordinal in '{s}'"))?,
            ),
            None => (s, 0),
        };
        match name {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(ordinal)),
            "metal" => Ok(Self::Metal(ordinal)),
            _ => Err(format!(
                "unknown device '{s}' (expected auto, cpu, cuda[:N] or metal[:N])"
            )),
        }
    }
}

/// Opens the chosen device, with a clear error when this build lacks its feature.
pub fn open(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => {
            if cfg!(feature = "cuda") {
                Ok(Device::new_cuda(0)?)
            } else if cfg!(feature = "metal") {
                Ok(Device::new_metal(0)?)
            } else {
                Ok(Device::Cpu)
            }
        }
        DeviceChoice::Cuda(i) if cfg!(feature = "cuda") => Ok(Device::new_cuda(i)?),
        DeviceChoice::Metal(i) if cfg!(feature = "metal") => Ok(Device::new_metal(i)?),
        DeviceChoice::Cuda(_) => Err(ModelError::msg(
            "this build has no CUDA support; rebuild with `cargo build --release --features cuda`",
        )),
        DeviceChoice::Metal(_) => Err(ModelError::msg(
            "this build has no Metal support; rebuild with `cargo build --release --features metal`",
        )),
    }
}

/// The name `--dtype` takes for a dtype (`f32`, `bf16`, `f16`, …).
pub fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_lowercase()
}

/// A short name for a device (`cpu`, `cuda:0`, `metal:0`).
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The dtype names accepted on the command line.
pub fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(format!(
            "unknown dtype '{other}' (expected f32, bf16 or f16)"
        )),
    }
}
