//! One row of the Triples table: in-place edits of question and answer, the passage with the answer
//! highlighted, status buttons, and selection.

use std::collections::BTreeSet;

use leptos::prelude::*;

use attune_shared::{Triple, TripleStatus, TripleUpdate};

use super::{Field, find_answer, status_label};

#[component]
pub(super) fn TripleRow<S>(
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
