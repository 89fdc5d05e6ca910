#!/usr/bin/env bash
#! Sets up an MKLROOT from pinned PyPI wheels (Intel MKL's static libraries and headers, Intel's
#! OpenMP runtime) and prints the environment `make mkl` builds with. Idempotent.
#
# Layout it makes under $ATTUNE_MKL_DIR (default ~/.cache/attune/mkl):
#   wheels/                 the downloaded wheels
#   lib/libmkl_*.a          the LP64 interface, core and threading layers candle's `mkl` feature links
#   lib/libiomp5.a          Intel's OpenMP runtime (candle asks for MKL's OpenMP threading)
#   include/                mkl.h and the rest
#
# intel-mkl-src's build script looks in $MKLROOT first and, where it finds nothing, would fetch a
# package from elsewhere: this script checks every file it needs is there before printing anything.
set -euo pipefail

MKL_DIR="${ATTUNE_MKL_DIR:-$HOME/.cache/attune/mkl}"
PYTHON="${PYTHON:-python3}"
WHEELS=(mkl-static==2025.3.1 mkl-include==2025.3.1 intel-openmp==2025.3.3)
LIBS=(libmkl_intel_lp64.a libmkl_intel_thread.a libmkl_core.a libiomp5.a)

stamp="$MKL_DIR/.wheels"
if [[ "$(cat "$stamp" 2>/dev/null)" != "${WHEELS[*]}" ]]; then
  echo "mkl-libraries: downloading ${WHEELS[*]} into $MKL_DIR/wheels" >&2
  rm -rf "$MKL_DIR/wheels" "$MKL_DIR/lib" "$MKL_DIR/include"
  mkdir -p "$MKL_DIR/wheels" "$MKL_DIR/lib"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --dest "$MKL_DIR/wheels" "${WHEELS[@]}" >&2
  for wheel in "$MKL_DIR"/wheels/*.whl; do
    # The wheels keep these files under <name>.data/data/{lib,include}/.
    "$PYTHON" - "$wheel" "$MKL_DIR" "${LIBS[@]}" <<'PY'
import pathlib, sys, zipfile
wheel, root, wanted = sys.argv[1], pathlib.Path(sys.argv[2]), set(sys.argv[3:])
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        parts = pathlib.PurePosixPath(name).parts
        if len(parts) > 3 and parts[0].endswith(".data") and parts[1] == "data" and parts[2] in ("lib", "include"):
            rest = pathlib.Path(*parts[2:])
            if parts[2] == "lib" and rest.name not in wanted:
                continue
            (root / rest).parent.mkdir(parents=True, exist_ok=True)
            (root / rest).write_bytes(z.read(name))
PY
  done
fi

for lib in "${LIBS[@]}"; do
  [[ -f "$MKL_DIR/lib/$lib" ]] || { echo "mkl-libraries: $MKL_DIR/lib/$lib is missing" >&2; exit 1; }
done
[[ -f "$MKL_DIR/include/mkl.h" ]] || { echo "mkl-libraries: $MKL_DIR/include/mkl.h is missing" >&2; exit 1; }
echo "${WHEELS[*]}" > "$stamp"
echo "export MKLROOT=$MKL_DIR"
