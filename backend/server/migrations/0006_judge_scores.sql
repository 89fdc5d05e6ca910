-- An LLM judge's scores of a synthetic triple (1 to 5 each), when its run asked for them.
ALTER TABLE triples ADD COLUMN judge_grounded INTEGER CHECK (judge_grounded IS NULL OR judge_grounded BETWEEN 1 AND 5);
ALTER TABLE triples ADD COLUMN judge_useful INTEGER CHECK (judge_useful IS NULL OR judge_useful BETWEEN 1 AND 5);
