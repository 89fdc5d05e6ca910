//! Job events on their way to WebSockets: every event goes to a broadcast channel that each
//! session forwards (training steps at most a few a second per run), and a watch keeps the latest
//! state of unfinished runs and evaluations for clients that connect later.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use attune_shared::{AdaptJob, Eval, JobStatus, Run, ServerMessage, SynthRun};
use tokio::sync::{broadcast, watch};

use crate::engine::job::JobEvent;

/// Shortest time between two forwarded steps of one run.
pub const STEP_INTERVAL: Duration = Duration::from_millis(250);

/// Unfinished jobs as they are now.
#[derive(Debug, Clone, Default)]
pub struct LiveJobs {
    pub runs: BTreeMap<i64, Run>,
    pub evals: BTreeMap<i64, Eval>,
    /// The final states of the last [`FINISHED_KEPT`] runs and evaluations to end, for a client
    /// that lagged behind the events and may have missed them.
    pub finished_runs: BTreeMap<i64, Run>,
    pub finished_evals: BTreeMap<i64, Eval>,
    /// Unfinished synthesis runs with their ETA, and the recently finished ones.
    pub synth: BTreeMap<i64, (SynthRun, Option<f64>)>,
    pub finished_synth: BTreeMap<i64, (SynthRun, Option<f64>)>,
    /// Unfinished adapt jobs, and the recently finished ones.
    pub adapt: BTreeMap<i64, AdaptJob>,
    pub finished_adapt: BTreeMap<i64, AdaptJob>,
}

/// Finished runs (and evaluations) whose final state a lagging client is sent again.
pub const FINISHED_KEPT: usize = 32;

/// Files job `id` under unfinished (`live`) or recently finished (`finished`) by its status.
fn file_job<T>(live: &mut BTreeMap<i64, T>, finished: &mut BTreeMap<i64, T>, id: i64, status: JobStatus, value: T) {
    if unfinished(status) {
        live.insert(id, value);
        finished.remove(&id);
    } else {
        live.remove(&id);
        keep_recent(finished, id, value);
    }
}

fn keep_recent<T>(map: &mut BTreeMap<i64, T>, id: i64, value: T) {
    map.insert(id, value);
    while map.len() > FINISHED_KEPT {
        map.pop_first();
    }
}

impl LiveJobs {
    /// The unfinished jobs' states.
    pub fn messages(&self) -> Vec<ServerMessage> {
        let mut messages = state_messages(&self.runs, &self.evals);
        messages.extend(synth_messages(&self.synth));
        messages.extend(adapt_messages(&self.adapt));
        messages
    }

    /// What a client that connects is sent: the unfinished jobs first, then the recently finished
    /// ones (so a jobs list after a reload also shows what ended while the page was away).
    /// Finished evaluations go without their reports (`GET /evals/:id` has them): a client that
    /// connects is not sent megabytes of drill-down it did not ask for.
    pub fn joiner_messages(&self) -> Vec<ServerMessage> {
        let mut messages = self.messages();
        let light: BTreeMap<i64, Eval> =
            self.finished_evals.iter().map(|(id, e)| (*id, Eval { report: None, ..e.clone() })).collect();
        messages.extend(state_messages(&self.finished_runs, &light));
        messages.extend(synth_messages(&self.finished_synth));
        messages.extend(adapt_messages(&self.finished_adapt));
        messages
    }

    /// What a client that lagged (and missed events) is sent: the recently finished jobs' final
    /// state, then the unfinished ones'.
    pub fn resync_messages(&self) -> Vec<ServerMessage> {
        let mut messages = state_messages(&self.finished_runs, &self.finished_evals);
        messages.extend(synth_messages(&self.finished_synth));
        messages.extend(adapt_messages(&self.finished_adapt));
        messages.extend(self.messages());
        messages
    }
}

fn state_messages(runs: &BTreeMap<i64, Run>, evals: &BTreeMap<i64, Eval>) -> Vec<ServerMessage> {
    let runs = runs.values().map(|run| ServerMessage::RunState { run: run.clone() });
    let evals = evals.values().map(|eval| ServerMessage::EvalState { eval: Box::new(eval.clone()) });
    runs.chain(evals).collect()
}

fn synth_messages(runs: &BTreeMap<i64, (SynthRun, Option<f64>)>) -> impl Iterator<Item = ServerMessage> + '_ {
    runs.values().map(|(run, eta)| ServerMessage::SynthProgress { run: run.clone(), eta_seconds: *eta })
}

fn adapt_messages(jobs: &BTreeMap<i64, AdaptJob>) -> impl Iterator<Item = ServerMessage> + '_ {
    jobs.values().map(|job| ServerMessage::AdaptState { adapt: Box::new(job.clone()) })
}

fn unfinished(status: JobStatus) -> bool {
    matches!(status, JobStatus::Queued | JobStatus::Running)
}

#[derive(Debug)]
pub struct Publisher {
    events: broadcast::Sender<ServerMessage>,
    live: watch::Sender<LiveJobs>,
    last_step: Mutex<HashMap<i64, Instant>>,
}

impl Publisher {
    pub fn new(events: broadcast::Sender<ServerMessage>, initial: LiveJobs) -> Self {
        Publisher { events, live: watch::Sender::new(initial), last_step: Mutex::default() }
    }

    pub fn live(&self) -> watch::Receiver<LiveJobs> {
        self.live.subscribe()
    }

    /// Records a synthesis run's progress in the live state and forwards it.
    pub fn publish_synth(&self, run: &SynthRun, eta_seconds: Option<f64>) {
        // A finished run keeps no ETA.
        let eta = eta_seconds.filter(|_| unfinished(run.status));
        self.live.send_modify(|live| {
            file_job(&mut live.synth, &mut live.finished_synth, run.id, run.status, (run.clone(), eta));
        });
        let _ = self.events.send(ServerMessage::SynthProgress { run: run.clone(), eta_seconds });
    }

