//! Wire types of the corpus: documents, their passages, (question, passage, answer) triples under
//! review, and synthesis runs with their reports (`/api/v1/documents`, `/triples`, `/synth/runs`).

use serde::{Deserialize, Serialize};

use crate::ErrorDetail;

/// An ingested document with its counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: i64,
    pub name: String,
    /// `pdf`, `text` or `markdown`.
    pub kind: String,
    pub sha256: String,
    pub bytes: u64,
    #[serde(default)]
    pub pages: Option<u32>,
    pub passages: u32,
    #[serde(default)]
    pub triples: TripleCounts,
    pub created_at: String,
}

/// Triples per review status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TripleCounts {
    pub pending: u64,
    pub approved: u64,
    pub rejected: u64,
    /// Synthetic candidates a filter dropped, kept for a person to rescue (not part of "all").
    pub filtered: u64,
}

impl TripleCounts {
    /// The count of `status`; `None` is "all": the triples under review (filtered ones aside).
    pub fn of(&self, status: Option<TripleStatus>) -> u64 {
        match status {
            Some(TripleStatus::Pending) => self.pending,
            Some(TripleStatus::Approved) => self.approved,
            Some(TripleStatus::Rejected) => self.rejected,
            Some(TripleStatus::Filtered) => self.filtered,
            None => self.pending + self.approved + self.rejected,
        }
    }

    /// The counter of `status`.
    pub fn slot(&mut self, status: TripleStatus) -> &mut u64 {
        match status {
            TripleStatus::Pending => &mut self.pending,
            TripleStatus::Approved => &mut self.approved,
            TripleStatus::Rejected => &mut self.rejected,
            TripleStatus::Filtered => &mut self.filtered,
        }
    }
}

/// A passage of a document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    pub id: i64,
    pub document_id: i64,
    pub ord: u32,
    pub text: String,
    pub char_start: u64,
    pub char_end: u64,
    #[serde(default)]
    pub page_start: Option<u32>,
    #[serde(default)]
    pub page_end: Option<u32>,
    pub tokens: u32,
    #[serde(default)]
    pub section: Option<String>,
    /// Triples made from this passage (pending, approved or rejected).
    #[serde(default)]
    pub triples: u32,
    /// Set when synthesis skips the passage: `table of contents`, `index` or `bibliography`.
    #[serde(default)]
    pub reference_matter: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TripleStatus {
    Pending,
    Approved,
    Rejected,
    /// A synthetic candidate a filter dropped (`filter_reason` says which); never trained on
    /// until a person keeps it (back to pending).
    Filtered,
}

impl TripleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TripleStatus::Pending => "pending",
            TripleStatus::Approved => "approved",
            TripleStatus::Rejected => "rejected",
            TripleStatus::Filtered => "filtered",
        }
    }

    pub fn parse(text: &str) -> Option<TripleStatus> {
        match text {
            "pending" => Some(TripleStatus::Pending),
            "approved" => Some(TripleStatus::Approved),
            "rejected" => Some(TripleStatus::Rejected),
            "filtered" => Some(TripleStatus::Filtered),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TripleOrigin {
    Synthetic,
    Imported,
    Manual,
}

impl TripleOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            TripleOrigin::Synthetic => "synthetic",
            TripleOrigin::Imported => "imported",
            TripleOrigin::Manual => "manual",
        }
    }

    pub fn parse(text: &str) -> Option<TripleOrigin> {
        match text {
            "synthetic" => Some(TripleOrigin::Synthetic),
            "imported" => Some(TripleOrigin::Imported),
            "manual" => Some(TripleOrigin::Manual),
            _ => None,
        }
    }
}

/// A (question, passage, answer) triple and its review state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Triple {
    pub id: i64,
    pub question: String,
    pub answer: String,
    /// The passage text the triple was made from (kept when its document is deleted).
    pub passage: String,
    #[serde(default)]
    pub passage_id: Option<i64>,
    #[serde(default)]
    pub document_id: Option<i64>,
    pub status: TripleStatus,
    pub origin: TripleOrigin,
    /// The model and prompt that wrote it (synthetic triples).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub synth_run_id: Option<i64>,
    /// Increases on every change; an update must name the version it read.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    /// Why a filter dropped it (status `filtered`), in words.
    #[serde(default)]
    pub filter_reason: Option<String>,
    /// The name of its document, and the pages of its passage, while they exist.
    #[serde(default)]
    pub document: Option<String>,
    #[serde(default)]
    pub page_start: Option<u32>,
    #[serde(default)]
    pub page_end: Option<u32>,
    /// The LLM judge's scores, when the run that wrote it asked for them.
    #[serde(default)]
    pub judge: Option<JudgeScores>,
}

