//! The pages behind the navigation, each in its own module.

use leptos::prelude::*;
use leptos_router::components::A;

#[component]
pub fn Documents() -> impl IntoView {
    view! { <crate::documents::DocumentsPage /> }
}

#[component]
pub fn Triples() -> impl IntoView {
    view! { <crate::triples::TriplesPage /> }
}

#[component]
pub fn Train() -> impl IntoView {
    view! { <crate::train::TrainPage /> }
}

#[component]
pub fn Evaluate() -> impl IntoView {
    view! { <crate::evaluate::EvaluatePage /> }
}

#[component]
pub fn Chat() -> impl IntoView {
    view! { <crate::chat::ChatPage /> }
}

#[component]
pub fn NotFound() -> impl IntoView {
    view! {
        <section class="page">
            <h1>"Page not found"</h1>
            <p class="lead">"There is nothing at this address. " <A href="/documents">"Go to Documents"</A></p>
        </section>
    }
}
