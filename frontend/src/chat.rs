//! The Chat page: questions to a chosen model pair (base, or a run's tuned retriever + generator)
//! over the live link; the retrieved passages arrive first as expandable citations with scores,
//! then the answer streams in token by token. Stop ends an answer; clear forgets the history the
//! server keeps for the conversation; side by side asks two pairs the same question. Answers are
//! Markdown with `[n]` markers linked to the cited passages; temperature, length and the
//! repetition penalty are set per question; the conversation lives in the shell, so it survives
//! moving to another page and back.

use leptos::prelude::*;

use attune_shared::{ChatOptions, ChatStats, Citation, ClientMessage, ModelPair, RetrievalMethod, ServerMessage};

use crate::api::Api;
use crate::format::page_range;
use crate::link::{Link, take};

/// One model pair's answer to one question, as it streams in.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answer {
    pub chat_id: String,
    pub request_id: u64,
    pub model_label: String,
    /// Passages embedded so far while the index is (re)built.
    pub indexing: Option<(u64, u64)>,
    pub passages: Option<Vec<Citation>>,
    pub text: String,
    pub done: bool,
    pub stopped: bool,
    pub error: Option<String>,
    pub stats: Option<ChatStats>,
    /// The token limit it was asked with.
    pub max_tokens: u32,
}

impl Answer {
    /// Applies one server message addressed to this answer; false when it is not.
    pub fn apply(&mut self, message: &ServerMessage) -> bool {
        match message {
            ServerMessage::IndexProgress { done, total, .. } if self.passages.is_none() && !self.done => {
                self.indexing = Some((*done, *total));
            }
            ServerMessage::ChatPassages { chat_id, request_id, passages } if self.is(chat_id, *request_id) => {
                self.indexing = None;
                self.passages = Some(passages.clone());
            }
            ServerMessage::ChatToken { chat_id, request_id, text } if self.is(chat_id, *request_id) => {
                self.text.push_str(text);
            }
            ServerMessage::ChatDone { chat_id, request_id, stopped, stats } if self.is(chat_id, *request_id) => {
                self.done = true;
                self.stopped = *stopped;
                self.stats = Some(*stats);
            }
            ServerMessage::ChatError { chat_id, request_id, message, .. } if self.is(chat_id, *request_id) => {
                self.done = true;
                self.error = Some(message.clone());
            }
            _ => return false,
        }
        true
    }

    fn is(&self, chat_id: &str, request_id: u64) -> bool {
        self.chat_id == chat_id && self.request_id == request_id
    }

    /// `streaming`, `done`, `stopped` or `failed` (for styling and tests).
    pub fn state(&self) -> &'static str {
        match (self.done, self.stopped, self.error.is_some()) {
            (false, ..) => "streaming",
            (true, _, true) => "failed",
            (true, true, _) => "stopped",
            _ => "done",
        }
    }
}

/// A question and the answers of the pair(s) asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub question: String,
    pub answers: Vec<Answer>,
}

/// "first token after 0.84 s · 23.5 tokens/s · 41 tokens".
pub fn stats_words(stats: &ChatStats) -> String {
    format!(
        "first token after {:.2} s · {:.1} tokens/s · {} tokens",
        stats.first_token_ms / 1000.0,
        stats.tokens_per_second,
        stats.tokens
    )
}

/// The conversation and its settings, kept by the shell for the page's lifetime (a reload starts
/// a new conversation: chat ids are fresh per page load).
#[derive(Clone, Copy)]
pub struct ChatMemory {
    pub turns: RwSignal<Vec<Turn>>,
    pub pairs: RwSignal<Option<Vec<ModelPair>>>,
    pub left: RwSignal<String>,
    pub right: RwSignal<String>,
    pub side_by_side: RwSignal<bool>,
    pub top_k: RwSignal<u32>,
    pub options: RwSignal<ChatOptions>,
    pub session: StoredValue<String>,
    pub next_request: StoredValue<u64>,
}

