//! `POST /api/v1/adapt`: the Documents page's "Adapt automatically" — questions from the
//! documents' passages (what passes the filters is approved), a training run on the approved
//! triples, an evaluation of base against tuned on the triples the run holds out. Each stage is
//! the ordinary job of its kind (it shows on the jobs panel and its page as any other); a driver
//! task on the runtime only waits for each to end and starts the next (it computes nothing).
//! A stop interrupts the job; `POST /adapt/:id/resume` resumes its stage's job and goes on.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use attune_shared::{
    ADAPT_MIN_TRIPLES, AdaptJob, AdaptRequest, AdaptStage, JobStatus, ModelKind, NewEval, NewRun, SynthRequest,
    TestSet, TripleOrigin, TripleStatus,
};

use super::AppState;
use super::error::{ApiJson, AppError};
use crate::engine::job::JobEvent;
use crate::model::catalog::{DEFAULT_GENERATOR_NAME, DEFAULT_RETRIEVER_NAME};
use crate::store::corpus::TripleFilter;
use crate::store::jobs::QueuedJob;

/// How often the driver looks at its stage's job.
const POLL: Duration = Duration::from_millis(500);

fn not_found(id: i64) -> AppError {
    AppError::NotFound(format!("there is no adapt job {id}"))
}

/// `count` of `ids`, spread evenly over them (all when `count` is at least their number).
fn spread(ids: Vec<i64>, count: usize) -> Vec<i64> {
    if count == 0 || count >= ids.len() {
        return ids;
    }
    (0..count).map(|i| ids[i * ids.len() / count]).collect()
}

