//! The Triples page: a server-paged table of (question, answer, passage) triples with filters,
//! search and counts per status; rows expand to the full passage with the answer highlighted;
//! questions and answers are edited in place (saved on Enter or blur, conflicts shown with both
//! versions); approve/reject one row (the cursor moves on) or a selection; keyboard first (j/k,
//! a/r/u, e, Enter for the focused record, Esc, ?); filtered candidates with their reasons, to
//! keep anyway; export of what the filter shows, import.

use std::collections::BTreeSet;

use leptos::prelude::*;

use attune_shared::{BulkAction, Document, Triple, TripleMatch, TripleOrigin, TriplePage, TripleStatus, TripleUpdate};

use crate::api::{Api, ApiError};
use crate::endpoints::encode_query_value;

mod bars;
mod dialogs;
pub mod row;

use bars::{BulkBar, FilterBar, Pager};
use dialogs::{ConflictDialog, KeyHelp, RecordView};
use row::TripleRow;

pub const PER_PAGE: u32 = 25;

/// The listing's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    #[default]
    Oldest,
    Newest,
    Updated,
    Question,
    Judge,
}

impl Sort {
    pub const ALL: [Sort; 5] = [Sort::Oldest, Sort::Newest, Sort::Updated, Sort::Question, Sort::Judge];

    /// The name the API takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Oldest => "oldest",
            Sort::Newest => "newest",
            Sort::Updated => "updated",
            Sort::Question => "question",
            Sort::Judge => "judge",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sort::Oldest => "oldest first",
            Sort::Newest => "newest first",
            Sort::Updated => "recently changed",
            Sort::Question => "question A–Z",
            Sort::Judge => "judge's score, best first",
        }
    }

    pub fn parse(name: &str) -> Sort {
        Sort::ALL.into_iter().find(|s| s.as_str() == name).unwrap_or_default()
    }
}

/// The field of a triple being edited in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Question,
    Answer,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Question => "question",
            Field::Answer => "answer",
        }
    }
}

/// What the table shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub status: Option<TripleStatus>,
    pub document_id: Option<i64>,
    pub origin: Option<TripleOrigin>,
    pub search: String,
    pub sort: Sort,
    pub page: u32,
    /// Filtered candidates dropped for this reason only (the "dropped because" choice).
    pub reason: Option<String>,
}

impl Filter {
    /// The listing's query string.
    pub fn query(&self) -> String {
        let mut parts = vec![format!("page={}", self.page.max(1)), format!("per_page={PER_PAGE}")];
        if let Some(status) = self.status {
            parts.push(format!("status={}", status.as_str()));
        }
        parts.extend(self.terms());
        if let Some(reason) = &self.reason {
            parts.push(format!("reason={}", encode_query_value(reason)));
        }
        if self.sort != Sort::default() {
            parts.push(format!("sort={}", self.sort.as_str()));
        }
        parts.join("&")
    }

    /// The query's document, origin and search terms (what an export of the listing shares).
    pub fn terms(&self) -> Vec<String> {
        let mut parts = Vec::new();
        if let Some(document) = self.document_id {
            parts.push(format!("document_id={document}"));
        }
        if let Some(origin) = self.origin {
            parts.push(format!("origin={}", origin.as_str()));
        }
        if !self.search.trim().is_empty() {
            parts.push(format!("q={}", encode_query_value(self.search.trim())));
        }
        parts
    }
}

impl Filter {
    /// The same terms, for "all matching" bulk actions.
    pub fn matching(&self) -> TripleMatch {
        TripleMatch {
            status: self.status,
            document_id: self.document_id,
            origin: self.origin,
            q: (!self.search.trim().is_empty()).then(|| self.search.trim().to_owned()),
            reason: self.reason.clone(),
        }
    }
}

