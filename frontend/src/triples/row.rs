//! One row of the Triples table: in-place edits of question and answer (a click on the pencil,
//! or a double click), search words highlighted, the document and page, the passage with the
//! answer highlighted, status buttons (and "Keep anyway" for a filtered candidate), and selection.

use std::collections::BTreeSet;

use leptos::prelude::*;

use attune_shared::{Triple, TripleStatus, TripleUpdate};

use super::{Field, marked_answer, status_label};
use crate::format::page_range;

/// `text` cut into (piece, is a match of one of `words`) runs, case-insensitively.
pub fn highlight(text: &str, words: &[String]) -> Vec<(String, bool)> {
    let chars: Vec<char> = text.chars().collect();
    let lower: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    if lower.len() != chars.len() {
        return vec![(text.to_owned(), false)];
    }
    let mut marked = vec![false; chars.len()];
    for word in words.iter().filter(|w| !w.is_empty()) {
        let needle: Vec<char> = word.chars().flat_map(char::to_lowercase).collect();
        let mut at = 0;
        while at + needle.len() <= lower.len() {
            if lower[at..at + needle.len()] == needle[..] {
                marked[at..at + needle.len()].iter_mut().for_each(|m| *m = true);
                at += needle.len();
            } else {
                at += 1;
            }
        }
    }
    let mut runs: Vec<(String, bool)> = Vec::new();
    for (c, m) in chars.into_iter().zip(marked) {
        match runs.last_mut() {
            Some((piece, was)) if *was == m => piece.push(c),
            _ => runs.push((c.to_string(), m)),
        }
    }
    runs
}

/// `text` with the search words marked.
pub fn marked(text: &str, words: &[String]) -> impl IntoView + use<> {
    highlight(text, words)
        .into_iter()
        .map(|(piece, hit)| if hit { view! { <mark>{piece}</mark> }.into_any() } else { piece.into_any() })
        .collect_view()
}