impl ChatMemory {
    pub fn new() -> ChatMemory {
        ChatMemory {
            turns: RwSignal::new(Vec::new()),
            pairs: RwSignal::new(None),
            left: RwSignal::new("base".to_owned()),
            right: RwSignal::new("base".to_owned()),
            side_by_side: RwSignal::new(false),
            top_k: RwSignal::new(5),
            options: RwSignal::new(ChatOptions::default()),
            session: StoredValue::new(format!("{:x}", (js_sys::Math::random() * 1e12) as u64)),
            next_request: StoredValue::new(1),
        }
    }
}

impl Default for ChatMemory {
    fn default() -> Self {
        ChatMemory::new()
    }
}

/// What the end of an answer says about how it stopped, if anything.
pub fn ending_words(stats: &ChatStats, max_tokens: u32) -> Option<String> {
    if stats.stopped_repeating {
        Some("Stopped: the answer began repeating itself.".to_owned())
    } else if stats.hit_cap {
        Some(format!("Stopped at the {max_tokens}-token limit: raise “Max tokens” for a longer answer."))
    } else {
        None
    }
}

#[component]
pub fn ChatPage() -> impl IntoView {
    let api = Api::from_context();
    let link = use_context::<Link>();
    let send = move |message: &ClientMessage| link.is_some_and(|l| l.send(message));
    let memory = use_context::<ChatMemory>().unwrap_or_default();
    let ChatMemory { turns, pairs, left, right, side_by_side, top_k, options, session, next_request } = memory;
    let draft = RwSignal::new(String::new());
    let problem = RwSignal::new(None::<String>);
    let session = session.get_value();
    let chat_ids = [format!("{session}-a"), format!("{session}-b")];

    if pairs.with_untracked(Option::is_none) {
        leptos::task::spawn_local(async move {
            if let Ok(list) = api.models().await {
                // Talk to the newest tuned pair by default, and compare it with the base one.
                if let Some(tuned) = list.iter().rev().find(|p| p.run_id.is_some()) {
                    left.set(tuned.id.clone());
                    right.set("base".into());
                }
                pairs.set(Some(list));
            }
        });
    }
    if let Some(link) = link {
        Effect::new(move |_| {
            let messages = take(link.chat);
            if messages.is_empty() {
                return;
            }
            turns.update(|turns| {
                for message in &messages {
                    for turn in turns.iter_mut().rev().take(3) {
                        for answer in &mut turn.answers {
                            answer.apply(message);
                        }
                    }
                }
            });
        });
    }
    let answering = move || turns.with(|t| t.last().is_some_and(|t| t.answers.iter().any(|a| !a.done)));
    let label_of = move |id: &str| {
        pairs
            .with_untracked(|p| p.as_ref().and_then(|p| p.iter().find(|p| p.id == id).map(|p| p.label.clone())))
            .unwrap_or(id.to_owned())
    };
    let ask = {
        let chat_ids = chat_ids.clone();
        move || {
            let question = draft.get_untracked().trim().to_owned();
            if question.is_empty() || answering() {
                return;
            }
            let chosen = options.get_untracked();
            if let Err(message) = chosen.validate() {
                problem.set(Some(message));
                return;
            }
            let mut models = vec![left.get_untracked()];
            if side_by_side.get_untracked() {
                models.push(right.get_untracked());
            }
            let mut answers = Vec::new();
            for (model, chat_id) in models.into_iter().zip(&chat_ids) {
                let request_id = next_request.get_value();
                next_request.set_value(request_id + 1);
                let message = ClientMessage::ChatAsk {
                    chat_id: chat_id.clone(),
                    request_id,
                    model: model.clone(),
                    question: question.clone(),
                    top_k: Some(top_k.get_untracked()),
                    options: chosen,
                };
                if !send(&message) {
                    problem.set(Some("Not connected to the server; wait for the link to come back.".into()));
                    return;
                }
                answers.push(Answer {
                    chat_id: chat_id.clone(),
                    request_id,
                    model_label: label_of(&model),
                    max_tokens: chosen.max_tokens,
                    ..Answer::default()
                });
            }
            problem.set(None);
            draft.set(String::new());
            turns.update(|t| t.push(Turn { question, answers }));
        }
    };
    let stop = {
        let chat_ids = chat_ids.clone();
        move |_| {
            for chat_id in &chat_ids {
                send(&ClientMessage::ChatStop { chat_id: chat_id.clone() });
            }
        }
    };
    let clear = {
        let chat_ids = chat_ids.clone();
        move |_| {
            for chat_id in &chat_ids {
                send(&ClientMessage::ChatClear { chat_id: chat_id.clone() });
            }
            turns.set(Vec::new());
        }
    };
    let ask_on_click = ask.clone();
    let pair_options = move || {
        pairs.get().unwrap_or_default().into_iter().map(|p| (p.id.clone(), p.label.clone())).collect::<Vec<_>>()
    };
    let set_option = move |apply: fn(&mut ChatOptions, f64), text: String| match text.trim().parse::<f64>() {
        Ok(value) => {
            let mut next = options.get_untracked();
            apply(&mut next, value);
            match next.validate() {
                Ok(()) => {
                    options.set(next);
                    problem.set(None);
                }
                Err(message) => problem.set(Some(message)),
            }
        }
        Err(_) => problem.set(Some(format!("{text:?} is not a number"))),
    };

    view! {
        <section class="page chat">
            <h1>"Chat"</h1>
            <p class="lead">"Ask your documents. The passages the answer is based on come first, with their scores."</p>
            <div class="toolbar chat-settings">
                <label>"Models "
                    <select aria-label="Models" on:change=move |e| left.set(event_target_value(&e))>
                        {move || pair_options().into_iter().map(|(id, label)| {
                            let selected = left.get() == id;
                            view! { <option value=id.clone() selected=selected>{label}</option> }
                        }).collect_view()}
                    </select>
                </label>
                <label class="inline">
                    <input type="checkbox" data-testid="side-by-side" prop:checked=move || side_by_side.get() on:change=move |e| side_by_side.set(event_target_checked(&e)) />
                    " side by side with "
                </label>
                <select aria-label="Compare with" disabled=move || !side_by_side.get() on:change=move |e| right.set(event_target_value(&e))>
                    {move || pair_options().into_iter().map(|(id, label)| {
                        let selected = right.get() == id;
                        view! { <option value=id.clone() selected=selected>{label}</option> }
                    }).collect_view()}
                </select>
                <label>"Passages "
                    <input type="number" min="1" max="20" size="3" prop:value=move || top_k.get().to_string()
                        on:change=move |e| top_k.set(event_target_value(&e).parse().unwrap_or(5).clamp(1, 20)) />
                </label>
                <label title="dense: the retriever's embeddings; BM25: words shared with the question; hybrid: both rankings fused (the default: on real QA sets it puts more right passages first than either alone)">"Search "
                    <select aria-label="Search" data-testid="chat-retrieval" on:change=move |e| {
                        if let Some(method) = RetrievalMethod::from_name(&event_target_value(&e)) {
                            options.update(|o| o.retrieval = method);
                        }
                    }>
                        {RetrievalMethod::ALL.into_iter().map(|method| {
                            let selected = move || options.with(|o| o.retrieval == method);
                            view! { <option value=method.as_str() selected=selected>{retrieval_label(method)}</option> }
                        }).collect_view()}
                    </select>
                </label>
                <button type="button" data-testid="chat-clear" on:click=clear>"Clear history"</button>
                {move || pairs.with(Option::is_none).then(|| view! { <span class="muted" data-testid="pairs-loading">"loading the model list…"</span> })}
            </div>
            <details class="chat-options">
                <summary>"Generation settings"</summary>
                <div class="toolbar">
                    <label title="0: the same answer every time; higher: more varied">"Temperature "
                        <input type="number" min="0" max="2" step="0.1" data-testid="chat-temperature" prop:value=move || options.get().temperature.to_string()
                            on:change=move |e| set_option(|o, v| o.temperature = v, event_target_value(&e)) />
                    </label>
                    <label title="the longest answer, in tokens">"Max tokens "
                        <input type="number" min="1" max="2048" step="1" data-testid="chat-max-tokens" prop:value=move || options.get().max_tokens.to_string()
                            on:change=move |e| set_option(|o, v| o.max_tokens = v as u32, event_target_value(&e)) />
                    </label>
                    <label title="above 1 makes words already in the answer less likely (1: off)">"Repetition penalty "
                        <input type="number" min="1" max="2" step="0.05" data-testid="chat-repetition" prop:value=move || options.get().repetition_penalty.to_string()
                            on:change=move |e| set_option(|o, v| o.repetition_penalty = v, event_target_value(&e)) />
                    </label>
                </div>
            </details>
            <ol class="conversation" aria-live="polite">
                {move || turns.get().into_iter().map(|turn| { let paired = turn.answers.len() > 1; view! {
                    <li class="turn">
                        <p class="asked">{turn.question.clone()}</p>
                        <div class="answers" class:pair=paired>
                            {turn.answers.into_iter().map(|answer| view! { <AnswerView answer=answer /> }).collect_view()}
                        </div>
                    </li>
                }}).collect_view()}
            </ol>
            <form class="ask" on:submit=move |e: web_sys::SubmitEvent| { e.prevent_default(); ask(); }>
                <textarea rows="2" data-testid="chat-input" aria-label="Your question" placeholder="Ask a question about your documents…"
                    prop:value=move || draft.get() on:input=move |e| draft.set(event_target_value(&e))
                    on:keydown=move |e: web_sys::KeyboardEvent| if e.key() == "Enter" && !e.shift_key() { e.prevent_default(); ask_on_click(); } />
                <Show when=answering fallback=|| view! { <button type="submit" class="primary" data-testid="chat-send">"Ask"</button> }>
                    <button type="button" class="danger" data-testid="chat-stop" on:click=stop.clone()>"Stop"</button>
                </Show>
            </form>
            {move || problem.get().map(|m| view! { <p class="error" role="alert">{m}</p> })}
        </section>
    }
}