/// An LLM judge's scores of a triple, each 1 (poor) to 5 (excellent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeScores {
    /// Whether the passage states the answer.
    pub grounded: u8,
    /// Whether a reader of such documents would ask the question, and it makes sense on its own.
    pub useful: u8,
}

impl JudgeScores {
    /// The lower of the two: what "approve at" compares and sorting ranks by first.
    pub fn least(self) -> u8 {
        self.grounded.min(self.useful)
    }
}

/// Scoring a synthesis run's kept triples with an LLM judge (the settings' OpenAI-compatible
/// server), and approving the best at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeSettings {
    /// Approve a triple whose two scores are both at least this (1–5); `None`: leave all pending.
    pub approve_at: Option<u8>,
}

impl JudgeSettings {
    pub fn validate(&self) -> Result<(), String> {
        match self.approve_at {
            Some(score) if !(1..=5).contains(&score) => {
                Err(format!("judge.approve_at must be a score from 1 to 5 (got {score})"))
            }
            _ => Ok(()),
        }
    }
}

/// One page of a triple listing, with the counts of everything matching the filter's other terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriplePage {
    pub items: Vec<Triple>,
    /// Triples matching the whole filter.
    pub total: u64,
    /// Triples matching the filter except its status, per status.
    #[serde(default)]
    pub counts: TripleCounts,
    pub page: u32,
    pub per_page: u32,
    /// Filtered candidates matching the filter except its status and reason, by the reason a
    /// filter dropped them (most first): what "dropped because …" can pick.
    #[serde(default)]
    pub reasons: Vec<ReasonCount>,
}

/// How many filtered candidates one reason dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    pub reason: String,
    pub count: u64,
}

/// A triple as it was before one change (its edit history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TripleEdit {
    pub version: i64,
    pub question: String,
    pub answer: String,
    pub status: TripleStatus,
    pub edited_at: String,
}

/// `POST /triples`: a triple written by hand for a passage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTriple {
    pub passage_id: i64,
    pub question: String,
    pub answer: String,
}

/// `PATCH /triples/{id}`: the fields to change and the version they were read at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TripleUpdate {
    pub version: i64,
    #[serde(default)]
    pub question: Option<String>,
    #[serde(default)]
    pub answer: Option<String>,
    #[serde(default)]
    pub status: Option<TripleStatus>,
}

/// The triples a listing's filter matches (every term optional), for "all matching" bulk actions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TripleMatch {
    pub status: Option<TripleStatus>,
    pub document_id: Option<i64>,
    pub origin: Option<TripleOrigin>,
    /// Words that must all occur in the question, answer or passage.
    pub q: Option<String>,
    /// Filtered candidates dropped for this reason only.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /triples/bulk`: one action on many triples, listed or matching a filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum BulkAction {
    SetStatus { ids: Vec<i64>, status: TripleStatus },
    Delete { ids: Vec<i64> },
    SetStatusMatching { matching: TripleMatch, status: TripleStatus },
    DeleteMatching { matching: TripleMatch },
}

/// What one bulk action changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkResult {
    pub changed: u64,
}

/// What happened to each uploaded file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum UploadOutcome {
    Ingested {
        document: Document,
    },
    /// The same bytes were ingested before (same SHA-256): nothing new was stored.
    Duplicate {
        document: Document,
    },
    Failed {
        name: String,
        error: ErrorDetail,
    },
}

/// `POST /documents` (multipart, several files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadResult {
    pub files: Vec<UploadOutcome>,
}

/// `POST /triples/import`: how many rows became triples, and the rows skipped with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportResult {
    pub imported: u64,
    #[serde(default)]
    pub skipped: Vec<String>,
}

/// Which LLM writes synthetic triples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LlmChoice {
    /// The local default generator.
    Local,
    /// An OpenAI-compatible chat-completions server (API key from `ATTUNE_LLM_API_KEY` on the server).
    OpenAi { base_url: String, model: String },
}

