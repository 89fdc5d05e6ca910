//! One document: its passages in order with page ranges and sections, and synthetic question
//! generation for the whole document or the selected passages, watched live over the WebSocket
//! (a progress bar with kept and filtered counts, the ETA, and a cancel button).

use std::collections::BTreeSet;

use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

use attune_shared::{Document, JobStatus, LlmChoice, Passage, SynthRequest, SynthRun};

use crate::api::{Api, ApiError};
use crate::format::{count, page_range};
use crate::link::Link;

/// A run's progress in words: passages, kept, filtered, ETA.
pub fn progress_words(run: &SynthRun, eta_seconds: Option<f64>) -> String {
    let r = &run.report;
    let f = &r.filtered;
    let filtered = f.empty + f.duplicate + f.not_a_question + f.copies_passage + f.ungrounded + f.answer_too_long;
    let mut words = format!(
        "{} of {} passages · {} kept · {} filtered",
        r.passages_done,
        run.passages_total,
        count(r.kept, "triple"),
        filtered
    );
    if r.failed_passages > 0 {
        words.push_str(&format!(" · {} failed", count(r.failed_passages, "passage")));
    }
    if let Some(eta) = eta_seconds.filter(|_| run.status == JobStatus::Running) {
        words.push_str(&format!(" · about {} left", human_duration(eta)));
    }
    words
}

fn human_duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0).round() as u64;
    if seconds < 60 { format!("{seconds} s") } else { format!("{} min {} s", seconds / 60, seconds % 60) }
}

fn status_words(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "queued",
        JobStatus::Running => "running",
        JobStatus::Succeeded => "finished",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
        JobStatus::Interrupted => "interrupted (resume it to continue)",
    }
}

