#!/usr/bin/env bash
# Checks the deployable package built by scripts/package.sh: exactly the files the host needs,
# and the packaged binary starts the way the host starts it and answers readiness on `/`.
set -uo pipefail
cd "$(dirname "$0")/.."
APP=dist/app
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1" >&2; fi; }

expected=$( { echo ./fanout; echo ./fanout.azure.toml; echo ./fanout.toml; echo ./host.json; for f in */function.json; do case "$(dirname "$f")" in target|tests|infra|docs|handlers|dist|scripts|benches|examples) ;; *) echo "./$f";; esac; done; for f in infra/search/*.json; do echo "./$f"; done; } | sort)
actual=$(cd "$APP" && find . -type f | sort)
check "package holds exactly: $(echo $expected)" '[ "$expected" = "$actual" ]'
check "zip holds the same files" '[ "$(python3 -c "import zipfile; print(\"\n\".join(sorted(\"./\"+n for n in zipfile.ZipFile(\"dist/fanout-app.zip\").namelist())))")" = "$actual" ]'
check "binary is executable" '[ -x "$APP/fanout" ]'
check "binary is x86-64 ELF" 'file "$APP/fanout" 2>/dev/null | grep -q "x86-64" || od -An -tx1 -N5 "$APP/fanout" | grep -q "7f 45 4c 46 02"'
check "linked position-dependent (build.rs: no 146k load-time relocations; FANOUT_PIE=1 opts out)" 'readelf -h "$APP/fanout" | grep -q "Type: *EXEC" || [ "${FANOUT_PIE:-0}" = 1 ]'
check "OpenSSL is linked statically (no libssl/libcrypto needed on the host)" '! objdump -p "$APP/fanout" | grep NEEDED | grep -Eq "libssl|libcrypto|librdkafka"'
check "no fault hooks in the shipped binary" '! grep -q FANOUT_FAILPOINT "$APP/fanout"'
check "no Cosmos DB in-memory emulator in the shipped binary (a test-only SDK feature)" '! grep -q "version=emulator" "$APP/fanout"'
check "host.json starts ./fanout" 'grep -q "\"defaultExecutablePath\": \"fanout\"" "$APP/host.json"'

# Start it as the host does: port in the environment, working directory = app root, no args.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d); cp -r "$APP/." "$work/"
(cd "$work" && FUNCTIONS_CUSTOMHANDLER_PORT=$port FANOUT_LOG=warn ./fanout) & pid=$!
ready=0
for _ in $(seq 1 400); do
  if curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null || python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/', timeout=1)" 2>/dev/null; then ready=1; break; fi
  sleep 0.025
done
check "packaged binary answers readiness on /" '[ $ready = 1 ]'
check "packaged binary validates the packaged config" '(cd "$work" && ./fanout check-config >/dev/null)'
kill -TERM $pid 2>/dev/null; wait $pid; status=$?
check "SIGTERM stops it cleanly (exit $status)" '[ $status = 0 ]'
rm -rf "$work"
echo "package: $pass passed, $fail failed"
[ $fail = 0 ]
