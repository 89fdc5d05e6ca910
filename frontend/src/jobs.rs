//! The jobs panel behind the header's "Jobs" button: every synthesis run, training run and
//! evaluation the server told of (its late-joiner state first, so it survives reloads and other
//! tabs), each with progress, ETA and Cancel — which says "cancelling…" at once and is disabled
//! until the job has stopped.

use std::collections::BTreeSet;

use leptos::prelude::*;

use attune_shared::JobStatus;

use crate::api::{Api, RunAction};
use crate::format::{duration_words, status_label};
use crate::link::{JobBoard, Link, unfinished};

/// What kind of job a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobKind {
    Adapt,
    Synthesis,
    Training,
    Evaluation,
}

impl JobKind {
    pub fn label(self) -> &'static str {
        match self {
            JobKind::Adapt => "Adapt automatically",
            JobKind::Synthesis => "Question generation",
            JobKind::Training => "Training",
            JobKind::Evaluation => "Evaluation",
        }
    }
}

/// One row of the panel.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub kind: JobKind,
    pub id: i64,
    pub title: String,
    pub status: JobStatus,
    /// Done and total units (passages, steps, questions).
    pub done: u64,
    pub total: u64,
    pub eta_seconds: Option<f64>,
    /// Where the job is looked at more closely.
    pub href: String,
}

impl JobRow {
    pub fn key(&self) -> (JobKind, i64) {
        (self.kind, self.id)
    }
}

/// The panel's rows: unfinished jobs first (oldest first), then the finished ones (newest first).
pub fn rows(board: &JobBoard) -> Vec<JobRow> {
    let mut rows = Vec::new();
    for (run, eta) in board.synth.values() {
        rows.push(JobRow {
            kind: JobKind::Synthesis,
            id: run.id,
            title: format!(
                "Questions, run {}: {} of {} passages",
                run.id, run.report.passages_done, run.passages_total
            ),
            status: run.status,
            done: run.report.passages_done,
            total: run.passages_total,
            eta_seconds: *eta,
            href: run.document_id.map(|d| format!("/documents/{d}")).unwrap_or_else(|| "/documents".into()),
        });
    }
    for run in board.runs.values() {
        rows.push(JobRow {
            kind: JobKind::Training,
            id: run.id,
            title: format!("{}: step {} of {}", run.name, run.step, run.total_steps),
            status: run.status,
            done: u64::from(run.step),
            total: u64::from(run.total_steps),
            eta_seconds: run.last.map(|p| p.eta_seconds),
            href: "/train".into(),
        });
    }
    for eval in board.evals.values() {
        rows.push(JobRow {
            kind: JobKind::Evaluation,
            id: eval.id,
            title: format!(
                "Evaluation #{}{}",
                eval.id,
                eval.phase.as_ref().map(|p| format!(": {p} {} of {}", eval.done, eval.total)).unwrap_or_default()
            ),
            status: eval.status,
            done: eval.done,
            total: eval.total,
            eta_seconds: None,
            href: format!("/evaluate/{}", eval.id),
        });
    }
    for job in board.adapt.values() {
        let current =
            crate::adapt::stage_lines(job, board).into_iter().find(|line| line.state != crate::adapt::StageState::Done);
        let stage = crate::adapt::order(job.stage) as u64;
        rows.push(JobRow {
            kind: JobKind::Adapt,
            id: job.id,
            title: match current.filter(|line| !line.detail.is_empty()) {
                Some(line) => format!("{}: {}", crate::adapt::job_words(job), line.detail),
                None => crate::adapt::job_words(job),
            },
            status: job.status,
            done: stage,
            total: 3,
            eta_seconds: None,
            href: "/documents".into(),
        });
    }
    rows.sort_by_key(|r| (!unfinished(r.status), if unfinished(r.status) { r.id } else { -r.id }, r.kind));
    rows
}

/// "about 2 min 5 s left".
pub fn eta_words(seconds: f64) -> String {
    format!("about {} left", duration_words(seconds))
}

/// The header's button with the number of jobs in progress, and the panel it opens.
#[component]
pub fn JobsButton() -> impl IntoView {
    let link = use_context::<Link>();
    let open = RwSignal::new(false);
    let active = move || link.map(|l| l.board.with(JobBoard::active)).unwrap_or(0);
    view! {
        <div class="jobs">
            <button type="button" class="jobs-button" data-testid="jobs-button" aria-expanded=move || open.get().to_string()
                on:click=move |_| open.update(|o| *o = !*o)>
                "Jobs"
                <span class="jobs-count" data-testid="jobs-count" class:busy=move || { active() > 0 }>{active}</span>
            </button>
            <Show when=move || open.get()>
                <JobsPanel on_close=Callback::new(move |()| open.set(false)) />
            </Show>
        </div>
    }
}

