//! The pages behind the navigation. Each says what it is for until its issue fills it in.

use leptos::prelude::*;
use leptos_router::components::A;

#[component]
fn Planned(title: &'static str, lead: &'static str, items: &'static [&'static str]) -> impl IntoView {
    view! {
        <section class="page">
            <h1>{title}</h1>
            <p class="lead">{lead}</p>
            <div class="empty-state">
                <p>"Coming to this page:"</p>
                <ul>{items.iter().map(|item| view! { <li>{*item}</li> }).collect_view()}</ul>
            </div>
        </section>
    }
}

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
    view! {
        <Planned
            title="Train"
            lead="Fine-tune the retriever and the generator together on your approved triples."
            items=&[
                "Presets for CPU and GPU, every setting explained",
                "Live loss and learning-rate charts while it trains",
                "Cancel, resume, and the history of past runs",
            ]
        />
    }
}

#[component]
pub fn Evaluate() -> impl IntoView {
    view! {
        <Planned
            title="Evaluate"
            lead="How much better is the tuned system? Measured on questions held out from training."
            items=&[
                "Retrieval: hit@k, MRR, nDCG",
                "Answers: exact match and F1",
                "Base and tuned side by side",
            ]
        />
    }
}

#[component]
pub fn Chat() -> impl IntoView {
    view! {
        <Planned
            title="Chat"
            lead="Ask questions of your documents and see which passages the answer came from."
            items=&[
                "Retrieved passages with scores, document and page",
                "Answers streamed token by token, stoppable",
                "Base or tuned models, your choice",
            ]
        />
    }
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
