//! Entry point of Attune's web app: mounts the Leptos application on the page body.

fn main() {
    attune_frontend::mount();
}
