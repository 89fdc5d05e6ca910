//! One document: its passages in order (in full) with page ranges, sections and triple counts,
//! search within it and a jump to a page; synthetic question generation for the whole document or
//! the selected passages, watched live over the WebSocket (a progress bar with kept and filtered
//! counts, the ETA, and Cancel — found again after a reload from the server's live state), and,
//! when a run keeps nothing, why, with the way to the dropped candidates.

use std::collections::BTreeSet;

use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

use attune_shared::{Document, FilterSettings, JobStatus, LlmChoice, Passage, SynthRequest, SynthRun};

use crate::api::{Api, ApiError};
use crate::format::{count, page_range};
use crate::link::Link;
use crate::triples::row::marked;

/// Where the form's "questions per passage" is remembered.
const QUESTIONS_KEY: &str = "attune.questions_per_passage";

fn storage() -> Option<web_sys::Storage> {
    web_sys::window().and_then(|w| w.local_storage().ok().flatten())
}

/// The remembered questions per passage (3 when none, or a bad one, is stored).
pub fn remembered_questions(stored: Option<String>) -> u32 {
    stored.and_then(|s| s.parse().ok()).filter(|n| (1..=20).contains(n)).unwrap_or(3)
}

/// Why a finished run kept nothing, in words, biggest reason first.
pub fn why_nothing_kept(run: &SynthRun) -> Option<String> {
    let r = &run.report;
    if r.kept > 0 || matches!(run.status, JobStatus::Running | JobStatus::Queued) {
        return None;
    }
    let mut reasons = r.filtered.reasons().to_vec();
    reasons.extend([
        (r.skipped_passages, "passages skipped as table of contents, index or bibliography"),
        (r.failed_passages, "passages whose LLM calls failed"),
    ]);
    reasons.retain(|(n, _)| *n > 0);
    reasons.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    if reasons.is_empty() {
        return Some("The model wrote no questions for these passages.".to_owned());
    }
    let list: Vec<String> = reasons.iter().map(|(n, what)| format!("{n} {what}")).collect();
    Some(format!("No triple was kept: {}.", list.join(", ")))
}

/// The first passage (index into `passages`) on `page`.
pub fn first_on_page(passages: &[Passage], page: u32) -> Option<usize> {
    passages.iter().position(|p| match (p.page_start, p.page_end) {
        (Some(a), Some(b)) => a <= page && page <= b,
        (Some(a), None) => a == page,
        _ => false,
    })
}

fn scroll_to(element_id: &str) {
    if let Some(element) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id(element_id)) {
        element.scroll_into_view();
    }
}

