//! Documents, passages, triples (with optimistic concurrency and an edit history) and synthesis
//! runs. Every multi-row write is one transaction.

use attune_shared::{
    Document, JobStatus, Passage, ReasonCount, SynthReport, SynthRun, Triple, TripleCounts, TripleEdit, TripleOrigin,
    TriplePage, TripleStatus, TripleUpdate,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{Store, StoreError};

/// A parsed, chunked document to store.
#[derive(Debug, Clone)]
pub struct NewDocument {
    pub name: String,
    pub kind: String,
    pub sha256: String,
    pub bytes: u64,
    pub pages: Option<u32>,
    pub chunk_tokens: u32,
    pub chunk_overlap: u32,
    pub passages: Vec<NewPassage>,
}

#[derive(Debug, Clone)]
pub struct NewPassage {
    pub text: String,
    pub char_start: u64,
    pub char_end: u64,
    pub page_start: Option<u32>,
    pub page_end: Option<u32>,
    pub tokens: u32,
    pub section: Option<String>,
}

/// A triple to insert.
#[derive(Debug, Clone)]
pub struct NewTripleRow {
    pub question: String,
    pub answer: String,
    pub passage: String,
    pub passage_id: Option<i64>,
    pub document_id: Option<i64>,
    pub origin: TripleOrigin,
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub synth_run_id: Option<i64>,
    /// Set for a candidate a filter dropped: stored as `filtered`, with this reason.
    pub filter_reason: Option<String>,
    /// The LLM judge's scores.
    pub judge: Option<attune_shared::JudgeScores>,
    /// Stored approved (the judge's scores reached the run's threshold) rather than pending.
    pub approved: bool,
}

/// What happens to a deleted document's triples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriplesOfDeleted {
    /// They stay, with the passage text they hold.
    Keep,
    Delete,
}

/// Which triples a listing shows.
#[derive(Debug, Clone, Default)]
pub struct TripleFilter {
    pub status: Option<TripleStatus>,
    pub document_id: Option<i64>,
    pub origin: Option<TripleOrigin>,
    /// Words that must occur in the question, answer or passage (case-insensitive).
    pub search: Option<String>,
    pub sort: TripleSort,
    /// Filtered candidates dropped for this reason only.
    pub reason: Option<String>,
    /// Triples the synthesis run wrote.
    pub synth_run: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TripleSort {
    #[default]
    Oldest,
    Newest,
    RecentlyUpdated,
    Question,
    /// The LLM judge's scores, best first.
    Judge,
}

const DOCUMENT_COLUMNS: &str = "d.id, d.name, d.kind, d.sha256, d.bytes, d.pages, d.created_at,
    (SELECT COUNT(*) FROM passages p WHERE p.document_id = d.id) AS passage_count,
    (SELECT COUNT(*) FROM triples t WHERE t.document_id = d.id AND t.status = 'pending') AS pending,
    (SELECT COUNT(*) FROM triples t WHERE t.document_id = d.id AND t.status = 'approved') AS approved,
    (SELECT COUNT(*) FROM triples t WHERE t.document_id = d.id AND t.status = 'rejected') AS rejected";

const TRIPLE_COLUMNS: &str = "id, question, answer, passage, passage_id, document_id, status, origin, model, prompt,
    synth_run_id, version, created_at, updated_at, filter_reason, judge_grounded, judge_useful,
    (SELECT d.name FROM documents d WHERE d.id = triples.document_id) AS document_name,
    (SELECT p.page_start FROM passages p WHERE p.id = triples.passage_id) AS passage_page_start,
    (SELECT p.page_end FROM passages p WHERE p.id = triples.passage_id) AS passage_page_end";

/// A passage's columns with the number of its triples under review (filtered candidates aside).
const PASSAGE_COLUMNS: &str = "*, (SELECT COUNT(*) FROM triples t WHERE t.passage_id = passages.id
    AND t.status != 'filtered') AS triple_count";

