"""Spot-checks the page ranges `attune ingest` gave passages against an independent PDF reader
(pypdf): for a few passages, a run of words from the passage must occur in pypdf's text of a page
inside the passage's range (compared without spaces or punctuation, since the two readers lay out
text differently).

    python scripts/reference/spot_check_pages.py DATA_DIR/attune.db FILE.pdf [--document 1] [--samples 3] [--seed 0]
"""

import argparse
import random
import re
import sqlite3

import pypdf


def squash(text):
    return re.sub(r"[^0-9a-z]", "", text.lower())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("pdf")
    parser.add_argument("--document", type=int, default=1)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pages = [squash(page.extract_text() or "") for page in pypdf.PdfReader(args.pdf).pages]
    rows = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True).execute(
        "SELECT id, ord, page_start, page_end, text FROM passages WHERE document_id = ? ORDER BY ord", (args.document,)
    ).fetchall()
    # Passages with words to look for (tables of contents are mostly dot leaders).
    rows = [row for row in rows if len(squash(row[4])) > 200]
    rng = random.Random(args.seed)
    failures = 0
    for pid, ord_, start, end, text in rng.sample(rows, args.samples):
        words = text.split()
        # Five consecutive words from a quarter, the middle and three quarters in: the first that
        # pypdf finds decides (a run can straddle a page break, where a page number interrupts it).
        for position in (len(words) // 4, len(words) // 2, 3 * len(words) // 4):
            snippet = " ".join(words[position:position + 5])
            key = squash(snippet)
            found = [i + 1 for i, page in enumerate(pages) if len(key) > 12 and key in page]
            if found:
                break
        ok = any(start <= p <= end for p in found)
        failures += not ok
        print(f"passage {ord_} (id {pid}), pages {start}-{end}: \"{snippet}\" found by pypdf on page(s) {found or 'none'}: "
              f"{'ok' if ok else 'MISMATCH'}")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
