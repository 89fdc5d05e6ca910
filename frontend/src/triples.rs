//! The Triples page: a server-paged table of (question, answer, passage) triples with filters,
//! search and counts per status; rows expand to the full passage with the answer highlighted;
//! questions and answers are edited in place (saved on Enter or blur, conflicts shown with both
//! versions); approve/reject one row or a selection; keyboard first (j/k, a/r/u, e, Esc, ?);
//! export and import.

use std::collections::BTreeSet;

use leptos::prelude::*;

use attune_shared::{BulkAction, Document, Triple, TripleMatch, TripleOrigin, TriplePage, TripleStatus, TripleUpdate};

use crate::api::{Api, ApiError};
use crate::endpoints::encode_query_value;

pub const PER_PAGE: u32 = 25;

/// The listing's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    #[default]
    Oldest,
    Newest,
    Updated,
    Question,
}

impl Sort {
    pub const ALL: [Sort; 4] = [Sort::Oldest, Sort::Newest, Sort::Updated, Sort::Question];

    /// The name the API takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Oldest => "oldest",
            Sort::Newest => "newest",
            Sort::Updated => "updated",
            Sort::Question => "question",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sort::Oldest => "oldest first",
            Sort::Newest => "newest first",
            Sort::Updated => "recently changed",
            Sort::Question => "question A–Z",
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
}

impl Filter {
    /// The listing's query string.
    pub fn query(&self) -> String {
        let mut parts = vec![format!("page={}", self.page.max(1)), format!("per_page={PER_PAGE}")];
        if let Some(status) = self.status {
            parts.push(format!("status={}", status.as_str()));
        }
        if let Some(document) = self.document_id {
            parts.push(format!("document_id={document}"));
        }
        if let Some(origin) = self.origin {
            parts.push(format!("origin={}", origin.as_str()));
        }
        if !self.search.trim().is_empty() {
            parts.push(format!("q={}", encode_query_value(self.search.trim())));
        }
        if self.sort != Sort::default() {
            parts.push(format!("sort={}", self.sort.as_str()));
        }
        parts.join("&")
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
    }
}

