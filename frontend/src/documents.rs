//! The Documents page: uploads (drag-and-drop or the file picker, several files at once, each with
//! its own progress bar and outcome in words), the list of documents with their counts, and
//! deletion with a confirmation that says what happens to the document's triples.

use leptos::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;

use attune_shared::{Document, UploadOutcome, UploadResult};

use crate::api::{Api, ApiError, KeepTriples};
use crate::endpoints::bearer;
use crate::format::count;

/// A refused upload in words for people (the parser's own words stay behind a disclosure).
pub fn failure_words(code: &str, message: &str) -> String {
    let lower = message.to_lowercase();
    match code {
        "unsupported_media_type" => "This kind of file cannot be read: upload a PDF, .txt or .md file.".into(),
        "payload_too_large" | "file_too_large" => "This file is too large to upload.".into(),
        "empty_file" => "This file is empty.".into(),
        "no_text_in_pdf" => "This PDF holds no text to read (it may be scanned images: run OCR on it first).".into(),
        "unreadable_pdf" => "This file is not a PDF or is damaged.".into(),
        "not_utf8" => "This text file is not in UTF-8: save it as UTF-8 and upload it again.".into(),
        "no_passages" => "No passages could be cut from this file.".into(),
        _ if lower.contains("took too long") || lower.contains("timed out") => {
            "Reading this file took too long, so it was stopped.".into()
        }
        _ if lower.contains("pdf")
            && (lower.contains("parse") || lower.contains("header") || lower.contains("damaged")) =>
        {
            "This file is not a PDF or is damaged.".into()
        }
        _ => "This file could not be read.".into(),
    }
}

/// Where one file's upload stands.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadState {
    /// Bytes sent so far, 0 to 1.
    Sending(f64),
    /// Sent; the server is parsing and chunking it.
    Processing,
    Done(String),
    /// Words for people, and the server's own message.
    Failed(String, String),
}

/// The outcome of `POST /documents` for one file, in words, from the response's status and body.
pub fn upload_outcome(status: u16, body: &str) -> UploadState {
    if !(200..300).contains(&status) {
        let error = ApiError::from_response(status, body);
        return UploadState::Failed(failure_words(&error.code, &error.message), error.message);
    }
    match serde_json::from_str::<UploadResult>(body).ok().and_then(|r| r.files.into_iter().next()) {
        Some(UploadOutcome::Ingested { document }) => UploadState::Done(format!(
            "{}{}",
            count(document.passages.into(), "passage"),
            document.pages.map(|p| format!(" from {}", count(p.into(), "page"))).unwrap_or_default()
        )),
        Some(UploadOutcome::Duplicate { document }) => {
            UploadState::Done(format!("already uploaded as “{}”: nothing new stored", document.name))
        }
        Some(UploadOutcome::Failed { error, .. }) => {
            UploadState::Failed(failure_words(&error.code, &error.message), error.message)
        }
        None => {
            UploadState::Failed("The server's answer could not be read.".to_owned(), "unreadable response".to_owned())
        }
    }
}

/// What deleting `document` does, in words, for the confirmation.
pub fn deletion_question(document: &Document) -> String {
    let t = document.triples;
    let total = t.pending + t.approved + t.rejected;
    if total == 0 {
        format!("Delete “{}” and its {}? It has no triples.", document.name, count(document.passages.into(), "passage"))
    } else {
        format!(
            "Delete “{}” and its {}? {} come from it ({} approved, {} pending, {} rejected): \
             keep them (with their passage text) or delete them too.",
            document.name,
            count(document.passages.into(), "passage"),
            count(total, "triple"),
            t.approved,
            t.pending,
            t.rejected
        )
    }
}

#[derive(Clone)]
struct UploadRow {
    name: String,
    state: RwSignal<UploadState>,
}

/// Sends one file with XMLHttpRequest (fetch cannot report upload progress).
fn send_file(file: web_sys::File, api: Api, state: RwSignal<UploadState>, done: Callback<()>) {
    let result = (|| -> Result<(), wasm_bindgen::JsValue> {
        let xhr = web_sys::XmlHttpRequest::new()?;
        xhr.open("POST", &api.documents_url())?;
        if let Some(token) = api.token() {
            xhr.set_request_header("Authorization", &bearer(token))?;
        }
        let form = web_sys::FormData::new()?;
        form.append_with_blob_and_filename("files", &file, &file.name())?;
        let progress = Closure::<dyn FnMut(web_sys::ProgressEvent)>::new(move |event: web_sys::ProgressEvent| {
            if event.length_computable() && event.total() > 0.0 {
                let share = event.loaded() / event.total();
                state.set(if share >= 1.0 { UploadState::Processing } else { UploadState::Sending(share) });
            }
        });
        xhr.upload()?.set_onprogress(Some(progress.as_ref().unchecked_ref()));
        progress.forget();
        let finished = xhr.clone();
        let load = Closure::<dyn FnMut()>::new(move || {
            let status = finished.status().unwrap_or(0);
            let body = finished.response_text().ok().flatten().unwrap_or_default();
            state.set(upload_outcome(status, &body));
            done.run(());
        });
        xhr.set_onload(Some(load.as_ref().unchecked_ref()));
        load.forget();
        let failed = Closure::<dyn FnMut()>::new(move || {
            state.set(UploadState::Failed(
                "The upload did not get through: is the server running?".to_owned(),
                "network error".to_owned(),
            ));
        });
        xhr.set_onerror(Some(failed.as_ref().unchecked_ref()));
        failed.forget();
        xhr.send_with_opt_form_data(Some(&form))
    })();
    if let Err(error) = result {
        state.set(UploadState::Failed("The browser refused the upload.".to_owned(), format!("{error:?}")));
    }
}