/// A run's progress in words: passages, kept, filtered, ETA.
pub fn progress_words(run: &SynthRun, eta_seconds: Option<f64>) -> String {
    let r = &run.report;
    let filtered = r.filtered.total();
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
    if run.judge.is_some() {
        words.push_str(&format!(" · judged {}, {} approved by it", r.judged, r.judge_approved));
        if r.judge_failed > 0 {
            words.push_str(&format!(", {} unscored", r.judge_failed));
        }
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
    let raw_id = move || params.with(|p| p.get("id").unwrap_or_default());
    let id = move || raw_id().parse::<i64>().ok().filter(|id| *id > 0);
    let api = Api::from_context();
    let link = use_context::<Link>();
    let document = RwSignal::new(None::<Result<Document, ApiError>>);
    let passages = RwSignal::new(None::<Result<Vec<Passage>, ApiError>>);
    let selected = RwSignal::new(BTreeSet::<i64>::new());
    let run = RwSignal::new(None::<(SynthRun, Option<f64>)>);
    let start_error = RwSignal::new(None::<String>);
    let questions =
        RwSignal::new(remembered_questions(storage().and_then(|s| s.get_item(QUESTIONS_KEY).ok().flatten())));
    let cancelling = RwSignal::new(false);
    let search = RwSignal::new(String::new());
    let jump_error = RwSignal::new(None::<String>);
    let use_server = RwSignal::new(false);
    let judge = RwSignal::new(false);
    let few_shot = RwSignal::new(false);
    let approve_at = RwSignal::new(None::<u8>);
    let filters = RwSignal::new(FilterSettings::default());
    let base_url = RwSignal::new(String::new());
    let model = RwSignal::new(String::new());
    // Bumped when a run ends, so the counts above reload.
    let reloads = RwSignal::new(0u32);
    {
        Effect::new(move |_| {
            reloads.track();
            let Some(id) = id() else {
                let message = format!("“{}” is not a document's address: documents are numbered.", raw_id());
                let error = ApiError { status: 404, code: "not_found".into(), message, current: None };
                document.set(Some(Err(error.clone())));
                passages.set(Some(Err(error)));
                return;
            };
            leptos::task::spawn_local(async move {
                document.set(Some(api.document(id).await));
                let list = api.passages(id).await;
                let first_load = passages.with_untracked(Option::is_none);
                passages.set(Some(list));
                // An address with #passage-N scrolls to that passage once it is there.
                if first_load && let Some(hash) = web_sys::window().and_then(|w| w.location().hash().ok()) {
                    let target = hash.trim_start_matches('#').to_owned();
                    if !target.is_empty() {
                        gloo_timers::callback::Timeout::new(50, move || scroll_to(&target)).forget();
                    }
                }
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
    // Progress of our run from the WebSocket; after a reload (or in another tab) the server's
    // live state names this document's running run, which is ours then.
    if let Some(link) = link {
        Effect::new(move |_| {
            if let Some((update, eta)) = link.synth.get()
                && run.with_untracked(|r| r.as_ref().is_some_and(|(mine, _)| mine.id == update.id))
            {
                let ended = !matches!(update.status, JobStatus::Running | JobStatus::Queued);
                run.set(Some((update, eta)));
                if ended {
                    cancelling.set(false);
                    reloads.update(|n| *n += 1);
                }
            }
        });
        Effect::new(move |_| {
            let Some(document_id) = id() else { return };
            let found = link.board.with(|b| b.synth_for_document(document_id));
            if let Some(found) = found
                && run.with_untracked(|r| {
                    r.as_ref().is_none_or(|(mine, _)| {
                        mine.id != found.0.id && !matches!(mine.status, JobStatus::Running | JobStatus::Queued)
                    })
                })
            {
                run.set(Some(found));
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
                filters: Some(filters.get_untracked()),
                answers: None,
                judge: (use_server.get_untracked() && judge.get_untracked())
                    .then(|| attune_shared::JudgeSettings { approve_at: approve_at.get_untracked() }),
                few_shot: use_server.get_untracked() && few_shot.get_untracked(),
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
                    Ok(started) => {
                        cancelling.set(false);
                        run.set(Some((started, None)));
                    }
                    Err(error) => start_error.set(Some(error.message)),
                }
            });
        }
    };
    // The passage a triple is being written for by hand, and what happened to the last one.
    let adding = RwSignal::new(None::<i64>);
    // The outcome of the last one, shown in the passage it was written for.
    let added = RwSignal::new(None::<(i64, Result<String, String>)>);
    let add_triple = {
        move |passage_id: i64, question: String, answer: String| {
            let new = attune_shared::NewTriple { passage_id, question, answer };
            leptos::task::spawn_local(async move {
                match api.add_triple(&new).await {
                    Ok(triple) => {
                        adding.set(None);
                        added.set(Some((passage_id, Ok(format!("Triple {} added, pending review", triple.id)))));
                        reloads.update(|n| *n += 1);
                    }
                    Err(error) => added.set(Some((passage_id, Err(error.message)))),
                }
            });
        }
    };
    let cancel = {
        move |_| {
            let Some(run_id) = run.with_untracked(|r| r.as_ref().map(|(r, _)| r.id)) else { return };
            // Said at once: a running passage finishes first, which takes a while.
            cancelling.set(true);
            leptos::task::spawn_local(async move {
                if let Err(error) = api.cancel_synthesis(run_id).await {
                    cancelling.set(false);
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
            <Show when=move || document.with(|d| matches!(d, Some(Ok(_))))>
            <form class="synth-form" aria-label="Generate questions" on:submit=|e: web_sys::SubmitEvent| e.prevent_default()>
                <h2>"Generate questions"</h2>
                <label>"Questions per passage "
                    <input type="number" min="1" max="20" prop:value=move || questions.get().to_string()
                        on:input=move |e| {
                            let n = remembered_questions(Some(event_target_value(&e)));
                            questions.set(n);
                            if let Some(storage) = storage() {
                                let _ = storage.set_item(QUESTIONS_KEY, &n.to_string());
                            }
                        } />
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
                    <label>
                        <input type="checkbox" data-testid="few-shot" prop:checked=move || few_shot.get()
                            on:change=move |e| few_shot.set(event_target_checked(&e)) />
                        " Show it two worked examples of questions (few-shot: helps a capable model; the local model only copies them)"
                    </label>
                    <label>
                        <input type="checkbox" data-testid="judge" prop:checked=move || judge.get()
                            on:change=move |e| judge.set(event_target_checked(&e)) />
                        " Score each kept triple with this server as a judge (groundedness and usefulness, 1–5)"
                    </label>
                    <Show when=move || judge.get()>
                        <label>"Approve at once when both scores are at least "
                            <select data-testid="judge-approve-at" on:change=move |e| approve_at.set(event_target_value(&e).parse().ok())>
                                <option value="">"never (review them)"</option>
                                {(3..=5u8).map(|n| view! { <option value=n.to_string() selected=move || approve_at.get() == Some(n)>{n.to_string()}</option> }).collect_view()}
                            </select>
                        </label>
                    </Show>
                </Show>
                <FilterFields filters />
                <button class="primary" type="button" on:click=start
                    disabled=move || run.with(|r| r.as_ref().is_some_and(|(r, _)| matches!(r.status, JobStatus::Running | JobStatus::Queued)))>
                    {move || {
                        let n = selected.with(|s| s.len());
                        if n == 0 { "Start for the whole document".to_owned() } else { format!("Start for {}", count(n as u64, "selected passage")) }
                    }}
                </button>
                {move || start_error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            </form>
            </Show>
            {move || run.get().map(|(current, eta)| {
                let running = matches!(current.status, JobStatus::Running | JobStatus::Queued);
                view! {
                    <div class="synth-progress" data-testid="synth-progress" data-status=status_words(current.status)>
                        <p><strong>{format!("Run {} — {}", current.id, status_words(current.status))}</strong></p>
                        <progress max=current.passages_total.max(1) value=current.report.passages_done></progress>
                        <p class="counts">{progress_words(&current, eta)}</p>
                        {current.error.clone().map(|e| view! { <p class="error">{e}</p> })}
                        {running.then(|| view! {
                            <button data-testid="synth-cancel" disabled=move || cancelling.get() on:click=cancel>
                                {move || if cancelling.get() { "Cancelling… (after the current passage)" } else { "Cancel" }}
                            </button>
                        })}
                        {why_nothing_kept(&current).map(|why| {
                            let filtered_href = format!("/triples?status=filtered{}", current.document_id.map(|d| format!("&document_id={d}")).unwrap_or_default());
                            view! {
                                <div class="nothing-kept" data-testid="nothing-kept">
                                    <p><strong>{why}</strong></p>
                                    <p><a href=filtered_href data-testid="see-filtered">"See the dropped candidates with their reasons"</a>
                                        " and keep the good ones anyway. A larger model writes better questions: tick “Use an OpenAI-compatible server” above (a local llama.cpp or vLLM server works)."</p>
                                </div>
                            }
                        })}
                    </div>
                }
            })}
            <Show when=move || document.with(|d| matches!(d, Some(Ok(_))))>
            <h2>"Passages"</h2>
            <div class="toolbar passage-tools">
                <input type="search" aria-label="Search this document" placeholder="Search this document" data-testid="doc-search"
                    on:input=move |e| search.set(event_target_value(&e)) />
                <form class="jump" on:submit=move |e: web_sys::SubmitEvent| {
                    e.prevent_default();
                    let input: Option<web_sys::HtmlInputElement> = e.target()
                        .and_then(|t| wasm_bindgen::JsCast::dyn_into::<web_sys::HtmlFormElement>(t).ok())
                        .and_then(|f| f.elements().named_item("page"))
                        .and_then(|i| wasm_bindgen::JsCast::dyn_into(i).ok());
                    let page: Option<u32> = input.and_then(|i| i.value().trim().parse().ok());
                    let found = page.and_then(|page| passages.with_untracked(|p| {
                        p.as_ref().and_then(|r| r.as_ref().ok()).and_then(|list| first_on_page(list, page).map(|i| list[i].id))
                    }));
                    match found {
                        Some(passage_id) => { jump_error.set(None); search.set(String::new()); scroll_to(&format!("passage-{passage_id}")); }
                        None => jump_error.set(Some("No passage on that page.".into())),
                    }
                }>
                    <label>"Go to page " <input type="number" name="page" min="1" size="4" data-testid="jump-page" /></label>
                    <button type="submit">"Go"</button>
                </form>
                {move || jump_error.get().map(|e| view! { <span class="error" role="alert">{e}</span> })}
            </div>
            {move || match passages.get() {
                None => view! { <p class="loading">"Loading passages…"</p> }.into_any(),
                Some(Err(error)) => view! { <p class="error">{error.message}</p> }.into_any(),
                Some(Ok(list)) => view! {
                    <ol class="passages">
                        {move || {
                        let words: Vec<String> = search.get().split_whitespace().map(str::to_lowercase).collect();
                        list.clone().into_iter().filter(|p| {
                            let text = p.text.to_lowercase();
                            words.iter().all(|w| text.contains(w.as_str()))
                        }).map(|p| {
                            let pid = p.id;
                            let words = words.clone();
                            view! {
                                <li class="passage" id=format!("passage-{pid}") data-testid="passage">
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
                                        <span class="muted" data-testid="passage-triples">{count(u64::from(p.triples), "triple")}</span>
                                        {p.reference_matter.clone().map(|kind| view! {
                                            <span class="badge muted" title="question generation skips it">{format!("{kind}: skipped")}</span>
                                        })}
                                    </label>
                                    <p class="passage-text">{marked(&p.text, &words)}</p>
                                    {move || added.get().filter(|(at, _)| *at == pid).map(|(_, result)| match result {
                                        Ok(text) => view! { <p class="notice ok" role="status" data-testid="triple-added">{text}</p> }.into_any(),
                                        Err(text) => view! { <p class="error" role="alert">{format!("Not added: {text}")}</p> }.into_any(),
                                    })}
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
                        }).collect_view()
                        }}
                    </ol>
                }.into_any(),
            }}
            </Show>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_values_and_why_nothing_was_kept() {
        assert_eq!(remembered_questions(Some("7".into())), 7);
        assert_eq!(remembered_questions(Some("70".into())), 3);
        assert_eq!(remembered_questions(None), 3);
        let run: SynthRun = serde_json::from_value(serde_json::json!({
            "id": 4, "status": "succeeded", "llm": {"type": "local"}, "model": "m", "questions_per_passage": 3,
            "prompts": {"questions": "q", "answer": "a"}, "passages_total": 2,
            "report": {"passages_done": 2, "kept": 0, "skipped_passages": 1, "filtered": {"ungrounded": 4, "duplicate": 1}},
            "created_at": "t", "updated_at": "t"
        }))
        .unwrap();
        assert_eq!(
            why_nothing_kept(&run).unwrap(),
            "No triple was kept: 4 answers not found in the passage, 1 duplicate questions, \
             1 passages skipped as table of contents, index or bibliography."
        );
        let mut kept = run.clone();
        kept.report.kept = 1;
        assert_eq!(why_nothing_kept(&kept), None);
    }

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
        let judged = SynthRun {
            judge: Some(attune_shared::JudgeSettings { approve_at: Some(4) }),
            report: attune_shared::SynthReport { judged: 6, judge_approved: 4, judge_failed: 1, ..run.report },
            ..run.clone()
        };
        assert!(
            progress_words(&judged, None).ends_with(" · judged 6, 4 approved by it, 1 unscored"),
            "{}",
            progress_words(&judged, None)
        );
        run.status = JobStatus::Cancelled;
        run.report.failed_passages = 1;
        assert_eq!(
            progress_words(&run, Some(3.0)),
            "5 of 20 passages · 7 triples kept · 3 filtered · 1 passage failed"
        );
    }
}

/// The filters' thresholds, folded away: the defaults suit most documents. A field that does not
/// parse keeps the last value; the server validates the ranges.
#[component]
fn FilterFields(filters: RwSignal<FilterSettings>) -> impl IntoView {
    let number = |label: &'static str,
                  help: &'static str,
                  step: &'static str,
                  get: fn(&FilterSettings) -> f64,
                  set: fn(&mut FilterSettings, f64)| {
        view! {
            <label title=help>{label}" "
                <input type="number" step=step prop:value=move || filters.with(|f| get(f).to_string())
                    on:change=move |e| {
                        if let Ok(value) = event_target_value(&e).trim().parse::<f64>() {
                            filters.update(|f| set(f, value));
                        }
                    } />
            </label>
        }
    };
    view! {
        <details class="filter-fields">
            <summary>"Filters"</summary>
            <p class="muted">"Candidates a filter drops are kept aside with why (Triples → filtered)."</p>
            {number("Round trip: the retriever must rank the passage in its top (0: off)",
                "A question is kept only if the base retriever finds its own passage among this many of all passages.",
                "1", |f| f.round_trip_top_k as f64, |f, v| f.round_trip_top_k = v.max(0.0) as u32)}
            {number("Near-duplicate at a similarity of (1: off)",
                "A question this similar (cosine of embeddings) to one kept before, for any passage, is dropped.",
                "0.01", |f| f.max_question_similarity, |f, v| f.max_question_similarity = v)}
            {number("Grounding: share of the answer's words in the passage",
                "At least this share of the answer's content words must occur in the passage.",
                "0.05", |f| f.min_grounding, |f, v| f.min_grounding = v)}
            {number("Longest answer, in words", "Longer answers are dropped.",
                "1", |f| f.max_answer_words as f64, |f, v| f.max_answer_words = v.max(0.0) as usize)}
            {number("Copied words: a question copying this many in a row is dropped",
                "Questions that copy a long span of the passage word for word are dropped.",
                "1", |f| f.max_copied_words as f64, |f, v| f.max_copied_words = v.max(0.0) as usize)}
            {number("Restating: share of the question's words an answer may repeat",
                "An answer holding this share of the question's content words and at most one of its own only restates it.",
                "0.05", |f| f.max_question_overlap, |f, v| f.max_question_overlap = v)}
        </details>
    }
}
