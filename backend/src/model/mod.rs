//! Models: finding model folders on disk, and the candle model code (encoder, decoder, layers).
//!
//! Nothing in here depends on tokio, axum or sqlx.

pub mod bert;
pub mod catalog;
pub mod device;
pub mod error;
pub mod generator;
pub mod gguf_tokenizer;
pub mod layers;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod retriever;

use attune_shared::ComputeDevice;

pub use error::ModelError;

/// The device model math runs on in this build.
pub fn compute_device() -> ComputeDevice {
    ComputeDevice::Cpu
}
