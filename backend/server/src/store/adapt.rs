//! Adapt jobs: which synthesis run, training run and evaluation each stage started, and where the
//! whole job stands.

use attune_shared::{AdaptJob, AdaptRequest, AdaptStage};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::corpus::job_status;
use super::{Store, StoreError};

const COLUMNS: &str = "id, status, stage, request, synth_run_id, approved, run_id, eval_id, message, created_at, \
    updated_at";

fn stage(text: &str) -> AdaptStage {
    AdaptStage::ALL.into_iter().find(|s| s.as_str() == text).unwrap_or_default()
}

fn adapt(row: &SqliteRow) -> Result<AdaptJob, StoreError> {
    let request: String = row.try_get("request")?;
    Ok(AdaptJob {
        id: row.try_get("id")?,
        status: job_status(&row.try_get::<String, _>("status")?),
        stage: stage(&row.try_get::<String, _>("stage")?),
        request: serde_json::from_str(&request)
            .map_err(|error| StoreError::Corrupt { key: "adapt_jobs.request".into(), error })?,
        synth_run: row.try_get("synth_run_id")?,
        approved: row.try_get::<Option<i64>, _>("approved")?.map(|n| n as u64),
        run: row.try_get("run_id")?,
        eval: row.try_get("eval_id")?,
        message: row.try_get("message")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// A new adapt job, running, at its first stage.
    pub async fn insert_adapt(&self, request: &AdaptRequest) -> Result<AdaptJob, StoreError> {
        let request = serde_json::to_string(request).expect("an adapt request serialises");
        let row = sqlx::query(&format!(
            "INSERT INTO adapt_jobs (status, stage, request) VALUES ('running', 'synthesis', ?) RETURNING {COLUMNS}"
        ))
        .bind(request)
        .fetch_one(&self.pool)
        .await?;
        adapt(&row)
    }

    pub async fn adapt(&self, id: i64) -> Result<Option<AdaptJob>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM adapt_jobs WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(adapt).transpose()
    }

    /// Every adapt job, newest first (an unreadable one is left out with a warning).
    pub async fn adapt_jobs(&self) -> Result<Vec<AdaptJob>, StoreError> {
        let rows =
            sqlx::query(&format!("SELECT {COLUMNS} FROM adapt_jobs ORDER BY id DESC")).fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                adapt(row).map_err(|error| tracing::warn!("skipping an unreadable adapt job: {error}")).ok()
            })
            .collect())
    }

    /// Writes `job`'s state, stage, stage jobs and message (its request never changes).
    pub async fn save_adapt(&self, job: &AdaptJob) -> Result<AdaptJob, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE adapt_jobs SET status = ?, stage = ?, synth_run_id = ?, approved = ?, run_id = ?, eval_id = ?,
                 message = ?, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE id = ? RETURNING {COLUMNS}"
        ))
        .bind(job.status.as_str())
        .bind(job.stage.as_str())
        .bind(job.synth_run)
        .bind(job.approved.map(|n| n as i64))
        .bind(job.run)
        .bind(job.eval)
        .bind(job.message.as_deref())
        .bind(job.id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(adapt).transpose()?.ok_or(StoreError::NotFound("adapt job"))
    }

    /// Marks the adapt jobs that were running when the server stopped as interrupted; returns how
    /// many.
    pub async fn interrupt_unfinished_adapt_jobs(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE adapt_jobs SET status = 'interrupted',
                 message = 'the server stopped during this job; resume it to go on from its stage',
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE status IN ('queued', 'running')",
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attune_shared::JobStatus;

    #[tokio::test]
    async fn an_adapt_job_keeps_its_stage_jobs_and_a_stop_interrupts_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let request = AdaptRequest { limit: Some(5), questions_per_passage: Some(2), ..AdaptRequest::default() };
        let mut job = store.insert_adapt(&request).await.unwrap();
        assert_eq!((job.status, job.stage, job.synth_run), (JobStatus::Running, AdaptStage::Synthesis, None));
        job.stage = AdaptStage::Training;
        job.approved = Some(12);
        job.message = Some("note".into());
        let saved = store.save_adapt(&job).await.unwrap();
        assert_eq!((saved.stage, saved.approved, saved.request.limit), (AdaptStage::Training, Some(12), Some(5)));
        assert_eq!(store.interrupt_unfinished_adapt_jobs().await.unwrap(), 1);
        let stopped = store.adapt(job.id).await.unwrap().unwrap();
        assert_eq!((stopped.status, stopped.stage), (JobStatus::Interrupted, AdaptStage::Training));
        assert_eq!(store.adapt_jobs().await.unwrap().len(), 1);
        job.id += 1;
        assert!(matches!(store.save_adapt(&job).await, Err(StoreError::NotFound(_))));
    }
}
