//! Training runs, evaluations and test sets: the persistent job queue, its states and results,
//! every step's figures, and the passages' revision number that passage indexes are keyed on.

use attune_shared::{Eval, EvalReport, JobStatus, NewEval, NewRun, Run, StepPoint, TestSetInfo};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::corpus::job_status;
use super::{Store, StoreError};

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

const RUN_COLUMNS: &str = "id, name, status, request, dir, examples, held_out, step, total_steps, last, eval_loss,
    checkpoint, device, error, created_at, started_at, finished_at";

const EVAL_COLUMNS: &str = "id, status, request, phase, done, total, report, error, created_at, finished_at";

/// The next job the queue should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuedJob {
    Run(i64),
    Eval(i64),
}

/// A passage as the chat index and citations need it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedPassage {
    pub id: i64,
    pub document_id: i64,
    pub document: String,
    pub page_start: Option<u32>,
    pub page_end: Option<u32>,
    pub text: String,
}

fn json<T: serde::de::DeserializeOwned>(text: &str, key: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt { key: key.to_owned(), error })
}

/// The value, or `None` with a warning: one unreadable row must not fail a whole listing (or the
/// server's start, which lists the runs).
fn readable<T>(result: Result<T, StoreError>) -> Option<T> {
    result.map_err(|error| tracing::warn!("skipping an unreadable row: {error}")).ok()
}

