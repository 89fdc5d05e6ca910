//! The job queue: one worker thread runs queued training runs and evaluations, oldest first, one at
//! a time (one device, one training job). The queue is the store's tables, so it survives
//! restarts; a job the server was running when it stopped is marked interrupted and resumes from
//! its last checkpoint.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attune_shared::JobStatus;

use super::EngineError;
use super::health::ThreadMonitor;
use super::job::{Control, EventSink, JobContext, JobEvent};
use crate::store::jobs::QueuedJob;

/// Runs one claimed job to its end, recording its outcome (tests put a stand-in here).
pub type JobRunner = fn(&JobContext, &EventSink, QueuedJob, &Control);

/// The real jobs: a training run or an evaluation.
fn run_job(context: &JobContext, sink: &EventSink, job: QueuedJob, control: &Control) {
    match job {
        QueuedJob::Run(id) => super::train_job::run(context, sink, id, control),
        QueuedJob::Eval(id) => super::eval_job::run(context, sink, id, control),
    }
}

/// The job running now and its controls.
type RunningSlot = Arc<Mutex<Option<(QueuedJob, Arc<Control>)>>>;

/// Handle of the worker thread; cheap to share.
pub struct JobQueue {
    wake: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    running: RunningSlot,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    monitor: ThreadMonitor,
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue").finish_non_exhaustive()
    }
}

impl JobQueue {
    /// Starts the worker; it begins with whatever the store has queued.
    pub fn start(context: JobContext, sink: EventSink) -> Result<JobQueue, EngineError> {
        Self::start_with(context, sink, run_job)
    }

    /// [`JobQueue::start`] with another runner for the claimed jobs.
    pub fn start_with(context: JobContext, sink: EventSink, runner: JobRunner) -> Result<JobQueue, EngineError> {
        let (wake, woken) = std::sync::mpsc::channel::<()>();
        let running: RunningSlot = Arc::default();
        let slot = running.clone();
        let monitor = ThreadMonitor::new("jobs");
        let thread_monitor = monitor.clone();
        let thread = std::thread::Builder::new()
            .name("attune-jobs".into())
            .spawn(move || {
                worker(context, sink, woken, slot, runner, &thread_monitor);
                thread_monitor.set_state("stopped");
            })
            .map_err(|e| EngineError::Task(format!("cannot start the job worker: {e}")))?;
        Ok(JobQueue { wake: Mutex::new(Some(wake)), running, thread: Mutex::new(Some(thread)), monitor })
    }

    /// The worker thread's state, for `/api/v1/health`.
    pub fn health(&self) -> attune_shared::ThreadHealth {
        self.monitor.health()
    }

