"""The benchmark workloads the reference scripts share with Attune's benches (must equal
`workload` in backend/src/bench_train.rs and `texts_of`/`prompt` in backend/src/bench.rs)."""

INSTRUCTION = "Answer the question using the passage. Reply with the answer only."

# `prompt()` in backend/src/bench.rs.
PROMPT = "The quick brown fox jumps over the lazy dog. " * 12


def workload(count):
    """Distinct passages long enough to be cut at 128 tokens, ~32-token questions, short answers."""
    question = ("what did the quick brown fox jump over " * 3).strip()
    passage = "the quick brown fox jumps over the lazy dog near the river bank. " * 12
    return [
        {"question": f"question {i}: {question}?", "passage": f"passage {i}: {passage}", "answer": f"the lazy dog number {i}"}
        for i in range(count)
    ]


def texts_of(count):
    """`count` passages of the embedding benchmark (each longer than 128 tokens)."""
    return [f"Passage {i}: " + "The quick brown fox jumps over the lazy dog. " * 20 for i in range(count)]
