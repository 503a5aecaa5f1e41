#!/usr/bin/env bash
# Builds the deployable Function App: a folder (dist/app) and a zip (dist/fanout-app.zip) with
# host.json, the function folders, fanout.toml, the AI Search index definitions the config
# references, and a Linux x86-64 `fanout` binary — nothing else.
#
# The binary must run on the Functions host image. By default it is linked against a glibc
# baseline of 2.28 with cargo-zigbuild (zig from PyPI's `ziglang`), so it runs on every Debian
# or Ubuntu based host image; the script checks the GLIBC symbol versions it actually needs.
# OpenSSL (Kafka and AMQP TLS) is built from source and linked statically (`vendored-openssl`),
# so the binary needs no libssl of the host image either.
#   FANOUT_GLIBC=2.28     glibc baseline (default 2.28)
#   FANOUT_NATIVE=1       plain `cargo build` instead (the binary then needs this machine's glibc)
#   FANOUT_PROFILE=dist   cargo profile (dist = release + thin LTO)
#   FANOUT_PIE=1          link a position-independent executable (default: position-dependent,
#                         see build.rs and docs/performance.md "Idle memory")
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${FANOUT_PROFILE:-dist}
GLIBC=${FANOUT_GLIBC:-2.28}
OUT=dist/app
TOOLS=tests/.tools
log() { printf '[package] %s\n' "$*" >&2; }

if [ "${FANOUT_NATIVE:-0}" = 1 ]; then
  cargo build --locked --profile "$PROFILE" --bin fanout --features vendored-openssl
  BIN="target/$PROFILE/fanout"
  GLIBC=$(ldd --version | head -1 | grep -o '[0-9]\+\.[0-9]\+$')
else
  if ! "$TOOLS/venv/bin/python" -c "import ziglang" 2>/dev/null; then
    log "installing zig (PyPI ziglang) into $TOOLS/venv"
    [ -x "$TOOLS/venv/bin/python" ] || python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check 'ziglang>=0.13,<0.18'
  fi
  if [ ! -x "$TOOLS/bin/cargo-zigbuild" ]; then
    log "installing cargo-zigbuild into $TOOLS"
    cargo install --quiet --locked --root "$TOOLS" cargo-zigbuild@0.24.1
  fi
  # cargo-zigbuild finds zig through `python -m ziglang` when CARGO_ZIGBUILD_ZIG_PATH is unset.
  export PATH="$PWD/$TOOLS/bin:$PWD/$TOOLS/venv/bin:$PATH"
  cargo zigbuild --locked --profile "$PROFILE" --bin fanout --features vendored-openssl --target "x86_64-unknown-linux-gnu.$GLIBC"
  BIN="target/x86_64-unknown-linux-gnu/$PROFILE/fanout"
fi

# The glibc symbol versions the binary needs must not exceed the baseline.
need=$(objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
if [ "$(printf '%s\n%s\n' "$need" "$GLIBC" | sort -V | tail -1)" != "$GLIBC" ]; then
  log "the binary needs glibc $need, above the baseline $GLIBC"; exit 1
fi
log "binary needs glibc >= $need (baseline $GLIBC)"

rm -rf "$OUT" dist/fanout-app.zip
mkdir -p "$OUT"
cp host.json fanout.toml fanout.azure.toml "$OUT/"
for f in */function.json; do
  d=$(dirname "$f")
  case "$d" in target|tests|infra|docs|handlers|dist|scripts|benches|examples) continue ;; esac
  mkdir -p "$OUT/$d" && cp "$f" "$OUT/$d/"
done
if [ -d infra/search ]; then mkdir -p "$OUT/infra/search" && cp infra/search/*.json "$OUT/infra/search/"; fi
install -m 0755 "$BIN" "$OUT/fanout"
(cd "$OUT" && python3 -c 'import os, zipfile, sys
with zipfile.ZipFile("../fanout-app.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for root, _, files in os.walk("."):
        for f in sorted(files):
            p = os.path.join(root, f)
            info = zipfile.ZipInfo.from_file(p, os.path.relpath(p, "."))
            with open(p, "rb") as fh:
                z.writestr(info, fh.read(), zipfile.ZIP_DEFLATED)')
log "$(du -h dist/fanout-app.zip | cut -f1) dist/fanout-app.zip; folder $OUT:"
(cd "$OUT" && find . -type f | sort) >&2