/// The update that takes a triple back from `after` (what `update` made of it) to `before`.
pub fn inverse(before: &Triple, update: &TripleUpdate, after_version: i64) -> TripleUpdate {
    TripleUpdate {
        version: after_version,
        question: update.question.as_ref().map(|_| before.question.clone()),
        answer: update.answer.as_ref().map(|_| before.answer.clone()),
        status: update.status.map(|_| before.status),
    }
}

/// Where `answer` occurs in `passage` (case-insensitive), as a char range, if it does.
pub fn find_answer(passage: &str, answer: &str) -> Option<(usize, usize)> {
    let answer = answer.trim().trim_end_matches('.');
    if answer.is_empty() {
        return None;
    }
    let lower_passage: Vec<char> = passage.chars().flat_map(char::to_lowercase).collect();
    let lower_answer: Vec<char> = answer.chars().flat_map(char::to_lowercase).collect();
    // Lower-casing keeps lengths for the scripts we meet; if it did not, give up rather than misplace.
    if lower_passage.len() != passage.chars().count() {
        return None;
    }
    lower_passage
        .windows(lower_answer.len())
        .position(|w| w == lower_answer.as_slice())
        .map(|start| (start, start + lower_answer.len()))
}

/// `passage` with `answer` marked, when it occurs there.
pub fn marked_answer(passage: &str, answer: &str) -> Option<AnyView> {
    let (start, end) = find_answer(passage, answer)?;
    let chars: Vec<char> = passage.chars().collect();
    let [before, hit, after] =
        [&chars[..start], &chars[start..end], &chars[end..]].map(|c| c.iter().collect::<String>());
    Some(view! { <p class="full-passage">{before}<mark>{hit}</mark>{after}</p> }.into_any())
}

/// What a key press does on the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    Next,
    Previous,
    Approve,
    Reject,
    Reset,
    Edit,
    Toggle,
    Cancel,
    Help,
    Undo,
    Focus,
}

pub fn key_action(key: &str) -> Option<KeyAction> {
    Some(match key {
        "j" | "ArrowDown" => KeyAction::Next,
        "k" | "ArrowUp" => KeyAction::Previous,
        "a" => KeyAction::Approve,
        "r" => KeyAction::Reject,
        "u" => KeyAction::Reset,
        "e" => KeyAction::Edit,
        "x" | " " => KeyAction::Toggle,
        "Escape" => KeyAction::Cancel,
        "?" => KeyAction::Help,
        "z" => KeyAction::Undo,
        "Enter" => KeyAction::Focus,
        _ => return None,
    })
}

/// A stale edit: what the user wrote, and the triple as the server has it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub mine: TripleUpdate,
    pub theirs: Triple,
}

fn status_label(status: TripleStatus) -> &'static str {
    match status {
        TripleStatus::Pending => "pending",
        TripleStatus::Approved => "approved",
        TripleStatus::Rejected => "rejected",
        TripleStatus::Filtered => "filtered",
    }
}

/// The filter an address asks for (`/triples?status=filtered&document_id=3&reason=…`).
pub fn filter_from_query(
    status: Option<&str>,
    document_id: Option<&str>,
    q: Option<&str>,
    reason: Option<&str>,
) -> Filter {
    Filter {
        status: status.and_then(TripleStatus::parse),
        document_id: document_id.and_then(|d| d.parse().ok()),
        search: q.unwrap_or_default().to_owned(),
        page: 1,
        reason: reason.filter(|r| !r.trim().is_empty()).map(str::to_owned),
        ..Filter::default()
    }
}

/// How long a notice stays before it fades.
pub const NOTICE_MS: u32 = 4000;

