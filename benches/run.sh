#!/usr/bin/env bash
# The benchmark table in one command: installs what it needs (tests/setup.sh: redis-server and
# the tansu Kafka broker; benches/python/setup.sh: the Python baseline's virtualenv), runs
# `cargo bench --bench suite` (release build), and copies the table and its plot to docs/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
bash benches/python/setup.sh
cargo bench --locked --bench suite
cp target/bench/benchmarks.md docs/benchmarks.md
cp target/bench/benchmarks.svg docs/benchmarks.svg
echo "docs/benchmarks.md and docs/benchmarks.svg updated"