#[component]
pub fn TriplesPage() -> impl IntoView {
    let api = Api::from_context();
    let filter = RwSignal::new(Filter { page: 1, ..Filter::default() });
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
                        // The counts per status move too: read the page again.
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
        let save = save.clone();
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
        let save = save.clone();
        move || {
            if let Some((id, update)) = last_edit.get_untracked() {
                last_edit.set(None);
                save(update, id);
            }
        }
    };
    let bulk_status = {
        let bulk = bulk.clone();
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
        let bulk = bulk.clone();
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
        let undo = undo.clone();
        let set_status = set_status.clone();
        move |event: web_sys::KeyboardEvent| {
            // Keys typed into a field belong to the field (Escape still leaves it).
            let in_field = event
                .target()
                .and_then(|t| wasm_bindgen::JsCast::dyn_into::<web_sys::HtmlElement>(t).ok())
                .is_some_and(|e| matches!(e.tag_name().as_str(), "INPUT" | "TEXTAREA" | "SELECT"));
            let Some(action) = key_action(&event.key()) else { return };
            if in_field && action != KeyAction::Cancel {
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
                }
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
            {move || match page.get() {
                None => view! { <p class="loading">"Loading triples…"</p> }.into_any(),
                Some(Err(error)) => view! { <p class="error">{format!("Cannot list triples: {}", error.message)}</p> }.into_any(),
                Some(Ok(p)) if p.items.is_empty() => view! {
                    <div class="empty-state"><p>"No triples match. Generate some from a document, or import a file."</p></div>
                }.into_any(),
                Some(Ok(p)) => {
                    let pages = p.total.div_ceil(u64::from(PER_PAGE)).max(1);
                    view! {
                        <table class="triples-table" aria-label="Triples">
                            <thead><tr>
                                <th scope="col"><span class="visually-hidden">"Selected"</span></th>
                                <th scope="col">"Question"</th><th scope="col">"Answer"</th>
                                <th scope="col">"Passage"</th><th scope="col">"Status"</th>
                            </tr></thead>
                            <tbody>
                                {p.items.into_iter().enumerate().map(|(i, t)| view! {
                                    <TripleRow triple=t index=i cursor=cursor expanded=expanded editing=editing draft=draft selected=selected save=save.clone() />
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

/// The listing's filters: status tabs with counts, document, origin, sort and search.
#[component]
fn FilterBar(
    filter: RwSignal<Filter>,
    page: RwSignal<Option<Result<TriplePage, ApiError>>>,
    documents: RwSignal<Vec<Document>>,
) -> impl IntoView {
    view! {
        <div class="toolbar" role="toolbar" aria-label="Filters">
            <div class="status-tabs" role="group" aria-label="Status">
                {[None, Some(TripleStatus::Pending), Some(TripleStatus::Approved), Some(TripleStatus::Rejected)]
                    .into_iter()
                    .map(|status| {
                        let label = move || {
                            let counts = page.with(|p| p.as_ref().and_then(|r| r.as_ref().ok()).map(|p| p.counts)).unwrap_or_default();
                            let (name, n) = match status {
                                None => ("all", counts.pending + counts.approved + counts.rejected),
                                Some(s) => (status_label(s), match s {
                                    TripleStatus::Pending => counts.pending,
                                    TripleStatus::Approved => counts.approved,
                                    TripleStatus::Rejected => counts.rejected,
                                }),
                            };
                            format!("{name} ({n})")
                        };
                        view! {
                            <button
                                class="tab"
                                aria-pressed=move || (filter.with(|f| f.status) == status).to_string()
                                on:click=move |_| filter.update(|f| { f.status = status; f.page = 1; })
                            >{label}</button>
                        }
                    })
                    .collect_view()}
            </div>
            <label>"Document "
                <select on:change=move |e| {
                    let value = event_target_value(&e);
                    filter.update(|f| { f.document_id = value.parse().ok(); f.page = 1; });
                }>
                    <option value="">"any"</option>
                    {move || documents.get().into_iter().map(|d| view! {
                        <option value=d.id.to_string()>{d.name}</option>
                    }).collect_view()}
                </select>
            </label>
            <label>"Origin "
                <select on:change=move |e| {
                    let origin = TripleOrigin::parse(&event_target_value(&e));
                    filter.update(|f| { f.origin = origin; f.page = 1; });
                }>
                    <option value="">"any"</option>
                    {[TripleOrigin::Synthetic, TripleOrigin::Imported, TripleOrigin::Manual].into_iter().map(|o| view! {
                        <option value=o.as_str()>{o.as_str()}</option>
                    }).collect_view()}
                </select>
            </label>
            <label>"Sort "
                <select on:change=move |e| {
                    let sort = Sort::parse(&event_target_value(&e));
                    filter.update(|f| { f.sort = sort; f.page = 1; });
                }>
                    {Sort::ALL.into_iter().map(|o| view! { <option value=o.as_str()>{o.label()}</option> }).collect_view()}
                </select>
            </label>
            <input type="search" placeholder="Search questions, answers, passages" aria-label="Search"
                on:change=move |e| filter.update(|f| { f.search = event_target_value(&e); f.page = 1; }) />
        </div>
    }
}

/// Selection and what to do with it (approve, reject, reset, delete), undo, export and import.
#[component]
fn BulkBar(
    filter: RwSignal<Filter>,
    page: RwSignal<Option<Result<TriplePage, ApiError>>>,
    selected: RwSignal<BTreeSet<i64>>,
    all_matching: RwSignal<bool>,
    confirm_delete: RwSignal<bool>,
    selection_size: Signal<usize>,
    can_undo: Signal<bool>,
    on_status: Callback<TripleStatus>,
    on_delete: Callback<()>,
    on_undo: Callback<()>,
    on_import: Callback<web_sys::Event>,
) -> impl IntoView {
    let api = Api::from_context();
    let export_href = move |format: &str| {
        let status = filter.with(|f| f.status.map(|s| s.as_str()).unwrap_or("approved"));
        api.export_url(format, status)
    };
    let page_ids = move || {
        page.with(|p| p.as_ref().and_then(|r| r.as_ref().ok()).map(|p| p.items.iter().map(|t| t.id).collect()))
            .unwrap_or_default()
    };
    let none = move || selection_size.get() == 0;
    view! {
        <div class="toolbar" role="toolbar" aria-label="Actions">
            <span class="muted" data-testid="selection">{move || {
                if all_matching.get() { format!("all {} matching selected", selection_size.get()) } else { format!("{} selected", selection_size.get()) }
            }}</span>
            <button on:click=move |_| on_status.run(TripleStatus::Approved) disabled=none>"Approve selected"</button>
            <button on:click=move |_| on_status.run(TripleStatus::Rejected) disabled=none>"Reject selected"</button>
            <button on:click=move |_| on_status.run(TripleStatus::Pending) disabled=none>"Reset selected"</button>
            <button class="danger" on:click=move |_| confirm_delete.set(true) disabled=none>"Delete selected"</button>
            <button on:click=move |_| { all_matching.set(false); selected.set(page_ids()); }>"Select this page"</button>
            <button on:click=move |_| all_matching.set(true)>{move || format!(
                "Select all {} matching",
                page.with(|p| p.as_ref().and_then(|r| r.as_ref().ok()).map(|p| p.total)).unwrap_or(0)
            )}</button>
            <button on:click=move |_| { all_matching.set(false); selected.set(BTreeSet::new()); }>"Clear selection"</button>
            <button on:click=move |_| on_undo.run(()) disabled=move || !can_undo.get()>"Undo last edit"</button>
            <a class="button" href=move || export_href("csv") download="triples.csv">"Export CSV"</a>
            <a class="button" href=move || export_href("jsonl") download="triples.jsonl">"Export JSONL"</a>
            <label class="button">"Import…"
                <input type="file" accept=".csv,.jsonl" class="visually-hidden" aria-label="Import triples" on:change=move |e| on_import.run(e) />
            </label>
        </div>
        {move || confirm_delete.get().then(|| view! {
            <div class="confirm" role="alertdialog" aria-label="Confirm deletion">
                <p>{format!("Delete {} triples? This cannot be undone.", selection_size.get_untracked())}</p>
                <div class="actions">
                    <button class="danger" on:click=move |_| on_delete.run(())>"Delete them"</button>
                    <button on:click=move |_| confirm_delete.set(false)>"Cancel"</button>
                </div>
            </div>
        })}
    }
}

/// An edit someone else beat: both versions, keep mine or take theirs.
#[component]
fn ConflictDialog(
    conflict: RwSignal<Option<Conflict>>,
    on_keep: Callback<(TripleUpdate, i64)>,
    on_theirs: Callback<()>,
) -> impl IntoView {
    move || {
        conflict.get().map(|c| {
            let theirs = c.theirs.clone();
            let mine = c.mine.clone();
            let keep_mine = TripleUpdate { version: theirs.version, ..mine.clone() };
            view! {
                <div class="conflict" role="alertdialog" aria-label="Edit conflict">
                    <p><strong>"This triple was changed by someone else while you edited it."</strong></p>
                    <div class="versions">
                        <div><h3>"Yours"</h3>
                            <p>{mine.question.clone().unwrap_or_else(|| theirs.question.clone())}</p>
                            <p>{mine.answer.clone().unwrap_or_else(|| theirs.answer.clone())}</p></div>
                        <div><h3>{format!("Theirs (version {})", theirs.version)}</h3>
                            <p>{theirs.question.clone()}</p><p>{theirs.answer.clone()}</p></div>
                    </div>
                    <button class="primary" on:click=move |_| { on_keep.run((keep_mine.clone(), theirs.id)); conflict.set(None); }>"Keep mine"</button>
                    <button on:click=move |_| { conflict.set(None); on_theirs.run(()); }>"Take theirs"</button>
                </div>
            }
        })
    }
}

/// The keyboard shortcuts, shown with `?`.
#[component]
fn KeyHelp(open: RwSignal<bool>) -> impl IntoView {
    view! {
        <Show when=move || open.get()>
            <div class="help" role="dialog" aria-label="Keyboard shortcuts">
                <h2>"Keys"</h2>
                <dl>
                    <dt>"j / ↓, k / ↑"</dt><dd>"next, previous row"</dd>
                    <dt>"a, r, u"</dt><dd>"approve, reject, reset to pending"</dd>
                    <dt>"e"</dt><dd>"edit the answer (Enter saves, Esc cancels)"</dd>
                    <dt>"x"</dt><dd>"select the row"</dd>
                    <dt>"z"</dt><dd>"undo the last edit"</dd>
                    <dt>"?"</dt><dd>"this help; Esc closes it"</dd>
                </dl>
            </div>
        </Show>
    }
}

/// Previous and next page, and where the listing stands.
#[component]
fn Pager(filter: RwSignal<Filter>, page: u32, pages: u64, total: u64) -> impl IntoView {
    let (first_page, last_page) = (page <= 1, u64::from(page) >= pages);
    view! {
        <nav class="pager" aria-label="Pages">
            <button disabled=first_page on:click=move |_| filter.update(|f| f.page -= 1)>"Previous"</button>
            <span>{format!("page {page} of {pages} · {total} triples")}</span>
            <button disabled=last_page on:click=move |_| filter.update(|f| f.page += 1)>"Next"</button>
        </nav>
    }
}

#[component]
fn TripleRow<S>(
    triple: Triple,
    index: usize,
    cursor: RwSignal<usize>,
    expanded: RwSignal<Option<i64>>,
    editing: RwSignal<Option<(i64, Field)>>,
    draft: RwSignal<Option<(i64, Field, String)>>,
    selected: RwSignal<BTreeSet<i64>>,
    save: S,
) -> impl IntoView
where
    S: Fn(TripleUpdate, i64) + Clone + Send + Sync + 'static,
{
    let id = triple.id;
    let t = triple.clone();
    let set_row_status = {
        let save = save.clone();
        let version = triple.version;
        move |status: TripleStatus| {
            save(TripleUpdate { version, question: None, answer: None, status: Some(status) }, id)
        }
    };
    let field = move |name: Field, value: String| {
        let save = save.clone();
        let version = t.version;
        let original = value.clone();
        view! {
            {move || if editing.get() == Some((id, name)) {
                let save = save.clone();
                let shown = draft
                    .get_untracked()
                    .filter(|(d_id, d_name, _)| *d_id == id && *d_name == name)
                    .map(|(_, _, text)| text)
                    .unwrap_or_else(|| original.clone());
                let original = original.clone();
                let commit = move |text: String| {
                    // Enter commits, and the field's removal then blurs it: commit once.
                    if editing.get_untracked() != Some((id, name)) {
                        return;
                    }
                    editing.set(None);
                    draft.set(None);
                    if text.trim() != original.trim() && !text.trim().is_empty() {
                        let update = if name == Field::Question {
                            TripleUpdate { version, question: Some(text), answer: None, status: None }
                        } else {
                            TripleUpdate { version, question: None, answer: Some(text), status: None }
                        };
                        save(update, id);
                    }
                };
                let on_blur = commit.clone();
                view! {
                    <textarea class="edit" aria-label=format!("Edit {}", name.name()) autofocus=true
                        on:keydown=move |e: web_sys::KeyboardEvent| {
                            if e.key() == "Enter" && !e.shift_key() {
                                e.prevent_default();
                                commit(event_target_value(&e));
                            }
                        }
                        on:blur=move |e| on_blur(event_target_value(&e))
                        prop:value=shown></textarea>
                }.into_any()
            } else {
                let original = original.clone();
                view! { <span on:dblclick=move |_| editing.set(Some((id, name)))>{original}</span> }.into_any()
            }}
        }
    };
    let passage = triple.passage.clone();
    let answer = triple.answer.clone();
    let preview: String =
        passage.chars().take(90).collect::<String>() + if passage.chars().count() > 90 { "…" } else { "" };
    view! {
        <tr
            class="triple"
            class:current=move || cursor.get() == index
            data-status=status_label(triple.status)
            on:click=move |_| cursor.set(index)
        >
            <td><input type="checkbox" aria-label=format!("Select triple {id}")
                prop:checked=move || selected.with(|s| s.contains(&id))
                on:change=move |e| selected.update(|s| { if event_target_checked(&e) { s.insert(id); } else { s.remove(&id); } }) /></td>
            <td class="question">{field(Field::Question, triple.question.clone())}</td>
            <td class="answer">{field(Field::Answer, triple.answer.clone())}</td>
            <td class="passage">
                <button class="link" aria-expanded=move || (expanded.get() == Some(id)).to_string()
                    on:click=move |_| expanded.update(|e| *e = if *e == Some(id) { None } else { Some(id) })>{preview}</button>
                {move || (expanded.get() == Some(id)).then(|| {
                    let passage = passage.clone();
                    match find_answer(&passage, &answer) {
                        Some((start, end)) => {
                            let chars: Vec<char> = passage.chars().collect();
                            let before: String = chars[..start].iter().collect();
                            let hit: String = chars[start..end].iter().collect();
                            let after: String = chars[end..].iter().collect();
                            view! { <p class="full-passage">{before}<mark>{hit}</mark>{after}</p> }.into_any()
                        }
                        None => view! {
                            <div><p class="warning" role="note">"The answer does not occur word for word in this passage."</p>
                            <p class="full-passage">{passage}</p></div>
                        }.into_any(),
                    }
                })}
            </td>
            <td class="status">
                <span class=format!("badge {}", status_label(triple.status))>{status_label(triple.status)}</span>
                <span class="row-actions">
                    {[(TripleStatus::Approved, "✓", "Approve"), (TripleStatus::Rejected, "✗", "Reject"), (TripleStatus::Pending, "↺", "Reset")]
                        .into_iter()
                        .map(|(status, icon, verb)| {
                            let set = set_row_status.clone();
                            view! {
                                <button class="icon" aria-label=format!("{verb} triple {id}") title=verb
                                    disabled=triple.status == status
                                    on:click=move |e| { e.stop_propagation(); set(status); }>{icon}</button>
                            }
                        })
                        .collect_view()}
                </span>
            </td>
        </tr>
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
        let matching = by_document.matching();
        assert_eq!((matching.document_id, matching.origin, matching.q), (Some(7), Some(TripleOrigin::Manual), None));
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
