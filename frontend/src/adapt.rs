//! The Documents page's "Adapt automatically": one button that writes questions about the
//! passages, approves what passes the filters, trains on them and compares base with tuned on the
//! questions the run held out — and the newest such job's stages, live, each with its own job's
//! progress and a link to where it is looked at more closely.

use leptos::prelude::*;

use attune_shared::{AdaptJob, AdaptRequest, AdaptStage, JobStatus, TrainMode};

use crate::api::Api;
use crate::format::status_label;
use crate::link::{JobBoard, Link, unfinished};

/// How a stage stands in a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageState {
    Waiting,
    Current,
    Done,
    /// The job ended (failed, cancelled, interrupted) at this stage.
    Stopped,
}

impl StageState {
    pub fn as_str(self) -> &'static str {
        match self {
            StageState::Waiting => "waiting",
            StageState::Current => "current",
            StageState::Done => "done",
            StageState::Stopped => "stopped",
        }
    }
}

/// One line of a job's stage list.
#[derive(Debug, Clone, PartialEq)]
pub struct StageLine {
    pub label: &'static str,
    pub state: StageState,
    /// Where the stage's job stands, in words ("12 of 40 passages, 31 kept").
    pub detail: String,
    /// Where its job is looked at more closely.
    pub href: Option<String>,
}

const STAGES: [(AdaptStage, &str); 3] = [
    (AdaptStage::Synthesis, "Write questions about the passages (what passes the filters is approved)"),
    (AdaptStage::Training, "Train on the approved triples"),
    (AdaptStage::Evaluation, "Compare base and tuned on the questions the run held out"),
];

/// Where `stage` comes in a job, from 0.
pub fn order(stage: AdaptStage) -> usize {
    AdaptStage::ALL.iter().position(|s| *s == stage).unwrap_or(0)
}

/// The job's three stages as the board knows their jobs now.
pub fn stage_lines(job: &AdaptJob, board: &JobBoard) -> Vec<StageLine> {
    STAGES
        .iter()
        .map(|&(stage, label)| {
            let state = match order(stage).cmp(&order(job.stage)) {
                std::cmp::Ordering::Less => StageState::Done,
                std::cmp::Ordering::Greater => StageState::Waiting,
                std::cmp::Ordering::Equal if job.status == JobStatus::Running => StageState::Current,
                std::cmp::Ordering::Equal => StageState::Stopped,
            };
            let (detail, href) = match stage {
                AdaptStage::Synthesis => (
                    job.synth_run
                        .and_then(|id| board.synth.get(&id))
                        .map(|(run, _)| {
                            format!(
                                "{} of {} passages, {} questions kept",
                                run.report.passages_done, run.passages_total, run.report.kept
                            )
                        })
                        .or_else(|| job.approved.map(|n| format!("{n} approved triples")))
                        .unwrap_or_default(),
                    job.synth_run.map(|_| "/triples?status=approved".to_owned()),
                ),
                AdaptStage::Training => (
                    job.run
                        .and_then(|id| board.runs.get(&id))
                        .map(|run| format!("{}: step {} of {}", run.name, run.step, run.total_steps))
                        .unwrap_or_default(),
                    job.run.map(|_| "/train".to_owned()),
                ),
                _ => (
                    job.eval
                        .and_then(|id| board.evals.get(&id))
                        .and_then(|eval| eval.phase.as_ref().map(|p| format!("{p} {} of {}", eval.done, eval.total)))
                        .unwrap_or_default(),
                    job.eval.map(|id| format!("/evaluate/{id}")),
                ),
            };
            let detail = if state == StageState::Done && detail.is_empty() { "done".to_owned() } else { detail };
            StageLine { label, state, detail, href }
        })
        .collect()
}

/// The job's state in one line ("Training", "Done", "Failed: …").
pub fn job_words(job: &AdaptJob) -> String {
    let stage = match job.stage {
        AdaptStage::Synthesis => "writing questions",
        AdaptStage::Training => "training",
        AdaptStage::Evaluation => "evaluating",
        AdaptStage::Done => "done",
    };
    let head = match job.status {
        JobStatus::Running | JobStatus::Queued => format!("Adapting: {stage}"),
        JobStatus::Succeeded => "Done".to_owned(),
        status => format!("{} while {stage}", capitalised(status_label(status))),
    };
    match &job.message {
        Some(message) => format!("{head} — {message}"),
        None => head,
    }
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn mode_words(mode: TrainMode) -> &'static str {
    match mode {
        TrainMode::Retriever => "the retriever (minutes on a CPU)",
        TrainMode::E2e => "retriever and generator together (e2e; hours on a CPU)",
        TrainMode::Generator => "the generator",
    }
}

