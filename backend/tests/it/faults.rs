//! Faults in the data and jobs (issue 15's "data and jobs"): unreadable rows, a second server on
//! the same folder, panicking jobs, racing cancels and edits.

use axum::http::StatusCode;

use crate::common::{TestApp, call, get};
use attune::serve::{AppState, ServeConfig, app};
use attune::store::{DATABASE_FILE, Store};
use attune_shared::NewRun;

/// Before, a NaN step stored as JSON `null` failed `GET /runs`, `POST /runs` and the server's
/// start; now such a row is skipped (with a warning) and the rest reads.
#[tokio::test]
async fn an_unreadable_row_is_skipped_not_fatal() {
    let dirs = tempfile::tempdir().unwrap();
    let data = dirs.path().join("data");
    {
        let store = Store::open(&data).await.unwrap();
        let good =
            store.insert_run("good", &serde_json::from_str::<NewRun>("{}").unwrap(), "runs/1", 10, 2).await.unwrap();
        let bad =
            store.insert_run("bad", &serde_json::from_str::<NewRun>("{}").unwrap(), "runs/2", 10, 2).await.unwrap();
        let point = attune_shared::StepPoint { step: 1, total_steps: 3, loss: 0.5, ..Default::default() };
        store.record_step(good.id, &point, None).await.unwrap();
        store.close().await;
        let url = format!("sqlite://{}", data.join(DATABASE_FILE).display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let nan_step = r#"{"step":2,"total_steps":3,"loss":null}"#;
        sqlx::query("INSERT INTO run_metrics (run_id, step, point) VALUES (?, 2, ?)")
            .bind(good.id)
            .bind(nan_step)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE runs SET last = ? WHERE id = ?").bind(nan_step).bind(good.id).execute(&pool).await.unwrap();
        sqlx::query(r#"UPDATE runs SET request = '{"mode":"sideways"}' WHERE id = ?"#)
            .bind(bad.id)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let config = ServeConfig::new(data.clone(), dirs.path().join("models"), dirs.path().join("dist"));
    let state = AppState::open(config).await.expect("the server starts");
    let app = TestApp { router: app(state), _dirs: dirs };
    let (status, runs) = call(&app, get("/api/v1/runs")).await;
    assert_eq!(status, StatusCode::OK, "{runs}");
    let names: Vec<&str> = runs.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["good"]);
    let id = runs[0]["id"].as_i64().unwrap();
    let (status, points) = call(&app, get(&format!("/api/v1/runs/{id}/metrics"))).await;
    assert_eq!(status, StatusCode::OK, "{points}");
    assert_eq!(points.as_array().unwrap().len(), 1, "{points}");
}

/// Before, a second `attune serve` on the same folder marked the first one's running jobs
/// interrupted and ran its queue a second time.
#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let dirs = tempfile::tempdir().unwrap();
    let config = || ServeConfig::new(dirs.path().join("data"), dirs.path().join("models"), dirs.path().join("dist"));
    let first = AppState::open(config()).await.unwrap();
    let second = AppState::open(config()).await.unwrap_err();
    assert!(matches!(second, attune::serve::ServeError::DataDirInUse { .. }), "{second}");
    assert!(second.to_string().contains("another `attune serve`"), "{second}");
    first.stop_jobs().await;
    drop(first);
    AppState::open(config()).await.expect("free again once the first is gone");
}

/// Claim and cancel are compare-and-set: whichever lands first wins, the other sees it.
#[tokio::test]
async fn claim_and_cancel_of_a_queued_run_never_both_win() {
    use attune::store::jobs::QueuedJob;
    let dirs = tempfile::tempdir().unwrap();
    let store = Store::open(dirs.path()).await.unwrap();
    let request = serde_json::from_str::<NewRun>("{}").unwrap();
    let a = store.insert_run("a", &request, "runs/a", 1, 0).await.unwrap();
    assert!(store.cancel_queued_run(a.id).await.unwrap().is_some());
    assert!(!store.claim_job(QueuedJob::Run(a.id)).await.unwrap(), "a cancelled run is not claimed");
    assert_eq!(store.run(a.id).await.unwrap().unwrap().status, attune_shared::JobStatus::Cancelled);
    let b = store.insert_run("b", &request, "runs/b", 1, 0).await.unwrap();
    assert!(store.claim_job(QueuedJob::Run(b.id)).await.unwrap());
    assert!(store.cancel_queued_run(b.id).await.unwrap().is_none(), "a running run is not cancelled as queued");
    assert_eq!(store.run(b.id).await.unwrap().unwrap().status, attune_shared::JobStatus::Running);
    // Many racing pairs: exactly one of the two wins each time.
    for i in 0..40 {
        let run = store.insert_run(&format!("r{i}"), &request, "runs/r", 1, 0).await.unwrap();
        let (claimed, cancelled) =
            tokio::join!(store.claim_job(QueuedJob::Run(run.id)), store.cancel_queued_run(run.id));
        assert!(claimed.unwrap() != cancelled.unwrap().is_some(), "run {i}");
    }
}

#[tokio::test]
async fn health_shows_each_compute_thread() {
    let dirs = tempfile::tempdir().unwrap();
    let config = ServeConfig::new(dirs.path().join("data"), dirs.path().join("models"), dirs.path().join("dist"));
    let app = TestApp { router: app(AppState::open(config).await.unwrap()), _dirs: dirs };
    let (status, health) = call(&app, get("/api/v1/health")).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let names: Vec<&str> = health["threads"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["jobs", "chat", "synthesis"]);
    assert!(health["threads"].as_array().unwrap().iter().all(|t| t["state"] == "idle" && t["panics"] == 0), "{health}");
}