/// A retrieval method as the Chat and Evaluate pages name it.
pub fn retrieval_label(method: RetrievalMethod) -> &'static str {
    match method {
        RetrievalMethod::Dense => "dense",
        RetrievalMethod::Bm25 => "BM25",
        RetrievalMethod::Hybrid => "hybrid (dense + BM25)",
    }
}

#[component]
fn AnswerView(answer: Answer) -> impl IntoView {
    let state = answer.state();
    let hrefs: Vec<String> =
        answer.passages.iter().flatten().map(|c| crate::markdown::citation_href(c.document_id, c.passage_id)).collect();
    let waiting = !answer.done && answer.passages.is_none() && answer.indexing.is_none();
    let html = crate::markdown::render(&answer.text, &hrefs);
    let ending = answer.stats.as_ref().and_then(|s| ending_words(s, answer.max_tokens));
    view! {
        <article class="answer" data-testid="answer" data-state=state>
            <header class="muted">{answer.model_label.clone()}</header>
            {waiting.then(|| view! { <p class="muted" data-testid="answer-loading">"Loading the models and searching the passages…"</p> })}
            {answer.indexing.map(|(done, total)| view! {
                <p class="muted" data-testid="indexing">{format!("Indexing passages for this retriever: {done} / {total}")}</p>
            })}
            {answer.passages.clone().map(|passages| view! {
                <div class="citations" data-testid="citations">
                    {passages.into_iter().enumerate().map(|(i, c)| {
                        let href = crate::markdown::citation_href(c.document_id, c.passage_id);
                        view! {
                            <details class="citation" data-testid="citation">
                                <summary>
                                    <span class="cite-no">{format!("[{}]", i + 1)}</span>
                                    {format!(" {} {}", c.document, page_range(c.page_start, c.page_end))}
                                    <span class="score" title="cosine similarity to the question">{format!("{:.3}", c.score)}</span>
                                </summary>
                                <p>{c.text}</p>
                                <a href=href>"Open in the document"</a>
                            </details>
                        }
                    }).collect_view()}
                </div>
            })}
            <div class="answer-text" data-testid="answer-text" inner_html=html></div>
            {(!answer.done && answer.passages.is_some()).then(|| view! { <span class="cursor" aria-hidden="true">"▍"</span> })}
            {answer.error.clone().map(|e| view! { <p class="error">{e}</p> })}
            {answer.stopped.then(|| view! { <p class="muted">"(stopped)"</p> })}
            {ending.map(|words| view! { <p class="notice warn" data-testid="answer-ending">{words}</p> })}
            {answer.stats.filter(|_| answer.error.is_none()).map(|s| view! { <p class="muted stats" data-testid="chat-stats">{stats_words(&s)}</p> })}
        </article>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        Answer { chat_id: "c".into(), request_id: 2, ..Answer::default() }
    }

    #[test]
    fn an_answer_takes_only_its_own_messages_in_order() {
        let mut a = answer();
        assert!(a.apply(&ServerMessage::IndexProgress { model: "base".into(), done: 3, total: 9 }));
        assert_eq!(a.indexing, Some((3, 9)));
        let citation = Citation {
            passage_id: 1,
            document_id: 1,
            document: "d".into(),
            page_start: None,
            page_end: None,
            score: 0.5,
            text: "t".into(),
        };
        assert!(a.apply(&ServerMessage::ChatPassages { chat_id: "c".into(), request_id: 2, passages: vec![citation] }));
        assert_eq!(a.indexing, None);
        assert!(!a.apply(&ServerMessage::ChatToken { chat_id: "c".into(), request_id: 1, text: "old".into() }));
        assert!(!a.apply(&ServerMessage::ChatToken { chat_id: "other".into(), request_id: 2, text: "x".into() }));
        for piece in ["Hel", "lo"] {
            assert!(a.apply(&ServerMessage::ChatToken { chat_id: "c".into(), request_id: 2, text: piece.into() }));
        }
        assert_eq!((a.text.as_str(), a.state()), ("Hello", "streaming"));
        let stats = ChatStats {
            retrieval_ms: 1.0,
            first_token_ms: 840.0,
            tokens: 41,
            tokens_per_second: 23.5,
            ..ChatStats::default()
        };
        assert_eq!(ending_words(&stats, 256), None);
        let capped = ChatStats { hit_cap: true, ..stats };
        assert!(ending_words(&capped, 256).unwrap().contains("256-token limit"));
        let looping = ChatStats { stopped_repeating: true, ..stats };
        assert!(ending_words(&looping, 256).unwrap().contains("repeating"));
        assert!(a.apply(&ServerMessage::ChatDone { chat_id: "c".into(), request_id: 2, stopped: true, stats }));
        assert_eq!(a.state(), "stopped");
        assert_eq!(stats_words(&stats), "first token after 0.84 s · 23.5 tokens/s · 41 tokens");
        // Index progress after the passages belongs to someone else.
        assert!(!a.apply(&ServerMessage::IndexProgress { model: "base".into(), done: 1, total: 2 }));
        let mut failed = answer();
        failed.apply(&ServerMessage::ChatError {
            chat_id: "c".into(),
            request_id: 2,
            code: "x".into(),
            message: "m".into(),
        });
        assert_eq!(failed.state(), "failed");
    }
}