/// Puts `job` on the board (the page's copy until the server's message about it arrives).
fn remember(link: Option<Link>, job: AdaptJob) {
    if let Some(link) = link {
        link.board.update(|b| {
            b.adapt.insert(job.id, job);
        });
    }
}

/// The newest adapt job the board knows.
fn newest(board: &JobBoard) -> Option<AdaptJob> {
    board.adapt.values().next_back().cloned()
}

/// The panel on the Documents page.
#[component]
pub fn AdaptPanel() -> impl IntoView {
    let api = Api::from_context();
    let link = use_context::<Link>();
    let mode = RwSignal::new(attune_shared::ADAPT_DEFAULT_MODE);
    let questions = RwSignal::new(String::new());
    let limit = RwSignal::new(String::new());
    let answers = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    // The jobs of before this page was opened (the board has those that changed since).
    if let Some(link) = link {
        leptos::task::spawn_local(async move {
            if let Ok(jobs) = api.adapt_jobs().await
                && let Some(job) = jobs.into_iter().next()
            {
                link.board.update(|b| {
                    b.adapt.entry(job.id).or_insert(job);
                });
            }
        });
    }
    let job = move || link.and_then(|l| l.board.with(newest));
    let running = move || job().is_some_and(|j| unfinished(j.status));
    let start = move |_| {
        let number = |text: String| text.trim().parse::<u32>().ok();
        let request = AdaptRequest {
            mode: mode.get_untracked(),
            questions_per_passage: number(questions.get_untracked()),
            limit: number(limit.get_untracked()),
            answers: answers.get_untracked(),
            ..AdaptRequest::default()
        };
        busy.set(true);
        error.set(None);
        leptos::task::spawn_local(async move {
            match api.start_adapt(&request).await {
                Ok(job) => remember(link, job),
                Err(e) => error.set(Some(e.message)),
            }
            busy.set(false);
        });
    };
    let act = move |id: i64, action: &'static str| {
        leptos::task::spawn_local(async move {
            match api.adapt_action(id, action).await {
                Ok(job) => remember(link, job),
                Err(e) => error.set(Some(e.message)),
            }
        });
    };
    view! {
        <section class="adapt" data-testid="adapt-panel" aria-labelledby="adapt-title">
            <h2 id="adapt-title">"Adapt automatically"</h2>
            <p class="muted">
                "One step from documents to a tuned system: the LLM (the server in the settings, else the local "
                "model) writes questions about the passages, those that pass the filters are approved (review is "
                "optional), a run trains on them (a retriever also on sentences of the passages as questions, "
                "the rest of each passage as the answer to find), and base and tuned are compared on the "
                "questions it held out, with BM25 beside them."
            </p>
            <div class="adapt-form">
                <label>
                    "Train"
                    <select data-testid="adapt-mode" on:change=move |ev| {
                        if let Ok(m) = event_target_value(&ev).parse::<TrainMode>() { mode.set(m); }
                    }>
                        {TrainMode::ALL.into_iter().map(|m| view! {
                            <option value=m.as_str() selected=move || mode.get() == m>{mode_words(m)}</option>
                        }).collect_view()}
                    </select>
                </label>
                <label>
                    "Questions per passage"
                    <input type="number" min="1" max="20" placeholder="from the settings" data-testid="adapt-questions"
                        prop:value=move || questions.get() on:input=move |ev| questions.set(event_target_value(&ev)) />
                </label>
                <label>
                    "At most this many passages"
                    <input type="number" min="1" placeholder="all" data-testid="adapt-limit"
                        prop:value=move || limit.get() on:input=move |ev| limit.set(event_target_value(&ev)) />
                </label>
                <label class="check">
                    <input type="checkbox" prop:checked=move || answers.get()
                        on:change=move |ev| answers.set(event_target_checked(&ev)) />
                    "Also score the generator's answers (slower)"
                </label>
                <button type="button" data-testid="adapt-start" disabled=move || busy.get() || running() on:click=start>
                    {move || if running() { "Adapting…" } else { "Adapt automatically" }}
                </button>
            </div>
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            {move || job().map(|job| {
                let board = link.map(|l| l.board.get()).unwrap_or_default();
                let lines = stage_lines(&job, &board);
                let id = job.id;
                let live = unfinished(job.status);
                let resumable = matches!(job.status, JobStatus::Interrupted | JobStatus::Cancelled | JobStatus::Failed)
                    && job.stage != AdaptStage::Done && job.synth_run.is_some();
                view! {
                    <div class="adapt-job" data-testid="adapt-job" data-status=status_label(job.status) data-stage=job.stage.as_str()>
                        <p class="adapt-state" data-testid="adapt-state">{job_words(&job)}</p>
                        <ol class="adapt-stages">
                            {lines.into_iter().map(|line| view! {
                                <li class=format!("stage-{}", line.state.as_str()) data-state=line.state.as_str()>
                                    <span>{line.label}</span>
                                    {(!line.detail.is_empty()).then(|| view! { <span class="muted">{format!(" — {}", line.detail)}</span> })}
                                    {line.href.map(|href| view! { " " <a href=href>"open"</a> })}
                                </li>
                            }).collect_view()}
                        </ol>
                        {live.then(|| view! {
                            <button type="button" class="danger small" data-testid="adapt-cancel" on:click=move |_| act(id, "cancel")>"Cancel"</button>
                        })}
                        {resumable.then(|| view! {
                            <button type="button" class="small" data-testid="adapt-resume" on:click=move |_| act(id, "resume")>"Resume"</button>
                        })}
                    </div>
                }
            })}
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_shared::ServerMessage;

    fn job(status: &str, stage: &str) -> AdaptJob {
        serde_json::from_value(serde_json::json!({
            "id": 4, "status": status, "stage": stage, "request": {}, "synth_run": 7, "approved": 31, "run": 9,
            "created_at": "t", "updated_at": "t"
        }))
        .unwrap()
    }

    #[test]
    fn stages_before_the_current_one_are_done_and_its_job_says_where_it_stands() {
        let mut board = JobBoard::default();
        let run = serde_json::from_value(serde_json::json!({
            "id": 9, "name": "adapt-4", "status": "running", "mode": "retriever", "retriever": "r", "generator": "g",
            "hyper": {}, "examples": 25, "held_out": 6, "step": 40, "total_steps": 100, "created_at": "t"
        }));
        let run = run.unwrap();
        assert!(board.apply(&ServerMessage::RunState { run }));
        let lines = stage_lines(&job("running", "training"), &board);
        let states: Vec<_> = lines.iter().map(|l| l.state).collect();
        assert_eq!(states, [StageState::Done, StageState::Current, StageState::Waiting]);
        assert_eq!(lines[0].detail, "31 approved triples");
        assert_eq!(lines[1].detail, "adapt-4: step 40 of 100");
        assert_eq!(lines[1].href.as_deref(), Some("/train"));
        assert_eq!(lines[2].href, None);
        assert_eq!(job_words(&job("running", "training")), "Adapting: training");
    }

    #[test]
    fn a_job_that_ended_early_says_where_and_why() {
        let mut failed = job("failed", "synthesis");
        failed.message = Some("3 approved triples".into());
        let lines = stage_lines(&failed, &JobBoard::default());
        assert_eq!(lines[0].state, StageState::Stopped);
        assert_eq!(job_words(&failed), "Failed while writing questions — 3 approved triples");
        let done = job("succeeded", "done");
        assert!(stage_lines(&done, &JobBoard::default()).iter().all(|l| l.state == StageState::Done));
        assert_eq!(job_words(&done), "Done");
        let mut board = JobBoard::default();
        board.apply(&ServerMessage::AdaptState { adapt: Box::new(job("running", "synthesis")) });
        board.apply(&ServerMessage::AdaptState { adapt: Box::new(AdaptJob { id: 2, ..job("failed", "training") }) });
        assert_eq!(newest(&board).map(|j| j.id), Some(4));
    }
}
