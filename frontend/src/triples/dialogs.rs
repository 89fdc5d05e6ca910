//! The Triples page's dialogs: an edit conflict with both versions, and the keyboard help.

use leptos::prelude::*;

use attune_shared::{Triple, TripleStatus, TripleUpdate};

use super::{Conflict, marked_answer, status_label};
use crate::format::page_range;

/// An edit someone else beat: both versions, keep mine or take theirs.
#[component]
pub(super) fn ConflictDialog(
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
pub(super) fn KeyHelp(open: RwSignal<bool>) -> impl IntoView {
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

/// The focused record (Enter): question, answer and the passage beside them with the answer
/// marked; previous and next, approve and reject; Esc closes.
#[component]
pub(super) fn RecordView(
    triple: Triple,
    index: usize,
    total: usize,
    cursor: RwSignal<usize>,
    focused: RwSignal<bool>,
    on_status: Callback<TripleStatus>,
) -> impl IntoView {
    let passage = marked_answer(&triple.passage, &triple.answer)
        .unwrap_or_else(|| view! { <p class="full-passage">{triple.passage.clone()}</p> }.into_any());
    let source = format!(
        "{} {}",
        triple.document.clone().unwrap_or_else(|| "(no document)".into()),
        page_range(triple.page_start, triple.page_end)
    );
    view! {
        <div class="record-view" role="dialog" aria-label="Focused triple" data-testid="record-view">
            <header>
                <span>{format!("Triple {} of {} on this page · ", index + 1, total)}
                    <span class=format!("badge {}", status_label(triple.status))>{status_label(triple.status)}</span></span>
                <button type="button" class="icon" aria-label="Close" on:click=move |_| focused.set(false)>"✕"</button>
            </header>
            <div class="record-body">
                <div class="record-qa">
                    <h3>"Question"</h3><p data-testid="record-question">{triple.question.clone()}</p>
                    <h3>"Answer"</h3><p>{triple.answer.clone()}</p>
                    {triple.filter_reason.clone().map(|r| view! { <p class="filter-reason">{format!("Filtered: {r}")}</p> })}
                </div>
                <div class="record-passage"><h3>{source}</h3>{passage}</div>
            </div>
            <div class="actions">
                <button type="button" disabled=index == 0 on:click=move |_| cursor.update(|c| *c = c.saturating_sub(1))>"← Previous (k)"</button>
                <button type="button" class="primary" on:click=move |_| on_status.run(TripleStatus::Approved)>"Approve (a)"</button>
                <button type="button" on:click=move |_| on_status.run(TripleStatus::Rejected)>"Reject (r)"</button>
                <button type="button" data-testid="record-next" disabled={index + 1 >= total} on:click=move |_| cursor.update(|c| *c = (*c + 1).min(total.saturating_sub(1)))>"Next (j) →"</button>
            </div>
        </div>
    }
}
