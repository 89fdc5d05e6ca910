//! The guided flow under the header: Documents → Triples → Train → Evaluate → Chat, each step with
//! its count, the current one marked, and the next thing to do on this page as a button.

use leptos::prelude::*;
use leptos_router::hooks::use_location;

use attune_shared::JobStatus;

use crate::api::Api;
use crate::format::count;
use crate::link::Link;

/// What the flow counts, fetched on every page change and when a job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowCounts {
    pub documents: u64,
    pub first_document: Option<i64>,
    pub pending: u64,
    pub approved: u64,
    pub runs_finished: u64,
    pub evals: u64,
}

/// The next step from `page` (its path) given `counts`: the button's words and where it goes.
pub fn next_step(page: &str, counts: &FlowCounts) -> Option<(String, String)> {
    let place = page.trim_end_matches('/').split('/').nth(1).unwrap_or("");
    let step = match place {
        "documents" if page.len() > "/documents/".len() => {
            (format!("{} → review them", count(counts.pending, "pending triple")), "/triples?status=pending".to_owned())
        }
        "documents" | "" => match (counts.documents, counts.first_document) {
            (0, _) | (_, None) => return None,
            (_, Some(id)) => ("Open a document to generate questions".to_owned(), format!("/documents/{id}")),
        },
        "triples" if counts.approved > 0 => (format!("{} approved → train", counts.approved), "/train".to_owned()),
        "triples" => return None,
        "train" if counts.runs_finished > 0 => ("Evaluate this run".to_owned(), "/evaluate".to_owned()),
        "train" => return None,
        "evaluate" if counts.runs_finished > 0 => ("Chat with this run".to_owned(), "/chat".to_owned()),
        "evaluate" => ("Chat with the base models".to_owned(), "/chat".to_owned()),
        _ => return None,
    };
    Some(step)
}

/// The steps: (path, label, count in words).
pub fn steps(counts: &FlowCounts) -> [(&'static str, &'static str, String); 5] {
    [
        ("/documents", "Documents", count(counts.documents, "file")),
        ("/triples", "Triples", format!("{} approved", counts.approved)),
        ("/train", "Train", count(counts.runs_finished, "run")),
        ("/evaluate", "Evaluate", count(counts.evals, "evaluation")),
        ("/chat", "Chat", String::new()),
    ]
}

async fn fetch(api: Api) -> FlowCounts {
    let mut counts = FlowCounts::default();
    if let Ok(documents) = api.documents().await {
        counts.documents = documents.len() as u64;
        counts.first_document = documents.first().map(|d| d.id);
    }
    if let Ok(page) = api.triples("per_page=1").await {
        counts.pending = page.counts.pending;
        counts.approved = page.counts.approved;
    }
    if let Ok(runs) = api.runs().await {
        counts.runs_finished = runs.iter().filter(|r| r.status == JobStatus::Succeeded).count() as u64;
    }
    if let Ok(evals) = api.evals().await {
        counts.evals = evals.len() as u64;
    }
    counts
}

#[component]
pub fn Stepper() -> impl IntoView {
    let api = Api::from_context();
    let link = use_context::<Link>();
    let location = use_location();
    let counts = RwSignal::new(FlowCounts::default());
    // A job that starts or ends changes the counts; a training step does not (a memo changes only
    // when the number of active jobs does).
    let active = Memo::new(move |_| link.map(|l| l.board.with(crate::link::JobBoard::active)).unwrap_or(0));
    Effect::new(move |_| {
        location.pathname.track();
        active.track();
        leptos::task::spawn_local(async move {
            counts.set(fetch(api).await);
        });
    });
    let path = move || location.pathname.get();
    view! {
        <nav class="stepper" aria-label="Steps" data-testid="stepper">
            <ol>
                {move || {
                    let here = path();
                    steps(&counts.get()).into_iter().enumerate().map(|(i, (href, label, words))| {
                        let current = here.starts_with(href);
                        view! {
                            <li class:current=current aria-current=current.then_some("step")>
                                <a href=href><span class="step-no">{i + 1}</span>" "{label}</a>
                                {(!words.is_empty()).then(|| view! { <span class="step-count">{words}</span> })}
                            </li>
                        }
                    }).collect_view()
                }}
            </ol>
            {move || next_step(&path(), &counts.get()).map(|(words, href)| view! {
                <a class="button primary next-step" data-testid="next-step" href=href>{words}</a>
            })}
        </nav>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_step_follows_the_page_and_the_counts() {
        let none = FlowCounts::default();
        assert_eq!(next_step("/documents", &none), None);
        let some =
            FlowCounts { documents: 2, first_document: Some(5), pending: 3, approved: 9, runs_finished: 1, evals: 0 };
        assert_eq!(next_step("/documents", &some).unwrap().1, "/documents/5");
        assert!(next_step("/documents/5", &some).unwrap().0.starts_with("3 pending triples"));
        assert_eq!(next_step("/triples", &some).unwrap(), ("9 approved → train".to_owned(), "/train".to_owned()));
        assert_eq!(next_step("/train", &some).unwrap().1, "/evaluate");
        assert_eq!(next_step("/evaluate/3", &some).unwrap().0, "Chat with this run");
        assert_eq!(next_step("/chat", &some), None);
        assert_eq!(steps(&some)[1].2, "9 approved");
    }
}