#[component]
pub fn DocumentsPage() -> impl IntoView {
    let api = Api::from_context();
    let documents = RwSignal::new(None::<Result<Vec<Document>, ApiError>>);
    let has_documents = Memo::new(move |_| documents.with(|d| matches!(d, Some(Ok(list)) if !list.is_empty())));
    let refresh = {
        move || {
            leptos::task::spawn_local(async move {
                documents.set(Some(api.documents().await));
            });
        }
    };
    refresh();
    let uploads = RwSignal::new(Vec::<UploadRow>::new());
    let dragging = RwSignal::new(false);
    let on_uploaded = Callback::new(move |()| refresh());
    let start_uploads = {
        move |files: web_sys::FileList| {
            for i in 0..files.length() {
                let Some(file) = files.get(i) else { continue };
                let state = RwSignal::new(UploadState::Sending(0.0));
                uploads.update(|rows| rows.insert(0, UploadRow { name: file.name(), state }));
                send_file(file, api, state, on_uploaded);
            }
        }
    };
    let on_pick = {
        move |event: web_sys::Event| {
            let Some(input) = event.target().and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok()) else {
                return;
            };
            if let Some(files) = input.files() {
                start_uploads(files);
            }
            input.set_value("");
        }
    };
    let on_drop = move |event: web_sys::DragEvent| {
        event.prevent_default();
        dragging.set(false);
        if let Some(files) = event.data_transfer().and_then(|d| d.files()) {
            start_uploads(files);
        }
    };
    let confirming = RwSignal::new(None::<Document>);
    let delete_error = RwSignal::new(None::<String>);
    let delete = {
        move |document: Document, triples: KeepTriples| {
            let refresh = refresh;
            leptos::task::spawn_local(async move {
                match api.delete_document(document.id, triples).await {
                    Ok(()) => {
                        confirming.set(None);
                        delete_error.set(None);
                        refresh();
                    }
                    Err(error) => delete_error.set(Some(error.message)),
                }
            });
        }
    };

    view! {
        <section class="page documents">
            <h1>"Documents"</h1>
            <p class="lead">"Your PDFs, text and Markdown files, split into passages the retriever can find."</p>
            <label
                class="dropzone"
                class:dragging=move || dragging.get()
                on:dragover=move |event: web_sys::DragEvent| {
                    event.prevent_default();
                    dragging.set(true);
                }
                on:dragleave=move |_| dragging.set(false)
                on:drop=on_drop
            >
                <input type="file" multiple accept=".pdf,.txt,.md,.markdown" on:change=on_pick aria-label="Choose files to upload" />
                <span>"Drop PDF, .txt or .md files here, or "<u>"choose files"</u></span>
            </label>
            <ul class="uploads" aria-label="Uploads">
                <For each=move || uploads.get() key=|row| row.state.to_owned() let:row>
                    <UploadLine row=row />
                </For>
            </ul>
            {move || confirming.get().map(|document| {
                let question = deletion_question(&document);
                let has_triples = document.triples.pending + document.triples.approved + document.triples.rejected > 0;
                let (keep, remove) = (document.clone(), document.clone());
                let (delete_keep, delete_all) = (delete, delete);
                view! {
                    <div class="confirm" role="alertdialog" aria-label="Confirm deletion">
                        <p>{question}</p>
                        {move || delete_error.get().map(|e| view! { <p class="error">{e}</p> })}
                        <div class="actions">
                            {has_triples.then(|| view! {
                                <button class="secondary" on:click=move |_| delete_keep(keep.clone(), KeepTriples::Keep)>
                                    "Delete the document, keep its triples"
                                </button>
                            })}
                            <button class="danger" on:click=move |_| delete_all(remove.clone(), KeepTriples::Delete)>
                                {if has_triples { "Delete the document and its triples" } else { "Delete the document" }}
                            </button>
                            <button on:click=move |_| { confirming.set(None); delete_error.set(None); }>"Cancel"</button>
                        </div>
                    </div>
                }
            })}
            // Outside the list's view: a reload of the list (an upload, a deletion) keeps what its
            // form holds.
            <Show when=move || has_documents.get()>
                <crate::adapt::AdaptPanel />
            </Show>
            {move || match documents.get() {
                None => view! { <p class="loading">"Loading documents…"</p> }.into_any(),
                Some(Err(error)) => view! { <p class="error">{format!("Cannot list the documents: {}", error.message)}</p> }.into_any(),
                Some(Ok(list)) if list.is_empty() => view! {
                    <div class="empty-state"><p>"No documents yet: upload one above to start."</p></div>
                }.into_any(),
                Some(Ok(list)) => view! {
                    <table class="documents-table">
                        <thead>
                            <tr>
                                <th scope="col">"Name"</th>
                                <th scope="col">"Type"</th>
                                <th scope="col">"Pages"</th>
                                <th scope="col">"Passages"</th>
                                <th scope="col">"Triples (pending / approved / rejected)"</th>
                                <th scope="col">"Added"</th>
                                <th scope="col"><span class="visually-hidden">"Actions"</span></th>
                            </tr>
                        </thead>
                        <tbody>
                            {list.into_iter().map(|document| {
                                let t = document.triples;
                                let target = document.clone();
                                let name = document.name.clone();
                                view! {
                                    <tr>
                                        <td data-label="Name"><a href=format!("/documents/{}", document.id)>{document.name.clone()}</a></td>
                                        <td data-label="Type">{document.kind.clone()}</td>
                                        <td data-label="Pages">{document.pages.map(|p| p.to_string()).unwrap_or_else(|| "–".into())}</td>
                                        <td data-label="Passages">{document.passages}</td>
                                        <td data-label="Triples">{format!("{} / {} / {}", t.pending, t.approved, t.rejected)}</td>
                                        <td data-label="Added">{document.created_at.get(..10).unwrap_or_default().to_owned()}</td>
                                        <td>
                                            <button class="secondary" aria-label=format!("Delete {name}")
                                                on:click=move |_| { delete_error.set(None); confirming.set(Some(target.clone())); }>
                                                "Delete"
                                            </button>
                                        </td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any(),
            }}
        </section>
    }
}

#[component]
fn UploadLine(row: UploadRow) -> impl IntoView {
    let state = row.state;
    view! {
        <li class="upload" data-state=move || match state.get() {
            UploadState::Sending(_) | UploadState::Processing => "busy",
            UploadState::Done(_) => "done",
            UploadState::Failed(..) => "failed",
        }>
            <span class="name">{row.name}</span>
            <progress max="1" value=move || match state.get() {
                UploadState::Sending(share) => share,
                _ => 1.0,
            }></progress>
            <span class="status">{move || match state.get() {
                UploadState::Sending(share) => format!("sending… {:.0}%", share * 100.0),
                UploadState::Processing => "reading and cutting into passages…".to_owned(),
                UploadState::Done(text) => text,
                UploadState::Failed(text, _) => text,
            }}</span>
            {move || match state.get() {
                UploadState::Failed(_, detail) => Some(view! {
                    <details class="detail"><summary>"Details"</summary><code>{detail}</code></details>
                }),
                _ => None,
            }}
        </li>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_in_words() {
        let ingested = r#"{"files":[{"outcome":"ingested","document":{"id":1,"name":"a.pdf","kind":"pdf","sha256":"x","bytes":10,"pages":3,"passages":12,"created_at":"2026-11-26T10:00:00Z"}}]}"#;
        assert_eq!(upload_outcome(201, ingested), UploadState::Done("12 passages from 3 pages".into()));
        let one = ingested.replace("\"passages\":12", "\"passages\":1");
        assert_eq!(upload_outcome(201, &one), UploadState::Done("1 passage from 3 pages".into()));
        let duplicate = ingested.replace("ingested", "duplicate");
        assert!(
            matches!(upload_outcome(200, &duplicate), UploadState::Done(t) if t.contains("already uploaded as “a.pdf”"))
        );
        let refused = r#"{"error":{"code":"unsupported_media_type","message":"x.pptx: unsupported file type"}}"#;
        assert_eq!(
            upload_outcome(415, refused),
            UploadState::Failed(
                "This kind of file cannot be read: upload a PDF, .txt or .md file.".into(),
                "x.pptx: unsupported file type".into()
            )
        );
        assert!(matches!(upload_outcome(201, "garbage"), UploadState::Failed(..)));
        let damaged = r#"{"files":[{"outcome":"failed","name":"a.pdf","error":{"code":"unreadable_pdf","message":"PDF error: couldn't parse input: invalid file header"}}]}"#;
        match upload_outcome(201, damaged) {
            UploadState::Failed(words, detail) => {
                assert_eq!(words, "This file is not a PDF or is damaged.");
                assert!(detail.contains("invalid file header"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_deletion_question_says_what_happens_to_triples() {
        let mut document: Document = serde_json::from_str(
            r#"{"id":1,"name":"guide.md","kind":"markdown","sha256":"x","bytes":10,"passages":4,"created_at":"t"}"#,
        )
        .unwrap();
        assert!(deletion_question(&document).contains("It has no triples"));
        document.triples.approved = 2;
        document.triples.pending = 1;
        let question = deletion_question(&document);
        assert!(question.contains("3 triples come from it (2 approved, 1 pending, 0 rejected)"), "{question}");
    }
}
