//! Entry point of Attune's web app: mounts the Leptos application on the page body.

mod api;
mod app;
mod backoff;
mod endpoints;
mod link;
mod pages;
mod token;

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}
