//! Attune's web app as a library: the binary mounts [`app::App`]; browser tests mount parts of it.

pub mod adapt;
pub mod api;
pub mod app;
pub mod backoff;
pub mod chart;
pub mod chat;
pub mod document_view;
pub mod documents;
pub mod endpoints;
pub mod evaluate;
pub mod format;
pub mod jobs;
pub mod link;
pub mod markdown;
pub mod pages;
pub mod stepper;
pub mod token;
pub mod train;
pub mod triples;

/// Mounts the whole application on the page body.
pub fn mount() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}
