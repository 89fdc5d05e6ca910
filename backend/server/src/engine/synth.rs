//! Running a synthesis run: its pending passages one by one through `synth::synthesize`, each
//! passage's kept triples, done mark and report stored in one transaction (so a stopped run
//! resumes where it was), a cancel flag checked between passages, progress after each.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use attune_shared::{JobStatus, SynthRun, TripleOrigin};
use tokio::runtime::Handle;

use super::EngineError;
use crate::store::Store;
use crate::store::corpus::NewTripleRow;
use crate::synth::{FilterSettings, Llm, synthesize};

/// Everything a run needs. `run` blocks: call it on a thread of its own (never a tokio worker).
pub struct SynthJob {
    pub run_id: i64,
    pub store: Store,
    pub llm: Box<dyn Llm>,
    pub filters: FilterSettings,
    pub cancel: Arc<AtomicBool>,
    /// The async runtime the store lives on.
    pub runtime: Handle,
}

impl SynthJob {
    /// Runs the run's pending passages; `progress` gets the run after each passage (and at the
    /// start and end) with an ETA in seconds while it runs.
    pub fn run(self, mut progress: impl FnMut(&SynthRun, Option<f64>)) -> Result<SynthRun, EngineError> {
        let store = &self.store;
        let mut run = self
            .runtime
            .block_on(store.synth_run(self.run_id))?
            .ok_or(EngineError::Invalid("no such synthesis run".into()))?;
        self.runtime.block_on(store.set_synth_status(run.id, JobStatus::Running, None))?;
        run.status = JobStatus::Running;
        // Passages that failed before are pending again: they are counted afresh.
        run.report.failed_passages = 0;
        progress(&run, None);
        let pending = self.runtime.block_on(store.pending_synth_passages(run.id))?;
        let prompt_record = serde_json::to_string(&run.prompts).unwrap_or_default();
        let started = Instant::now();
        let seconds_before = run.report.seconds;
        let mut last_error = None;
        for (i, passage) in pending.iter().enumerate() {
            if self.cancel.load(Ordering::Relaxed) {
                self.runtime.block_on(store.set_synth_status(run.id, JobStatus::Cancelled, None))?;
                run.status = JobStatus::Cancelled;
                progress(&run, None);
                return Ok(run);
            }
            let known = self.runtime.block_on(store.questions_of_passage(passage.id))?;
            match synthesize(
                self.llm.as_ref(),
                &run.prompts,
                &passage.text,
                run.questions_per_passage,
                &known,
                &self.filters,
            ) {
                Ok(out) => {
                    let rows: Vec<NewTripleRow> = out
                        .kept
                        .iter()
                        .map(|(question, answer)| NewTripleRow {
                            question: question.clone(),
                            answer: answer.clone(),
                            passage: passage.text.clone(),
                            passage_id: Some(passage.id),
                            document_id: Some(passage.document_id),
                            origin: TripleOrigin::Synthetic,
                            model: Some(run.model.clone()),
                            prompt: Some(prompt_record.clone()),
                            synth_run_id: Some(run.id),
                        })
                        .collect();
                    let report = &mut run.report;
                    report.passages_done += 1;
                    report.questions_seen += out.questions_seen;
                    report.kept += out.kept.len() as u64;
                    let f = &mut report.filtered;
                    let g = out.filtered;
                    f.empty += g.empty;
                    f.duplicate += g.duplicate;
                    f.not_a_question += g.not_a_question;
                    f.copies_passage += g.copies_passage;
                    f.ungrounded += g.ungrounded;
                    f.answer_too_long += g.answer_too_long;
                    report.seconds = seconds_before + started.elapsed().as_secs_f64();
                    self.runtime.block_on(store.finish_synth_passage(run.id, passage.id, &rows, &run.report))?;
                }
                Err(error) => {
                    // Not marked done: a resumed run tries the passage again.
                    tracing::warn!(passage = passage.id, "synthesis failed: {error}");
                    run.report.failed_passages += 1;
                    last_error = Some(error.to_string());
                }
            }
            let done = i + 1;
            let per_passage = started.elapsed().as_secs_f64() / done as f64;
            progress(&run, Some(per_passage * (pending.len() - done) as f64));
        }
        let (status, error) = match last_error {
            Some(error) if run.report.kept == 0 => (JobStatus::Failed, Some(error)),
            Some(error) => (JobStatus::Succeeded, Some(format!("some passages failed; the last error: {error}"))),
            None => (JobStatus::Succeeded, None),
        };
        self.runtime.block_on(store.save_synth_report(run.id, &run.report))?;
        self.runtime.block_on(store.set_synth_status(run.id, status, error.as_deref()))?;
        run.status = status;
        run.error = error;
        progress(&run, None);
        Ok(run)
    }
}