pub async fn start(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<AdaptRequest>,
) -> Result<(StatusCode, Json<AdaptJob>), AppError> {
    attune_shared::adapt_hyper(request.max_steps)
        .validate()
        .map_err(|message| AppError::Invalid { code: "invalid_hyper_parameters", message })?;
    if request.limit == Some(0) {
        return Err(AppError::Invalid { code: "invalid_body", message: "limit must be at least 1 passage".into() });
    }
    if let Some(id) = request.document_id {
        state.store().document(id).await?.ok_or_else(|| AppError::NotFound(format!("there is no document {id}")))?;
    }
    let passages = state.store().passage_ids(request.document_id).await?;
    let passage_ids = spread(passages, request.limit.unwrap_or(0) as usize);
    // An empty list would mean "every passage" to synthesis: say there are none instead.
    if passage_ids.is_empty() {
        return Err(AppError::Invalid {
            code: "no_passages",
            message: "there are no passages to adapt to: upload documents first".into(),
        });
    }
    // The training run's models must be there before an hour of synthesis is spent.
    if request.mode.trains_retriever() || request.mode.trains_generator() {
        super::runs::check_model(&state, DEFAULT_RETRIEVER_NAME, ModelKind::Retriever)?;
        super::runs::check_model(&state, DEFAULT_GENERATOR_NAME, ModelKind::Generator)?;
    }
    let synth = super::corpus::begin_synth(
        &state,
        SynthRequest {
            document_id: request.document_id,
            passage_ids,
            questions_per_passage: request.questions_per_passage,
            llm: None,
            prompts: None,
            limit: None,
            filters: None,
            answers: None,
            judge: None,
            few_shot: false,
        },
    )
    .await?;
    let mut job = state.store().insert_adapt(&request).await?;
    job.synth_run = Some(synth.id);
    let job = state.store().save_adapt(&job).await?;
    state.publisher().publish_adapt(&job);
    drive(&state, job.id);
    Ok((StatusCode::ACCEPTED, Json(job)))
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<AdaptJob>>, AppError> {
    Ok(Json(state.store().adapt_jobs().await?))
}

pub async fn get(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<AdaptJob>, AppError> {
    state.store().adapt(id).await?.map(Json).ok_or_else(|| not_found(id))
}

/// `POST /adapt/:id/cancel`: the job is cancelled at once and so is its stage's job (a training run
/// at its next step, after a checkpoint).
pub async fn cancel(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<AdaptJob>, AppError> {
    let mut job = state.store().adapt(id).await?.ok_or_else(|| not_found(id))?;
    if !matches!(job.status, JobStatus::Queued | JobStatus::Running) {
        return Err(AppError::Conflict {
            code: "not_running",
            message: format!("adapt job {id} is {:?}: nothing to cancel", job.status),
            current: None,
        });
    }
    // Recorded first: the driver starts no further stage once it reads it.
    job.status = JobStatus::Cancelled;
    job.message = Some(format!("cancelled during {}", job.stage.as_str()));
    let job = state.store().save_adapt(&job).await?;
    state.publisher().publish_adapt(&job);
    cancel_stage_job(&state, &job).await?;
    Ok(Json(job))
}

/// Stops the job `job`'s stage started, whichever state it is in (one that ended is left alone).
async fn cancel_stage_job(state: &AppState, job: &AdaptJob) -> Result<(), AppError> {
    match job.stage {
        AdaptStage::Synthesis => {
            if let Some(id) = job.synth_run
                && let Some(flag) = state.jobs().lock().unwrap_or_else(|e| e.into_inner()).get(&id)
            {
                flag.store(true, Ordering::Relaxed);
            }
        }
        AdaptStage::Training => {
            if let Some(id) = job.run {
                match state.store().cancel_queued_run(id).await? {
                    Some(run) => state.publish(JobEvent::Run(Box::new(run))),
                    None => {
                        state.queue().cancel(QueuedJob::Run(id));
                    }
                }
            }
        }
        AdaptStage::Evaluation => {
            if let Some(id) = job.eval {
                match state.store().cancel_queued_eval(id).await? {
                    Some(eval) => state.publish(JobEvent::Eval(Box::new(eval))),
                    None => {
                        state.queue().cancel(QueuedJob::Eval(id));
                    }
                }
            }
        }
        AdaptStage::Done => {}
    }
    Ok(())
}

/// `POST /adapt/:id/resume`: an interrupted, cancelled or failed job goes on from its stage (a
/// synthesis run continues with the passages it had not done, a training run from its last
/// checkpoint, an evaluation starts again).
pub async fn resume(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<AdaptJob>), AppError> {
    let mut job = state.store().adapt(id).await?.ok_or_else(|| not_found(id))?;
    if !matches!(job.status, JobStatus::Interrupted | JobStatus::Cancelled | JobStatus::Failed)
        || job.stage == AdaptStage::Done
    {
        return Err(AppError::Conflict {
            code: "not_resumable",
            message: format!("adapt job {id} is {:?} at {}: nothing to resume", job.status, job.stage.as_str()),
            current: None,
        });
    }
    match job.stage {
        AdaptStage::Synthesis => {
            let run_id = job.synth_run.ok_or_else(|| stage_job_gone("synthesis run"))?;
            let run = state.store().synth_run(run_id).await?.ok_or_else(|| stage_job_gone("synthesis run"))?;
            if !matches!(run.status, JobStatus::Succeeded | JobStatus::Queued | JobStatus::Running) {
                super::corpus::spawn_synth(&state, run_id)?;
            }
        }
        AdaptStage::Training => {
            let run_id = job.run.ok_or_else(|| stage_job_gone("training run"))?;
            let run = state.store().run(run_id).await?.ok_or_else(|| stage_job_gone("training run"))?;
            if !matches!(run.status, JobStatus::Succeeded | JobStatus::Queued | JobStatus::Running) {
                super::runs::requeue_run(&state, run_id).await?;
            }
        }
        AdaptStage::Evaluation => {
            let eval = match job.eval {
                Some(id) => state.store().eval(id).await?,
                None => None,
            };
            if !eval.is_some_and(|e| matches!(e.status, JobStatus::Succeeded | JobStatus::Queued | JobStatus::Running))
            {
                // An evaluation has no checkpoint: it starts again.
                job.eval = None;
            }
        }
        AdaptStage::Done => {}
    }
    job.status = JobStatus::Running;
    job.message = None;
    let job = state.store().save_adapt(&job).await?;
    state.publisher().publish_adapt(&job);
    drive(&state, id);
    Ok((StatusCode::ACCEPTED, Json(job)))
}

fn stage_job_gone(what: &str) -> AppError {
    AppError::Conflict {
        code: "not_resumable",
        message: format!("its {what} was deleted: start a new adapt job"),
        current: None,
    }
}

/// Runs job `id`'s driver on the runtime until the job ends, is cancelled or the server stops.
fn drive(state: &AppState, id: i64) {
    let state = state.clone();
    tokio::spawn(async move {
        let shutdown = state.shutdown_token().clone();
        tokio::select! {
            () = shutdown.cancelled() => {}
            result = drive_until_done(&state, id) => {
                if let Err(error) = result {
                    tracing::error!(adapt = id, "adapt job failed: {error}");
                    if let Ok(Some(mut job)) = state.store().adapt(id).await {
                        job.status = JobStatus::Failed;
                        job.message = Some(error.to_string());
                        if let Ok(job) = state.store().save_adapt(&job).await {
                            state.publisher().publish_adapt(&job);
                        }
                    }
                }
            }
        }
    });
}

/// What a stage's job ending means for the adapt job.
enum Next {
    /// Still queued or running.
    Wait,
    /// It succeeded: go on.
    Advance,
    /// It ended otherwise: the adapt job ends with this status and message.
    End(JobStatus, String),
}

fn next(what: &str, status: JobStatus, error: Option<String>) -> Next {
    let why =
        |verb: &str| format!("the {what} {verb}{}", error.as_deref().map(|e| format!(": {e}")).unwrap_or_default());
    match status {
        JobStatus::Queued | JobStatus::Running => Next::Wait,
        JobStatus::Succeeded => Next::Advance,
        JobStatus::Cancelled => Next::End(JobStatus::Cancelled, why("was cancelled")),
        JobStatus::Failed => Next::End(JobStatus::Failed, why("failed")),
        JobStatus::Interrupted => Next::End(JobStatus::Interrupted, why("was interrupted")),
    }
}

async fn drive_until_done(state: &AppState, id: i64) -> Result<(), AppError> {
    loop {
        let Some(mut job) = state.store().adapt(id).await? else { return Ok(()) };
        if job.status != JobStatus::Running {
            return Ok(());
        }
        let step = match job.stage {
            AdaptStage::Synthesis => {
                let run_id = job.synth_run.ok_or_else(|| stage_job_gone("synthesis run"))?;
                let run = state.store().synth_run(run_id).await?.ok_or_else(|| stage_job_gone("synthesis run"))?;
                next("question generation", run.status, run.error)
            }
            AdaptStage::Training => {
                let run_id = job.run.ok_or_else(|| stage_job_gone("training run"))?;
                let run = state.store().run(run_id).await?.ok_or_else(|| stage_job_gone("training run"))?;
                next("training run", run.status, run.error)
            }
            AdaptStage::Evaluation => match job.eval {
                // Resumed with its evaluation to start again.
                None => Next::Advance,
                Some(eval_id) => {
                    let eval = state.store().eval(eval_id).await?.ok_or_else(|| stage_job_gone("evaluation"))?;
                    next("evaluation", eval.status, eval.error)
                }
            },
            AdaptStage::Done => return Ok(()),
        };
        match step {
            Next::Wait => {
                tokio::time::sleep(POLL).await;
                continue;
            }
            Next::End(status, message) => {
                job.status = status;
                job.message = Some(message);
            }
            Next::Advance => advance(state, &mut job).await?,
        }
        // A cancel that landed while this stage ended wins: its stage job is stopped too.
        let now = state.store().adapt(id).await?.ok_or_else(|| not_found(id))?;
        if now.status != JobStatus::Running {
            job.status = now.status;
            job.message = now.message;
            state.store().save_adapt(&job).await?;
            cancel_stage_job(state, &job).await?;
            return Ok(());
        }
        let job = state.store().save_adapt(&job).await?;
        state.publisher().publish_adapt(&job);
    }
}

/// Starts the stage after `job`'s (whose job succeeded).
async fn advance(state: &AppState, job: &mut AdaptJob) -> Result<(), AppError> {
    match job.stage {
        AdaptStage::Synthesis => {
            // What passed the filters is approved: review is optional here.
            let pending = TripleFilter {
                status: Some(TripleStatus::Pending),
                origin: Some(TripleOrigin::Synthetic),
                synth_run: job.synth_run,
                ..TripleFilter::default()
            };
            let ids = state.store().triple_ids(&pending).await?;
            state.store().set_status(&ids, TripleStatus::Approved).await?;
            let approved = state.store().all_triples(&[TripleStatus::Approved]).await?.len();
            job.approved = Some(approved as u64);
            if approved < ADAPT_MIN_TRIPLES {
                job.status = JobStatus::Failed;
                job.message = Some(format!(
                    "{approved} approved triples (this run kept {}): at least {ADAPT_MIN_TRIPLES} are needed to \
                     train; add documents, ask about more passages or more questions per passage",
                    ids.len()
                ));
                return Ok(());
            }
            let run = super::runs::queue_training(
                state,
                NewRun {
                    name: Some(format!("adapt-{}", job.id)),
                    mode: job.request.mode,
                    retriever: None,
                    generator: None,
                    preset: Some("adapt automatically".into()),
                    // The defaults choose epochs for at least `min_steps` steps on a small set
                    // and stop early on the held-out loss, keeping the best adapters; in
                    // retriever mode inverse cloze pairs from the documents join the triples.
                    hyper: attune_shared::adapt_hyper(job.request.max_steps),
                },
            )
            .await?;
            job.run = Some(run.id);
            job.stage = AdaptStage::Training;
        }
        // The evaluation succeeded.
        AdaptStage::Evaluation if job.eval.is_some() => {
            job.stage = AdaptStage::Done;
            job.status = JobStatus::Succeeded;
        }
        // Training succeeded, or a resumed job's evaluation starts again.
        AdaptStage::Training | AdaptStage::Evaluation => {
            let run = job.run.ok_or_else(|| stage_job_gone("training run"))?;
            let request = NewEval {
                runs: vec![run],
                test_set: TestSet::HeldOut,
                answers: job.request.answers,
                max_questions: None,
            };
            match super::runs::queue_evaluation(state, request).await {
                Ok(eval) => {
                    job.eval = Some(eval.id);
                    job.stage = AdaptStage::Evaluation;
                }
                Err(AppError::Invalid { code: "empty_test_set", .. }) => {
                    job.stage = AdaptStage::Done;
                    job.status = JobStatus::Succeeded;
                    job.message = Some(
                        "trained; the run held out no triples to evaluate on (too few): upload questions on the \
                         Evaluate page to compare base and tuned"
                            .into(),
                    );
                }
                Err(error) => return Err(error),
            }
        }
        AdaptStage::Done => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_spreads_over_the_passages() {
        let ids: Vec<i64> = (10..20).collect();
        assert_eq!(spread(ids.clone(), 3), [10, 13, 16]);
        assert_eq!(spread(ids.clone(), 0), ids);
        assert_eq!(spread(ids.clone(), 50), ids);
    }

    #[test]
    fn a_stage_job_that_did_not_succeed_ends_the_adapt_job_saying_why() {
        assert!(matches!(next("training run", JobStatus::Running, None), Next::Wait));
        assert!(matches!(next("training run", JobStatus::Succeeded, None), Next::Advance));
        let Next::End(status, message) = next("training run", JobStatus::Failed, Some("out of memory".into())) else {
            panic!("a failed stage ends the job")
        };
        assert_eq!(status, JobStatus::Failed);
        assert_eq!(message, "the training run failed: out of memory");
    }
}
