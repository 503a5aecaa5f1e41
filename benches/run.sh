#!/usr/bin/env bash
# The benchmark table in one command: installs what it needs (tests/setup.sh: redis-server and
# the tansu Kafka broker; benches/python/setup.sh: the Python baseline's virtualenv), runs
# `cargo bench --bench suite` (release build), then the event streams' table (`--bench
# event_streams`: Kafka on tansu, Event Hubs AMQP on the protocol-level fake), and copies the
# tables and the plot to docs/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
bash benches/python/setup.sh
cargo bench --locked --bench suite
cargo bench --locked --bench event_streams > target/bench/event_streams.md
{ cat target/bench/benchmarks.md; echo; cat target/bench/event_streams.md; } > docs/benchmarks.md
cp target/bench/benchmarks.svg docs/benchmarks.svg
echo "docs/benchmarks.md and docs/benchmarks.svg updated"
