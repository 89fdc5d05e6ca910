//! Project settings, kept as one JSON document under the `project` key.

use attune_shared::Settings;

use super::{Store, StoreError};

const PROJECT_SETTINGS_KEY: &str = "project";

impl Store {
    /// The stored project settings, or the defaults when none were saved.
    pub async fn settings(&self) -> Result<Settings, StoreError> {
        let value: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
            .bind(PROJECT_SETTINGS_KEY)
            .fetch_optional(&self.pool)
            .await?;
        match value {
            None => Ok(Settings::default()),
            Some(json) => serde_json::from_str(&json)
                .map_err(|error| StoreError::Corrupt { key: PROJECT_SETTINGS_KEY.to_owned(), error }),
        }
    }

    /// Replaces the project settings (callers validate first).
    pub async fn save_settings(&self, settings: &Settings) -> Result<(), StoreError> {
        let json = serde_json::to_string(settings)
            .map_err(|error| StoreError::Corrupt { key: PROJECT_SETTINGS_KEY.to_owned(), error })?;
        let mut tx = self.write_transaction().await?;
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        )
        .bind(PROJECT_SETTINGS_KEY)
        .bind(json)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settings_default_then_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(store.settings().await.unwrap(), Settings::default());
        let changed = Settings { chunk_tokens: 128, chunk_overlap: 16, ..Settings::default() };
        store.save_settings(&changed).await.unwrap();
        store.save_settings(&changed).await.unwrap();
        assert_eq!(store.settings().await.unwrap(), changed);
    }
}