#[component]
pub fn TriplesPage() -> impl IntoView {
    let api = Api::from_context();
    let query = leptos_router::hooks::use_query_map();
    let initial = query.with_untracked(|q| {
        filter_from_query(q.get_str("status"), q.get_str("document_id"), q.get_str("q"), q.get_str("reason"))
    });
    let filter = RwSignal::new(initial);
    let focused = RwSignal::new(false);
    let page = RwSignal::new(None::<Result<TriplePage, ApiError>>);
    let cursor = RwSignal::new(0usize);
    let expanded = RwSignal::new(None::<i64>);
    let editing = RwSignal::new(None::<(i64, Field)>);
    let selected = RwSignal::new(BTreeSet::<i64>::new());
    let notice = RwSignal::new(None::<(bool, String)>);
    let conflict = RwSignal::new(None::<Conflict>);
    let help = RwSignal::new(false);
    let reloads = RwSignal::new(0u32);
    // The last saved edit and the update that undoes it.
    let last_edit = RwSignal::new(None::<(i64, TripleUpdate)>);
    // Text of an edit the server refused: the field reopens with it.
    let draft = RwSignal::new(None::<(i64, Field, String)>);
    // Every triple matching the filter is selected (not only the listed ids).
    let all_matching = RwSignal::new(false);
    let confirm_delete = RwSignal::new(false);
    let documents = RwSignal::new(Vec::<Document>::new());
    {
        leptos::task::spawn_local(async move {
            if let Ok(list) = api.documents().await {
                documents.set(list);
            }
        });
    }
    {
        Effect::new(move |_| {
            reloads.track();
            let query = filter.with(Filter::query);
            leptos::task::spawn_local(async move {
                let result = api.triples(&query).await;
                if let Ok(p) = &result {
                    cursor.update(|c| *c = (*c).min(p.items.len().saturating_sub(1)));
                }
                page.set(Some(result));
            });
        });
    }
    let reload = move || reloads.update(|n| *n += 1);
    // A notice fades after a while (a newer one is not cut short by an older one's timer).
    let notices = StoredValue::new(0u64);
    Effect::new(move |_| {
        if notice.with(Option::is_some) {
            let mine = notices.get_value() + 1;
            notices.set_value(mine);
            gloo_timers::callback::Timeout::new(NOTICE_MS, move || {
                if notices.get_value() == mine {
                    notice.set(None);
                }
            })
            .forget();
        }
    });
    let search_words =
        Signal::derive(move || filter.with(|f| f.search.split_whitespace().map(str::to_owned).collect::<Vec<_>>()));
    let items =
        move || page.with(|p| p.as_ref().and_then(|r| r.as_ref().ok()).map(|p| p.items.clone()).unwrap_or_default());

    let save = {
        move |update: TripleUpdate, id: i64| {
            let before = page.with_untracked(|p| {
                p.as_ref().and_then(|r| r.as_ref().ok()).and_then(|p| p.items.iter().find(|t| t.id == id).cloned())
            });
            leptos::task::spawn_local(async move {
                let status_changed = update.status.is_some();
                match api.update_triple(id, &update).await {
                    Ok(saved) if status_changed => {
                        // The counts per status move too: read the page again. The cursor moves
                        // on to the next row (in a status tab the row leaves and the next takes
                        // its place).
                        if filter.with_untracked(|f| f.status.is_none()) {
                            let count = page.with_untracked(|p| {
                                p.as_ref().and_then(|r| r.as_ref().ok()).map(|p| p.items.len()).unwrap_or(0)
                            });
                            cursor.update(|c| *c = (*c + 1).min(count.saturating_sub(1)));
                        }
                        last_edit.set(before.map(|b| (id, inverse(&b, &update, saved.version))));
                        notice.set(Some((true, format!("Saved (version {})", saved.version))));
                        reload();
                    }
                    Ok(saved) => {
                        last_edit.set(before.map(|b| (id, inverse(&b, &update, saved.version))));
                        page.update(|p| {
                            if let Some(Ok(p)) = p
                                && let Some(row) = p.items.iter_mut().find(|t| t.id == saved.id)
                            {
                                *row = saved.clone();
                            }
                        });
                        notice.set(Some((true, format!("Saved (version {})", saved.version))));
                    }
                    Err(error) if error.code == "version_conflict" => {
                        if let Some(theirs) = error.current {
                            conflict.set(Some(Conflict { mine: update, theirs: *theirs }));
                        }
                    }
                    Err(error) => {
                        // Keep what was typed: reopen the field with it.
                        let field = if update.question.is_some() {
                            Some(Field::Question)
                        } else if update.answer.is_some() {
                            Some(Field::Answer)
                        } else {
                            None
                        };
                        if let Some(field) = field {
                            let text = update.question.clone().or(update.answer.clone()).unwrap_or_default();
                            draft.set(Some((id, field, text)));
                            editing.set(Some((id, field)));
                        }
                        notice.set(Some((false, format!("Not saved: {}", error.message))));
                    }
                }
            });
        }
    };
    let set_status = {
        move |status: TripleStatus| {
            let rows = items();
            if let Some(row) = rows.get(cursor.get_untracked()) {
                save(TripleUpdate { version: row.version, question: None, answer: None, status: Some(status) }, row.id);
            }
        }
    };
    let bulk = {
        move |action: BulkAction| {
            leptos::task::spawn_local(async move {
                match api.bulk(&action).await {
                    Ok(result) => {
                        notice.set(Some((true, format!("{} triples changed", result.changed))));
                        selected.set(BTreeSet::new());
                        reload();
                    }
                    Err(error) => notice.set(Some((false, error.message))),
                }
            });
        }
    };

    let undo = {
        move || {
            if let Some((id, update)) = last_edit.get_untracked() {
                last_edit.set(None);
                save(update, id);
            }
        }
    };
    let bulk_status = {
        move |status: TripleStatus| {
            if all_matching.get_untracked() {
                bulk(BulkAction::SetStatusMatching { matching: filter.with_untracked(Filter::matching), status });
            } else {
                bulk(BulkAction::SetStatus { ids: selected.get_untracked().into_iter().collect(), status });
            }
            all_matching.set(false);
        }
    };
    let bulk_delete = {
        move || {
            if all_matching.get_untracked() {
                bulk(BulkAction::DeleteMatching { matching: filter.with_untracked(Filter::matching) });
            } else {
                bulk(BulkAction::Delete { ids: selected.get_untracked().into_iter().collect() });
            }
            all_matching.set(false);
            confirm_delete.set(false);
        }
    };
    let selection_size = move || {
        if all_matching.get() {
            page.with(|p| p.as_ref().and_then(|r| r.as_ref().ok()).map(|p| p.total)).unwrap_or(0) as usize
        } else {
            selected.with(|s| s.len())
        }
    };

    let on_key = {
        move |event: web_sys::KeyboardEvent| {
            // Keys typed into a field belong to the field (Escape still leaves it).
            let tag = event
                .target()
                .and_then(|t| wasm_bindgen::JsCast::dyn_into::<web_sys::HtmlElement>(t).ok())
                .map(|e| e.tag_name())
                .unwrap_or_default();
            let in_field = matches!(tag.as_str(), "INPUT" | "TEXTAREA" | "SELECT");
            let Some(action) = key_action(&event.key()) else { return };
            if in_field && action != KeyAction::Cancel {
                return;
            }
            // Enter and Space on a focused button or link press it.
            if matches!(action, KeyAction::Focus | KeyAction::Toggle)
                && matches!(tag.as_str(), "BUTTON" | "A" | "SUMMARY")
            {
                return;
            }
            // In the focused record view only its keys count.
            if focused.get_untracked()
                && !matches!(
                    action,
                    KeyAction::Cancel | KeyAction::Next | KeyAction::Previous | KeyAction::Approve | KeyAction::Reject
                )
            {
                return;
            }
            event.prevent_default();
            let count = items().len();
            let current = items().get(cursor.get_untracked()).map(|t| t.id);
            match action {
                KeyAction::Next => cursor.update(|c| *c = (*c + 1).min(count.saturating_sub(1))),
                KeyAction::Previous => cursor.update(|c| *c = c.saturating_sub(1)),
                KeyAction::Approve => set_status(TripleStatus::Approved),
                KeyAction::Reject => set_status(TripleStatus::Rejected),
                KeyAction::Reset => set_status(TripleStatus::Pending),
                KeyAction::Edit => editing.set(current.map(|id| (id, Field::Answer))),
                KeyAction::Toggle => {
                    if let Some(id) = current {
                        selected.update(|s| {
                            if !s.remove(&id) {
                                s.insert(id);
                            }
                        });
                    }
                }
                KeyAction::Cancel => {
                    editing.set(None);
                    help.set(false);
                    expanded.set(None);
                    focused.set(false);
                }
                KeyAction::Focus => focused.set(current.is_some()),
                KeyAction::Help => help.update(|h| *h = !*h),
                KeyAction::Undo => undo(),
            }
        }
    };

    let import = {
        move |event: web_sys::Event| {
            let Some(input) =
                event.target().and_then(|t| wasm_bindgen::JsCast::dyn_into::<web_sys::HtmlInputElement>(t).ok())
            else {
                return;
            };
            let Some(file) = input.files().and_then(|f| f.get(0)) else { return };
            input.set_value("");
            leptos::task::spawn_local(async move {
                match api.import_triples(&file).await {
                    Ok(r) => {
                        notice.set(Some((
                            true,
                            format!("Imported {} triples ({} rows skipped)", r.imported, r.skipped.len()),
                        )));
                        reload();
                    }
                    Err(error) => notice.set(Some((false, format!("Import failed: {}", error.message)))),
                }
            });
        }
    };

    view! {
        <section class="page triples" tabindex="0" on:keydown=on_key>
            <h1>"Triples"</h1>
            <p class="lead">"Question, passage and answer triples: the training data, reviewed by you. Press ? for the keys."</p>
            <FilterBar filter=filter page=page documents=documents />
            <BulkBar
                filter=filter
                page=page
                selected=selected
                all_matching=all_matching
                confirm_delete=confirm_delete
                selection_size=Signal::derive(selection_size)
                can_undo=Signal::derive(move || last_edit.with(|e| e.is_some()))
                on_status=Callback::new(bulk_status)
                on_delete=Callback::new(move |()| bulk_delete())
                on_undo=Callback::new(move |()| undo())
                on_import=Callback::new(import)
            />
            {move || notice.get().map(|(ok, text)| view! {
                <p class=if ok { "notice ok" } else { "notice error" } role="status">{text}</p>
            })}
            <ConflictDialog conflict=conflict on_keep=Callback::new(move |(update, id)| save(update, id)) on_theirs=Callback::new(move |()| reload()) />
            <KeyHelp open=help />
            {move || focused.get().then(|| {
                let rows = items();
                rows.get(cursor.get()).cloned().map(|t| {
                    let total = rows.len();
                    view! { <RecordView triple=t index=cursor.get() total=total cursor=cursor focused=focused on_status=Callback::new(set_status) /> }
                })
            })}
            {move || match page.get() {
                None => view! { <p class="loading">"Loading triples…"</p> }.into_any(),
                Some(Err(error)) => view! { <p class="error">{format!("Cannot list triples: {}", error.message)}</p> }.into_any(),
                Some(Ok(p)) if p.items.is_empty() => view! {
                    <div class="empty-state"><p>{if filter.with(|f| f.status == Some(TripleStatus::Filtered)) {
                        "No filtered candidates: the filters dropped nothing here."
                    } else {
                        "No triples match. Generate some from a document, or import a file."
                    }}</p></div>
                }.into_any(),
                Some(Ok(p)) => {
                    let pages = p.total.div_ceil(u64::from(PER_PAGE)).max(1);
                    view! {
                        <table class="triples-table" aria-label="Triples">
                            <thead><tr>
                                <th scope="col"><span class="visually-hidden">"Selected"</span></th>
                                <th scope="col">"Question"</th><th scope="col">"Answer"</th>
                                <th scope="col">"Document"</th><th scope="col">"Passage"</th><th scope="col">"Status"</th>
                                <th scope="col" title="The LLM judge's scores: groundedness / usefulness, 1 to 5">"Judge"</th>
                            </tr></thead>
                            <tbody>
                                {p.items.into_iter().enumerate().map(|(i, t)| view! {
                                    <TripleRow triple=t index=i cursor=cursor expanded=expanded editing=editing draft=draft selected=selected search=search_words save=save />
                                }).collect_view()}
                            </tbody>
                        </table>
                        <Pager filter=filter page=p.page pages=pages total=p.total />
                    }.into_any()
                }
            }}
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_carry_the_filter() {
        let filter =
            Filter { status: Some(TripleStatus::Approved), search: "cat food?".into(), page: 2, ..Filter::default() };
        assert_eq!(filter.query(), "page=2&per_page=25&status=approved&q=cat%20food%3F");
        assert_eq!(Filter::default().query(), "page=1&per_page=25");
        let by_document = Filter { document_id: Some(7), origin: Some(TripleOrigin::Manual), ..Filter::default() };
        assert_eq!(by_document.query(), "page=1&per_page=25&document_id=7&origin=manual");
        let counts = attune_shared::TripleCounts { pending: 4, approved: 9, rejected: 1, filtered: 2 };
        assert_eq!(
            bars::export_target(&by_document, counts),
            ("Export approved (9)".to_owned(), "status=approved&document_id=7&origin=manual".to_owned(), 9),
            "an export on \"all\" is of the approved ones, with the listing's other terms"
        );
        let filtered = Filter { status: Some(TripleStatus::Filtered), search: "a b".into(), ..Filter::default() };
        assert_eq!(bars::export_target(&filtered, counts).1, "status=filtered&q=a%20b");
        assert_eq!(counts.of(None), 14, "all: under review, the filtered aside");
        let matching = by_document.matching();
        assert_eq!((matching.document_id, matching.origin, matching.q), (Some(7), Some(TripleOrigin::Manual), None));
        // Dropped because …: the listing and "all matching" carry the reason; an export does not.
        let why = filter_from_query(Some("filtered"), None, None, Some("the answer is too long"));
        assert_eq!(why.query(), "page=1&per_page=25&status=filtered&reason=the%20answer%20is%20too%20long");
        assert_eq!(why.matching().reason.as_deref(), Some("the answer is too long"));
        assert_eq!(bars::export_target(&why, counts).1, "status=filtered");
        assert_eq!(filter_from_query(Some("filtered"), None, None, Some(" ")).reason, None, "blank: any reason");
    }

    #[test]
    fn undo_restores_only_what_was_changed() {
        let before: Triple = serde_json::from_value(serde_json::json!({
            "id": 1, "question": "Q?", "answer": "old", "passage": "p", "status": "pending", "origin": "manual",
            "version": 3, "created_at": "t", "updated_at": "t"
        }))
        .unwrap();
        let update = TripleUpdate { version: 3, question: None, answer: Some("new".into()), status: None };
        assert_eq!(
            inverse(&before, &update, 4),
            TripleUpdate { version: 4, question: None, answer: Some("old".into()), status: None }
        );
        let approve = TripleUpdate { version: 3, question: None, answer: None, status: Some(TripleStatus::Approved) };
        assert_eq!(inverse(&before, &approve, 4).status, Some(TripleStatus::Pending));
    }

    #[test]
    fn answers_are_found_in_passages_or_not() {
        assert_eq!(find_answer("The cat sleeps fifteen hours a day.", "Fifteen hours."), Some((15, 28)));
        assert_eq!(find_answer("The cat sleeps.", "a dog"), None);
        assert_eq!(find_answer("x", "  "), None);
    }

    #[test]
    fn keys() {
        assert_eq!(key_action("j"), Some(KeyAction::Next));
        assert_eq!(key_action("ArrowUp"), Some(KeyAction::Previous));
        assert_eq!(key_action("a"), Some(KeyAction::Approve));
        assert_eq!(key_action("?"), Some(KeyAction::Help));
        assert_eq!(key_action("q"), None);
    }
}
