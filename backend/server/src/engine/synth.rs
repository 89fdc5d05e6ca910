//! Running a synthesis run: its pending passages through `synth::synthesize_batch`, as many per
//! call as the LLM takes (16 on the local model, 1 on a server), each passage's kept triples, done
//! mark and report stored in one transaction (so a stopped run resumes where it was), a cancel flag
//! checked between calls, progress after each passage. When the filters look at the corpus, the
//! base retriever embeds every passage once at the start (and the questions stored before, for
//! near-duplicates).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use attune_shared::{JobStatus, JudgeScores, JudgeSettings, LlmChoice, SynthRun, TripleOrigin};
use tokio::runtime::Handle;

use super::EngineError;
use crate::model::retriever::Retriever;
use crate::store::Store;
use crate::store::corpus::NewTripleRow;
use crate::synth::{Asking, CorpusChecks, FilterSettings, Llm, PassageInput, synthesize_batch};

/// Synthesis runs take turns per LLM — one at a time on the local model, one at a time per
/// server — in the order they were started; the others wait, queued, on their own threads.
#[derive(Debug, Default)]
pub struct SynthLanes {
    lanes: Mutex<HashMap<String, VecDeque<i64>>>,
    changed: Condvar,
}

/// A run's turn in its lane; the lane moves on when it is dropped (also by a panic).
#[derive(Debug)]
pub struct Turn<'a> {
    lanes: &'a SynthLanes,
    lane: String,
    run_id: i64,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.lanes.leave(&self.lane, self.run_id);
    }
}

impl SynthLanes {
    /// The lane of an LLM: `local`, or the server's URL.
    pub fn lane_of(llm: &LlmChoice) -> String {
        match llm {
            LlmChoice::Local => "local".to_owned(),
            LlmChoice::OpenAi { base_url, .. } => base_url.trim_end_matches('/').to_owned(),
        }
    }

