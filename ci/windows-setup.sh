#!/usr/bin/env bash
# Prepare a Debian 12 (bookworm) x86_64 machine to cross-compile this crate for
# x86_64-pc-windows-gnu and run its tests under Wine.  Idempotent: only installs
# what is missing.  Non-interactive; meant for CI running as root (uses sudo
# for apt if not root and sudo exists).
#
#   ci/windows-setup.sh            # from anywhere
#   REPO_ROOT=/path/to/crate ci/windows-setup.sh   # build the shim into another crate's target/
#
# What it does:
#   1. apt: wine + wine64 (64-bit Wine only, no i386 multiarch) and the mingw-w64
#      x86_64 C compiler (win32-threads variant, enough for Rust + the shim).
#   2. rustup target add x86_64-pc-windows-gnu
#   3. builds ci/wine/bcryptprimitives.{c,def} -> $REPO_ROOT/target/wine-shim/bcryptprimitives.dll
#      (Rust std needs bcryptprimitives!ProcessPrng, which Wine 8.0 lacks).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="${REPO_ROOT:-$(cd "$SCRIPT_DIR/.." && pwd)}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
SHIM_SRC_DIR="$SCRIPT_DIR/wine"
SHIM_DIR="$TARGET_DIR/wine-shim"
WIN_TARGET=x86_64-pc-windows-gnu
MINGW_CC=x86_64-w64-mingw32-gcc

log() { echo "[windows-setup] $*"; }

export DEBIAN_FRONTEND=noninteractive

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        log "warning: not root and no sudo; apt installs will fail if needed"
    fi
fi

# ---- 1. system packages ----------------------------------------------------
# package -> a file it provides (checked instead of dpkg state, cheap & robust)
missing=()
[ -x /usr/bin/wine ] || missing+=(wine)
{ [ -x /usr/lib/wine/wine64 ] && [ -x /usr/lib/wine/wineserver64 ]; } || missing+=(wine64)
command -v "$MINGW_CC" >/dev/null 2>&1 || missing+=(gcc-mingw-w64-x86-64-win32)

if [ "${#missing[@]}" -gt 0 ]; then
    # apt-get update only if the package lists don't know the packages yet.
    need_update=0
    for p in "${missing[@]}"; do
        if ! apt-cache show "$p" >/dev/null 2>&1; then need_update=1; fi
    done
    if [ "$need_update" -eq 1 ]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get update -q
    fi
    log "apt-get install ${missing[*]}"
    if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        # Stale package lists (404s) on long-lived machines: refresh once and retry.
        log "install failed; apt-get update and retry"
        "${SUDO[@]}" apt-get update -q
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
else
    log "wine, wine64, mingw-w64 already installed"
fi

# ---- 2. Rust target ----------------------------------------------------------
if rustup target list --installed | grep -qx "$WIN_TARGET"; then
    log "rust target $WIN_TARGET already installed"
else
    log "rustup target add $WIN_TARGET"
    rustup target add "$WIN_TARGET"
fi

# ---- 3. ProcessPrng shim ---------------------------------------------------
mkdir -p "$SHIM_DIR"
dll="$SHIM_DIR/bcryptprimitives.dll"
if [ -f "$dll" ] && [ "$dll" -nt "$SHIM_SRC_DIR/bcryptprimitives.c" ] \
        && [ "$dll" -nt "$SHIM_SRC_DIR/bcryptprimitives.def" ]; then
    log "shim up to date: $dll"
else
    log "building shim: $dll"
    "$MINGW_CC" -O2 -s -shared -o "$dll" \
        "$SHIM_SRC_DIR/bcryptprimitives.c" "$SHIM_SRC_DIR/bcryptprimitives.def" \
        -ladvapi32
fi

log "done (wine: $(/usr/bin/wine --version 2>/dev/null || echo '?'), $($MINGW_CC -dumpversion 2>/dev/null | sed 's/^/mingw gcc /'))"
