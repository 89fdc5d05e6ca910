//! The Train page: a run form with presets and every hyper-parameter explained, the selected run
//! live (loss and learning-rate charts fed by WebSocket steps, progress, ETA, throughput, device
//! and memory, cancel and resume), and the list of past runs.

use leptos::prelude::*;

use attune_shared::{Health, Hyper, JobStatus, ModelKind, NewRun, Preset, Run, ServerMessage, StepPoint, TrainMode};

use crate::api::{Api, ApiError, RunAction};
use crate::chart::{LineChart, Series};
use crate::format::{bytes_words, duration_words, status_label};
use crate::link::{Link, take};

/// One hyper-parameter in the form: its key, label, one-line explanation, and how to read and
/// write it as text.
pub struct Field {
    pub key: &'static str,
    pub label: &'static str,
    pub help: &'static str,
    pub get: fn(&Hyper) -> String,
    pub set: fn(&mut Hyper, &str) -> Result<(), String>,
}

fn parse<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.trim().parse().map_err(|_| format!("{text:?} is not a valid value"))
}

macro_rules! field {
    ($key:ident, $label:expr, $help:expr) => {
        Field {
            key: stringify!($key),
            label: $label,
            help: $help,
            get: |h| h.$key.to_string(),
            set: |h, text| {
                h.$key = parse(text)?;
                Ok(())
            },
        }
    };
}

/// Every hyper-parameter of a run, in the order the form shows them.
pub fn fields() -> Vec<Field> {
    vec![
        field!(epochs, "Epochs", "Passes over the training triples."),
        Field {
            key: "max_steps",
            label: "Max steps",
            help: "Stop after this many optimiser steps; empty: run all epochs.",
            get: |h| h.max_steps.map(|s| s.to_string()).unwrap_or_default(),
            set: |h, text| {
                h.max_steps = if text.trim().is_empty() { None } else { Some(parse(text)?) };
                Ok(())
            },
        },
        field!(
            min_steps,
            "Min steps",
            "More epochs for a small set: as many as make this many steps (0: the epochs as set)."
        ),
        field!(
            early_stopping_patience,
            "Early stopping",
            "Stop after this many held-out evaluations without a better loss, keeping the best adapters (0: off)."
        ),
        field!(
            eval_every,
            "Evaluate every",
            "Steps between measurements of the held-out loss (0: never); early stopping counts these."
        ),
        field!(batch_size, "Batch size", "Questions per step; the other questions' passages are each one's negatives."),
        field!(grad_accum, "Gradient accumulation", "Batches summed into one step: a bigger batch in the same memory."),
        field!(lr, "Learning rate", "Step size of the LoRA weights (AdamW)."),
        field!(warmup_ratio, "Warm-up", "Share of the steps spent raising the learning rate from 0."),
        field!(weight_decay, "Weight decay", "AdamW's pull of the LoRA weights towards 0."),
        field!(max_grad_norm, "Gradient clipping", "Longer gradients are scaled down to this norm (0: off)."),
        field!(lora_r, "LoRA rank", "Capacity of the update: more learns more, needs more memory."),
        field!(lora_alpha, "LoRA alpha", "Strength of the update (alpha / rank scales it)."),
        field!(lora_dropout, "LoRA dropout", "Share of the LoRA path's inputs dropped while training."),
        field!(top_k, "Passages per question", "Candidates the generator's likelihood is marginalised over (e2e)."),
        field!(generator_weight, "Generator weight λ", "Loss = retriever loss + λ × generator loss."),
        field!(scale, "Similarity scale", "Sharpness (1/τ) of the retriever's scores in both losses."),
        field!(
            hard_negatives,
            "Hard negatives",
            "Per question: the corpus passages the retriever ranks highest that are not its answer (0: none)."
        ),
        field!(
            hard_negative_margin,
            "Negative margin",
            "A passage scoring within this share of the gold passage's score is not a negative (a near-copy)."
        ),
        field!(
            refresh_negatives_every,
            "Refresh negatives every",
            "Steps between re-mining the negatives with the retriever as trained so far (0: mined once)."
        ),
        field!(
            mining_retrieval,
            "Mine negatives by",
            "dense (the retriever's ranking), bm25 (passages sharing the question's words) or hybrid (both fused)."
        ),
        field!(
            candidates,
            "Candidates",
            "e2e: batch (the batch's passages) or corpus (also each question's hard negatives from the whole corpus)."
        ),
        field!(
            retriever_loss,
            "Retriever loss",
            "e2e: contrastive, lsr (towards the passages that make the answer likelier), emdr2 (the answer's marginal likelihood), or contrastive plus one of them."
        ),
        field!(lsr_temperature, "LSR temperature", "β of the lsr loss: smaller follows the generator more sharply."),
        field!(
            oracle_fraction,
            "Gold passage share",
            "How often the gold passage is among the e2e candidates or in a RAFT prompt (RAFT's P; 1 = always)."
        ),
        field!(
            distractors,
            "Distractors",
            "Generator mode: mined passages put beside the gold one in each prompt, so it learns to ignore near misses (0: none)."
        ),
        field!(
            cloze_pairs,
            "Cloze pairs",
            "Retriever mode: add this many pairs from the documents' passages, a sentence as the question and the rest of its passage as the answer to find (0: none)."
        ),
        field!(max_passage_tokens, "Passage tokens", "Passages are cut to this many tokens for training."),
        field!(max_answer_tokens, "Answer tokens", "Answers are cut to this many tokens."),
        field!(test_fraction, "Held out", "Share of passages whose triples are kept for evaluation, never trained on."),
        field!(seed, "Seed", "Same seed, same data order and dropout: a run can be repeated exactly."),
        field!(checkpoint_every, "Checkpoint every", "Steps between resumable checkpoints (0: only at the end)."),
        field!(
            keep_checkpoints,
            "Checkpoints kept",
            "The newest this many stay in the run folder; older ones are deleted."
        ),
    ]
}

