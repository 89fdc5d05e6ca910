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