/// How a synthesis run gets each question's answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerStyle {
    /// The LLM writes it (the answer template), a few words or a sentence.
    #[default]
    Written,
    /// The LLM picks the passage's sentence that answers the question (its number, the reply held
    /// to the numbers offered): the answer is that sentence, word for word. A small model picks
    /// far better than it writes, and picking decodes one token.
    Extractive,
}

impl AnswerStyle {
    /// The style a run gets when its request names none: extractive for the local model, written
    /// for a server's (larger) model.
    pub fn default_for(llm: &LlmChoice) -> AnswerStyle {
        match llm {
            LlmChoice::Local => AnswerStyle::Extractive,
            LlmChoice::OpenAi { .. } => AnswerStyle::Written,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AnswerStyle::Written => "written",
            AnswerStyle::Extractive => "extractive",
        }
    }
}

/// The two prompt templates of a synthesis run (minijinja): questions from `{{ passage }}` with
/// `{{ n }}`, then an answer from `{{ passage }}` and `{{ question }}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthPrompts {
    pub questions: String,
    pub answer: String,
}

/// `POST /synth/runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthRequest {
    /// A whole document, or the listed passages, or (neither) every passage.
    #[serde(default)]
    pub document_id: Option<i64>,
    #[serde(default)]
    pub passage_ids: Vec<i64>,
    #[serde(default)]
    pub questions_per_passage: Option<u32>,
    #[serde(default)]
    pub llm: Option<LlmChoice>,
    /// Custom templates; the defaults otherwise (`GET /synth/prompts`).
    #[serde(default)]
    pub prompts: Option<SynthPrompts>,
    /// At most this many passages.
    #[serde(default)]
    pub limit: Option<u32>,
    /// The filters' thresholds; the defaults otherwise.
    #[serde(default)]
    pub filters: Option<FilterSettings>,
    /// How answers are got; [`AnswerStyle::default_for`] the LLM otherwise.
    #[serde(default)]
    pub answers: Option<AnswerStyle>,
    /// Score each kept triple with the settings' OpenAI-compatible server as a judge.
    #[serde(default)]
    pub judge: Option<JudgeSettings>,
    /// Ask for questions with the built-in template that shows two worked examples (few-shot);
    /// not with custom `prompts`.
    #[serde(default)]
    pub few_shot: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The server stopped while it ran; it can be resumed.
    Interrupted,
}

impl JobStatus {
    /// The name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Interrupted => "interrupted",
        }
    }

    /// The status named `text`; `None` for anything else.
    pub fn parse(text: &str) -> Option<JobStatus> {
        [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
            JobStatus::Interrupted,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Thresholds of the filters a synthetic question and its answer pass to be kept.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilterSettings {
    /// A question copying this many consecutive words of the passage is rejected.
    pub max_copied_words: usize,
    /// At least this share of the answer's content words must occur in the passage.
    pub min_grounding: f64,
    /// Answers longer than this many words are rejected.
    pub max_answer_words: usize,
    /// An answer that holds at least this share of the question's content words, and at most one
    /// content word of its own, only says the question again.
    pub max_question_overlap: f64,
    /// Round-trip consistency: a question is kept only if the base retriever ranks its own passage
    /// among its top this-many of the whole corpus (0: not checked).
    pub round_trip_top_k: u32,
    /// A question whose embedding has at least this cosine similarity to a question kept before
    /// (for any passage) is a near-duplicate (1: not checked).
    pub max_question_similarity: f64,
}

impl Default for FilterSettings {
    fn default() -> Self {
        FilterSettings {
            max_copied_words: 10,
            min_grounding: 0.5,
            max_answer_words: 40,
            max_question_overlap: 0.8,
            round_trip_top_k: 3,
            max_question_similarity: 0.95,
        }
    }
}

impl FilterSettings {
    /// Why these thresholds cannot be used, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=200).contains(&self.max_copied_words) {
            return Err(format!("max_copied_words must be 2 to 200 (got {})", self.max_copied_words));
        }
        if !(0.0..=1.0).contains(&self.min_grounding) {
            return Err(format!("min_grounding must be 0 to 1 (got {})", self.min_grounding));
        }
        if !(1..=1000).contains(&self.max_answer_words) {
            return Err(format!("max_answer_words must be 1 to 1000 (got {})", self.max_answer_words));
        }
        if !(self.max_question_overlap > 0.0 && self.max_question_overlap <= 1.0) {
            return Err(format!(
                "max_question_overlap must be above 0 and at most 1 (got {})",
                self.max_question_overlap
            ));
        }
        if self.round_trip_top_k > 1000 {
            return Err(format!("round_trip_top_k must be 0 (off) to 1000 (got {})", self.round_trip_top_k));
        }
        if !(self.max_question_similarity > 0.0 && self.max_question_similarity <= 1.0) {
            return Err(format!(
                "max_question_similarity must be above 0 and at most 1 (got {})",
                self.max_question_similarity
            ));
        }
        Ok(())
    }

    /// Whether a run needs the base retriever and the whole corpus embedded: for round trips or
    /// near-duplicates.
    pub fn checks_corpus(&self) -> bool {
        self.round_trip_top_k > 0 || self.max_question_similarity < 1.0
    }
}

