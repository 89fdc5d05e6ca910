//! What every job shares: its context (store, runtime, folders, device), the closed [`JobEvent`]
//! enum it reports to a sink that `serve/` turns into WebSocket messages, the [`Control`] it checks
//! between steps, and recording its end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use attune_shared::{Eval, JobStatus, LogLevel, Run, StepPoint};
use tokio::runtime::Handle;

use super::EngineError;
use crate::store::Store;

/// What the worker reports. Closed: every kind of moment a job has.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// A run changed state (queued, started, finished, failed, cancelled, interrupted).
    Run(Box<Run>),
    /// A run finished an optimiser step (every step; the server throttles what it forwards).
    Step {
        run_id: i64,
        point: StepPoint,
    },
    Checkpoint {
        run_id: i64,
        step: u32,
        path: String,
    },
    /// An evaluation changed: state or progress.
    Eval(Box<Eval>),
    Log {
        job: String,
        level: LogLevel,
        message: String,
    },
}

/// Where jobs find their inputs and put their outputs.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub store: Store,
    /// The async runtime the store lives on (the worker blocks on it from its own thread).
    pub runtime: Handle,
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    /// `--device` of the server (`auto`, `cpu`, `cuda:N`).
    pub device_spec: String,
}

impl JobContext {
    /// The folder holding every run's folder (`runs/`).
    pub fn runs_dir(&self) -> PathBuf {
        self.data_dir.join("runs")
    }

    /// Folder of a run's files (`runs/run-ID`).
    pub fn run_dir(&self, id: i64) -> PathBuf {
        self.runs_dir().join(format!("run-{id}"))
    }

    /// A model folder by its name in the models directory.
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.models_dir.join(name)
    }
}

pub type EventSink = Arc<dyn Fn(JobEvent) + Send + Sync>;

/// What a running job checks between steps.
#[derive(Debug, Default)]
pub struct Control {
    /// The user cancelled it.
    pub cancel: AtomicBool,
    /// The server is stopping: end at a resumable point and mark the job interrupted.
    pub stopping: AtomicBool,
}

impl Control {
    pub fn should_stop(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.stopping.load(Ordering::Relaxed)
    }
}

/// Resident memory of this process in bytes (Linux), for the dashboard on a CPU.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// `cpu · 1.2 GB`, or `cuda:0 · 3.1 / 80.0 GB`.
pub fn device_label(device: &candle_core::Device) -> String {
    let gb = |bytes: u64| bytes as f64 / 1e9;
    match device {
        candle_core::Device::Cpu => match resident_bytes() {
            Some(bytes) => format!("cpu · {:.1} GB", gb(bytes)),
            None => "cpu".into(),
        },
        other => {
            let name = match other.location() {
                candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
                location => format!("{location:?}").to_lowercase(),
            };
            match crate::model::device::memory(other) {
                Some((used, total)) => format!("{name} · {:.1} / {:.1} GB", gb(used as u64), gb(total as u64)),
                None => name,
            }
        }
    }
}

/// Writes `triples` as the JSONL the trainer reads (`{question, passage, answer}` a line).
pub fn write_triples(path: &Path, triples: &[attune_shared::Triple]) -> Result<(), EngineError> {
    let mut text = String::new();
    for t in triples {
        let line = serde_json::json!({"question": t.question, "passage": t.passage, "answer": t.answer});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| EngineError::Failed(format!("cannot write {}: {e}", path.display())))
}

/// Marks a job's end in the store and reports it; store errors are logged (the job already ended).
pub(super) fn finish_run(context: &JobContext, sink: &EventSink, id: i64, status: JobStatus, error: Option<&str>) {
    match context.runtime.block_on(context.store.set_run_status(id, status, error)) {
        Ok(run) => sink(JobEvent::Run(Box::new(run))),
        Err(e) => tracing::error!(run = id, "cannot record the run's end: {e}"),
    }
}
