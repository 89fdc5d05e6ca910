//! Models: finding model folders on disk, and the candle model code (encoder, decoder, layers).
//!
//! Nothing in here depends on tokio, axum or sqlx.

pub mod attention;
pub mod bert;
pub mod catalog;
#[cfg(feature = "cuda")]
mod cuda_ops;
pub mod device;
pub mod encoder;
pub mod error;
pub mod export;
pub mod generator;
pub mod gguf_tokenizer;
pub mod layers;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod modernbert;
pub mod ops;
pub mod random;
pub mod random_checkpoint;
pub mod retriever;

use std::path::{Path, PathBuf};

use attune_shared::ComputeDevice;
use tokenizers::Tokenizer;

pub use error::ModelError;

/// How a candle device is reported on the wire.
pub fn describe_device(device: &candle_core::Device) -> ComputeDevice {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => ComputeDevice::Cuda { ordinal: gpu_id },
        _ => ComputeDevice::Cpu,
    }
}

/// Files directly in `dir` whose name ends in `.extension`, sorted by name (none if unreadable).
pub(crate) fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

/// The GGUF file `path` designates: `path` itself when it is a file, else the first `.gguf` in it.
pub(crate) fn gguf_file_at(path: &Path) -> Option<PathBuf> {
    if path.is_file() { Some(path.to_owned()) } else { files_with_extension(path, "gguf").into_iter().next() }
}

/// Loads a `tokenizer.json`.
pub(crate) fn load_tokenizer_file(path: &Path) -> Result<Tokenizer, ModelError> {
    Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer { path: path.to_owned(), message: e.to_string() })
}

#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::Tensor;

    /// Largest element-wise absolute difference of two f32 tensors of one shape.
    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }
}
