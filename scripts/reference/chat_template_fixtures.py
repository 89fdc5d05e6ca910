"""Writes backend/tests/fixtures/chat_templates/reference.json: what transformers renders (its own Jinja
environment, as `apply_chat_template` uses it) for each template in that folder — Qwen2.5-, Qwen3- and
Llama 3.x-style chat templates, written after the published ones with the same Jinja constructs (namespaces,
reversed slices, string methods, `tojson`, `strftime_now`, `raise_exception`) — on a few conversations, with
the generation prompt. Attune's minijinja renderer is tested against these strings.

Run once, by hand (needs transformers, jinja2):
    python scripts/reference/chat_template_fixtures.py
"""

import datetime
import json
import pathlib

from transformers.utils.chat_template_utils import render_jinja_template

ROOT = pathlib.Path(__file__).resolve().parents[2]
DIR = ROOT / "backend" / "tests" / "fixtures" / "chat_templates"
TEMPLATES = {
    "qwen2.5.jinja": {"bos_token": "", "eos_token": "<|im_end|>"},
    "qwen3.jinja": {"bos_token": "", "eos_token": "<|im_end|>"},
    "llama3.x.jinja": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
}
CHATS = [
    [{"role": "user", "content": "What is the boiling point of water?"}],
    [{"role": "system", "content": "Answer from the passage only.  "},
     {"role": "user", "content": "Passage: Paris is the capital of France.\nQuestion: What is the capital of France?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nA greeting.\n</think>\n\nHello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
]


def main() -> None:
    today = datetime.datetime.now().strftime("%d %b %Y")
    cases = []
    for name, tokens in TEMPLATES.items():
        template = (DIR / name).read_text()
        for messages in CHATS:
            rendered, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                                add_generation_prompt=True, **tokens)
            cases.append({"template": name, **tokens, "messages": messages,
                          "rendered": rendered[0].replace(today, "{today}")})
    (DIR / "reference.json").write_text(json.dumps({
        "generated_by": "scripts/reference/chat_template_fixtures.py",
        "today_format": "%d %b %Y",
        "cases": cases,
    }, ensure_ascii=False, indent=1) + "\n")
    print(f"{len(cases)} renderings")


if __name__ == "__main__":
    main()