    /// Tells the worker to look at the queue (after a job was queued).
    pub fn wake(&self) {
        if let Some(wake) = self.wake.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = wake.send(());
        }
    }

    /// Asks the running job `job` to stop; false when it is not the one running.
    pub fn cancel(&self, job: QueuedJob) -> bool {
        match self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some((running, control)) if *running == job => {
                control.cancel.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// The job running now, if any.
    pub fn running(&self) -> Option<QueuedJob> {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(job, _)| *job)
    }

    /// Stops the worker: the running job ends at a resumable point (a checkpoint) and is marked
    /// interrupted. Blocks until the worker has exited; call it off the async threads.
    pub fn shutdown(&self) {
        if let Some((_, control)) = self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            control.stopping.store(true, Ordering::Relaxed);
        }
        self.wake.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

fn worker(
    context: JobContext,
    sink: EventSink,
    woken: std::sync::mpsc::Receiver<()>,
    running: RunningSlot,
    runner: JobRunner,
    monitor: &ThreadMonitor,
) {
    loop {
        let next = match context.runtime.block_on(context.store.next_queued_job()) {
            Ok(next) => next,
            Err(error) => {
                tracing::error!("cannot read the job queue: {error}");
                None
            }
        };
        let Some(job) = next else {
            match woken.recv_timeout(Duration::from_secs(5)) {
                Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        let control = Arc::new(Control::default());
        *running.lock().unwrap_or_else(|e| e.into_inner()) = Some((job, control.clone()));
        // The slot is set first, so a cancel that sees the job running finds its controls.
        match context.runtime.block_on(context.store.claim_job(job)) {
            Ok(true) => {}
            Ok(false) => {
                // Cancelled between the queue's read and the claim.
                *running.lock().unwrap_or_else(|e| e.into_inner()) = None;
                continue;
            }
            Err(error) => {
                tracing::error!("cannot claim {job:?}: {error}");
                *running.lock().unwrap_or_else(|e| e.into_inner()) = None;
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        }
        let what = match job {
            QueuedJob::Run(id) => format!("run {id}"),
            QueuedJob::Eval(id) => format!("evaluation {id}"),
        };
        let outcome = monitor.run(&what, || {
            runner(&context, &sink, job, &control);
            Ok(())
        });
        if let Err(error) = outcome {
            // A panic ended the job without recording its end: it failed, the queue goes on.
            fail_job(&context, &sink, job, &error.to_string());
        }
        *running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        release_job_memory(&what);
        // A shutdown asked while the job ran: do not start another.
        if control.stopping.load(Ordering::Relaxed) {
            return;
        }
        while woken.try_recv().is_ok() {}
    }
}

/// Gives the memory a finished job freed back to the OS (the allocator keeps freed buffers while a
/// job runs, see `memory::tune_allocator`), so an idle server holds what it uses.
fn release_job_memory(what: &str) {
    let before = crate::memory::resident();
    crate::memory::release_freed();
    if let (Some(before), Some(after)) = (before, crate::memory::resident()) {
        tracing::debug!(
            "{what} ended: resident {} MiB, {} MiB after returning freed memory (peak {} MiB)",
            before.now_bytes >> 20,
            after.now_bytes >> 20,
            before.peak_bytes >> 20
        );
    }
}

/// Marks a job failed with `message` and reports it.
fn fail_job(context: &JobContext, sink: &EventSink, job: QueuedJob, message: &str) {
    let store = &context.store;
    match job {
        QueuedJob::Run(id) => {
            match context.runtime.block_on(store.set_run_status(id, JobStatus::Failed, Some(message))) {
                Ok(run) => sink(JobEvent::Run(Box::new(run))),
                Err(e) => tracing::error!(run = id, "cannot record the run's failure: {e}"),
            }
        }
        QueuedJob::Eval(id) => {
            match context.runtime.block_on(store.finish_eval(id, JobStatus::Failed, None, Some(message))) {
                Ok(eval) => sink(JobEvent::Eval(Box::new(eval))),
                Err(e) => tracing::error!(eval = id, "cannot record the evaluation's failure: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs 1 panics, runs 2 succeeds.
    fn panicking_runner(context: &JobContext, _: &EventSink, job: QueuedJob, _: &Control) {
        let QueuedJob::Run(id) = job else { return };
        if id == 1 {
            panic!("a bug in run 1");
        }
        context.runtime.block_on(context.store.set_run_status(id, JobStatus::Succeeded, None)).unwrap();
    }

    /// Before, the worker's thread died with the panic and the queue stopped for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_fails_alone_and_the_queue_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).await.unwrap();
        let request: attune_shared::NewRun = serde_json::from_str("{}").unwrap();
        for name in ["one", "two"] {
            store.insert_run(name, &request, "runs/x", 1, 0).await.unwrap();
        }
        let context = JobContext {
            store: store.clone(),
            runtime: tokio::runtime::Handle::current(),
            data_dir: dir.path().to_owned(),
            models_dir: dir.path().to_owned(),
            device_spec: "cpu".into(),
        };
        let queue = JobQueue::start_with(context, Arc::new(|_| {}), panicking_runner).unwrap();
        let mut statuses = Vec::new();
        for _ in 0..200 {
            statuses = vec![store.run(1).await.unwrap().unwrap(), store.run(2).await.unwrap().unwrap()];
            if statuses[1].status == JobStatus::Succeeded {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(statuses[0].status, JobStatus::Failed);
        assert!(statuses[0].error.as_deref().unwrap().contains("a bug in run 1"), "{:?}", statuses[0].error);
        assert_eq!(statuses[1].status, JobStatus::Succeeded);
        let health = queue.health();
        assert_eq!(health.panics, 1);
        tokio::task::spawn_blocking(move || queue.shutdown()).await.unwrap();
    }
}
