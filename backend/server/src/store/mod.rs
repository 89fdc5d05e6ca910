//! The SQLite store: the only module that issues SQL.
//!
//! The database lives at `<data-dir>/attune.db`, in WAL mode, and its schema grows only
//! through the migrations embedded from `backend/server/migrations/`.

pub mod adapt;
pub mod corpus;
pub mod jobs;
mod settings;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "attune.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {error}")]
    CreateDataDir { path: PathBuf, error: std::io::Error },
    #[error("cannot open database {path}: {error}")]
    Open { path: PathBuf, error: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored value under {key:?} is corrupt: {error}")]
    Corrupt { key: String, error: serde_json::Error },
    #[error("no such {0}")]
    NotFound(&'static str),
    /// An update named a version that is no longer current; carries the current triple.
    #[error("this triple was changed by someone else (now at version {})", .0.version)]
    Conflict(Box<attune_shared::Triple>),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
}

/// A handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/attune.db` and applies pending migrations.
    pub async fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|error| StoreError::CreateDataDir { path: data_dir.to_owned(), error })?;
        let path = data_dir.join(DATABASE_FILE);
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|error| StoreError::Open { path: path.clone(), error })?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|error| StoreError::Open { path: path.clone(), error })?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// Answers whether the database responds, with the latest applied migration.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(version.unwrap_or(0))
    }

    /// The journal mode SQLite reports (`wal` once opened by [`Store::open`]).
    pub async fn journal_mode(&self) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&self.pool).await?)
    }

    /// A transaction that takes the write lock at once (`BEGIN IMMEDIATE`): one that read first
    /// and upgraded later could meet another writer's lock and fail with SQLITE_BUSY, which the
    /// busy timeout cannot wait out, and two concurrent edits answered 500 instead of 200/409.
    pub(crate) async fn write_transaction(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Closes every connection, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_creates_database_in_wal_mode_with_migrations_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nested/data")).await.unwrap();
        assert!(dir.path().join("nested/data").join(DATABASE_FILE).is_file());
        assert_eq!(store.journal_mode().await.unwrap(), "wal");
        assert_eq!(store.schema_version().await.unwrap(), 6);
        store.close().await;
        // Re-opening applies nothing new and keeps the data.
        let again = Store::open(&dir.path().join("nested/data")).await.unwrap();
        assert_eq!(again.schema_version().await.unwrap(), 6);
    }

    #[tokio::test]
    async fn the_filtered_status_migration_keeps_every_triple_and_its_history() {
        // A database as round 1 left it (migrations 1 to 3), with a triple edited twice.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATABASE_FILE);
        let options = SqliteConnectOptions::from_str("sqlite://")
            .unwrap()
            .filename(&path)
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
        let mut old = sqlx::migrate!("./migrations");
        old.migrations = std::borrow::Cow::Owned(old.migrations.iter().filter(|m| m.version <= 3).cloned().collect());
        old.run(&pool).await.unwrap();
        sqlx::query("INSERT INTO triples (id, question, answer, passage, origin, status) VALUES (7, 'Q?', 'A', 'P', 'manual', 'approved')")
            .execute(&pool)
            .await
            .unwrap();
        for version in [1, 2] {
            sqlx::query("INSERT INTO triple_edits (triple_id, version, question, answer, status) VALUES (7, ?, 'Q?', 'A', 'pending')")
                .bind(version)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;

        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), 6);
        let triple = store.triple(7).await.unwrap().expect("the triple survives the rebuild");
        assert_eq!((triple.status, triple.filter_reason), (attune_shared::TripleStatus::Approved, None));
        assert_eq!(store.triple_history(7).await.unwrap().len(), 2, "its history was not cascaded away");
        // The new status is accepted, the old CHECK is gone, foreign keys still hold.
        sqlx::query("UPDATE triples SET status = 'filtered', filter_reason = 'r' WHERE id = 7")
            .execute(&store.pool)
            .await
            .unwrap();
        let fk: Vec<(String,)> =
            sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check").fetch_all(&store.pool).await.unwrap();
        assert!(fk.is_empty(), "{fk:?}");
        assert!(sqlx::query("UPDATE triples SET status = 'lost' WHERE id = 7").execute(&store.pool).await.is_err());
    }
}
