//! The Triples page's bars: the filters (status tabs with counts, document, origin, sort, search),
//! the selection's actions with export and import, and the pager.

use std::collections::BTreeSet;

use leptos::prelude::*;

use attune_shared::{Document, TripleOrigin, TriplePage, TripleStatus};

use super::{Filter, Sort, status_label};
use crate::api::{Api, ApiError};

/// How long typing must pause before the search applies.
pub const SEARCH_DEBOUNCE_MS: u32 = 300;

/// The export formats: (API name, label). The file's name is the server's.
pub const EXPORT_FORMATS: [(&str, &str); 5] = [
    ("csv", "CSV"),
    ("jsonl", "JSONL"),
    ("alpaca", "Alpaca JSONL"),
    ("sharegpt", "ShareGPT JSONL"),
    ("hf", "Hugging Face dataset (zip)"),
];

/// What Export exports: the current tab (approved on "all"), with the document, origin and search
/// of the filter; the words of its button and the query.
pub fn export_target(filter: &Filter, counts: attune_shared::TripleCounts) -> (String, String, u64) {
    let status = filter.status.unwrap_or(TripleStatus::Approved);
    let n = counts.of(Some(status));
    let query =
        std::iter::once(format!("status={}", status.as_str())).chain(filter.terms()).collect::<Vec<_>>().join("&");
    (format!("Export {} ({n})", status_label(status)), query, n)
}

/// The listing's filters: status tabs with counts, document, origin, sort and search.
#[component]
pub(super) fn FilterBar(
    filter: RwSignal<Filter>,
    page: RwSignal<Option<Result<TriplePage, ApiError>>>,
    documents: RwSignal<Vec<Document>>,
) -> impl IntoView {
    let typed = StoredValue::new(0u64);
    view! {
        <div class="toolbar" role="toolbar" aria-label="Filters">
            <div class="status-tabs" role="group" aria-label="Status">
                {[None, Some(TripleStatus::Pending), Some(TripleStatus::Approved), Some(TripleStatus::Rejected), Some(TripleStatus::Filtered)]
                    .into_iter()
                    .map(|status| {
                        let label = move || {
                            let counts = page.with(|p| p.as_ref().and_then(|r| r.as_ref().ok()).map(|p| p.counts)).unwrap_or_default();
                            format!("{} ({})", status.map(status_label).unwrap_or("all"), counts.of(status))
                        };
                        view! {
                            <button
                                class="tab"
                                data-testid=format!("tab-{}", status.map(status_label).unwrap_or("all"))
                                title=(status == Some(TripleStatus::Filtered)).then_some("candidates the filters dropped, with why: keep one anyway")
                                aria-pressed=move || (filter.with(|f| f.status) == status).to_string()
                                on:click=move |_| filter.update(|f| { f.status = status; f.page = 1; f.reason = None; })
                            >{label}</button>
                        }
                    })
                    .collect_view()}
            </div>
            {move || {
                let reasons = page.with(|p| p.as_ref().and_then(|r| r.as_ref().ok()).map(|p| p.reasons.clone())).unwrap_or_default();
                (filter.with(|f| f.status) == Some(TripleStatus::Filtered) && !reasons.is_empty()).then(|| view! {
                    <label>"Dropped because "
                        <select data-testid="filter-reason-select" on:change=move |e| {
                            let value = event_target_value(&e);
                            filter.update(|f| { f.reason = (!value.is_empty()).then_some(value); f.page = 1; });
                        }>
                            <option value="">"any reason"</option>
                            {reasons.into_iter().map(|r| {
                                let chosen = filter.with_untracked(|f| f.reason.as_deref() == Some(r.reason.as_str()));
                                view! { <option value=r.reason.clone() selected=chosen>{format!("{} ({})", r.reason, r.count)}</option> }
                            }).collect_view()}
                        </select>
                    </label>
                })
            }}
            <label>"Document "
                <select prop:value=move || filter.with(|f| f.document_id.map(|d| d.to_string()).unwrap_or_default()) on:change=move |e| {
                    let value = event_target_value(&e);
                    filter.update(|f| { f.document_id = value.parse().ok(); f.page = 1; });
                }>
                    <option value="">"any"</option>
                    {move || documents.get().into_iter().map(|d| {
                        let chosen = filter.with_untracked(|f| f.document_id == Some(d.id));
                        view! { <option value=d.id.to_string() selected=chosen>{d.name}</option> }
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
                prop:value=move || filter.with_untracked(|f| f.search.clone())
                on:input=move |e| {
                    // Applied as you type, once typing pauses.
                    let text = event_target_value(&e);
                    let mine = typed.get_value() + 1;
                    typed.set_value(mine);
                    gloo_timers::callback::Timeout::new(SEARCH_DEBOUNCE_MS, move || {
                        if typed.get_value() == mine {
                            filter.update(|f| { f.search = text; f.page = 1; });
                        }
                    }).forget();
                } />
        </div>
    }
}

/// Selection and what to do with it (approve, reject, reset, delete), undo, export and import.
#[component]
pub(super) fn BulkBar(
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
    let export_error = RwSignal::new(None::<String>);
    let format = RwSignal::new(0usize);
    let counts = move || page.with(|p| p.as_ref().and_then(|r| r.as_ref().ok()).map(|p| p.counts)).unwrap_or_default();
    let target = move || filter.with(|f| export_target(f, counts()));
    let export = move || {
        let (_, query, _) = target();
        let (name, _) = EXPORT_FORMATS[format.get_untracked()];
        export_error.set(None);
        leptos::task::spawn_local(async move {
            if let Err(error) = api.export_triples(&format!("format={name}&{query}")).await {
                export_error.set(Some(format!("Export failed: {}", error.message)));
            }
        });
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
            <span class="export">
                <button data-testid="export" disabled=move || target().2 == 0 on:click=move |_| export()>{move || target().0}</button>
                <select aria-label="Export format" on:change=move |e| format.set(event_target_value(&e).parse().unwrap_or(0))>
                    {EXPORT_FORMATS.iter().enumerate().map(|(i, (_, label))| view! { <option value=i.to_string()>{*label}</option> }).collect_view()}
                </select>
            </span>
            {move || export_error.get().map(|e| view! { <span class="error" role="alert">{e}</span> })}
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

/// Previous and next page, and where the listing stands.
#[component]
pub(super) fn Pager(filter: RwSignal<Filter>, page: u32, pages: u64, total: u64) -> impl IntoView {
    let (first_page, last_page) = (page <= 1, u64::from(page) >= pages);
    view! {
        <nav class="pager" aria-label="Pages">
            <button disabled=first_page on:click=move |_| filter.update(|f| f.page -= 1)>"Previous"</button>
            <span>{format!("page {page} of {pages} · {total} triples")}</span>
            <button disabled=last_page on:click=move |_| filter.update(|f| f.page += 1)>"Next"</button>
        </nav>
    }
}
