#!/usr/bin/env bash
# The whole test suite, from a fresh machine: install and start the real
# components (tests/env/setup.sh), then run every test against them.
# .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/env/setup.sh
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
# One libvirtd, one bus name: test binaries run one after another, tests
# inside a binary in parallel (each on its own uniquely named domains).
cargo test --locked 2>&1
