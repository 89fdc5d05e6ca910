"""The benchmark workloads the reference scripts share with Attune's benches (must equal
`workload` in backend/src/bench/train.rs and `texts_of`/`prompt` in backend/src/bench/model.rs)."""

INSTRUCTION = "Answer the question using the passage. Reply with the answer only."

# `prompt()` in backend/src/bench/model.rs.
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


def rag_sequence_loss(generator, rows, scores, k, encode):
    """The generator's part of the e2e step, as Attune computes it: each question's top-`k` passages
    of the batch by `scores` (the gold one replacing the last if absent), one sequence per (question,
    candidate) encoded by `encode(question, passage, answer) -> (prompt_ids, answer_ids)`, logits only
    at answer positions, and -log Σ_z softmax(scores over the candidates)_z · p(answer | question, z).
    Returns the loss and the encoded sequences (for FLOP counts). `generator` is a peft model."""
    import torch

    device = scores.device
    candidates = []
    for i, row in enumerate(scores.detach().float().cpu()):
        top = torch.argsort(row, descending=True, stable=True)[:k].tolist()
        if i not in top:
            top[-1] = i
        candidates.append(top)
    sequences = [encode(rows[i]["question"], rows[j]["passage"], rows[i]["answer"])
                 for i in range(len(rows)) for j in candidates[i]]
    longest = max(len(a) + len(b) for a, b in sequences)
    answer_len = max(len(b) for _, b in sequences)
    ids = torch.zeros((len(sequences), longest), dtype=torch.long)
    positions = torch.zeros((len(sequences), answer_len), dtype=torch.long)
    targets = torch.zeros((len(sequences), answer_len), dtype=torch.long)
    mask = torch.zeros((len(sequences), answer_len))
    for s, (prompt, answer) in enumerate(sequences):
        ids[s, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        for t, token in enumerate(answer):
            positions[s, t] = len(prompt) + t - 1
            targets[s, t] = token
            mask[s, t] = 1.0
    ids, positions, targets, mask = (x.to(device) for x in (ids, positions, targets, mask))
    hidden = generator.base_model.model.model(input_ids=ids).last_hidden_state
    picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    logits = generator.base_model.model.lm_head(picked).float()
    token_lp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    answer_lp = (token_lp * mask).sum(-1).view(len(rows), k)
    index = torch.tensor(candidates, device=device)
    log_prior = torch.log_softmax(scores.gather(1, index), dim=-1)
    return -torch.logsumexp(log_prior + answer_lp, dim=-1).mean(), sequences
