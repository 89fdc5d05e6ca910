//! The Triples page's dialogs: an edit conflict with both versions, and the keyboard help.

use leptos::prelude::*;

use attune_shared::TripleUpdate;

use super::Conflict;

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
