//! `attune bench`: figures of this build beside PyTorch's on the same machine — model throughput
//! (`model`), trainer steps (`train`), any device with random weights allowed (`device`) — and
//! device-vs-CPU agreement on seeded weights (`agree`).

pub mod agree;
pub mod device;
pub mod model;
pub mod synth;
pub mod train;
