//! Models: finding model folders on disk (and, later, the candle model code).
//!
//! Nothing in here depends on tokio, axum or sqlx.

pub mod catalog;

use attune_shared::ComputeDevice;

/// The device model math runs on in this build.
pub fn compute_device() -> ComputeDevice {
    ComputeDevice::Cpu
}