#[component]
pub fn DocumentView() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.with(|p| p.get("id").and_then(|id| id.parse::<i64>().ok()));
    let api = Api::from_context();
    let link = use_context::<Link>();
    let document = RwSignal::new(None::<Result<Document, ApiError>>);
    let passages = RwSignal::new(None::<Result<Vec<Passage>, ApiError>>);
    let selected = RwSignal::new(BTreeSet::<i64>::new());
    let run = RwSignal::new(None::<(SynthRun, Option<f64>)>);
    let start_error = RwSignal::new(None::<String>);
    let questions = RwSignal::new(3u32);
    let use_server = RwSignal::new(false);
    let base_url = RwSignal::new(String::new());
    let model = RwSignal::new(String::new());
    // Bumped when a run ends, so the counts above reload.
    let reloads = RwSignal::new(0u32);
    {
        Effect::new(move |_| {
            reloads.track();
            let Some(id) = id() else { return };
            leptos::task::spawn_local(async move {
                document.set(Some(api.document(id).await));
                passages.set(Some(api.passages(id).await));
            });
        });
    }
    // The OpenAI-compatible server of the settings (the only one a run may use) fills the form.
    leptos::task::spawn_local(async move {
        if let Ok(settings) = api.settings().await
            && let (Some(url), Some(name)) = (settings.llm_base_url, settings.llm_model)
        {
            base_url.set(url);
            model.set(name);
        }
    });
    // Progress of our run from the WebSocket.
    if let Some(link) = link {
        Effect::new(move |_| {
            if let Some((update, eta)) = link.synth.get()
                && run.with_untracked(|r| r.as_ref().is_some_and(|(mine, _)| mine.id == update.id))
            {
                let ended = !matches!(update.status, JobStatus::Running | JobStatus::Queued);
                run.set(Some((update, eta)));
                if ended {
                    reloads.update(|n| *n += 1);
                }
            }
        });
    }
    let start = {
        move |_| {
            let Some(document_id) = id() else { return };
            let llm = if use_server.get_untracked() {
                LlmChoice::OpenAi { base_url: base_url.get_untracked(), model: model.get_untracked() }
            } else {
                LlmChoice::Local
            };
            let chosen: Vec<i64> = selected.get_untracked().into_iter().collect();
            let request = SynthRequest {
                document_id: Some(document_id),
                passage_ids: chosen,
                questions_per_passage: Some(questions.get_untracked()),
                llm: Some(llm),
                prompts: None,
                limit: None,
            };
            start_error.set(None);
            leptos::task::spawn_local(async move {
                // The server entered here becomes the setting: passages and the API key go only to it.
                if let Some(LlmChoice::OpenAi { base_url, model }) = &request.llm {
                    let saved = match api.settings().await {
                        Ok(settings) => {
                            let settings = attune_shared::Settings {
                                llm_base_url: Some(base_url.clone()),
                                llm_model: Some(model.clone()),
                                ..settings
                            };
                            api.save_settings(&settings).await.map(|_| ())
                        }
                        Err(error) => Err(error),
                    };
                    if let Err(error) = saved {
                        start_error.set(Some(error.message));
                        return;
                    }
                }
                match api.start_synthesis(&request).await {
                    Ok(started) => run.set(Some((started, None))),
                    Err(error) => start_error.set(Some(error.message)),
                }
            });
        }
    };
    // The passage a triple is being written for by hand, and what happened to the last one.
    let adding = RwSignal::new(None::<i64>);
    let added = RwSignal::new(None::<Result<String, String>>);
    let add_triple = {
        move |passage_id: i64, question: String, answer: String| {
            let new = attune_shared::NewTriple { passage_id, question, answer };
            leptos::task::spawn_local(async move {
                match api.add_triple(&new).await {
                    Ok(triple) => {
                        adding.set(None);
                        added.set(Some(Ok(format!("Triple {} added, pending review", triple.id))));
                        reloads.update(|n| *n += 1);
                    }
                    Err(error) => added.set(Some(Err(error.message))),
                }
            });
        }
    };
    let cancel = {
        move |_| {
            let Some(run_id) = run.with_untracked(|r| r.as_ref().map(|(r, _)| r.id)) else { return };
            leptos::task::spawn_local(async move {
                if let Err(error) = api.cancel_synthesis(run_id).await {
                    start_error.set(Some(error.message));
                }
            });
        }
    };

    view! {
        <section class="page document-view">
            <p><a href="/documents">"← All documents"</a></p>
            {move || match document.get() {
                None => view! { <h1>"Document"</h1><p class="loading">"Loading…"</p> }.into_any(),
                Some(Err(error)) => view! { <h1>"Document"</h1><p class="error">{error.message}</p> }.into_any(),
                Some(Ok(d)) => view! {
                    <h1>{d.name.clone()}</h1>
                    <p class="lead">{format!(
                        "{}{} · {} pending, {} approved, {} rejected",
                        count(d.passages.into(), "passage"),
                        d.pages.map(|p| format!(" from {}", count(p.into(), "page"))).unwrap_or_default(),
                        d.triples.pending, d.triples.approved, d.triples.rejected
                    )}</p>
                }.into_any(),
            }}
            <form class="synth-form" aria-label="Generate questions" on:submit=|e: web_sys::SubmitEvent| e.prevent_default()>
                <h2>"Generate questions"</h2>
                <label>"Questions per passage "
                    <input type="number" min="1" max="20" prop:value=move || questions.get().to_string()
                        on:input=move |e| questions.set(event_target_value(&e).parse().unwrap_or(3)) />
                </label>
                <label>
                    <input type="checkbox" prop:checked=move || use_server.get()
                        on:change=move |e| use_server.set(event_target_checked(&e)) />
                    " Use an OpenAI-compatible server instead of the local model"
                </label>
                <Show when=move || use_server.get()>
                    <p class="muted">"Saved in the settings when you start: the passages, and the key in ATTUNE_LLM_API_KEY, go only to this server."</p>
                    <label>"Server URL (up to /v1) "
                        <input type="url" placeholder="http://127.0.0.1:8000/v1" prop:value=move || base_url.get()
                            on:input=move |e| base_url.set(event_target_value(&e)) />
                    </label>
                    <label>"Model "
                        <input type="text" prop:value=move || model.get() on:input=move |e| model.set(event_target_value(&e)) />
                    </label>
                </Show>
                <button class="primary" type="button" on:click=start
                    disabled=move || run.with(|r| r.as_ref().is_some_and(|(r, _)| matches!(r.status, JobStatus::Running | JobStatus::Queued)))>
                    {move || {
                        let n = selected.with(|s| s.len());
                        if n == 0 { "Start for the whole document".to_owned() } else { format!("Start for {}", count(n as u64, "selected passage")) }
                    }}
                </button>
                {move || start_error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            </form>
            {move || run.get().map(|(current, eta)| {
                let running = matches!(current.status, JobStatus::Running | JobStatus::Queued);
                view! {
                    <div class="synth-progress" data-testid="synth-progress" data-status=status_words(current.status)>
                        <p><strong>{format!("Run {} — {}", current.id, status_words(current.status))}</strong></p>
                        <progress max=current.passages_total.max(1) value=current.report.passages_done></progress>
                        <p class="counts">{progress_words(&current, eta)}</p>
                        {current.error.clone().map(|e| view! { <p class="error">{e}</p> })}
                        {running.then(|| view! { <button on:click=cancel>"Cancel"</button> })}
                    </div>
                }
            })}
            <h2>"Passages"</h2>
            {move || added.get().map(|result| match result {
                Ok(text) => view! { <p class="notice ok" role="status">{text}</p> }.into_any(),
                Err(text) => view! { <p class="error" role="alert">{format!("Not added: {text}")}</p> }.into_any(),
            })}
            {move || match passages.get() {
                None => view! { <p class="loading">"Loading passages…"</p> }.into_any(),
                Some(Err(error)) => view! { <p class="error">{error.message}</p> }.into_any(),
                Some(Ok(list)) => view! {
                    <ol class="passages">
                        {list.into_iter().map(|p| {
                            let pid = p.id;
                            view! {
                                <li class="passage">
                                    <label class="passage-head">
                                        <input type="checkbox" aria-label=format!("Select passage {}", p.ord + 1)
                                            prop:checked=move || selected.with(|s| s.contains(&pid))
                                            on:change=move |e| selected.update(|s| {
                                                if event_target_checked(&e) { s.insert(pid); } else { s.remove(&pid); }
                                            }) />
                                        <span>{format!("#{}", p.ord + 1)}</span>
                                        <span class="muted">{page_range(p.page_start, p.page_end)}</span>
                                        <span class="muted">{p.section.clone().unwrap_or_default()}</span>
                                        <span class="muted">{format!("{} tokens", p.tokens)}</span>
                                    </label>
                                    <p class="passage-text">{p.text.clone()}</p>
                                    <button class="secondary" aria-label=format!("Add a triple for passage {}", p.ord + 1)
                                        on:click=move |_| adding.set(Some(pid))>"Add a triple"</button>
                                    {move || (adding.get() == Some(pid)).then(|| {
                                        let question = RwSignal::new(String::new());
                                        let answer = RwSignal::new(String::new());
                                        view! {
                                            <form class="add-triple" aria-label="New triple" on:submit=move |e: web_sys::SubmitEvent| {
                                                e.prevent_default();
                                                add_triple(pid, question.get_untracked(), answer.get_untracked());
                                            }>
                                                <label>"Question " <input type="text" required on:input=move |e| question.set(event_target_value(&e)) /></label>
                                                <label>"Answer " <input type="text" required on:input=move |e| answer.set(event_target_value(&e)) /></label>
                                                <button class="primary" type="submit">"Save triple"</button>
                                                <button type="button" on:click=move |_| adding.set(None)>"Cancel"</button>
                                            </form>
                                        }
                                    })}
                                </li>
                            }
                        }).collect_view()}
                    </ol>
                }.into_any(),
            }}
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_progress_in_words() {
        assert_eq!(page_range(Some(3), Some(4)), "pp. 3–4");
        assert_eq!(page_range(Some(7), Some(7)), "p. 7");
        assert_eq!(page_range(None, None), "");
        let mut run: SynthRun = serde_json::from_value(serde_json::json!({
            "id": 4, "status": "running", "llm": {"type": "local"}, "model": "m", "questions_per_passage": 3,
            "prompts": {"questions": "q", "answer": "a"}, "passages_total": 20,
            "report": {"passages_done": 5, "kept": 7, "filtered": {"duplicate": 2, "ungrounded": 1}},
            "created_at": "t", "updated_at": "t"
        }))
        .unwrap();
        assert_eq!(
            progress_words(&run, Some(125.0)),
            "5 of 20 passages · 7 triples kept · 3 filtered · about 2 min 5 s left"
        );
        run.status = JobStatus::Cancelled;
        run.report.failed_passages = 1;
        assert_eq!(
            progress_words(&run, Some(3.0)),
            "5 of 20 passages · 7 triples kept · 3 filtered · 1 passage failed"
        );
    }
}
