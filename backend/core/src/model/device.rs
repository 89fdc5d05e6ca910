//! Choosing the device model math runs on (`auto`, `cpu` or `cuda[:N]`) and its precision
//! (f32 on the CPU, bf16 on a GPU, unless asked otherwise).

use candle_core::{DType, Device};

use super::error::{ModelError, Result};

/// Parses a device spec. `auto` means the first CUDA device when this build has CUDA support
/// and a GPU answers, else the CPU.
pub fn select(spec: &str) -> Result<Device> {
    match spec.trim() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(cuda(0).unwrap_or(Device::Cpu)),
        other => {
            let ordinal = match other.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest.strip_prefix(':').and_then(|n| n.parse().ok()).ok_or_else(|| invalid(other))?,
                None => return Err(invalid(other)),
            };
            cuda(ordinal)
        }
    }
}

/// The precision weights are kept and computed in by default: f32 on the CPU (candle's CPU bf16
/// matmul is slow and brings no speed there), bf16 on a GPU (half the memory, tensor cores).
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() { DType::F32 } else { DType::BF16 }
}

/// Parses a precision spec: `auto` (the device's default), `f32`, `bf16` or `f16`.
pub fn select_dtype(spec: &str, device: &Device) -> Result<DType> {
    match spec.trim() {
        "auto" => Ok(default_dtype(device)),
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(ModelError::Device(format!("dtype {other:?}: expected auto, f32, bf16 or f16"))),
    }
}

/// Device memory `(in use, total)` in bytes as the driver sees it (every process's use of that
/// GPU); `None` on the CPU.
pub fn memory(device: &Device) -> Option<(usize, usize)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(gpu) = device {
        let (free, total) = gpu.cuda_stream().context().mem_get_info().ok()?;
        return Some((total.saturating_sub(free), total));
    }
    let _ = device;
    None
}

fn invalid(spec: &str) -> ModelError {
    ModelError::Device(format!("device {spec:?}: expected auto, cpu, cuda or cuda:N"))
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device> {
    Ok(Device::new_cuda(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device> {
    Err(ModelError::Device(
        "this build of attune has no CUDA support: build it with `cargo build --features cuda`".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_explains_mistakes() {
        assert!(matches!(select("cpu").unwrap(), Device::Cpu));
        assert!(select("auto").is_ok());
        for bad in ["gpu", "cuda:x", "cuda-1", ""] {
            let error = select(bad).unwrap_err().to_string();
            assert!(error.contains("expected auto, cpu, cuda or cuda:N"), "{bad}: {error}");
        }
        assert_eq!(select_dtype("auto", &Device::Cpu).unwrap(), DType::F32);
        assert_eq!(select_dtype("bf16", &Device::Cpu).unwrap(), DType::BF16);
        assert!(select_dtype("fp8", &Device::Cpu).unwrap_err().to_string().contains("expected auto, f32, bf16 or f16"));
        #[cfg(not(feature = "cuda"))]
        assert!(select("cuda:0").unwrap_err().to_string().contains("--features cuda"));
    }
}
