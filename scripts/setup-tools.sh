#!/usr/bin/env bash
# Installs what building and testing Attune needs and is missing, each at a pinned version and
# only once per machine: the wasm32 target, trunk, wasm-bindgen-cli (the version Cargo.lock
# resolves), the npm tools (wasm-opt from binaryen, playwright-core), and with --browser,
# Debian's chromium for the e2e suite.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

TRUNK_VERSION=0.21.14

log() { printf 'setup: %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "setup: need root for: $*" >&2
        return 1
    fi
}

wasm_target() {
    if rustup target list --installed | grep -qx wasm32-unknown-unknown; then return; fi
    log "adding rust target wasm32-unknown-unknown"
    rustup target add wasm32-unknown-unknown
}

trunk_tool() {
    if command -v trunk >/dev/null && [ "$(trunk --version 2>/dev/null)" = "trunk $TRUNK_VERSION" ]; then return; fi
    log "installing trunk $TRUNK_VERSION (compiles from source: about 20 minutes on 2 cores, once per machine)"
    cargo install trunk --version "$TRUNK_VERSION" --locked
}

wasm_bindgen_tool() {
    local want
    want=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
    if [ -z "$want" ]; then
        echo "setup: Cargo.lock resolves no wasm-bindgen" >&2
        exit 1
    fi
    if command -v wasm-bindgen >/dev/null && [ "$(wasm-bindgen --version)" = "wasm-bindgen $want" ]; then return; fi
    # Not --locked: its own lock file does not build with this toolchain.
    log "installing wasm-bindgen-cli $want (compiles from source: about 20 minutes on 2 cores, once per machine)"
    cargo install wasm-bindgen-cli --version "$want"
}

npm_tools() {
    if [ -f node_modules/.package-lock.json ] && [ node_modules/.package-lock.json -nt package-lock.json ] &&
        [ -x node_modules/.bin/wasm-opt ]; then
        return
    fi
    log "installing npm tools (binaryen's wasm-opt, playwright-core)"
    npm ci --no-audit --no-fund
}

browser() {
    if [ -x /usr/bin/chromium ]; then return; fi
    log "installing Debian's chromium and chromium-driver"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver
}

wasm_target
trunk_tool
wasm_bindgen_tool
npm_tools
if [ "${1:-}" = "--browser" ]; then browser; fi