/// Cancels `kind` job `id` through the API.
async fn cancel(api: Api, kind: JobKind, id: i64) -> Result<(), String> {
    let result = match kind {
        JobKind::Adapt => api.adapt_action(id, "cancel").await.map(|_| ()),
        JobKind::Synthesis => api.cancel_synthesis(id).await.map(|_| ()),
        JobKind::Training => api.run_action(id, RunAction::Cancel).await.map(|_| ()),
        JobKind::Evaluation => api.cancel_eval(id).await.map(|_| ()),
    };
    result.map_err(|e| e.message)
}

#[component]
pub fn JobsPanel(on_close: Callback<()>) -> impl IntoView {
    let link = use_context::<Link>();
    let api = Api::from_context();
    let cancelling = RwSignal::new(BTreeSet::<(JobKind, i64)>::new());
    let error = RwSignal::new(None::<String>);
    let list = move || link.map(|l| l.board.with(rows)).unwrap_or_default();
    view! {
        <section class="jobs-panel" role="dialog" aria-label="Jobs" data-testid="jobs-panel">
            <header>
                <h2>"Jobs"</h2>
                <button type="button" class="icon" aria-label="Close the jobs panel" on:click=move |_| on_close.run(())>"✕"</button>
            </header>
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            {move || {
                let rows = list();
                if rows.is_empty() {
                    return view! { <p class="muted">"No jobs yet. Question generation, training and evaluations show up here."</p> }.into_any();
                }
                view! {
                    <ul class="job-list">
                        {rows.into_iter().map(|row| {
                            let key = row.key();
                            let live = unfinished(row.status);
                            let is_cancelling = move || cancelling.with(|c| c.contains(&key));
                            let share = if row.total > 0 { 100.0 * row.done as f64 / row.total as f64 } else { 0.0 };
                            view! {
                                <li class="job" data-testid="job" data-kind=format!("{:?}", row.kind).to_lowercase() data-status=status_label(row.status)>
                                    <div class="job-head">
                                        <span class="job-kind">{row.kind.label()}</span>
                                        <span class=format!("badge status-{}", status_label(row.status))>{status_label(row.status)}</span>
                                    </div>
                                    <a href=row.href.clone() on:click=move |_| on_close.run(())>{row.title.clone()}</a>
                                    {live.then(|| view! {
                                        <div class="progress" role="progressbar" aria-valuemin="0" aria-valuemax=row.total aria-valuenow=row.done>
                                            <div class="bar" style=format!("width: {share:.1}%")></div>
                                        </div>
                                    })}
                                    {row.eta_seconds.filter(|_| row.status == JobStatus::Running).map(|eta| view! { <span class="muted">{eta_words(eta)}</span> })}
                                    {live.then(|| view! {
                                        <button type="button" class="danger small" data-testid="job-cancel" disabled=is_cancelling
                                            on:click=move |_| {
                                                cancelling.update(|c| { c.insert(key); });
                                                leptos::task::spawn_local(async move {
                                                    if let Err(message) = cancel(api, key.0, key.1).await {
                                                        cancelling.update(|c| { c.remove(&key); });
                                                        error.set(Some(message));
                                                    }
                                                });
                                            }>
                                            {move || if is_cancelling() { "Cancelling…" } else { "Cancel" }}
                                        </button>
                                    })}
                                </li>
                            }
                        }).collect_view()}
                    </ul>
                }.into_any()
            }}
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_shared::{ServerMessage, SynthRun};

    #[test]
    fn rows_put_unfinished_jobs_first_and_say_where_they_stand() {
        let synth = |id: i64, status: &str| -> SynthRun {
            serde_json::from_value(serde_json::json!({
                "id": id, "status": status, "llm": {"type": "local"}, "model": "m", "questions_per_passage": 3,
                "prompts": {"questions": "q", "answer": "a"}, "passages_total": 10, "document_id": 2,
                "report": {"passages_done": 4}, "created_at": "t", "updated_at": "t"
            }))
            .unwrap()
        };
        let mut board = JobBoard::default();
        board.apply(&ServerMessage::SynthProgress { run: synth(1, "succeeded"), eta_seconds: None });
        board.apply(&ServerMessage::SynthProgress { run: synth(2, "running"), eta_seconds: Some(75.0) });
        board.apply(&ServerMessage::SynthProgress { run: synth(3, "queued"), eta_seconds: None });
        let rows = rows(&board);
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 3, 1]);
        assert_eq!(rows[0].href, "/documents/2");
        assert!(rows[0].title.contains("4 of 10 passages"), "{}", rows[0].title);
        assert_eq!(eta_words(75.0), "about 1 min 15 s left");
    }
}
