//! Attune's hand-written CPU kernels: loops over plain slices, generic over f32 and f64, with
//! rayon for the parallel parts. `attune-core` wraps them as candle ops (`model/attention.rs`,
//! `model/ops.rs`, `model/linear.rs`).
//!
//! They live in a crate of their own so that dev and test builds compile them optimised (the
//! workspace's crates are otherwise unoptimised there), and so that they cannot reach for tensors:
//! this crate depends on nothing but `num-traits` and `rayon`.

pub mod attention;
pub mod lora;
pub mod pointwise;