/// Adds `new` points to `points`: a step seen again (a resumed run redoes steps after its
/// checkpoint) replaces the old one and everything after it.
pub fn merge_points(points: &mut Vec<StepPoint>, new: &[StepPoint]) {
    for point in new {
        if let Some(at) = points.iter().position(|p| p.step >= point.step) {
            if points[at].step == point.step && at == points.len() - 1 {
                points[at] = *point;
                continue;
            }
            if points[at].step == point.step {
                points.truncate(at);
            } else {
                // An older point arriving late (REST after WebSocket): insert in order.
                points.insert(at, *point);
                continue;
            }
        }
        points.push(*point);
    }
}

/// The loss charts, one panel each (parts of very different size on one axis flatten the small
/// one): the training loss with the held-out loss beside it, then — when both parts exist — the
/// retriever's and the generator's. (title, test id, series.)
pub fn loss_panels(points: &[StepPoint]) -> Vec<(&'static str, &'static str, Vec<Series>)> {
    let line = |f: fn(&StepPoint) -> Option<f64>| -> Vec<(f64, f64)> {
        points.iter().filter_map(|p| f(p).map(|v| (f64::from(p.step), v))).collect()
    };
    let total = Series { label: "training", class: "s-total", points: line(|p| Some(p.loss)) };
    let held_out = Series { label: "held out", class: "s-heldout", points: line(|p| p.eval_loss) };
    let mut panels = vec![("Loss", "loss-chart", vec![total, held_out])];
    let retriever = line(|p| p.retriever_loss);
    let generator = line(|p| p.generator_loss);
    // In a one-model mode the part equals the total: the first panel says it.
    if !retriever.is_empty() && !generator.is_empty() {
        panels.push((
            "Retriever loss",
            "retriever-loss-chart",
            vec![Series { label: "retriever", class: "s-retriever", points: retriever }],
        ));
        panels.push((
            "Generator loss",
            "generator-loss-chart",
            vec![Series { label: "generator", class: "s-generator", points: generator }],
        ));
    }
    panels
}

/// The steps after which the hard negatives were mined again (a step's point says so when a
/// refresh ran before it): the marks on the loss chart.
pub fn refresh_marks(points: &[StepPoint]) -> Vec<f64> {
    points.iter().filter(|p| p.refresh_seconds.is_some()).map(|p| f64::from(p.step.saturating_sub(1))).collect()
}

/// Fewer approved triples than this and a run learns little: the form says so.
pub const FEW_TRIPLES: u64 = 30;

fn mode_label(mode: TrainMode) -> &'static str {
    match mode {
        TrainMode::E2e => "retriever + generator",
        TrainMode::Retriever => "retriever only",
        TrainMode::Generator => "generator only",
    }
}

