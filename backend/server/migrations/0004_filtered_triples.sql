-- Synthetic candidates a filter dropped are kept as triples with status 'filtered' and the reason,
-- so a person can rescue one. SQLite cannot change a CHECK constraint in place: the table is
-- rebuilt. The migration runs in a transaction, where foreign keys cannot be switched off, so
-- dropping the old table cascades to triple_edits: its rows are set aside first and put back.
CREATE TABLE triple_edits_kept AS SELECT * FROM triple_edits;
CREATE TABLE triples_new (
    id          INTEGER PRIMARY KEY,
    question    TEXT NOT NULL,
    answer      TEXT NOT NULL,
    passage     TEXT NOT NULL,
    passage_id  INTEGER REFERENCES passages (id) ON DELETE SET NULL,
    document_id INTEGER REFERENCES documents (id) ON DELETE SET NULL,
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected', 'filtered')),
    origin      TEXT NOT NULL CHECK (origin IN ('synthetic', 'imported', 'manual')),
    model       TEXT,
    prompt      TEXT,
    synth_run_id INTEGER REFERENCES synth_runs (id) ON DELETE SET NULL,
    version     INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    filter_reason TEXT
) STRICT;
INSERT INTO triples_new (id, question, answer, passage, passage_id, document_id, status, origin, model, prompt,
                         synth_run_id, version, created_at, updated_at)
    SELECT id, question, answer, passage, passage_id, document_id, status, origin, model, prompt,
           synth_run_id, version, created_at, updated_at FROM triples;
DROP TABLE triples;
ALTER TABLE triples_new RENAME TO triples;
CREATE INDEX triples_by_status ON triples (status);
CREATE INDEX triples_by_document ON triples (document_id);
CREATE INDEX triples_by_passage ON triples (passage_id);
INSERT INTO triple_edits SELECT * FROM triple_edits_kept;
DROP TABLE triple_edits_kept;