fn run(row: &SqliteRow) -> Result<Run, StoreError> {
    let request: NewRun = json(&row.try_get::<String, _>("request")?, "runs.request")?;
    let last: Option<String> = row.try_get("last")?;
    Ok(Run {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        status: job_status(&row.try_get::<String, _>("status")?),
        mode: request.mode,
        retriever: request.retriever.unwrap_or_default(),
        generator: request.generator.unwrap_or_default(),
        preset: request.preset,
        hyper: request.hyper,
        examples: row.try_get::<i64, _>("examples")? as u32,
        held_out: row.try_get::<i64, _>("held_out")? as u32,
        step: row.try_get::<i64, _>("step")? as u32,
        total_steps: row.try_get::<i64, _>("total_steps")? as u32,
        // The latest step's figures are a convenience: one that does not read is left out.
        last: last.and_then(|text| readable(json(&text, "runs.last"))),
        eval_loss: row.try_get("eval_loss")?,
        checkpoint: row.try_get("checkpoint")?,
        device: row.try_get("device")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn eval(row: &SqliteRow) -> Result<Eval, StoreError> {
    let report: Option<String> = row.try_get("report")?;
    Ok(Eval {
        id: row.try_get("id")?,
        status: job_status(&row.try_get::<String, _>("status")?),
        request: json(&row.try_get::<String, _>("request")?, "evals.request")?,
        phase: row.try_get("phase")?,
        done: row.try_get::<i64, _>("done")? as u64,
        total: row.try_get::<i64, _>("total")? as u64,
        report: report.map(|text| json::<EvalReport>(&text, "evals.report")).transpose()?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

impl Store {
    /// Queues a training run; `request` has its model names resolved.
    pub async fn insert_run(
        &self,
        name: &str,
        request: &NewRun,
        dir: &str,
        examples: u32,
        held_out: u32,
    ) -> Result<Run, StoreError> {
        let request = serde_json::to_string(request).expect("a run request serialises");
        let row = sqlx::query(&format!(
            "INSERT INTO runs (name, status, request, dir, examples, held_out) VALUES (?, 'queued', ?, ?, ?, ?)
             RETURNING {RUN_COLUMNS}"
        ))
        .bind(name)
        .bind(request)
        .bind(dir)
        .bind(i64::from(examples))
        .bind(i64::from(held_out))
        .fetch_one(&self.pool)
        .await?;
        run(&row)
    }

    pub async fn set_run_dir(&self, id: i64, dir: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET dir = ? WHERE id = ?").bind(dir).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn run(&self, id: i64) -> Result<Option<Run>, StoreError> {
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(run).transpose()
    }

    /// The run's folder on disk.
    pub async fn run_dir(&self, id: i64) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT dir FROM runs WHERE id = ?").bind(id).fetch_optional(&self.pool).await?)
    }

    /// Every run, newest first.
    pub async fn runs(&self) -> Result<Vec<Run>, StoreError> {
        let rows =
            sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC")).fetch_all(&self.pool).await?;
        Ok(rows.iter().filter_map(|row| readable(run(row))).collect())
    }

    /// Moves a run to `status`, stamping when it started or finished; `error` replaces the last one.
    /// The run comes back as this statement left it (one statement: the job worker may move it on
    /// the next instant, and a second read would report that instead).
    pub async fn set_run_status(&self, id: i64, status: JobStatus, error: Option<&str>) -> Result<Run, StoreError> {
        let stamp = match status {
            JobStatus::Running => format!(", started_at = COALESCE(started_at, {NOW}), finished_at = NULL"),
            JobStatus::Queued => format!(", queued_at = {NOW}, finished_at = NULL"),
            _ => format!(", finished_at = {NOW}"),
        };
        let row =
            sqlx::query(&format!("UPDATE runs SET status = ?, error = ?{stamp} WHERE id = ? RETURNING {RUN_COLUMNS}"))
                .bind(status.as_str())
                .bind(error)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        run(&row.ok_or(StoreError::NotFound("run"))?)
    }

    /// Records one step's figures (the history and the run's latest) in one transaction.
    pub async fn record_step(&self, id: i64, point: &StepPoint, device: Option<&str>) -> Result<(), StoreError> {
        let text = serde_json::to_string(point).expect("a step point serialises");
        let mut tx = self.write_transaction().await?;
        sqlx::query("INSERT OR REPLACE INTO run_metrics (run_id, step, point) VALUES (?, ?, ?)")
            .bind(id)
            .bind(i64::from(point.step))
            .bind(&text)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE runs SET step = ?, total_steps = ?, last = ?, device = COALESCE(?, device) WHERE id = ?")
            .bind(i64::from(point.step))
            .bind(i64::from(point.total_steps))
            .bind(&text)
            .bind(device)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets the run's step counts before its first step (and after a resume).
    pub async fn set_run_progress(&self, id: i64, step: u32, total_steps: u32) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET step = ?, total_steps = ? WHERE id = ?")
            .bind(i64::from(step))
            .bind(i64::from(total_steps))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_run_checkpoint(&self, id: i64, path: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET checkpoint = ? WHERE id = ?").bind(path).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// The held-out loss measured at `step`: the run's latest, and that step's point.
    pub async fn set_run_eval_loss(&self, id: i64, step: u32, loss: f64) -> Result<(), StoreError> {
        let mut tx = self.write_transaction().await?;
        sqlx::query("UPDATE runs SET eval_loss = ? WHERE id = ?").bind(loss).bind(id).execute(&mut *tx).await?;
        sqlx::query("UPDATE run_metrics SET point = json_set(point, '$.eval_loss', ?) WHERE run_id = ? AND step = ?")
            .bind(loss)
            .bind(id)
            .bind(i64::from(step))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every recorded step of a run, in order.
    pub async fn run_metrics(&self, id: i64) -> Result<Vec<StepPoint>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT point FROM run_metrics WHERE run_id = ? ORDER BY step")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().filter_map(|text| readable(json(text, "run_metrics.point"))).collect())
    }

    /// Forgets steps after `step` (a resumed run redoes them from its checkpoint).
    pub async fn truncate_run_metrics(&self, id: i64, step: u32) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM run_metrics WHERE run_id = ? AND step > ?")
            .bind(id)
            .bind(i64::from(step))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Queues an evaluation, returned as queued (one statement: the worker may start it at once).
    pub async fn insert_eval(&self, request: &NewEval) -> Result<Eval, StoreError> {
        let request = serde_json::to_string(request).expect("an eval request serialises");
        let row =
            sqlx::query(&format!("INSERT INTO evals (status, request) VALUES ('queued', ?) RETURNING {EVAL_COLUMNS}"))
                .bind(request)
                .fetch_one(&self.pool)
                .await?;
        eval(&row)
    }

    pub async fn eval(&self, id: i64) -> Result<Option<Eval>, StoreError> {
        let row = sqlx::query(&format!("SELECT {EVAL_COLUMNS} FROM evals WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(eval).transpose()
    }

    /// Every evaluation, newest first, without their reports' per-question items.
    pub async fn evals(&self) -> Result<Vec<Eval>, StoreError> {
        let rows =
            sqlx::query(&format!("SELECT {EVAL_COLUMNS} FROM evals ORDER BY id DESC")).fetch_all(&self.pool).await?;
        let mut evals: Vec<Eval> = rows.iter().filter_map(|row| readable(eval(row))).collect();
        for e in &mut evals {
            if let Some(report) = &mut e.report {
                report.items.clear();
            }
        }
        Ok(evals)
    }

    pub async fn set_eval_progress(&self, id: i64, phase: &str, done: u64, total: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE evals SET status = 'running', phase = ?, done = ?, total = ? WHERE id = ?")
            .bind(phase)
            .bind(done as i64)
            .bind(total as i64)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends an evaluation with its report or error.
    pub async fn finish_eval(
        &self,
        id: i64,
        status: JobStatus,
        report: Option<&EvalReport>,
        error: Option<&str>,
    ) -> Result<Eval, StoreError> {
        let report = report.map(|r| serde_json::to_string(r).expect("a report serialises"));
        sqlx::query(&format!(
            "UPDATE evals SET status = ?, report = ?, error = ?, phase = NULL, finished_at = {NOW} WHERE id = ?"
        ))
        .bind(status.as_str())
        .bind(report)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.eval(id).await?.ok_or(StoreError::NotFound("evaluation"))
    }

    /// The oldest queued job, runs and evaluations alike. A run whose folder is not set yet (its
    /// triples are still being written) is not ready.
    pub async fn next_queued_job(&self) -> Result<Option<QueuedJob>, StoreError> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT kind, id FROM (
                 SELECT 'run' AS kind, id, queued_at FROM runs WHERE status = 'queued' AND dir != ''
                 UNION ALL SELECT 'eval' AS kind, id, queued_at FROM evals WHERE status = 'queued')
             ORDER BY queued_at, id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(kind, id)| if kind == "run" { QueuedJob::Run(id) } else { QueuedJob::Eval(id) }))
    }

    /// Moves a queued job to running, if it is still queued (compare-and-set: a cancel that landed
    /// while the worker picked the job wins, and the worker skips it). True when claimed.
    pub async fn claim_job(&self, job: QueuedJob) -> Result<bool, StoreError> {
        let (table, id) = match job {
            QueuedJob::Run(id) => ("runs", id),
            QueuedJob::Eval(id) => ("evals", id),
        };
        let started =
            if table == "runs" { format!(", started_at = COALESCE(started_at, {NOW})") } else { String::new() };
        let claimed = sqlx::query(&format!(
            "UPDATE {table} SET status = 'running', finished_at = NULL{started} WHERE id = ? AND status = 'queued'"
        ))
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }

    /// Cancels a run if it is still queued (compare-and-set); `None` when it was not queued any
    /// more (the worker may have just claimed it).
    pub async fn cancel_queued_run(&self, id: i64) -> Result<Option<Run>, StoreError> {
        self.cancel_queued("runs", RUN_COLUMNS, id, run).await
    }

    /// Cancels an evaluation that is still queued (compare-and-set, as for runs).
    pub async fn cancel_queued_eval(&self, id: i64) -> Result<Option<Eval>, StoreError> {
        self.cancel_queued("evals", EVAL_COLUMNS, id, eval).await
    }

    /// The compare-and-set behind both: queued → cancelled, the row read back as `T`.
    async fn cancel_queued<T>(
        &self,
        table: &str,
        columns: &str,
        id: i64,
        read: fn(&SqliteRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE {table} SET status = 'cancelled', finished_at = {NOW} WHERE id = ? AND status = 'queued'
             RETURNING {columns}"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(read).transpose()
    }

    /// Marks the jobs that were running when the server stopped as interrupted; returns how many.
    pub async fn interrupt_unfinished_jobs(&self) -> Result<u64, StoreError> {
        let mut tx = self.write_transaction().await?;
        let runs = sqlx::query(&format!(
            "UPDATE runs SET status = 'interrupted', finished_at = {NOW},
                 error = 'the server stopped while this run trained; resume it from its last checkpoint'
             WHERE status = 'running'"
        ))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let evals = sqlx::query(&format!(
            "UPDATE evals SET status = 'interrupted', finished_at = {NOW},
                 error = 'the server stopped during this evaluation; start it again'
             WHERE status = 'running'"
        ))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(runs + evals)
    }

    pub async fn insert_test_set(
        &self,
        name: &str,
        path: &str,
        questions: u32,
        passages: u32,
    ) -> Result<TestSetInfo, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO test_sets (name, path, questions, passages) VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(name)
        .bind(path)
        .bind(i64::from(questions))
        .bind(i64::from(passages))
        .fetch_one(&self.pool)
        .await?;
        Ok(TestSetInfo { id, name: name.to_owned(), questions, passages })
    }

    /// A test set and its file's path.
    pub async fn test_set(&self, id: i64) -> Result<Option<(TestSetInfo, String)>, StoreError> {
        let row: Option<(i64, String, String, i64, i64)> =
            sqlx::query_as("SELECT id, name, path, questions, passages FROM test_sets WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(id, name, path, questions, passages)| {
            (TestSetInfo { id, name, questions: questions as u32, passages: passages as u32 }, path)
        }))
    }

    /// Goes up by one whenever a passage is added, removed or changed (triggers keep it).
    pub async fn corpus_revision(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT revision FROM corpus_revision WHERE id = 1").fetch_one(&self.pool).await?)
    }

    /// Every passage with its document, in a stable order (document, then position).
    pub async fn indexed_passages(&self) -> Result<Vec<IndexedPassage>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.id, p.document_id, d.name, p.page_start, p.page_end, p.text
             FROM passages p JOIN documents d ON d.id = p.document_id ORDER BY p.document_id, p.ord",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(IndexedPassage {
                    id: row.try_get(0)?,
                    document_id: row.try_get(1)?,
                    document: row.try_get(2)?,
                    page_start: row.try_get::<Option<i64>, _>(3)?.map(|p| p as u32),
                    page_end: row.try_get::<Option<i64>, _>(4)?.map(|p| p as u32),
                    text: row.try_get(5)?,
                })
            })
            .collect()
    }
}
