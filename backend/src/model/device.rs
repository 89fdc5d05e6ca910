//! Choosing the device model math runs on: `auto`, `cpu` or `cuda[:N]`.

use candle_core::Device;

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
        #[cfg(not(feature = "cuda"))]
        assert!(select("cuda:0").unwrap_err().to_string().contains("--features cuda"));
    }
}