    /// Records an adapt job's state in the live state and forwards it.
    pub fn publish_adapt(&self, job: &AdaptJob) {
        self.live.send_modify(|live| {
            file_job(&mut live.adapt, &mut live.finished_adapt, job.id, job.status, job.clone());
        });
        let _ = self.events.send(ServerMessage::AdaptState { adapt: Box::new(job.clone()) });
    }

    /// Records `event` in the live state and forwards it (throttled steps excepted).
    pub fn publish(&self, event: JobEvent) {
        let message = match event {
            JobEvent::Run(run) => {
                self.live.send_modify(|live| {
                    file_job(&mut live.runs, &mut live.finished_runs, run.id, run.status, (*run).clone());
                });
                if !unfinished(run.status) {
                    self.last_step.lock().unwrap_or_else(|e| e.into_inner()).remove(&run.id);
                }
                ServerMessage::RunState { run: *run }
            }
            JobEvent::Step { run_id, point } => {
                self.live.send_modify(|live| {
                    if let Some(run) = live.runs.get_mut(&run_id) {
                        run.step = point.step;
                        run.total_steps = point.total_steps;
                        run.last = Some(point);
                    }
                });
                let mut last = self.last_step.lock().unwrap_or_else(|e| e.into_inner());
                let due = last.get(&run_id).is_none_or(|at| at.elapsed() >= STEP_INTERVAL);
                if !due && point.step < point.total_steps && point.eval_loss.is_none() {
                    return;
                }
                last.insert(run_id, Instant::now());
                ServerMessage::TrainStep { run_id, point }
            }
            JobEvent::Checkpoint { run_id, step, path } => {
                self.live.send_modify(|live| {
                    if let Some(run) = live.runs.get_mut(&run_id) {
                        run.checkpoint = Some(path.clone());
                    }
                });
                ServerMessage::Checkpoint { run_id, step, path }
            }
            JobEvent::Eval(eval) => {
                self.live.send_modify(|live| {
                    file_job(&mut live.evals, &mut live.finished_evals, eval.id, eval.status, (*eval).clone());
                });
                ServerMessage::EvalState { eval }
            }
            JobEvent::Log { job, level, message } => ServerMessage::JobLog { job, level, message },
        };
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: i64, status: JobStatus) -> Box<Run> {
        let mut run: Run = serde_json::from_value(serde_json::json!({
            "id": id, "name": "r", "status": "queued", "mode": "e2e", "retriever": "", "generator": "",
            "hyper": {}, "examples": 1, "held_out": 0, "step": 0, "total_steps": 1, "created_at": ""
        }))
        .unwrap();
        run.status = status;
        Box::new(run)
    }

    /// Before, a client that lagged skipped the missed events and never saw a run's final state.
    #[test]
    fn a_lagging_client_gets_the_final_state_again() {
        let (events, mut receiver) = broadcast::channel(2);
        let publisher = Publisher::new(events, LiveJobs::default());
        publisher.publish(JobEvent::Run(run(1, JobStatus::Running)));
        for i in 0..5 {
            publisher.publish(JobEvent::Log {
                job: "run:1".into(),
                level: attune_shared::LogLevel::Info,
                message: format!("{i}"),
            });
        }
        publisher.publish(JobEvent::Run(run(1, JobStatus::Succeeded)));
        publisher.publish(JobEvent::Run(run(2, JobStatus::Running)));
        assert!(matches!(receiver.try_recv(), Err(broadcast::error::TryRecvError::Lagged(_))));
        let resync = publisher.live().borrow().resync_messages();
        let states: Vec<(i64, JobStatus)> = resync
            .iter()
            .filter_map(|m| match m {
                ServerMessage::RunState { run } => Some((run.id, run.status)),
                _ => None,
            })
            .collect();
        assert_eq!(states, [(1, JobStatus::Succeeded), (2, JobStatus::Running)]);
        for id in 10..(10 + FINISHED_KEPT as i64 + 5) {
            publisher.publish(JobEvent::Run(run(id, JobStatus::Failed)));
        }
        assert_eq!(publisher.live().borrow().finished_runs.len(), FINISHED_KEPT);
    }

    /// Before, synthesis progress went past the live state: a reload lost the running run.
    #[test]
    fn a_late_joiner_is_told_of_running_synthesis_and_a_laggard_of_its_end() {
        let (events, _receiver) = broadcast::channel(8);
        let publisher = Publisher::new(events, LiveJobs::default());
        let mut synth: SynthRun = serde_json::from_value(serde_json::json!({
            "id": 3, "status": "running", "llm": {"type": "local"}, "model": "m", "questions_per_passage": 1,
            "prompts": {"questions": "q", "answer": "a"}, "passages_total": 4, "document_id": 9,
            "created_at": "t", "updated_at": "t"
        }))
        .unwrap();
        publisher.publish_synth(&synth, Some(12.0));
        let joined = publisher.live().borrow().messages();
        assert!(
            joined
                .iter()
                .any(|m| matches!(m, ServerMessage::SynthProgress { run, eta_seconds: Some(_) } if run.id == 3)),
            "{joined:?}"
        );
        synth.status = JobStatus::Cancelled;
        publisher.publish_synth(&synth, None);
        assert!(publisher.live().borrow().messages().is_empty(), "a finished run is not live");
        let resync = publisher.live().borrow().resync_messages();
        assert!(
            matches!(&resync[..], [ServerMessage::SynthProgress { run, .. }] if run.status == JobStatus::Cancelled)
        );
    }
}