#[component]
pub(super) fn TripleRow<S>(
    triple: Triple,
    index: usize,
    cursor: RwSignal<usize>,
    expanded: RwSignal<Option<i64>>,
    editing: RwSignal<Option<(i64, Field)>>,
    draft: RwSignal<Option<(i64, Field, String)>>,
    selected: RwSignal<BTreeSet<i64>>,
    #[prop(into)] search: Signal<Vec<String>>,
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
                // Focused when it appears (an inserted field's `autofocus` does nothing), so typing
                // and Esc go to it.
                let node = NodeRef::<leptos::html::Textarea>::new();
                Effect::new(move |_| {
                    if let Some(field) = node.get() {
                        let _ = field.focus();
                    }
                });
                view! {
                    <textarea class="edit" node_ref=node aria-label=format!("Edit {}", name.name()) autofocus=true
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
                let empty = original.trim().is_empty();
                view! {
                    <span class="cell-text" on:dblclick=move |_| editing.set(Some((id, name)))>
                        {if empty { view! { <em class="muted">"(none yet)"</em> }.into_any() } else { marked(&original, &search.get()).into_any() }}
                    </span>
                    <button type="button" class="icon edit-icon" aria-label=format!("Edit the {} of triple {id}", name.name()) title="Edit"
                        on:click=move |e| { e.stop_propagation(); editing.set(Some((id, name))); }>"✎"</button>
                }.into_any()
            }}
        }
    };
    let passage = triple.passage.clone();
    let answer = triple.answer.clone();
    let preview: String =
        passage.chars().take(90).collect::<String>() + if passage.chars().count() > 90 { "…" } else { "" };
    let filtered = triple.status == TripleStatus::Filtered;
    let reason = triple.filter_reason.clone();
    let keep = set_row_status.clone();
    let source = match (&triple.document, triple.document_id) {
        (Some(name), Some(document_id)) => {
            let pages = page_range(triple.page_start, triple.page_end);
            let href = match triple.passage_id {
                Some(p) => format!("/documents/{document_id}#passage-{p}"),
                None => format!("/documents/{document_id}"),
            };
            view! { <a href=href>{name.clone()}</a><span class="muted">{format!(" {pages}")}</span> }.into_any()
        }
        _ => view! { <span class="muted">"–"</span> }.into_any(),
    };
    view! {
        <tr
            class="triple"
            class:current=move || cursor.get() == index
            data-status=status_label(triple.status)
            data-id=id
            on:click=move |_| cursor.set(index)
        >
            <td data-label="Select"><input type="checkbox" aria-label=format!("Select triple {id}")
                prop:checked=move || selected.with(|s| s.contains(&id))
                on:change=move |e| selected.update(|s| { if event_target_checked(&e) { s.insert(id); } else { s.remove(&id); } }) /></td>
            <td class="question" data-label="Question">{field(Field::Question, triple.question.clone())}</td>
            <td class="answer" data-label="Answer">{field(Field::Answer, triple.answer.clone())}</td>
            <td class="source" data-label="Document">{source}</td>
            <td class="passage" data-label="Passage">
                <button class="link" aria-expanded=move || (expanded.get() == Some(id)).to_string()
                    on:click=move |_| expanded.update(|e| *e = if *e == Some(id) { None } else { Some(id) })>{preview}</button>
                {move || (expanded.get() == Some(id)).then(|| {
                    let passage = passage.clone();
                    marked_answer(&passage, &answer).unwrap_or_else(|| view! {
                        <div><p class="warning" role="note">"The answer does not occur word for word in this passage."</p>
                        <p class="full-passage">{passage}</p></div>
                    }.into_any())
                })}
            </td>
            <td class="status" data-label="Status">
                <span class=format!("badge {}", status_label(triple.status))>{status_label(triple.status)}</span>
                {reason.map(|r| view! { <span class="filter-reason" data-testid="filter-reason">{r}</span> })}
                <span class="row-actions">
                    {filtered.then(|| view! {
                        <button type="button" class="secondary small" data-testid="keep-anyway" aria-label=format!("Keep triple {id} anyway")
                            on:click=move |e| { e.stop_propagation(); keep(TripleStatus::Pending); }>"Keep anyway"</button>
                    })}
                    {(!filtered).then(|| [(TripleStatus::Approved, "✓", "Approve"), (TripleStatus::Rejected, "✗", "Reject"), (TripleStatus::Pending, "↺", "Reset")]
                        .into_iter()
                        .map(|(status, icon, verb)| {
                            let set = set_row_status.clone();
                            view! {
                                <button class="icon" aria-label=format!("{verb} triple {id}") title=verb
                                    disabled=triple.status == status
                                    on:click=move |e| { e.stop_propagation(); set(status); }>{icon}</button>
                            }
                        })
                        .collect_view())}
                </span>
            </td>
            <td class="judge" data-label="Judge" data-testid="judge-score">{judge_words(triple.judge)}</td>
        </tr>
    }
}

/// The judge's scores as the Judge column shows them ("5 / 4"; "–" unscored).
pub fn judge_words(judge: Option<attune_shared::JudgeScores>) -> String {
    judge.map(|j| format!("{} / {}", j.grounded, j.useful)).unwrap_or_else(|| "–".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_scores_read_groundedness_then_usefulness() {
        assert_eq!(judge_words(Some(attune_shared::JudgeScores { grounded: 5, useful: 3 })), "5 / 3");
        assert_eq!(judge_words(None), "–");
    }

    #[test]
    fn search_words_are_marked_case_insensitively() {
        let words = vec!["cox".to_owned(), "ratio".to_owned()];
        assert_eq!(
            highlight("Cox hazard ratios", &words),
            vec![("Cox".into(), true), (" hazard ".into(), false), ("ratio".into(), true), ("s".into(), false)]
        );
        assert_eq!(highlight("none here", &words), vec![("none here".into(), false)]);
        assert_eq!(highlight("x", &[]), vec![("x".into(), false)]);
    }
}
