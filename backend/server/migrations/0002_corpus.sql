-- Documents, their passages, triples under review with their edit history, and synthesis runs.
CREATE TABLE documents (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('pdf', 'text', 'markdown')),
    sha256     TEXT NOT NULL UNIQUE,
    bytes      INTEGER NOT NULL,
    pages      INTEGER,
    chunk_tokens  INTEGER NOT NULL,
    chunk_overlap INTEGER NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE passages (
    id          INTEGER PRIMARY KEY,
    document_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    ord         INTEGER NOT NULL,
    text        TEXT NOT NULL,
    char_start  INTEGER NOT NULL,
    char_end    INTEGER NOT NULL,
    page_start  INTEGER,
    page_end    INTEGER,
    tokens      INTEGER NOT NULL,
    section     TEXT,
    UNIQUE (document_id, ord)
) STRICT;

CREATE TABLE synth_runs (
    id          INTEGER PRIMARY KEY,
    status      TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    config      TEXT NOT NULL CHECK (json_valid(config)),
    report      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(report)),
    passages_total INTEGER NOT NULL,
    error       TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

-- The passages of each run, and whether each is done (a resumed run skips done ones).
CREATE TABLE synth_run_passages (
    run_id     INTEGER NOT NULL REFERENCES synth_runs (id) ON DELETE CASCADE,
    passage_id INTEGER NOT NULL,
    ord        INTEGER NOT NULL,
    done       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, passage_id)
) STRICT;

CREATE TABLE triples (
    id          INTEGER PRIMARY KEY,
    question    TEXT NOT NULL,
    answer      TEXT NOT NULL,
    passage     TEXT NOT NULL,
    passage_id  INTEGER REFERENCES passages (id) ON DELETE SET NULL,
    document_id INTEGER REFERENCES documents (id) ON DELETE SET NULL,
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
    origin      TEXT NOT NULL CHECK (origin IN ('synthetic', 'imported', 'manual')),
    model       TEXT,
    prompt      TEXT,
    synth_run_id INTEGER REFERENCES synth_runs (id) ON DELETE SET NULL,
    version     INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX triples_by_status ON triples (status);
CREATE INDEX triples_by_document ON triples (document_id);
CREATE INDEX triples_by_passage ON triples (passage_id);

-- Each triple's state before each change.
CREATE TABLE triple_edits (
    id        INTEGER PRIMARY KEY,
    triple_id INTEGER NOT NULL REFERENCES triples (id) ON DELETE CASCADE,
    version   INTEGER NOT NULL,
    question  TEXT NOT NULL,
    answer    TEXT NOT NULL,
    status    TEXT NOT NULL,
    edited_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
CREATE INDEX triple_edits_by_triple ON triple_edits (triple_id);
