//! The Evaluate page: pick up to two finished runs and a test set (their held-out triples, or an
//! uploaded QA file), watch the evaluation's progress, then read base against tuned (hit@k, MRR,
//! nDCG, EM, F1, with the differences coloured) and drill into each question: the retrieved
//! passages with the gold one marked, and the generated answers beside the gold one.

use leptos::prelude::*;

use attune_shared::{
    Eval, EvalItem, EvalReport, JobStatus, MethodScores, NewEval, Run, ServerMessage, TestSet, TestSetInfo,
};

use crate::api::{Api, ApiError};
use crate::format::status_label;
use crate::link::{Link, take};

/// Rows of the metrics table: (label, key in `retrieval`, or `em`/`f1`).
pub const ROWS: [(&str, &str); 8] = [
    ("hit@1", "hit@1"),
    ("hit@3", "hit@3"),
    ("hit@5", "hit@5"),
    ("hit@10", "hit@10"),
    ("MRR@10", "mrr@10"),
    ("nDCG@10", "ndcg@10"),
    ("Exact match", "em"),
    ("F1", "f1"),
];

/// A system's value of a row's metric.
pub fn metric(report: &EvalReport, system: usize, key: &str) -> Option<f64> {
    let s = report.systems.get(system)?;
    match key {
        "em" => s.exact_match,
        "f1" => s.f1,
        _ => s.retrieval.get(key).copied(),
    }
}

/// Columns of the search-methods table (retrieval metrics only).
pub const METHOD_COLUMNS: [(&str, &str); 5] =
    [("hit@1", "hit@1"), ("hit@5", "hit@5"), ("hit@10", "hit@10"), ("MRR@10", "mrr@10"), ("nDCG@10", "ndcg@10")];

/// A row of the search-methods table: the system and how it searched (BM25 needs no system).
pub fn method_row_label(row: &MethodScores) -> String {
    let method = crate::chat::retrieval_label(row.method);
    match row.system.is_empty() {
        true => method.to_owned(),
        false => format!("{}, {method}", row.system),
    }
}