    /// Joins the back of `lane` and blocks until `run_id` is first; `None` when `cancel` was set
    /// while it waited (it has left the lane then).
    pub fn wait_turn(&self, lane: &str, run_id: i64, cancel: &AtomicBool) -> Option<Turn<'_>> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.entry(lane.to_owned()).or_default().push_back(run_id);
        loop {
            if lanes.get(lane).and_then(|q| q.front()) == Some(&run_id) {
                return Some(Turn { lanes: self, lane: lane.to_owned(), run_id });
            }
            if cancel.load(Ordering::Relaxed) {
                drop(lanes);
                self.leave(lane, run_id);
                return None;
            }
            lanes = self.changed.wait_timeout(lanes, Duration::from_millis(200)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// The runs waiting or running in `lane`, first the running one.
    pub fn queued(&self, lane: &str) -> Vec<i64> {
        let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.get(lane).map(|q| q.iter().copied().collect()).unwrap_or_default()
    }

    fn leave(&self, lane: &str, run_id: i64) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = lanes.get_mut(lane) {
            queue.retain(|id| *id != run_id);
            if queue.is_empty() {
                lanes.remove(lane);
            }
        }
        self.changed.notify_all();
    }
}

/// Everything a run needs. `run` blocks: call it on a thread of its own (never a tokio worker).
pub struct SynthJob {
    pub run_id: i64,
    pub store: Store,
    pub llm: Box<dyn Llm>,
    /// The LLM judge that scores each kept triple, with the run's settings for it.
    pub judge: Option<(JudgeSettings, Box<dyn Llm>)>,
    pub filters: FilterSettings,
    /// The base retriever's folder and device, loaded when the filters look at the corpus (round
    /// trip, near-duplicates).
    pub retriever: std::path::PathBuf,
    pub device: candle_core::Device,
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
        // Seconds left after `done` passages, at the pace so far.
        let eta_after =
            |done: usize| Some(started.elapsed().as_secs_f64() / done as f64 * (pending.len() - done) as f64);
        let mut done = 0;
        let retriever = match self.filters.checks_corpus() && pending.iter().any(|p| p.reference_matter.is_none()) {
            true => Some(Retriever::load(&self.retriever, &self.device).map_err(crate::synth::SynthError::Local)?),
            false => None,
        };
        let mut corpus_checks = match &retriever {
            Some(retriever) => {
                let passages = self.runtime.block_on(store.indexed_passages())?;
                let corpus: Vec<(i64, &str)> = passages.iter().map(|p| (p.id, p.text.as_str())).collect();
                let stored = self.runtime.block_on(store.all_triples(&[]))?;
                let earlier: Vec<&str> = stored.iter().map(|t| t.question.as_str()).collect();
                Some(CorpusChecks::new(retriever, &corpus, &earlier, &self.filters, &mut |_, _| {})?)
            }
            None => None,
        };
        for batch in pending.chunks(self.llm.passages_per_call().max(1)) {
            if self.cancel.load(Ordering::Relaxed) {
                self.runtime.block_on(store.set_synth_status(run.id, JobStatus::Cancelled, None))?;
                run.status = JobStatus::Cancelled;
                progress(&run, None);
                return Ok(run);
            }
            let mut asked = Vec::with_capacity(batch.len());
            for passage in batch {
                if passage.reference_matter.is_some() {
                    // A table of contents, index or bibliography: marked done, never sent to the LLM.
                    run.report.passages_done += 1;
                    run.report.skipped_passages += 1;
                    run.report.seconds = seconds_before + started.elapsed().as_secs_f64();
                    self.runtime.block_on(store.finish_synth_passage(run.id, passage.id, &[], &run.report))?;
                    done += 1;
                    progress(&run, eta_after(done));
                } else {
                    asked.push((passage, self.runtime.block_on(store.questions_of_passage(passage.id))?));
                }
            }
            if asked.is_empty() {
                continue;
            }
            let inputs: Vec<PassageInput<'_>> = asked
                .iter()
                .map(|(passage, known)| PassageInput { id: passage.id, text: &passage.text, known })
                .collect();
            let asking = Asking {
                prompts: &run.prompts,
                questions_per_passage: run.questions_per_passage,
                answers: run.answers,
                filters: &self.filters,
            };
            let results: Vec<Result<_, String>> =
                match synthesize_batch(self.llm.as_ref(), &asking, &inputs, corpus_checks.as_mut()) {
                    Ok(results) => results.into_iter().map(|r| r.map_err(|e| e.to_string())).collect(),
                    Err(error) => vec![Err(error.to_string()); asked.len()],
                };
            // The judge scores every kept triple of the batch in one call; a passage's triples are
            // stored with their scores in its one transaction.
            let mut scores = self.judge_kept(&asked, &results, &mut run.report);
            for ((passage, _), result) in asked.iter().zip(results) {
                match result {
                    Ok(out) => {
                        let approve_at = self.judge.as_ref().and_then(|(settings, _)| settings.approve_at);
                        let judged: Vec<Option<JudgeScores>> = scores.drain(..out.kept.len()).collect();
                        let row = |question: &String,
                                   answer: &String,
                                   filter_reason: Option<String>,
                                   judge: Option<JudgeScores>| NewTripleRow {
                            question: question.clone(),
                            answer: answer.clone(),
                            passage: passage.text.clone(),
                            passage_id: Some(passage.id),
                            document_id: Some(passage.document_id),
                            origin: TripleOrigin::Synthetic,
                            model: Some(run.model.clone()),
                            prompt: Some(prompt_record.clone()),
                            synth_run_id: Some(run.id),
                            filter_reason,
                            judge,
                            approved: judge.zip(approve_at).is_some_and(|(scores, at)| scores.least() >= at),
                        };
                        // The kept ones for review, and what the filters dropped (with why) for rescue.
                        let rows: Vec<NewTripleRow> = out
                            .kept
                            .iter()
                            .zip(judged)
                            .map(|((question, answer), judge)| row(question, answer, None, judge))
                            .chain(out.dropped.iter().map(|(question, answer, rejection)| {
                                row(question, answer, Some(rejection.reason().to_owned()), None)
                            }))
                            .collect();
                        run.report.judge_approved += rows.iter().filter(|r| r.approved).count() as u64;
                        let report = &mut run.report;
                        report.passages_done += 1;
                        report.questions_seen += out.questions_seen;
                        report.kept += out.kept.len() as u64;
                        report.filtered.add(&out.filtered);
                        report.seconds = seconds_before + started.elapsed().as_secs_f64();
                        self.runtime.block_on(store.finish_synth_passage(run.id, passage.id, &rows, &run.report))?;
                    }
                    Err(error) => {
                        // Not marked done: a resumed run tries the passage again.
                        tracing::warn!(passage = passage.id, "synthesis failed: {error}");
                        run.report.failed_passages += 1;
                        last_error = Some(error);
                    }
                }
                done += 1;
                progress(&run, eta_after(done));
            }
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

impl SynthJob {
    /// The judge's scores of every kept triple of `results` (passage by passage, in order), counted
    /// in `report`; all `None` without a judge. A judge that fails leaves them unscored (pending):
    /// the triples are not lost for it.
    fn judge_kept(
        &self,
        asked: &[(&attune_shared::Passage, Vec<String>)],
        results: &[Result<crate::synth::PassageTriples, String>],
        report: &mut attune_shared::SynthReport,
    ) -> Vec<Option<JudgeScores>> {
        let mut triples = Vec::new();
        for ((passage, _), result) in asked.iter().zip(results) {
            if let Ok(out) = result {
                triples.extend(out.kept.iter().map(|(q, a)| (passage.text.as_str(), q.as_str(), a.as_str())));
            }
        }
        let Some((_, judge)) = &self.judge else { return vec![None; triples.len()] };
        let scores = match crate::synth::judge::judge(judge.as_ref(), &triples) {
            Ok(scores) => scores,
            Err(error) => {
                tracing::warn!(run = self.run_id, "the LLM judge failed: {error}");
                vec![None; triples.len()]
            }
        };
        report.judged += scores.iter().filter(|s| s.is_some()).count() as u64;
        report.judge_failed += scores.iter().filter(|s| s.is_none()).count() as u64;
        scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_take_turns_per_lane_in_order_and_a_cancelled_waiter_leaves() {
        let lanes = Arc::new(SynthLanes::default());
        let never = AtomicBool::new(false);
        let first = lanes.wait_turn("local", 1, &never).expect("an empty lane is ours");
        // Another lane does not wait for this one.
        let other = lanes.wait_turn("http://server/v1", 9, &never).expect("own lane");
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiter = |id: i64| {
            let (lanes, order) = (lanes.clone(), order.clone());
            std::thread::spawn(move || {
                let never = AtomicBool::new(false);
                let _turn = lanes.wait_turn("local", id, &never).unwrap();
                order.lock().unwrap().push(id);
            })
        };
        let second = waiter(2);
        while lanes.queued("local").len() < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let third = waiter(3);
        while lanes.queued("local").len() < 3 {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(lanes.queued("local"), [1, 2, 3]);
        let cancelled = AtomicBool::new(true);
        assert!(lanes.wait_turn("local", 4, &cancelled).is_none(), "a cancelled run does not wait");
        assert_eq!(lanes.queued("local"), [1, 2, 3]);
        assert!(order.lock().unwrap().is_empty(), "nobody runs before the first is done");
        drop(first);
        second.join().unwrap();
        third.join().unwrap();
        assert_eq!(*order.lock().unwrap(), [2, 3]);
        drop(other);
        assert!(lanes.queued("local").is_empty() && lanes.queued("http://server/v1").is_empty());
    }
}