fn document(row: &SqliteRow) -> Result<Document, sqlx::Error> {
    Ok(Document {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        sha256: row.try_get("sha256")?,
        bytes: row.try_get::<i64, _>("bytes")? as u64,
        pages: row.try_get::<Option<i64>, _>("pages")?.map(|p| p as u32),
        passages: row.try_get::<i64, _>("passage_count")? as u32,
        triples: TripleCounts {
            pending: row.try_get::<i64, _>("pending")? as u64,
            approved: row.try_get::<i64, _>("approved")? as u64,
            rejected: row.try_get::<i64, _>("rejected")? as u64,
            filtered: 0,
        },
        created_at: row.try_get("created_at")?,
    })
}

fn passage(row: &SqliteRow) -> Result<Passage, sqlx::Error> {
    let text: String = row.try_get("text")?;
    Ok(Passage {
        reference_matter: crate::synth::reference_matter(&text).map(|kind| kind.as_str().to_owned()),
        id: row.try_get("id")?,
        document_id: row.try_get("document_id")?,
        ord: row.try_get::<i64, _>("ord")? as u32,
        text,
        char_start: row.try_get::<i64, _>("char_start")? as u64,
        char_end: row.try_get::<i64, _>("char_end")? as u64,
        page_start: row.try_get::<Option<i64>, _>("page_start")?.map(|p| p as u32),
        page_end: row.try_get::<Option<i64>, _>("page_end")?.map(|p| p as u32),
        tokens: row.try_get::<i64, _>("tokens")? as u32,
        section: row.try_get("section")?,
        // Queries without PASSAGE_COLUMNS' count (a run's pending passages) read 0.
        triples: row.try_get::<Option<i64>, _>("triple_count").ok().flatten().unwrap_or(0) as u32,
    })
}

fn triple(row: &SqliteRow) -> Result<Triple, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let origin: String = row.try_get("origin")?;
    Ok(Triple {
        id: row.try_get("id")?,
        question: row.try_get("question")?,
        answer: row.try_get("answer")?,
        passage: row.try_get("passage")?,
        passage_id: row.try_get("passage_id")?,
        document_id: row.try_get("document_id")?,
        status: TripleStatus::parse(&status).unwrap_or(TripleStatus::Pending),
        origin: TripleOrigin::parse(&origin).unwrap_or(TripleOrigin::Manual),
        model: row.try_get("model")?,
        prompt: row.try_get("prompt")?,
        synth_run_id: row.try_get("synth_run_id")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        filter_reason: row.try_get("filter_reason")?,
        document: row.try_get("document_name")?,
        page_start: row.try_get::<Option<i64>, _>("passage_page_start")?.map(|p| p as u32),
        page_end: row.try_get::<Option<i64>, _>("passage_page_end")?.map(|p| p as u32),
        judge: match (row.try_get::<Option<i64>, _>("judge_grounded")?, row.try_get::<Option<i64>, _>("judge_useful")?)
        {
            (Some(grounded), Some(useful)) => {
                Some(attune_shared::JudgeScores { grounded: grounded as u8, useful: useful as u8 })
            }
            _ => None,
        },
    })
}

/// The synthesis run's stored configuration (`synth_runs.config`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SynthRunConfig {
    pub llm: attune_shared::LlmChoice,
    pub model: String,
    pub questions_per_passage: u32,
    pub prompts: attune_shared::SynthPrompts,
    /// The document the run was started for.
    #[serde(default)]
    pub document_id: Option<i64>,
    #[serde(default)]
    pub filters: attune_shared::FilterSettings,
    #[serde(default)]
    pub answers: attune_shared::AnswerStyle,
    #[serde(default)]
    pub judge: Option<attune_shared::JudgeSettings>,
}