/// Questions a synthesis run threw away, per filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilterCounts {
    /// Empty question or answer.
    pub empty: u64,
    /// The same question again for the passage (or already stored).
    pub duplicate: u64,
    /// Not ending in "?".
    pub not_a_question: u64,
    /// Copies a long span of the passage word for word.
    pub copies_passage: u64,
    /// The answer's words are not found in the passage.
    pub ungrounded: u64,
    /// The answer is longer than allowed.
    pub answer_too_long: u64,
    /// The answer only says the question again ("The X of Y is X of Y").
    pub restates_question: u64,
    /// The base retriever does not rank the question's own passage in its top k (round trip).
    pub not_retrieved: u64,
    /// Nearly the same question (by embedding) as one kept before, for any passage.
    pub near_duplicate: u64,
}

impl FilterCounts {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &FilterCounts) {
        let FilterCounts {
            empty,
            duplicate,
            not_a_question,
            copies_passage,
            ungrounded,
            answer_too_long,
            restates_question,
            not_retrieved,
            near_duplicate,
        } = other;
        self.empty += empty;
        self.duplicate += duplicate;
        self.not_a_question += not_a_question;
        self.copies_passage += copies_passage;
        self.ungrounded += ungrounded;
        self.answer_too_long += answer_too_long;
        self.restates_question += restates_question;
        self.not_retrieved += not_retrieved;
        self.near_duplicate += near_duplicate;
    }

    /// Each filter's count with what it dropped, in words (the order reports list them in).
    pub fn reasons(&self) -> [(u64, &'static str); 9] {
        [
            (self.not_retrieved, "questions whose passage the retriever does not find"),
            (self.near_duplicate, "near-duplicate questions"),
            (self.ungrounded, "answers not found in the passage"),
            (self.answer_too_long, "answers too long"),
            (self.restates_question, "answers restating the question"),
            (self.duplicate, "duplicate questions"),
            (self.not_a_question, "not questions"),
            (self.copies_passage, "questions copying the passage"),
            (self.empty, "empty"),
        ]
    }

    /// Candidates dropped by any filter.
    pub fn total(&self) -> u64 {
        self.reasons().iter().map(|(n, _)| n).sum()
    }
}

/// A synthesis run's running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SynthReport {
    pub passages_done: u64,
    pub questions_seen: u64,
    pub kept: u64,
    pub filtered: FilterCounts,
    /// Passages whose LLM calls failed (after retries).
    pub failed_passages: u64,
    /// Passages not sent to the LLM: tables of contents, indexes, bibliographies.
    pub skipped_passages: u64,
    pub seconds: f64,
    /// Kept triples the judge scored, those it approved, and those whose scores could not be got
    /// (a failed call or an unreadable reply: they stay pending, unscored).
    pub judged: u64,
    pub judge_approved: u64,
    pub judge_failed: u64,
}

/// A synthesis run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthRun {
    pub id: i64,
    pub status: JobStatus,
    pub llm: LlmChoice,
    pub model: String,
    pub questions_per_passage: u32,
    pub prompts: SynthPrompts,
    pub passages_total: u64,
    #[serde(default)]
    pub report: SynthReport,
    /// The document the run was started for (none: passages of several documents).
    #[serde(default)]
    pub document_id: Option<i64>,
    /// The thresholds its filters use (a resumed run keeps them).
    #[serde(default)]
    pub filters: FilterSettings,
    /// How its answers are got (runs stored before this setting wrote theirs).
    #[serde(default)]
    pub answers: AnswerStyle,
    /// Whether an LLM judge scores its kept triples.
    #[serde(default)]
    pub judge: Option<JudgeSettings>,
    #[serde(default)]
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}
