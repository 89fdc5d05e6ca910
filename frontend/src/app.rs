//! The application shell: header with backend health and the live-link indicator,
//! navigation to the five places of the product, and the pages behind it.

use leptos::prelude::*;
use leptos_router::components::{A, Redirect, Route, Router, Routes};
use leptos_router::path;

use attune_shared::{Health, ModelKind};

use crate::api::{Api, ApiError};
use crate::link::{self, Link};
use crate::pages;

/// The five places of the product, in navigation order: (path, label, one-line purpose).
pub const PLACES: [(&str, &str, &str); 5] = [
    ("/documents", "Documents", "Upload files and turn them into passages"),
    ("/triples", "Triples", "Review synthetic questions and answers"),
    ("/train", "Train", "Fine-tune retriever and generator together"),
    ("/evaluate", "Evaluate", "Compare tuned against base on held-out questions"),
    ("/chat", "Chat", "Ask your documents, with sources"),
];

#[component]
pub fn App() -> impl IntoView {
    let api = Api::new(crate::token::from_page());
    provide_context(api);
    let link = link::start(api.token());
    provide_context(link);
    // The chat's conversation outlives the Chat page (moving to another page and back keeps it).
    provide_context(crate::chat::ChatMemory::new());
    // Health is fetched on load and again after every reconnection; the last answer stays
    // on screen while a new one is on its way.
    let health = RwSignal::new(None::<Result<Health, ApiError>>);
    Effect::new(move |_| {
        link.connections.track();
        leptos::task::spawn_local(async move {
            health.set(Some(api.health().await));
        });
    });

    view! {
        <Router>
            <div class="shell">
                <header class="topbar">
                    <a class="brand" href="/documents">"Attune"</a>
                    <HealthSummary health=health />
                    <crate::jobs::JobsButton />
                    <LinkIndicator link=link />
                </header>
                <nav class="sidenav" aria-label="Main">
                    <ul>
                        {PLACES
                            .iter()
                            .map(|(href, label, purpose)| {
                                view! {
                                    <li>
                                        <A href=*href attr:title=*purpose>{*label}</A>
                                    </li>
                                }
                            })
                            .collect_view()}
                    </ul>
                </nav>
                <main class="content" id="main">
                    <crate::stepper::Stepper />
                    <Routes fallback=|| view! { <pages::NotFound /> }>
                        <Route path=path!("/") view=|| view! { <Redirect path="/documents" /> } />
                        <Route path=path!("/documents") view=pages::Documents />
                        <Route path=path!("/documents/:id") view=crate::document_view::DocumentView />
                        <Route path=path!("/triples") view=pages::Triples />
                        <Route path=path!("/train") view=pages::Train />
                        <Route path=path!("/evaluate") view=pages::Evaluate />
                        <Route path=path!("/evaluate/:id") view=pages::Evaluate />
                        <Route path=path!("/chat") view=pages::Chat />
                    </Routes>
                </main>
            </div>
        </Router>
    }
}

/// Models found and the compute device, or why the backend could not be asked.
#[component]
pub fn HealthSummary(health: RwSignal<Option<Result<Health, ApiError>>>) -> impl IntoView {
    view! {
        <div class="health" aria-live="polite">
            {move || match health.get() {
                None => view! { <span class="muted">"checking backend…"</span> }.into_any(),
                Some(Err(e)) if e.code == "unauthorized" => {
                    view! {
                        <span class="problem" data-testid="health-error">
                            "This server needs a token: open the app as /?token=<your token>."
                        </span>
                    }
                        .into_any()
                }
                Some(Err(e)) => {
                    view! { <span class="problem" data-testid="health-error">{e.message}</span> }.into_any()
                }
                Some(Ok(h)) => view! { <HealthDetails health=h /> }.into_any(),
            }}
        </div>
    }
}

#[component]
pub fn HealthDetails(health: Health) -> impl IntoView {
    let device = health.device.label();
    let database = if health.database.ok { "database ok" } else { "database unavailable" };
    let models = if health.models.is_empty() {
        view! { <li class="problem">"no models found: run make run to fetch them"</li> }.into_any()
    } else {
        health
            .models
            .into_iter()
            .map(|m| {
                let kind = match m.kind {
                    ModelKind::Retriever => "retriever",
                    ModelKind::Generator => "generator",
                };
                view! {
                    <li class="chip" data-kind=kind title=m.path>
                        <span class="chip-kind">{kind}</span>
                        {m.name}
                    </li>
                }
            })
            .collect_view()
            .into_any()
    };
    view! {
        <ul class="models" data-testid="models">{models}</ul>
        <span class="device" data-testid="device" title="where model math runs">{device}</span>
        <span class="muted" class:problem=!health.database.ok>{database}</span>
        <span class="muted version">"v"{health.version}</span>
    }
}

/// A dot and words: is the live WebSocket up?
#[component]
pub fn LinkIndicator(link: Link) -> impl IntoView {
    view! {
        <div
            class="link"
            role="status"
            data-testid="link"
            data-state=move || link.state.get().key()
            title="live connection to the server"
        >
            <span class="dot" aria-hidden="true"></span>
            <span class="link-label">{move || link.state.get().label()}</span>
        </div>
    }
}