fn synth_run(row: &SqliteRow) -> Result<SynthRun, StoreError> {
    let config: String = row.try_get("config")?;
    let config: SynthRunConfig = serde_json::from_str(&config)
        .map_err(|error| StoreError::Corrupt { key: "synth_runs.config".into(), error })?;
    let report: String = row.try_get("report")?;
    let report: SynthReport = serde_json::from_str(&report)
        .map_err(|error| StoreError::Corrupt { key: "synth_runs.report".into(), error })?;
    let status: String = row.try_get("status")?;
    Ok(SynthRun {
        id: row.try_get("id")?,
        status: job_status(&status),
        llm: config.llm,
        model: config.model,
        questions_per_passage: config.questions_per_passage,
        prompts: config.prompts,
        passages_total: row.try_get::<i64, _>("passages_total")? as u64,
        report,
        document_id: config.document_id,
        filters: config.filters,
        answers: config.answers,
        judge: config.judge,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A stored status; an unknown one reads as interrupted (resumable, never lost).
pub(super) fn job_status(text: &str) -> JobStatus {
    JobStatus::parse(text).unwrap_or(JobStatus::Interrupted)
}

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

impl Store {
    /// Stores a document and all its passages in one transaction.
    pub async fn insert_document(&self, new: &NewDocument) -> Result<Document, StoreError> {
        let mut tx = self.write_transaction().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO documents (name, kind, sha256, bytes, pages, chunk_tokens, chunk_overlap)
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&new.name)
        .bind(&new.kind)
        .bind(&new.sha256)
        .bind(new.bytes as i64)
        .bind(new.pages.map(i64::from))
        .bind(i64::from(new.chunk_tokens))
        .bind(i64::from(new.chunk_overlap))
        .fetch_one(&mut *tx)
        .await?;
        for (ord, p) in new.passages.iter().enumerate() {
            sqlx::query(
                "INSERT INTO passages (document_id, ord, text, char_start, char_end, page_start, page_end, tokens, section)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(id)
            .bind(ord as i64)
            .bind(&p.text)
            .bind(p.char_start as i64)
            .bind(p.char_end as i64)
            .bind(p.page_start.map(i64::from))
            .bind(p.page_end.map(i64::from))
            .bind(i64::from(p.tokens))
            .bind(&p.section)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.document(id).await?.ok_or(StoreError::NotFound("document"))
    }

    pub async fn document(&self, id: i64) -> Result<Option<Document>, StoreError> {
        let row = sqlx::query(&format!("SELECT {DOCUMENT_COLUMNS} FROM documents d WHERE d.id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(document).transpose()?)
    }

    pub async fn document_by_sha256(&self, sha256: &str) -> Result<Option<Document>, StoreError> {
        let row = sqlx::query(&format!("SELECT {DOCUMENT_COLUMNS} FROM documents d WHERE d.sha256 = ?"))
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(document).transpose()?)
    }

    /// Every document, newest first.
    pub async fn documents(&self) -> Result<Vec<Document>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {DOCUMENT_COLUMNS} FROM documents d ORDER BY d.id DESC"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(document).collect::<Result<_, _>>()?)
    }

    /// Deletes a document and its passages; its triples are kept (with their passage text) or
    /// deleted. `false` if there was no such document.
    pub async fn delete_document(&self, id: i64, triples: TriplesOfDeleted) -> Result<bool, StoreError> {
        let mut tx = self.write_transaction().await?;
        if triples == TriplesOfDeleted::Delete {
            sqlx::query("DELETE FROM triples WHERE document_id = ?").bind(id).execute(&mut *tx).await?;
        }
        let deleted = sqlx::query("DELETE FROM documents WHERE id = ?").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// A document's passages in order.
    pub async fn passages(&self, document_id: i64) -> Result<Vec<Passage>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {PASSAGE_COLUMNS} FROM passages WHERE document_id = ? ORDER BY ord"))
            .bind(document_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(passage).collect::<Result<_, _>>()?)
    }

    pub async fn passage(&self, id: i64) -> Result<Option<Passage>, StoreError> {
        let row = sqlx::query(&format!("SELECT {PASSAGE_COLUMNS} FROM passages WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(passage).transpose()?)
    }

    /// The one document all of `passage_ids` belong to, if they share one.
    pub async fn document_of_passages(&self, passage_ids: &[i64]) -> Result<Option<i64>, StoreError> {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT DISTINCT document_id FROM passages WHERE id IN (");
        let mut list = query.separated(", ");
        for id in passage_ids {
            list.push_bind(id);
        }
        query.push(") LIMIT 2");
        let documents: Vec<i64> = query.build_query_scalar().fetch_all(&self.pool).await?;
        Ok(match documents.as_slice() {
            [one] => Some(*one),
            _ => None,
        })
    }

    /// The ids of every passage (of one document, if given), in document and passage order.
    pub async fn passage_ids(&self, document_id: Option<i64>) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM passages WHERE (?1 IS NULL OR document_id = ?1) ORDER BY document_id, ord",
        )
        .bind(document_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Inserts triples in one transaction; returns their ids.
    pub async fn insert_triples(&self, rows: &[NewTripleRow]) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.write_transaction().await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            ids.push(insert_triple(&mut tx, row).await?);
        }
        tx.commit().await?;
        Ok(ids)
    }

    pub async fn triple(&self, id: i64) -> Result<Option<Triple>, StoreError> {
        let row = sqlx::query(&format!("SELECT {TRIPLE_COLUMNS} FROM triples WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(triple).transpose()?)
    }

    /// One page (1-based) of the triples matching `filter`, with the total and per-status counts.
    pub async fn triples(&self, filter: &TripleFilter, page: u32, per_page: u32) -> Result<TriplePage, StoreError> {
        let page = page.max(1);
        let per_page = per_page.clamp(1, 500);
        let mut query = QueryBuilder::<Sqlite>::new(format!("SELECT {TRIPLE_COLUMNS} FROM triples WHERE 1 = 1"));
        push_filter(&mut query, filter, true);
        query.push(match filter.sort {
            TripleSort::Oldest => " ORDER BY id",
            TripleSort::Newest => " ORDER BY id DESC",
            TripleSort::RecentlyUpdated => " ORDER BY updated_at DESC, id DESC",
            TripleSort::Question => " ORDER BY question COLLATE NOCASE, id",
            // The judge's best first (the lower score, then both), unscored last.
            TripleSort::Judge => {
                " ORDER BY min(judge_grounded, judge_useful) IS NULL, min(judge_grounded, judge_useful) DESC,
                  judge_grounded + judge_useful DESC, id"
            }
        });
        query.push(" LIMIT ").push_bind(i64::from(per_page));
        query.push(" OFFSET ").push_bind((i64::from(page) - 1) * i64::from(per_page));
        let items = query.build().fetch_all(&self.pool).await?.iter().map(triple).collect::<Result<Vec<_>, _>>()?;

        let mut counting = QueryBuilder::<Sqlite>::new("SELECT status, COUNT(*) AS n FROM triples WHERE 1 = 1");
        push_filter(&mut counting, filter, false);
        counting.push(" GROUP BY status");
        let mut counts = TripleCounts::default();
        for row in counting.build().fetch_all(&self.pool).await? {
            let n = row.try_get::<i64, _>("n")? as u64;
            if let Some(status) = TripleStatus::parse(&row.try_get::<String, _>("status")?) {
                *counts.slot(status) = n;
            }
        }
        let total = counts.of(filter.status);
        let mut by_reason = QueryBuilder::<Sqlite>::new(
            "SELECT filter_reason, COUNT(*) AS n FROM triples WHERE status = 'filtered' AND filter_reason IS NOT NULL",
        );
        push_filter(&mut by_reason, &TripleFilter { reason: None, ..filter.clone() }, false);
        by_reason.push(" GROUP BY filter_reason ORDER BY n DESC, filter_reason");
        let reasons = by_reason
            .build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(ReasonCount { reason: row.try_get("filter_reason")?, count: row.try_get::<i64, _>("n")? as u64 })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(TriplePage { items, total, counts, page, per_page, reasons })
    }

    /// The ids of every triple `filter` matches, oldest first.
    pub async fn triple_ids(&self, filter: &TripleFilter) -> Result<Vec<i64>, StoreError> {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT id FROM triples WHERE 1 = 1");
        push_filter(&mut query, filter, true);
        query.push(" ORDER BY id");
        Ok(query.build_query_scalar().fetch_all(&self.pool).await?)
    }

    /// Every triple `filter` matches (its sort aside), oldest first: what an export writes.
    pub async fn matching_triples(&self, filter: &TripleFilter) -> Result<Vec<Triple>, StoreError> {
        let mut query = QueryBuilder::<Sqlite>::new(format!("SELECT {TRIPLE_COLUMNS} FROM triples WHERE 1 = 1"));
        push_filter(&mut query, filter, true);
        query.push(" ORDER BY id");
        Ok(query.build().fetch_all(&self.pool).await?.iter().map(triple).collect::<Result<Vec<_>, _>>()?)
    }

    /// Every triple with one of `statuses` (all under review when empty), oldest first.
    pub async fn all_triples(&self, statuses: &[TripleStatus]) -> Result<Vec<Triple>, StoreError> {
        let mut query = QueryBuilder::<Sqlite>::new(format!("SELECT {TRIPLE_COLUMNS} FROM triples"));
        if statuses.is_empty() {
            query.push(" WHERE status != 'filtered'");
        } else {
            query.push(" WHERE status IN (");
            let mut list = query.separated(", ");
            for status in statuses {
                list.push_bind(status.as_str());
            }
            query.push(")");
        }
        query.push(" ORDER BY id");
        Ok(query.build().fetch_all(&self.pool).await?.iter().map(triple).collect::<Result<_, _>>()?)
    }

    /// Applies `update` if the triple is still at `update.version`: the old state goes to the edit
    /// history and the version increases. A stale version is a [`StoreError::Conflict`] carrying the
    /// current triple.
    pub async fn update_triple(&self, id: i64, update: &TripleUpdate) -> Result<Triple, StoreError> {
        let mut tx = self.write_transaction().await?;
        let current = triple_in(&mut tx, id).await?.ok_or(StoreError::NotFound("triple"))?;
        if current.version != update.version {
            return Err(StoreError::Conflict(Box::new(current)));
        }
        record_edit(&mut tx, &current).await?;
        let question = update.question.as_deref().unwrap_or(&current.question);
        let answer = update.answer.as_deref().unwrap_or(&current.answer);
        let status = update.status.unwrap_or(current.status);
        sqlx::query(&format!(
            "UPDATE triples SET question = ?, answer = ?, status = ?, version = version + 1, updated_at = {NOW}
             WHERE id = ?"
        ))
        .bind(question)
        .bind(answer)
        .bind(status.as_str())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let updated = triple_in(&mut tx, id).await?.ok_or(StoreError::NotFound("triple"))?;
        tx.commit().await?;
        Ok(updated)
    }

    /// A triple's earlier states, oldest first.
    pub async fn triple_history(&self, id: i64) -> Result<Vec<TripleEdit>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, question, answer, status, edited_at FROM triple_edits WHERE triple_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(TripleEdit {
                    version: row.try_get("version")?,
                    question: row.try_get("question")?,
                    answer: row.try_get("answer")?,
                    status: TripleStatus::parse(&row.try_get::<String, _>("status")?).unwrap_or(TripleStatus::Pending),
                    edited_at: row.try_get("edited_at")?,
                })
            })
            .collect()
    }

    /// Sets the status of many triples in one transaction (each change recorded in its history);
    /// answerless candidates are left filtered.
    pub async fn set_status(&self, ids: &[i64], status: TripleStatus) -> Result<u64, StoreError> {
        let mut tx = self.write_transaction().await?;
        let mut changed = 0;
        for &id in ids {
            let Some(current) = triple_in(&mut tx, id).await? else { continue };
            // A candidate dropped before it had an answer stays filtered until one is written.
            if current.status == status || (status != TripleStatus::Filtered && current.answer.trim().is_empty()) {
                continue;
            }
            record_edit(&mut tx, &current).await?;
            sqlx::query(&format!(
                "UPDATE triples SET status = ?, version = version + 1, updated_at = {NOW} WHERE id = ?"
            ))
            .bind(status.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
            changed += 1;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Deletes triples; returns how many existed.
    pub async fn delete_triples(&self, ids: &[i64]) -> Result<u64, StoreError> {
        let mut tx = self.write_transaction().await?;
        let mut deleted = 0;
        for id in ids {
            deleted +=
                sqlx::query("DELETE FROM triples WHERE id = ?").bind(id).execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// The questions already stored for a passage (for duplicate filtering).
    pub async fn questions_of_passage(&self, passage_id: i64) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT question FROM triples WHERE passage_id = ?")
            .bind(passage_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Creates a synthesis run over `passage_ids` (in that order), queued.
    pub async fn create_synth_run(&self, config: &SynthRunConfig, passage_ids: &[i64]) -> Result<SynthRun, StoreError> {
        let json = serde_json::to_string(config)
            .map_err(|error| StoreError::Corrupt { key: "synth_runs.config".into(), error })?;
        let mut tx = self.write_transaction().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO synth_runs (status, config, passages_total) VALUES ('queued', ?, ?) RETURNING id",
        )
        .bind(json)
        .bind(passage_ids.len() as i64)
        .fetch_one(&mut *tx)
        .await?;
        for (ord, passage_id) in passage_ids.iter().enumerate() {
            sqlx::query("INSERT OR IGNORE INTO synth_run_passages (run_id, passage_id, ord) VALUES (?, ?, ?)")
                .bind(id)
                .bind(passage_id)
                .bind(ord as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.synth_run(id).await?.ok_or(StoreError::NotFound("synthesis run"))
    }

    pub async fn synth_run(&self, id: i64) -> Result<Option<SynthRun>, StoreError> {
        let row = sqlx::query("SELECT * FROM synth_runs WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(synth_run).transpose()
    }

    pub async fn synth_runs(&self) -> Result<Vec<SynthRun>, StoreError> {
        let rows = sqlx::query("SELECT * FROM synth_runs ORDER BY id DESC").fetch_all(&self.pool).await?;
        rows.iter().map(synth_run).collect()
    }

    /// The run's passages not done yet, in order.
    pub async fn pending_synth_passages(&self, run_id: i64) -> Result<Vec<Passage>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.* FROM synth_run_passages r JOIN passages p ON p.id = r.passage_id
             WHERE r.run_id = ? AND r.done = 0 ORDER BY r.ord",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(passage).collect::<Result<_, _>>()?)
    }

    /// Records one finished passage of a run in one transaction: its kept triples, the passage
    /// marked done, the run's report.
    pub async fn finish_synth_passage(
        &self,
        run_id: i64,
        passage_id: i64,
        triples: &[NewTripleRow],
        report: &SynthReport,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(report)
            .map_err(|error| StoreError::Corrupt { key: "synth_runs.report".into(), error })?;
        let mut tx = self.write_transaction().await?;
        for row in triples {
            insert_triple(&mut tx, row).await?;
        }
        sqlx::query("UPDATE synth_run_passages SET done = 1 WHERE run_id = ? AND passage_id = ?")
            .bind(run_id)
            .bind(passage_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("UPDATE synth_runs SET report = ?, updated_at = {NOW} WHERE id = ?"))
            .bind(json)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Saves a run's report (the running totals are otherwise saved with each finished passage).
    pub async fn save_synth_report(&self, run_id: i64, report: &SynthReport) -> Result<(), StoreError> {
        let json = serde_json::to_string(report)
            .map_err(|error| StoreError::Corrupt { key: "synth_runs.report".into(), error })?;
        sqlx::query(&format!("UPDATE synth_runs SET report = ?, updated_at = {NOW} WHERE id = ?"))
            .bind(json)
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_synth_status(
        &self,
        run_id: i64,
        status: JobStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!("UPDATE synth_runs SET status = ?, error = ?, updated_at = {NOW} WHERE id = ?"))
            .bind(status.as_str())
            .bind(error)
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks runs left `running` or `queued` by a stopped server as interrupted; returns how many.
    pub async fn interrupt_unfinished_synth_runs(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query(&format!(
            "UPDATE synth_runs SET status = 'interrupted', updated_at = {NOW} WHERE status IN ('running', 'queued')"
        ))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

/// A triple as the transaction sees it.
async fn triple_in(tx: &mut sqlx::Transaction<'_, Sqlite>, id: i64) -> Result<Option<Triple>, StoreError> {
    let row = sqlx::query(&format!("SELECT {TRIPLE_COLUMNS} FROM triples WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.as_ref().map(triple).transpose()?)
}

/// Keeps a triple's state before a change in its edit history.
async fn record_edit(tx: &mut sqlx::Transaction<'_, Sqlite>, current: &Triple) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO triple_edits (triple_id, version, question, answer, status) VALUES (?, ?, ?, ?, ?)")
        .bind(current.id)
        .bind(current.version)
        .bind(&current.question)
        .bind(&current.answer)
        .bind(current.status.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_triple(tx: &mut sqlx::Transaction<'_, Sqlite>, row: &NewTripleRow) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO triples (question, answer, passage, passage_id, document_id, origin, model, prompt, synth_run_id,
                              status, filter_reason, judge_grounded, judge_useful)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(&row.question)
    .bind(&row.answer)
    .bind(&row.passage)
    .bind(row.passage_id)
    .bind(row.document_id)
    .bind(row.origin.as_str())
    .bind(&row.model)
    .bind(&row.prompt)
    .bind(row.synth_run_id)
    .bind(match (&row.filter_reason, row.approved) {
        (Some(_), _) => "filtered",
        (None, true) => "approved",
        (None, false) => "pending",
    })
    .bind(&row.filter_reason)
    .bind(row.judge.map(|j| i64::from(j.grounded)))
    .bind(row.judge.map(|j| i64::from(j.useful)))
    .fetch_one(&mut **tx)
    .await?)
}

fn push_filter(query: &mut QueryBuilder<'_, Sqlite>, filter: &TripleFilter, with_status: bool) {
    match (with_status, filter.status) {
        (true, Some(status)) => {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        // "All" means the triples under review: dropped candidates only when asked for.
        (true, None) => {
            query.push(" AND status != 'filtered'");
        }
        (false, _) => {}
    }
    if let Some(document_id) = filter.document_id {
        query.push(" AND document_id = ").push_bind(document_id);
    }
    if let Some(origin) = filter.origin {
        query.push(" AND origin = ").push_bind(origin.as_str());
    }
    if let Some(reason) = &filter.reason {
        query.push(" AND filter_reason = ").push_bind(reason.clone());
    }
    if let Some(run) = filter.synth_run {
        query.push(" AND synth_run_id = ").push_bind(run);
    }
    if let Some(search) = filter.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        for word in search.split_whitespace() {
            let pattern = format!("%{}%", word.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
            query
                .push(" AND (question LIKE ")
                .push_bind(pattern.clone())
                .push(" ESCAPE '\\' OR answer LIKE ")
                .push_bind(pattern.clone())
                .push(" ESCAPE '\\' OR passage LIKE ")
                .push_bind(pattern)
                .push(" ESCAPE '\\')");
        }
    }
}
