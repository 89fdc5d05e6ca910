"""Drives `attune serve`'s /v1 API with the official `openai` Python client (pinned in
e2e/openai-requirements.txt): models, a whole and a streamed chat completion (same greedy text),
citations in the extra `attune` field, a stop sequence, embeddings (the client asks for base64 and
decodes it), and errors raised as the client's own exception classes. Prints a JSON summary and
exits non-zero on the first failed check. Run by e2e/openai_client.test.mjs:
    python e2e/openai_client.py http://127.0.0.1:PORT TOKEN
"""

import json
import math
import sys

import openai


def check(condition, what):
    if not condition:
        raise SystemExit(f"FAILED: {what}")


def main() -> None:
    base, token = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=token, max_retries=0, timeout=300)
    models = [m.id for m in client.models.list()]
    check(models[0] == "base", f"models lists base first: {models}")

    messages = [{"role": "user", "content": "What is the boiling point of water?"}]
    whole = client.chat.completions.create(model="base", messages=messages, max_tokens=24, temperature=0)
    text = whole.choices[0].message.content
    check(whole.choices[0].message.role == "assistant" and text, f"an answer: {whole}")
    check(whole.choices[0].finish_reason in ("stop", "length"), f"finish reason {whole.choices[0].finish_reason}")
    check(whole.usage.completion_tokens <= 24 and whole.usage.prompt_tokens > 0, f"usage {whole.usage}")
    citations = (whole.model_extra or {}).get("attune", {}).get("citations", [])
    check(len(citations) > 0 and all("passage_id" in c for c in citations), f"citations {citations}")

    stream = client.chat.completions.create(model="base", messages=messages, max_tokens=24, temperature=0, stream=True)
    pieces, roles, finishes = [], [], []
    for chunk in stream:
        delta = chunk.choices[0].delta
        if delta.role:
            roles.append(delta.role)
        if delta.content:
            pieces.append(delta.content)
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    check(roles == ["assistant"], f"one role chunk: {roles}")
    check("".join(pieces) == text, f"streamed {''.join(pieces)!r} == whole {text!r}")
    check(finishes == [whole.choices[0].finish_reason], f"one finish reason: {finishes}")

    words = text.split()
    stop = words[len(words) // 2] if len(words) > 2 else None
    if stop:
        stopped = client.chat.completions.create(model="base", messages=messages, max_tokens=24, temperature=0, stop=[stop])
        check(stopped.choices[0].message.content == text[: text.find(stop)], f"stop at {stop!r}: {stopped}")

    embedded = client.embeddings.create(model="base", input=["boiling water", "a passage about rivers"])
    vectors = [d.embedding for d in embedded.data]
    check(len(vectors) == 2 and len(vectors[0]) == 384, f"two 384-d vectors, got {[len(v) for v in vectors]}")
    norm = math.sqrt(sum(v * v for v in vectors[0]))
    check(abs(norm - 1) < 1e-3, f"normalised: {norm}")
    floats = client.embeddings.create(model="base", input="boiling water", encoding_format="float")
    check(max(abs(a - b) for a, b in zip(floats.data[0].embedding, vectors[0])) < 1e-6, "base64 and float agree")

    errors = {}
    for name, call, expected in [
        ("unknown model", lambda: client.chat.completions.create(model="run:999", messages=messages), openai.NotFoundError),
        ("bad temperature", lambda: client.chat.completions.create(model="base", messages=messages, temperature=9),
         openai.UnprocessableEntityError),
        ("wrong token", lambda: openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list(),
         openai.AuthenticationError),
    ]:
        try:
            call()
            raise SystemExit(f"FAILED: {name} raised nothing")
        except expected as error:
            check(isinstance(error.body, dict) and error.body.get("message"), f"{name}: OpenAI's error body {error.body}")
            errors[name] = {"status": error.status_code, "type": error.type, "code": error.code}

    print(json.dumps({"openai": openai.__version__, "models": models, "answer": text, "stop": stop, "stream_chunks": len(pieces),
                      "citations": len(citations), "embedding_dim": len(vectors[0]), "errors": errors}))


if __name__ == "__main__":
    main()
