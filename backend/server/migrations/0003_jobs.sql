-- Training runs and evaluations (a persistent job queue), uploaded test sets, and a revision number
-- of the passages that passage indexes compare with to know they are stale.
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    request     TEXT NOT NULL CHECK (json_valid(request)),
    dir         TEXT NOT NULL,
    examples    INTEGER NOT NULL,
    held_out    INTEGER NOT NULL,
    step        INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    last        TEXT CHECK (last IS NULL OR json_valid(last)),
    eval_loss   REAL,
    checkpoint  TEXT,
    device      TEXT,
    error       TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    queued_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at  TEXT,
    finished_at TEXT
) STRICT;

-- Every optimiser step of every run (the charts' history).
CREATE TABLE run_metrics (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step   INTEGER NOT NULL,
    point  TEXT NOT NULL CHECK (json_valid(point)),
    PRIMARY KEY (run_id, step)
) STRICT;

CREATE TABLE test_sets (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    path       TEXT NOT NULL,
    questions  INTEGER NOT NULL,
    passages   INTEGER NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE evals (
    id          INTEGER PRIMARY KEY,
    status      TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    request     TEXT NOT NULL CHECK (json_valid(request)),
    phase       TEXT,
    done        INTEGER NOT NULL DEFAULT 0,
    total       INTEGER NOT NULL DEFAULT 0,
    report      TEXT CHECK (report IS NULL OR json_valid(report)),
    error       TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    queued_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at TEXT
) STRICT;

CREATE TABLE corpus_revision (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
) STRICT;
INSERT INTO corpus_revision (id, revision) VALUES (1, 0);

CREATE TRIGGER passages_inserted AFTER INSERT ON passages
BEGIN UPDATE corpus_revision SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER passages_deleted AFTER DELETE ON passages
BEGIN UPDATE corpus_revision SET revision = revision + 1 WHERE id = 1; END;
CREATE TRIGGER passages_updated AFTER UPDATE OF text ON passages
BEGIN UPDATE corpus_revision SET revision = revision + 1 WHERE id = 1; END;