/// The row with the highest value of `key` (the first of equals), to mark it.
pub fn best_method(rows: &[MethodScores], key: &str) -> Option<usize> {
    let values = rows.iter().enumerate().filter_map(|(i, r)| Some((i, *r.retrieval.get(key)?)));
    values
        .fold(None, |best: Option<(usize, f64)>, (i, v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

/// A system's 95% interval of a row's metric (`em`, `f1` for the answers').
pub fn interval(report: &EvalReport, system: usize, key: &str) -> Option<[f64; 2]> {
    report.systems.get(system)?.intervals.get(key).copied().filter(|[lo, hi]| lo.is_finite() && hi.is_finite())
}

/// A generated answer cut at the token limit ends at its last full sentence (with "…"), not
/// mid-word; one without a sentence end is shown whole.
pub fn whole_sentences(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() || text.ends_with(['.', '!', '?', '"', ')']) {
        return text.to_owned();
    }
    match text.rfind(['.', '!', '?']) {
        Some(end) if end > 0 => format!("{} …", &text[..=end]),
        _ => format!("{text} …"),
    }
}

/// "+0.125", "−0.050", "±0" for a tuned − base difference.
pub fn delta_words(delta: f64) -> String {
    if delta.abs() < 5e-4 {
        "±0".into()
    } else if delta > 0.0 {
        format!("+{delta:.3}")
    } else {
        format!("−{:.3}", -delta)
    }
}

/// How tuning changed a question for system `tuned` against the base (system 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Helped,
    Hurt,
    Same,
}

/// Better retrieval (the gold passage ranked higher) or, at equal rank, a better answer (F1).
pub fn change(item: &EvalItem, tuned: usize) -> Change {
    let (Some(base), Some(other)) = (item.systems.first(), item.systems.get(tuned)) else { return Change::Same };
    let rank = |r: Option<u32>| r.unwrap_or(u32::MAX);
    match rank(other.gold_rank).cmp(&rank(base.gold_rank)) {
        std::cmp::Ordering::Less => Change::Helped,
        std::cmp::Ordering::Greater => Change::Hurt,
        std::cmp::Ordering::Equal => match (base.f1, other.f1) {
            (Some(b), Some(t)) if t > b + 1e-9 => Change::Helped,
            (Some(b), Some(t)) if t + 1e-9 < b => Change::Hurt,
            _ => Change::Same,
        },
    }
}

#[component]
pub fn EvaluatePage() -> impl IntoView {
    let api = Api::from_context();
    let params = leptos_router::hooks::use_params_map();
    let navigate = StoredValue::new_local(leptos_router::hooks::use_navigate());
    let go = move |path: String| navigate.with_value(|n| n(&path, Default::default()));
    let link = use_context::<Link>();
    let runs = RwSignal::new(Vec::<Run>::new());
    let chosen = RwSignal::new(Vec::<i64>::new());
    let use_file = RwSignal::new(false);
    let test_set = RwSignal::new(None::<TestSetInfo>);
    let answers = RwSignal::new(true);
    let max_questions = RwSignal::new(String::new());
    let evals = RwSignal::new(None::<Result<Vec<Eval>, ApiError>>);
    let shown = RwSignal::new(None::<Eval>);
    let error = RwSignal::new(None::<String>);
    let filter = RwSignal::new("all");
    let reload = RwSignal::new(0u32);
    {
        Effect::new(move |_| {
            reload.track();
            leptos::task::spawn_local(async move {
                if let Ok(list) = api.runs().await {
                    let finished: Vec<Run> = list.into_iter().filter(|r| r.status == JobStatus::Succeeded).collect();
                    if chosen.with_untracked(Vec::is_empty)
                        && let Some(latest) = finished.first()
                    {
                        chosen.set(vec![latest.id]);
                    }
                    runs.set(finished);
                }
                let list = api.evals().await;
                evals.set(Some(list));
            });
        });
    }
    let fetch_shown = move |id: i64| {
        leptos::task::spawn_local(async move {
            match api.eval(id).await {
                Ok(eval) => shown.set(Some(eval)),
                Err(e) => error.set(Some(e.message)),
            }
        });
    };
    // Each evaluation has its own address: /evaluate/ID shows it.
    Effect::new(move |_| {
        let wanted = params.with(|p| p.get("id").and_then(|id| id.parse::<i64>().ok()));
        match wanted {
            Some(id) if shown.with_untracked(|s| s.as_ref().is_none_or(|s| s.id != id)) => fetch_shown(id),
            None if params.with(|p| p.get("id").is_some()) => {
                error.set(Some("That is not an evaluation's address.".into()))
            }
            _ => {}
        }
    });
    let open = move |id: i64| go(format!("/evaluate/{id}"));
    if let Some(link) = link {
        Effect::new(move |_| {
            for message in take(link.jobs) {
                if let ServerMessage::EvalState { eval } = message {
                    let id = eval.id;
                    let finished = eval.status == JobStatus::Succeeded;
                    evals.update(|list| {
                        if let Some(Ok(list)) = list {
                            match list.iter_mut().find(|e| e.id == id) {
                                Some(slot) => *slot = (*eval).clone(),
                                None => list.insert(0, (*eval).clone()),
                            }
                        }
                    });
                    if shown.with_untracked(|s| s.as_ref().is_some_and(|s| s.id == id)) {
                        if finished {
                            fetch_shown(id);
                        } else {
                            shown.set(Some(*eval));
                        }
                    }
                }
            }
        });
    }
    let upload = {
        move |e: web_sys::Event| {
            use wasm_bindgen::JsCast;
            let Some(input) = e.target().and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok()) else { return };
            let Some(file) = input.files().and_then(|f| f.get(0)) else { return };
            error.set(None);
            leptos::task::spawn_local(async move {
                match api.upload_test_set(&file).await {
                    Ok(info) => test_set.set(Some(info)),
                    Err(e) => error.set(Some(e.message)),
                }
            });
        }
    };
    let start = {
        move |_| {
            let set = if use_file.get_untracked() {
                match test_set.get_untracked() {
                    Some(info) => TestSet::Uploaded { id: info.id },
                    None => {
                        error.set(Some("Upload a test file first.".into()));
                        return;
                    }
                }
            } else {
                TestSet::HeldOut
            };
            let max = max_questions.get_untracked();
            let max_questions = match max.trim() {
                "" => None,
                text => match text.parse() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        error.set(Some(format!("{text:?} is not a number of questions")));
                        return;
                    }
                },
            };
            let request = NewEval {
                runs: chosen.get_untracked(),
                test_set: set,
                answers: answers.get_untracked(),
                max_questions,
            };
            error.set(None);
            leptos::task::spawn_local(async move {
                match api.start_eval(&request).await {
                    Ok(eval) => {
                        // The WebSocket may have told of it first.
                        evals.update(|list| {
                            if let Some(Ok(list)) = list
                                && !list.iter().any(|e| e.id == eval.id)
                            {
                                list.insert(0, eval.clone());
                            }
                        });
                        if shown.with_untracked(|s| {
                            s.as_ref().is_none_or(|s| s.id != eval.id || s.status == JobStatus::Queued)
                        }) {
                            let id = eval.id;
                            shown.set(Some(eval));
                            go(format!("/evaluate/{id}"));
                        }
                    }
                    Err(e) => error.set(Some(e.message)),
                }
            });
        }
    };
    let toggle = move |id: i64, on: bool| {
        chosen.update(|c| {
            c.retain(|x| *x != id);
            if on {
                c.push(id);
                if c.len() > 2 {
                    c.remove(0);
                }
            }
        })
    };

    view! {
        <section class="page evaluate">
            <h1>"Evaluate"</h1>
            <p class="lead">"How much better is the tuned system? Measured on questions it never trained on."</p>
            <form class="eval-form" aria-label="New evaluation" on:submit=|e: web_sys::SubmitEvent| e.prevent_default()>
                <fieldset>
                    <legend>"Runs to compare with the base models (up to two)"</legend>
                    {move || {
                        let list = runs.get();
                        if list.is_empty() {
                            return view! { <p class="muted">"No finished runs yet: train one first, or evaluate the base models on a file."</p> }.into_any();
                        }
                        list.into_iter().map(|run| {
                            let id = run.id;
                            view! {
                                <label class="inline">
                                    <input type="checkbox" prop:checked=move || chosen.with(|c| c.contains(&id))
                                        on:change=move |e| toggle(id, event_target_checked(&e)) />
                                    {format!("{} ({} held out)", run.name, run.held_out)}
                                </label>
                            }
                        }).collect_view().into_any()
                    }}
                </fieldset>
                <fieldset>
                    <legend>"Questions"</legend>
                    <label class="inline"><input type="radio" name="testset" prop:checked=move || !use_file.get() on:change=move |_| use_file.set(false) />"held-out approved triples of the first run"</label>
                    <label class="inline"><input type="radio" name="testset" prop:checked=move || use_file.get() on:change=move |_| use_file.set(true) />"a QA file (.jsonl of question, passage, answer; or .csv)"</label>
                    <Show when=move || use_file.get()>
                        <input type="file" accept=".jsonl,.json,.csv" aria-label="Test file" on:change=upload />
                        {move || test_set.get().map(|t| view! { <span class="muted">{format!("{}: {} questions, {} new passages", t.name, t.questions, t.passages)}</span> })}
                    </Show>
                </fieldset>
                <label class="inline"><input type="checkbox" prop:checked=move || answers.get() on:change=move |e| answers.set(event_target_checked(&e)) />"also generate answers (EM, F1; slower)"</label>
                <label class="inline">"at most " <input type="text" inputmode="numeric" size="5" placeholder="all" prop:value=move || max_questions.get() on:input=move |e| max_questions.set(event_target_value(&e)) /> " questions"</label>
                <button type="button" class="primary" data-testid="start-eval" on:click=start>"Evaluate"</button>
                {move || error.get().map(|m| view! { <p class="error" role="alert">{m}</p> })}
            </form>
            {move || shown.get().map(|eval| view! { <EvalView eval=eval filter=filter /> })}
            <h2>"Evaluations"</h2>
            {move || match evals.get() {
                None => view! { <p class="loading">"Loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="error">{e.message}</p> }.into_any(),
                Some(Ok(list)) if list.is_empty() => view! { <p class="muted">"None yet."</p> }.into_any(),
                Some(Ok(list)) => view! {
                    <ul class="eval-list">
                        {list.into_iter().map(|e| {
                            let id = e.id;
                            let what = match &e.request.test_set { TestSet::HeldOut => "held-out triples".to_string(), TestSet::Uploaded { id } => format!("test set {id}") };
                            view! {
                                <li>
                                    <button type="button" class="link-button" on:click=move |_| open(id)>
                                        {format!("#{} · runs {:?} · {what}", e.id, e.request.runs)}
                                    </button>
                                    " "<span class=format!("badge status-{}", status_label(e.status))>{status_label(e.status)}</span>
                                </li>
                            }
                        }).collect_view()}
                    </ul>
                }.into_any(),
            }}
        </section>
    }
}

