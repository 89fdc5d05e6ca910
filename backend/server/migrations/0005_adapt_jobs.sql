-- Adapt jobs: documents → triples → training → evaluation as one job (POST /api/v1/adapt). Each
-- stage's own job (synthesis run, training run, evaluation) keeps its rows; this table says which
-- they are and where the whole job stands, so a stopped server's job can be resumed.
CREATE TABLE adapt_jobs (
    id           INTEGER PRIMARY KEY,
    status       TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    stage        TEXT NOT NULL CHECK (stage IN ('synthesis', 'training', 'evaluation', 'done')),
    request      TEXT NOT NULL CHECK (json_valid(request)),
    synth_run_id INTEGER REFERENCES synth_runs (id) ON DELETE SET NULL,
    approved     INTEGER,
    run_id       INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    eval_id      INTEGER REFERENCES evals (id) ON DELETE SET NULL,
    message      TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
