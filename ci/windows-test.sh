#!/usr/bin/env bash
# Cross-compile the crate's tests for x86_64-pc-windows-gnu and run them under
# Wine (Debian 12, 64-bit Wine only).  Exit status = cargo's.
#
#   ci/windows-test.sh                    # = cargo test --target x86_64-pc-windows-gnu --all-features --all-targets
#   ci/windows-test.sh --lib -- some_test # extra args replace the --all-targets default
#   REPO_ROOT=/other/crate ci/windows-test.sh   # run against another crate (default: parent of ci/)
#
# Env knobs: REPO_ROOT, CARGO_TARGET_DIR, WINEBOOT_TIMEOUT (seconds, default 300),
# CARGO (default cargo).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export REPO_ROOT="${REPO_ROOT:-$(cd "$SCRIPT_DIR/.." && pwd)}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
WINEBOOT_TIMEOUT="${WINEBOOT_TIMEOUT:-300}"

log() { echo "[windows-test] $*" >&2; }

"$SCRIPT_DIR/windows-setup.sh"

# Private, throw-away Wine prefix (64-bit only; no wine32 installed).
export WINEPREFIX="$TARGET_DIR/wine-prefix"
export WINEARCH=win64
export WINEDEBUG=-all              # also silences Debian's "wine32 is missing" hint
export WINEDLLOVERRIDES="mscoree,mshtml=;winemenubuilder.exe=d"  # no Mono/Gecko prompts, no menu entries
export WINEPATH="$TARGET_DIR/wine-shim"   # bcryptprimitives.dll (ProcessPrng) shim
export DISPLAY=                    # headless: never try to open an X display
# On Debian 12 `wine` is a wrapper that execs /usr/lib/wine/wine64 when wine32
# is absent (there is no /usr/bin/wine64); it also works if wine32 is added.
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
mkdir -p "$WINEPREFIX"

cleanup() {
    # Stop the persistent wineserver (and any leftover Wine processes) of our prefix.
    wineserver -k >/dev/null 2>&1 || true
    timeout 30 wineserver -w >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Persistent wineserver + prefix init, once, with all output to /dev/null:
# otherwise the first test binary creates the prefix itself, which is slow,
# leaks wineserver/winedevice handles into the test harness and can hang it.
start=$(date +%s)
wineserver -p </dev/null >/dev/null 2>&1
if ! timeout --kill-after=10 "$WINEBOOT_TIMEOUT" wine wineboot --init </dev/null >/dev/null 2>&1; then
    log "warning: 'wine wineboot' failed or timed out after ${WINEBOOT_TIMEOUT}s; continuing"
fi
log "wine prefix ready in $(( $(date +%s) - start ))s: $WINEPREFIX"

if [ "$#" -eq 0 ]; then
    set -- --all-targets
fi

cd "$REPO_ROOT"
# The end-to-end tests run target/<triple>/debug/examples/<name>.exe. `cargo test` builds the
# examples for this target but, unlike on Linux, leaves only the hashed file names there, so
# build them plainly first (a no-op when they are up to date).
# --all-features, as on Linux: the TLS example and tests are behind the `tls` feature.
log "cargo build --target x86_64-pc-windows-gnu --examples --all-features"
set +e
"${CARGO:-cargo}" build --target x86_64-pc-windows-gnu --examples --all-features </dev/null
status=$?
if [ "$status" -eq 0 ]; then
    log "cargo test --target x86_64-pc-windows-gnu --all-features $*"
    "${CARGO:-cargo}" test --target x86_64-pc-windows-gnu --all-features "$@" </dev/null
    status=$?
fi
set -e
log "cargo exited with $status"
exit "$status"