#[component]
fn EvalView(eval: Eval, filter: RwSignal<&'static str>) -> impl IntoView {
    let Some(report) = eval.report.clone() else {
        let progress = match (eval.status, eval.total) {
            (JobStatus::Queued, _) => "Waiting for the job before it…".to_string(),
            (JobStatus::Running, total) if total > 0 => {
                format!("{}: {} / {}", eval.phase.clone().unwrap_or_default(), eval.done, total)
            }
            (JobStatus::Running, _) => eval.phase.clone().unwrap_or("starting…".into()),
            (status, _) => {
                format!("{}{}", status_label(status), eval.error.clone().map(|e| format!(": {e}")).unwrap_or_default())
            }
        };
        return view! {
            <div class="eval-progress" data-testid="eval-progress">
                <h2>{format!("Evaluation #{}", eval.id)}</h2>
                <p aria-live="polite">{progress}</p>
                {(eval.total > 0).then(|| view! {
                    <div class="progress"><div class="bar" style=format!("width: {:.1}%", 100.0 * eval.done as f64 / eval.total.max(1) as f64)></div></div>
                })}
            </div>
        }
        .into_any();
    };
    let systems = report.systems.clone();
    let tuned = systems.len().saturating_sub(1).max(1);
    let compared = systems.len() > 1;
    let table_report = report.clone();
    let items = report.items.clone();
    let methods = report.methods.clone();
    view! {
        <div class="eval-report" data-testid="eval-report">
            <h2>{format!("Evaluation #{}: {} questions, {} passages searched", eval.id, report.questions, report.corpus)}</h2>
            <p class="muted" data-testid="eval-note">{format!(
                "Each figure is the mean over the {} questions; the range under it is its 95% bootstrap interval. {}",
                report.questions,
                if report.questions < 30 { "With this few questions the intervals are wide: differences inside them are noise." } else { "Differences inside the intervals may be noise." }
            )}</p>
            <table class="metrics-table" aria-label="Metrics" data-testid="metrics-table">
                <thead>
                    <tr>
                        <th scope="col">"Metric"</th>
                        {systems.iter().map(|s| view! { <th scope="col">{s.label.clone()}</th> }).collect_view()}
                        {systems.iter().skip(1).map(|s| view! { <th scope="col">{format!("Δ {}", s.label)}</th> }).collect_view()}
                    </tr>
                </thead>
                <tbody>
                    {ROWS.iter().filter(|(_, key)| metric(&table_report, 0, key).is_some()).map(|(label, key)| {
                        let values: Vec<Option<f64>> = (0..systems.len()).map(|i| metric(&table_report, i, key)).collect();
                        let base = values[0];
                        view! {
                            <tr>
                                <th scope="row">{*label}</th>
                                {values.iter().enumerate().map(|(i, v)| {
                                    let range = interval(&table_report, i, key);
                                    view! { <td>{v.map(|v| format!("{v:.3}")).unwrap_or("–".into())}
                                        {range.map(|[lo, hi]| view! { <span class="interval" data-testid="interval">{format!("{lo:.3}–{hi:.3}")}</span> })}</td> }
                                }).collect_view()}
                                {values.iter().skip(1).map(|v| {
                                    let delta = v.zip(base).map(|(t, b)| t - b);
                                    let class = match delta { Some(d) if d > 5e-4 => "delta up", Some(d) if d < -5e-4 => "delta down", _ => "delta" };
                                    view! { <td class=class>{delta.map(delta_words).unwrap_or_default()}</td> }
                                }).collect_view()}
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
            {(!methods.is_empty()).then(|| view! {
                <h3>"Search methods"</h3>
                <p class="muted">"The same questions ranked by each retriever's embeddings (dense), by words shared with the question (BM25), and by both fused (hybrid, as the Chat page searches by default). The best value of each column is bold."</p>
                <table class="metrics-table" aria-label="Search methods" data-testid="methods-table">
                    <thead>
                        <tr>
                            <th scope="col">"System, search"</th>
                            {METHOD_COLUMNS.iter().map(|(label, _)| view! { <th scope="col">{*label}</th> }).collect_view()}
                        </tr>
                    </thead>
                    <tbody>
                        {methods.iter().enumerate().map(|(i, row)| view! {
                            <tr>
                                <th scope="row">{method_row_label(row)}</th>
                                {METHOD_COLUMNS.iter().map(|(_, key)| {
                                    let best = best_method(&methods, key) == Some(i);
                                    view! { <td class:best=best>{row.retrieval.get(*key).map(|v| format!("{v:.3}")).unwrap_or("–".into())}</td> }
                                }).collect_view()}
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table>
            })}
            <h3>"Questions"</h3>
            {compared.then(|| view! {
                <div class="status-tabs" role="group" aria-label="Show">
                    {[("all", "all"), ("helped", "tuning helped"), ("hurt", "tuning hurt")].into_iter().map(|(key, label)| view! {
                        <button type="button" class="tab" class:active=move || filter.get() == key on:click=move |_| filter.set(key)>{label}</button>
                    }).collect_view()}
                </div>
            })}
            <ol class="eval-items">
                {move || {
                    let wanted = filter.get();
                    items.iter().filter(|item| match wanted {
                        "helped" => change(item, tuned) == Change::Helped,
                        "hurt" => change(item, tuned) == Change::Hurt,
                        _ => true,
                    }).map(|item| {
                        let verdict = if compared { match change(item, tuned) { Change::Helped => "helped", Change::Hurt => "hurt", Change::Same => "same" } } else { "same" };
                        view! {
                            <li class=format!("eval-item {verdict}")>
                                <details>
                                    <summary>
                                        <span class="question">{item.question.clone()}</span>
                                        {item.systems.iter().zip(&systems).map(|(a, s)| view! {
                                            <span class="rank" title="where the passage the question was written from came in the search (1 is first)">
                                                {format!("{}: {}", s.label, a.gold_rank.map(|r| format!("gold passage at #{r}")).unwrap_or("gold passage not in the top 10".into()))}
                                            </span>
                                        }).collect_view()}
                                    </summary>
                                    <p class="gold-answer"><strong>"Gold answer: "</strong>{item.answer.clone()}</p>
                                    <div class="systems">
                                        {item.systems.iter().zip(&systems).map(|(a, s)| view! {
                                            <div class="system">
                                                <h4>{s.label.clone()}</h4>
                                                {a.prediction.clone().map(|p| view! {
                                                    <p class="prediction"><strong>"Answer: "</strong>{whole_sentences(&p)}
                                                        {a.f1.map(|f| view! { <span class="muted">{format!(" (F1 {f:.2})")}</span> })}</p>
                                                })}
                                                <p class="muted">{match a.gold_rank {
                                                    Some(r) => format!("The gold passage (the one the question was written from) came #{r}; it is marked below."),
                                                    None => "The gold passage (the one the question was written from) was not among the top 10.".to_owned(),
                                                }}</p>
                                                <ol class="retrieved">
                                                    {a.retrieved.iter().map(|r| {
                                                        let text: String = r.text.chars().take(400).collect();
                                                        let cut = r.text.chars().count() > 400;
                                                        view! {
                                                            <li class:gold=r.gold data-gold=r.gold.to_string()>{r.gold.then(|| view! { <span class="badge gold">"gold passage"</span> })}{text}{cut.then_some(" …")}</li>
                                                        }
                                                    }).collect_view()}
                                                </ol>
                                            </div>
                                        }).collect_view()}
                                    </div>
                                </details>
                            </li>
                        }
                    }).collect_view()
                }}
            </ol>
        </div>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_shared::{Retrieved, SystemAnswer, SystemScores};

    fn answer(rank: Option<u32>, f1: Option<f64>) -> SystemAnswer {
        SystemAnswer {
            retrieved: vec![Retrieved { text: "p".into(), gold: rank == Some(1) }],
            gold_rank: rank,
            prediction: None,
            f1,
        }
    }

    #[test]
    fn a_question_is_helped_by_a_better_rank_then_by_a_better_answer() {
        let item = |base, tuned| EvalItem { question: "q".into(), answer: "a".into(), systems: vec![base, tuned] };
        assert_eq!(change(&item(answer(Some(3), None), answer(Some(1), None)), 1), Change::Helped);
        assert_eq!(change(&item(answer(Some(1), None), answer(None, None)), 1), Change::Hurt);
        assert_eq!(change(&item(answer(None, Some(0.2)), answer(None, Some(0.5))), 1), Change::Helped);
        assert_eq!(change(&item(answer(Some(2), Some(0.5)), answer(Some(2), Some(0.5))), 1), Change::Same);
    }

    #[test]
    fn metrics_read_retrieval_and_answers_and_deltas_are_signed() {
        let report = EvalReport {
            questions: 1,
            corpus: 1,
            systems: vec![SystemScores {
                label: "base".into(),
                run_id: None,
                retrieval: [("hit@1".to_string(), 0.5)].into(),
                exact_match: Some(0.25),
                f1: None,
                intervals: [("hit@1".to_string(), [0.25, 0.75])].into(),
            }],
            items: vec![],
            methods: vec![],
        };
        assert_eq!(metric(&report, 0, "hit@1"), Some(0.5));
        assert_eq!(metric(&report, 0, "em"), Some(0.25));
        assert_eq!(metric(&report, 0, "f1"), None);
        assert_eq!(metric(&report, 1, "hit@1"), None);
        assert_eq!(interval(&report, 0, "hit@1"), Some([0.25, 0.75]));
        assert_eq!(interval(&report, 0, "f1"), None);
        assert_eq!(whole_sentences("It is 57. And then the"), "It is 57. …");
        assert_eq!(whole_sentences("Yes."), "Yes.");
        assert_eq!(whole_sentences("the Cox model"), "the Cox model …");
        assert_eq!(delta_words(0.125), "+0.125");
        assert_eq!(delta_words(-0.05), "−0.050");
        assert_eq!(delta_words(0.0001), "±0");
    }

    #[test]
    fn search_methods_are_named_and_the_best_of_each_column_is_found() {
        use attune_shared::RetrievalMethod;
        let row = |system: &str, method, hit1: f64| MethodScores {
            system: system.into(),
            method,
            retrieval: [("hit@1".to_string(), hit1)].into(),
        };
        let rows = vec![
            row("", RetrievalMethod::Bm25, 0.9),
            row("base", RetrievalMethod::Dense, 0.8),
            row("base", RetrievalMethod::Hybrid, 0.95),
            row("tuned", RetrievalMethod::Hybrid, 0.95),
        ];
        assert_eq!(method_row_label(&rows[0]), "BM25");
        assert_eq!(method_row_label(&rows[2]), "base, hybrid (dense + BM25)");
        assert_eq!(best_method(&rows, "hit@1"), Some(2), "the first of equals");
        assert_eq!(best_method(&rows, "mrr@10"), None, "no row has it");
    }
}
