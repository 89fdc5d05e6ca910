//! The job queue: one worker thread runs queued training runs and evaluations, oldest first, one at
//! a time (one device, one training job). The queue is the store's tables, so it survives
//! restarts; a job the server was running when it stopped is marked interrupted and resumes from
//! its last checkpoint.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::EngineError;
use super::job::{Control, EventSink, JobContext};
use crate::store::jobs::QueuedJob;

/// The job running now and its controls.
type RunningSlot = Arc<Mutex<Option<(QueuedJob, Arc<Control>)>>>;

/// Handle of the worker thread; cheap to share.
pub struct JobQueue {
    wake: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    running: RunningSlot,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue").finish_non_exhaustive()
    }
}

impl JobQueue {
    /// Starts the worker; it begins with whatever the store has queued.
    pub fn start(context: JobContext, sink: EventSink) -> Result<JobQueue, EngineError> {
        let (wake, woken) = std::sync::mpsc::channel::<()>();
        let running: RunningSlot = Arc::default();
        let slot = running.clone();
        let thread = std::thread::Builder::new()
            .name("attune-jobs".into())
            .spawn(move || worker(context, sink, woken, slot))
            .map_err(|e| EngineError::Task(format!("cannot start the job worker: {e}")))?;
        Ok(JobQueue { wake: Mutex::new(Some(wake)), running, thread: Mutex::new(Some(thread)) })
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

fn worker(context: JobContext, sink: EventSink, woken: std::sync::mpsc::Receiver<()>, running: RunningSlot) {
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
        match job {
            QueuedJob::Run(id) => super::train_job::run(&context, &sink, id, &control),
            QueuedJob::Eval(id) => super::eval_job::run(&context, &sink, id, &control),
        }
        *running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // A shutdown asked while the job ran: do not start another.
        if control.stopping.load(Ordering::Relaxed) {
            return;
        }
        while woken.try_recv().is_ok() {}
    }
}