/// Replaces or adds `run` in `runs` (newest first).
fn upsert(runs: &mut Vec<Run>, run: Run) {
    match runs.iter_mut().find(|r| r.id == run.id) {
        Some(slot) => *slot = run,
        None => {
            runs.push(run);
            runs.sort_by_key(|r| std::cmp::Reverse(r.id));
        }
    }
}

#[component]
pub fn TrainPage() -> impl IntoView {
    let api = Api::from_context();
    let link = use_context::<Link>();
    let presets = RwSignal::new(Vec::<Preset>::new());
    let models = RwSignal::new(None::<Health>);
    let approved = RwSignal::new(None::<u64>);
    let runs = RwSignal::new(None::<Result<Vec<Run>, ApiError>>);
    let selected = RwSignal::new(None::<i64>);
    let points = RwSignal::new(Vec::<StepPoint>::new());
    let logs = RwSignal::new(Vec::<String>::new());
    let hyper = RwSignal::new(Hyper::default());
    let preset = RwSignal::new(Some("quick".to_owned()));
    let mode = RwSignal::new(TrainMode::E2e);
    let retriever = RwSignal::new(String::new());
    let generator = RwSignal::new(String::new());
    let name = RwSignal::new(String::new());
    let field_errors = RwSignal::new(std::collections::BTreeMap::<&'static str, String>::new());
    let start_error = RwSignal::new(None::<String>);
    let action_error = RwSignal::new(None::<String>);
    let split = RwSignal::new(None::<attune_shared::SplitPreview>);
    // How the approved triples split under the form's settings, asked again when they change.
    Effect::new(move |_| {
        let h = hyper.get();
        if h.validate().is_err() {
            return;
        }
        leptos::task::spawn_local(async move {
            if let Ok(preview) = api.split(&h).await
                && hyper.with_untracked(|now| *now == h)
            {
                split.set(Some(preview));
            }
        });
    });

    {
        leptos::task::spawn_local(async move {
            if let Ok(list) = api.presets().await {
                if let Some(quick) = list.iter().find(|p| p.id == "quick") {
                    hyper.set(quick.hyper.clone());
                }
                presets.set(list);
            }
            if let Ok(health) = api.health().await {
                models.set(Some(health));
            }
            let page = api.triples("status=approved&per_page=1").await;
            approved.set(page.ok().map(|p| p.counts.approved));
            let list = api.runs().await;
            if let Ok(list) = &list {
                // Show the run in progress, else the latest one.
                let pick = list.iter().find(|r| r.status == JobStatus::Running).or(list.first()).map(|r| r.id);
                if selected.get_untracked().is_none() {
                    selected.set(pick);
                }
            }
            runs.set(Some(list));
        });
    }
    // The selected run's history of steps.
    {
        Effect::new(move |_| {
            let Some(id) = selected.get() else { return };
            points.set(Vec::new());
            logs.set(Vec::new());
            leptos::task::spawn_local(async move {
                if let Ok(history) = api.run_metrics(id).await
                    && selected.get_untracked() == Some(id)
                {
                    points.update(|p| {
                        let live = std::mem::take(p);
                        *p = history;
                        merge_points(p, &live);
                    });
                }
            });
        });
    }
    // Live updates.
    if let Some(link) = link {
        Effect::new(move |_| {
            for message in take(link.jobs) {
                match message {
                    ServerMessage::RunState { run } => {
                        let id = run.id;
                        let started = run.status == JobStatus::Running;
                        // A finished run the server recalls on connect does not take the focus.
                        let live = matches!(run.status, JobStatus::Queued | JobStatus::Running);
                        runs.update(|r| {
                            if let Some(Ok(list)) = r {
                                upsert(list, run);
                            }
                        });
                        if (selected.get_untracked().is_none() && live)
                            || (started && selected.get_untracked() != Some(id) && !selected_is_live(runs, selected))
                        {
                            selected.set(Some(id));
                        }
                    }
                    ServerMessage::TrainStep { run_id, point } => {
                        runs.update(|r| {
                            if let Some(Ok(list)) = r
                                && let Some(run) = list.iter_mut().find(|r| r.id == run_id)
                            {
                                run.step = point.step;
                                run.total_steps = point.total_steps;
                                run.last = Some(point);
                                run.status = JobStatus::Running;
                            }
                        });
                        if selected.get_untracked() == Some(run_id) {
                            points.update(|p| merge_points(p, &[point]));
                        }
                    }
                    ServerMessage::Checkpoint { run_id, step, path } => {
                        runs.update(|r| {
                            if let Some(Ok(list)) = r
                                && let Some(run) = list.iter_mut().find(|r| r.id == run_id)
                            {
                                run.checkpoint = Some(path.clone());
                            }
                        });
                        if selected.get_untracked() == Some(run_id) {
                            logs.update(|l| l.push(format!("checkpoint at step {step}")));
                        }
                    }
                    ServerMessage::JobLog { job, message, .. }
                        if selected.get_untracked().is_some_and(|id| job == format!("run:{id}")) =>
                    {
                        logs.update(|l| {
                            l.push(message);
                            let excess = l.len().saturating_sub(50);
                            l.drain(..excess);
                        });
                    }
                    _ => {}
                }
            }
        });
    }

    let apply_preset = move |id: String| {
        if let Some(p) = presets.with_untracked(|list| list.iter().find(|p| p.id == id).cloned()) {
            hyper.set(p.hyper);
            field_errors.set(Default::default());
            preset.set(Some(id));
        }
    };
    let start = {
        move |_| {
            if !field_errors.with_untracked(|e| e.is_empty()) {
                start_error.set(Some("Fix the fields marked in red first.".into()));
                return;
            }
            let h = hyper.get_untracked();
            if let Err(message) = h.validate() {
                start_error.set(Some(message));
                return;
            }
            let nonempty = |s: String| Some(s).filter(|s| !s.is_empty());
            let request = NewRun {
                name: nonempty(name.get_untracked()),
                mode: mode.get_untracked(),
                retriever: nonempty(retriever.get_untracked()),
                generator: nonempty(generator.get_untracked()),
                preset: preset.get_untracked(),
                hyper: h,
            };
            start_error.set(None);
            leptos::task::spawn_local(async move {
                match api.start_run(&request).await {
                    Ok(run) => {
                        let id = run.id;
                        runs.update(|r| match r {
                            Some(Ok(list)) => upsert(list, run),
                            _ => *r = Some(Ok(vec![run])),
                        });
                        selected.set(Some(id));
                    }
                    Err(error) => start_error.set(Some(error.message)),
                }
            });
        }
    };
    // The run whose Cancel was pressed: it says so at once (the step in progress finishes first).
    let cancelling = RwSignal::new(None::<i64>);
    let act = {
        move |id: i64, action: RunAction| {
            action_error.set(None);
            if action == RunAction::Cancel {
                cancelling.set(Some(id));
            }
            leptos::task::spawn_local(async move {
                let result = api.run_action(id, action).await;
                if result.is_err() {
                    cancelling.set(None);
                }
                match result {
                    Ok(run) => runs.update(|r| {
                        if let Some(Ok(list)) = r {
                            upsert(list, run);
                        }
                    }),
                    Err(error) => action_error.set(Some(error.message)),
                }
            });
        }
    };
    let current = move || {
        let id = selected.get()?;
        runs.with(|r| {
            r.as_ref().and_then(|r| r.as_ref().ok()).and_then(|list| list.iter().find(|r| r.id == id).cloned())
        })
    };
    let model_options = move |kind: ModelKind| {
        models
            .with(|h| {
                h.as_ref()
                    .map(|h| h.models.iter().filter(|m| m.kind == kind).map(|m| m.name.clone()).collect::<Vec<_>>())
            })
            .unwrap_or_default()
    };

    view! {
        <section class="page train">
            <h1>"Train"</h1>
            <p class="lead">"Fine-tune the retriever and the generator together on your approved triples, and watch it learn."</p>
            <div class="train-grid">
                <form class="run-form" aria-label="New training run" on:submit=|e: web_sys::SubmitEvent| e.prevent_default()>
                    <h2>"New run"</h2>
                    <p class="muted" data-testid="approved-count">{move || match (approved.get(), split.get()) {
                        (Some(_), Some(s)) => format!("{} approved triples: {} to train on, {} held out for evaluation.", s.approved, s.train, s.held_out),
                        (Some(n), None) => format!("{n} approved triples will be used (some held out for evaluation)."),
                        (None, _) => "Counting approved triples…".into(),
                    }}</p>
                    {move || approved.get().filter(|n| *n < FEW_TRIPLES).map(|n| view! {
                        <p class="notice warn" data-testid="few-triples">{format!(
                            "Only {n} approved: with fewer than {FEW_TRIPLES} a run learns little and its evaluation says little. Approve more on the Triples page, or generate more questions."
                        )}</p>
                    })}
                    {move || {
                        let on_cpu = models.with(|h| h.as_ref().is_some_and(|h| matches!(h.device, attune_shared::ComputeDevice::Cpu)));
                        (on_cpu && preset.get().as_deref() == Some("gpu")).then(|| view! {
                            <p class="notice warn" data-testid="gpu-on-cpu">"This server computes on the CPU: the GPU preset's large batches and three epochs will be slow here."</p>
                        })
                    }}
                    <div class="presets" role="group" aria-label="Presets">
                        {move || presets.get().into_iter().map(|p| {
                            let id = p.id.clone();
                            let active = p.id.clone();
                            view! {
                                <button type="button" class="preset" title=p.description.clone()
                                    class:active=move || preset.get().as_deref() == Some(active.as_str())
                                    on:click=move |_| apply_preset(id.clone())>{p.label.clone()}</button>
                            }
                        }).collect_view()}
                    </div>
                    <label class="field">"Name"
                        <input type="text" placeholder="optional" prop:value=move || name.get()
                            on:input=move |e| name.set(event_target_value(&e)) />
                    </label>
                    <fieldset class="field">
                        <legend>"What to tune"</legend>
                        {[TrainMode::E2e, TrainMode::Retriever, TrainMode::Generator].into_iter().map(|m| view! {
                            <label class="inline">
                                <input type="radio" name="mode" prop:checked=move || mode.get() == m on:change=move |_| mode.set(m) />
                                {mode_label(m)}
                            </label>
                        }).collect_view()}
                    </fieldset>
                    <label class="field">"Retriever"
                        <select on:change=move |e| retriever.set(event_target_value(&e))>
                            <option value="">"default (all-MiniLM-L6-v2)"</option>
                            {move || model_options(ModelKind::Retriever).into_iter().map(|m| view! { <option value=m.clone()>{m.clone()}</option> }).collect_view()}
                        </select>
                    </label>
                    <label class="field">"Generator"
                        <select on:change=move |e| generator.set(event_target_value(&e))>
                            <option value="">"default (SmolLM2-135M-Instruct)"</option>
                            {move || model_options(ModelKind::Generator).into_iter().map(|m| view! { <option value=m.clone()>{m.clone()}</option> }).collect_view()}
                        </select>
                    </label>
                    <HyperFields hyper=hyper preset=preset field_errors=field_errors />
                    <button type="button" class="primary" data-testid="start-run" on:click=start>"Start"</button>
                    {move || start_error.get().map(|m| view! { <p class="error" role="alert">{m}</p> })}
                </form>
                <div class="run-live" data-testid="run-live">
                    {move || match current() {
                        None => view! { <div class="empty-state"><p>"No run yet: choose a preset and press Start."</p></div> }.into_any(),
                        Some(run) => view! { <RunSummary run=run cancelling=cancelling on_action=Callback::new(move |(id, action)| act(id, action)) /> }.into_any(),
                    }}
                    {move || action_error.get().map(|m| view! { <p class="error" role="alert">{m}</p> })}
                    <Show when=move || selected.get().is_some()>
                        {move || {
                            let count = points.with(|p| loss_panels(p).len());
                            (0..count).map(|i| {
                                let panel = move || points.with(|p| loss_panels(p).into_iter().nth(i));
                                let (title, testid) = panel().map(|(t, id, _)| (t, id)).unwrap_or(("Loss", "loss-chart"));
                                // The first panel (the total loss) marks where the hard negatives were mined again.
                                let marks = Signal::derive(move || if i == 0 { points.with(|p| refresh_marks(p)) } else { Vec::new() });
                                view! { <LineChart title=title testid=testid series=Signal::derive(move || panel().map(|p| p.2).unwrap_or_default())
                                    marks=marks marks_label="hard negatives mined again" /> }
                            }).collect_view()
                        }}
                        <LineChart title="Learning rate" testid="lr-chart"
                            series=Signal::derive(move || points.with(|p| vec![Series { label: "learning rate", class: "s-lr", points: p.iter().map(|p| (f64::from(p.step), p.lr)).collect() }])) />
                        <ul class="log" aria-label="Run log">{move || logs.get().into_iter().rev().take(8).map(|l| view! { <li>{l}</li> }).collect_view()}</ul>
                    </Show>
                </div>
            </div>
            <h2>"Runs"</h2>
            <RunsTable runs=runs selected=selected />
        </section>
    }
}

/// Every setting of a run, each with its one-line help; a bad value is marked, not taken.
#[component]
fn HyperFields(
    hyper: RwSignal<Hyper>,
    preset: RwSignal<Option<String>>,
    field_errors: RwSignal<std::collections::BTreeMap<&'static str, String>>,
) -> impl IntoView {
    view! {
        <details class="hyper" open=false>
            <summary>"Settings"</summary>
            {fields().into_iter().map(|f| {
                let Field { key, label, help, get, set } = f;
                view! {
                    <label class="field" class:invalid=move || field_errors.with(|e| e.contains_key(key))>
                        <span class="field-label">{label}</span>
                        <input type="text" inputmode="decimal" name=key prop:value=move || hyper.with(get)
                            on:change=move |e| {
                                let text = event_target_value(&e);
                                let mut h = hyper.get_untracked();
                                match set(&mut h, &text) {
                                    Ok(()) => {
                                        hyper.set(h);
                                        preset.set(None);
                                        field_errors.update(|errors| { errors.remove(key); });
                                    }
                                    Err(message) => field_errors.update(|errors| { errors.insert(key, message); }),
                                }
                            } />
                        <span class="field-help">{help}</span>
                        <span class="field-error">{move || field_errors.with(|e| e.get(key).cloned())}</span>
                    </label>
                }
            }).collect_view()}
        </details>
    }
}

/// The selected run: status, progress, its figures, Cancel or Resume.
#[component]
fn RunSummary(run: Run, cancelling: RwSignal<Option<i64>>, on_action: Callback<(i64, RunAction)>) -> impl IntoView {
    let id = run.id;
    let live = matches!(run.status, JobStatus::Queued | JobStatus::Running);
    let resumable = matches!(run.status, JobStatus::Interrupted | JobStatus::Cancelled | JobStatus::Failed);
    let total = run.total_steps.max(1);
    let last = run.last;
    view! {
        <header class="run-head">
            <h2>{run.name.clone()}</h2>
            <span class=format!("badge status-{}", status_label(run.status)) data-testid="run-status">{status_label(run.status)}</span>
            <span class="muted">{format!("{} · {} + {}", mode_label(run.mode), run.retriever, run.generator)}</span>
        </header>
        <div class="progress" role="progressbar" aria-valuemin="0" aria-valuemax=total aria-valuenow=run.step>
            <div class="bar" style=format!("width: {:.1}%", 100.0 * f64::from(run.step) / f64::from(total))></div>
        </div>
        <dl class="run-figures">
            <div><dt>"Step"</dt><dd data-testid="run-step">{format!("{} / {}", run.step, run.total_steps)}</dd></div>
            <div><dt>"Epoch"</dt><dd>{last.map(|p| (p.epoch + 1).to_string()).unwrap_or("–".into())}</dd></div>
            <div><dt>"Loss"</dt><dd>{last.map(|p| format!("{:.4}", p.loss)).unwrap_or("–".into())}</dd></div>
            <div><dt>"Throughput"</dt><dd>{last.map(|p| format!("{:.0} tokens/s", p.tokens_per_second)).unwrap_or("–".into())}</dd></div>
            <div><dt>"ETA"</dt><dd>{if live { last.map(|p| duration_words(p.eta_seconds)).unwrap_or("–".into()) } else { "–".into() }}</dd></div>
            <div><dt>"Device"</dt><dd>{run.device.clone().unwrap_or("–".into())}</dd></div>
            <div><dt>"Held-out loss"</dt><dd>{run.eval_loss.map(|l| format!("{l:.4}")).unwrap_or("–".into())}</dd></div>
            <div><dt>"Examples"</dt><dd>{format!("{} train, {} held out", run.examples, run.held_out)}</dd></div>
        </dl>
        {run.error.clone().map(|e| view! { <p class="error">{e}</p> })}
        <div class="actions">
            {live.then(|| {
                let pressed = move || cancelling.get() == Some(id);
                view! {
                    <button type="button" class="danger" data-testid="cancel-run" disabled=pressed on:click=move |_| on_action.run((id, RunAction::Cancel))>
                        {move || if pressed() { "Cancelling… (after this step)" } else { "Cancel" }}
                    </button>
                }
            })}
            {resumable.then(|| view! { <button type="button" class="primary" data-testid="resume-run" on:click=move |_| on_action.run((id, RunAction::Resume))>"Resume"</button> })}
            {run.checkpoint.clone().map(|_| view! { <span class="muted">"a checkpoint is saved: Resume continues from it"</span> })}
        </div>
        {(run.status == JobStatus::Succeeded).then(|| view! { <RunExport id=id /> })}
    }
}

/// The export choices: `format[:quant]` and what each is for.
const EXPORT_CHOICES: [(&str, &str); 5] = [
    ("merged", "Merged Hugging Face folders (transformers, vLLM, sentence-transformers, TEI)"),
    ("gguf:f16", "GGUF, f16 (llama.cpp, Ollama)"),
    ("gguf:q8_0", "GGUF, q8_0 (half the size)"),
    ("gguf:q4_k", "GGUF, q4_k where the shapes allow"),
    ("peft", "LoRA adapters as they are (PEFT)"),
];

/// Writes a succeeded run's tuned models on the server, in the chosen format, and says where.
#[component]
fn RunExport(id: i64) -> impl IntoView {
    let api = Api::from_context();
    let choice = RwSignal::new(EXPORT_CHOICES[0].0.to_owned());
    let busy = RwSignal::new(false);
    let result = RwSignal::new(None::<Result<attune_shared::Export, String>>);
    let export = move |_| {
        busy.set(true);
        result.set(None);
        let picked = choice.get_untracked();
        let (format, quant) = match picked.split_once(':') {
            Some((format, quant)) => (format.to_owned(), Some(quant.to_owned())),
            None => (picked, None),
        };
        leptos::task::spawn_local(async move {
            let outcome = api.export_run(id, &attune_shared::NewExport { format, quant }).await;
            result.set(Some(outcome.map_err(|e| e.message)));
            busy.set(false);
        });
    };
    view! {
        <div class="run-export" data-testid="run-export">
            <label class="inline">"Export"
                <select aria-label="Export format" prop:value=move || choice.get() on:change=move |e| choice.set(event_target_value(&e))>
                    {EXPORT_CHOICES.into_iter().map(|(value, label)| view! { <option value=value>{label}</option> }).collect_view()}
                </select>
            </label>
            <button type="button" data-testid="export-run" disabled=move || busy.get() on:click=export>
                {move || if busy.get() { "Exporting… (merging the adapters)" } else { "Export" }}
            </button>
            {move || result.get().map(|outcome| match outcome {
                Ok(export) => {
                    let total: u64 = export.files.iter().map(|f| f.bytes).sum();
                    view! {
                        <p class="notice" data-testid="export-done">
                            {format!("Written on the server to {} ({} files, {}).", export.dir, export.files.len(), bytes_words(total))}
                        </p>
                    }.into_any()
                }
                Err(message) => view! { <p class="error" role="alert">{message}</p> }.into_any(),
            })}
        </div>
    }
}

/// Every run with its status and headline figures; a click selects one.
#[component]
fn RunsTable(runs: RwSignal<Option<Result<Vec<Run>, ApiError>>>, selected: RwSignal<Option<i64>>) -> impl IntoView {
    view! {
        {move || match runs.get() {
            None => view! { <p class="loading">"Loading runs…"</p> }.into_any(),
            Some(Err(e)) => view! { <p class="error">{e.message}</p> }.into_any(),
            Some(Ok(list)) if list.is_empty() => view! { <p class="muted">"No runs yet."</p> }.into_any(),
            Some(Ok(list)) => view! {
                <table class="runs-table" aria-label="Runs">
                    <thead><tr><th>"Run"</th><th>"Tunes"</th><th>"Status"</th><th>"Steps"</th><th>"Last loss"</th><th>"Held-out loss"</th><th>"Created"</th></tr></thead>
                    <tbody>
                        {list.into_iter().map(|run| {
                            let id = run.id;
                            view! {
                                <tr class:selected=move || selected.get() == Some(id) on:click=move |_| selected.set(Some(id)) tabindex="0">
                                    <td>{run.name.clone()}</td>
                                    <td>{mode_label(run.mode)}</td>
                                    <td><span class=format!("badge status-{}", status_label(run.status))>{status_label(run.status)}</span></td>
                                    <td>{format!("{} / {}", run.step, run.total_steps)}</td>
                                    <td>{run.last.map(|p| format!("{:.4}", p.loss)).unwrap_or_default()}</td>
                                    <td>{run.eval_loss.map(|l| format!("{l:.4}")).unwrap_or_default()}</td>
                                    <td class="muted">{run.created_at.get(..16).unwrap_or_default().replace('T', " ")}</td>
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                </table>
            }.into_any(),
        }}
    }
}

/// Whether the selected run is queued or running (then a newly started run does not steal focus).
fn selected_is_live(runs: RwSignal<Option<Result<Vec<Run>, ApiError>>>, selected: RwSignal<Option<i64>>) -> bool {
    let Some(id) = selected.get_untracked() else { return false };
    runs.with_untracked(|r| {
        r.as_ref()
            .and_then(|r| r.as_ref().ok())
            .and_then(|list| list.iter().find(|r| r.id == id))
            .is_some_and(|r| matches!(r.status, JobStatus::Running))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(step: u32, loss: f64) -> StepPoint {
        StepPoint { step, loss, ..StepPoint::default() }
    }

    #[test]
    fn points_merge_in_order_and_a_resume_replaces_redone_steps() {
        let mut points = vec![p(1, 3.0), p(2, 2.0)];
        merge_points(&mut points, &[p(3, 1.5), p(3, 1.4)]);
        assert_eq!(points.iter().map(|p| (p.step, p.loss)).collect::<Vec<_>>(), [(1, 3.0), (2, 2.0), (3, 1.4)]);
        // Resumed from step 1's checkpoint: step 2 again drops the old 2 and 3.
        merge_points(&mut points, &[p(2, 2.5)]);
        assert_eq!(points.iter().map(|p| p.step).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(points[1].loss, 2.5);
        // History arriving after a live point slots in before it.
        let mut live = vec![p(5, 1.0)];
        merge_points(&mut live, &[p(4, 1.1)]);
        assert_eq!(live.iter().map(|p| p.step).collect::<Vec<_>>(), [4, 5]);
    }

    #[test]
    fn every_field_round_trips_and_rejects_text() {
        let mut h = Hyper::default();
        for f in fields() {
            let text = (f.get)(&h);
            (f.set)(&mut h, &text).unwrap_or_else(|e| panic!("{}: {e}", f.key));
            if f.key != "max_steps" {
                assert!((f.set)(&mut h, "lots").is_err(), "{}", f.key);
            }
            assert!(!f.help.is_empty());
        }
        assert_eq!(h, Hyper::default());
        let max_steps = fields().into_iter().find(|f| f.key == "max_steps").unwrap();
        (max_steps.set)(&mut h, "12").unwrap();
        assert_eq!(h.max_steps, Some(12));
        (max_steps.set)(&mut h, "").unwrap();
        assert_eq!(h.max_steps, None);
        assert_eq!(fields().len(), 33, "one field per hyper-parameter");
    }

    #[test]
    fn refreshes_are_marked_after_the_step_before_them() {
        let refreshed = |step| StepPoint { step, refresh_seconds: Some(1.5), ..StepPoint::default() };
        let points = [p(1, 1.0), p(50, 0.9), refreshed(51), p(52, 0.8), refreshed(101)];
        assert_eq!(refresh_marks(&points), vec![50.0, 100.0]);
        assert!(refresh_marks(&[p(1, 1.0)]).is_empty());
    }

    #[test]
    fn loss_panels_split_only_when_both_parts_exist() {
        let both = [StepPoint {
            step: 1,
            loss: 51.0,
            retriever_loss: Some(1.0),
            generator_loss: Some(50.0),
            eval_loss: Some(52.0),
            ..StepPoint::default()
        }];
        let panels = loss_panels(&both);
        assert_eq!(
            panels.iter().map(|p| p.1).collect::<Vec<_>>(),
            ["loss-chart", "retriever-loss-chart", "generator-loss-chart"]
        );
        assert_eq!(panels[0].2[1].points, vec![(1.0, 52.0)], "held-out loss beside the training loss");
        let one = [StepPoint { step: 1, loss: 3.0, retriever_loss: Some(3.0), ..StepPoint::default() }];
        assert_eq!(loss_panels(&one).len(), 1);
    }
}
