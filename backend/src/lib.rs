//! The `attune` library: the benchmarks the binary runs (`bench/`), and the two crates it joins under
//! one roof — `attune-core` (models, training, evaluation, retrieval, ingestion, synthesis; no async,
//! no storage, no HTTP) and `attune-server` (store, engine, server) — re-exported by module.
//!
//! See `ARCHITECTURE.md` at the repository root for the codemap and the invariants.

pub mod bench;

pub use attune_core::{eval, ingest, memory, model, rag, synth, train};
pub use attune_server::{VERSION, engine, openai, serve, store};

/// A progress bar in the house style, drawn on standard error (hidden when it is not a terminal).
pub fn progress_bar(total: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("█▉▊▋▌▍▎▏ ");
    bar.set_style(style);
    bar
}
