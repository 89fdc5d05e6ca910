//! Job events on their way to WebSockets: every event goes to a broadcast channel that each
//! session forwards (training steps at most a few a second per run), and a watch keeps the latest
//! state of unfinished runs and evaluations for clients that connect later.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use attune_shared::{Eval, JobStatus, Run, ServerMessage};
use tokio::sync::{broadcast, watch};

use crate::engine::job::JobEvent;

/// Shortest time between two forwarded steps of one run.
pub const STEP_INTERVAL: Duration = Duration::from_millis(250);

/// Unfinished jobs as they are now.
#[derive(Debug, Clone, Default)]
pub struct LiveJobs {
    pub runs: BTreeMap<i64, Run>,
    pub evals: BTreeMap<i64, Eval>,
}

impl LiveJobs {
    /// The messages that bring a new client up to date.
    pub fn messages(&self) -> Vec<ServerMessage> {
        let runs = self.runs.values().map(|run| ServerMessage::RunState { run: run.clone() });
        let evals = self.evals.values().map(|eval| ServerMessage::EvalState { eval: Box::new(eval.clone()) });
        runs.chain(evals).collect()
    }
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

    /// Records `event` in the live state and forwards it (throttled steps excepted).
    pub fn publish(&self, event: JobEvent) {
        let message = match event {
            JobEvent::Run(run) => {
                self.live.send_modify(|live| {
                    if unfinished(run.status) {
                        live.runs.insert(run.id, (*run).clone());
                    } else {
                        live.runs.remove(&run.id);
                    }
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
                if !due && point.step < point.total_steps {
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
                    if unfinished(eval.status) {
                        live.evals.insert(eval.id, (*eval).clone());
                    } else {
                        live.evals.remove(&eval.id);
                    }
                });
                ServerMessage::EvalState { eval }
            }
            JobEvent::Log { job, level, message } => ServerMessage::JobLog { job, level, message },
        };
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(message);
    }
}
