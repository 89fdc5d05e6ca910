//! Panics caught per job, question or synthesis run, and each compute thread's state for
//! `/api/v1/health`: a panic fails only what it was working on, and the thread keeps serving.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use attune_shared::ThreadHealth;

use super::EngineError;

/// The state of one compute thread, shared with the health endpoint; cheap to clone.
#[derive(Debug, Clone)]
pub struct ThreadMonitor {
    state: Arc<Mutex<ThreadHealth>>,
}

impl ThreadMonitor {
    pub fn new(name: &str) -> ThreadMonitor {
        let health = ThreadHealth { name: name.to_owned(), state: "idle".into(), ..ThreadHealth::default() };
        ThreadMonitor { state: Arc::new(Mutex::new(health)) }
    }

    pub fn set_state(&self, state: impl Into<String>) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).state = state.into();
    }

    pub fn health(&self) -> ThreadHealth {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `work` as `what`; a panic becomes [`EngineError::Task`] with its message, is counted,
    /// and the thread goes on.
    pub fn run<T>(&self, what: &str, work: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
        self.set_state(format!("busy: {what}"));
        let result = catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|payload| {
            let message = panic_message(payload.as_ref());
            tracing::error!("{what} panicked: {message}");
            let mut health = self.state.lock().unwrap_or_else(|e| e.into_inner());
            health.panics += 1;
            health.last_panic = Some(format!("{what}: {message}"));
            Err(EngineError::Task(format!("{what} failed on an internal error (a panic: {message})")))
        });
        self.set_state("idle");
        result
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_and_is_counted() {
        let monitor = ThreadMonitor::new("jobs");
        let failed = monitor.run("run 3", || -> Result<(), EngineError> { panic!("index out of bounds") });
        assert!(matches!(&failed, Err(EngineError::Task(m)) if m.contains("index out of bounds")), "{failed:?}");
        assert_eq!(monitor.run("run 4", || Ok(7)).unwrap(), 7);
        let health = monitor.health();
        assert_eq!((health.panics, health.state.as_str()), (1, "idle"));
        assert!(health.last_panic.unwrap().contains("run 3"));
    }
}
