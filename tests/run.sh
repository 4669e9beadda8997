#!/usr/bin/env bash
# The whole test suite, from a fresh machine: install and start the real
# components (tests/env/setup.sh), then run every test against them.
# .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/env/setup.sh
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
# The one real PCI device tests may change: a virtio-rng (1af4:1044), if any.
# (Tests check vendor and device again before touching it.)
if [ -z "${VAPOR_TEST_PCI_DEVICE:-}" ]; then
  for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x1044 ]; then
      export VAPOR_TEST_PCI_DEVICE=${d##*/}
      break
    fi
  done
fi
# One libvirtd, one bus name: test binaries run one after another, tests
# inside a binary in parallel (each on its own uniquely named domains).
log=$(mktemp)
# The migration test's second host and the NFS test's server end with their
# test binary; should that binary be killed, they end here.
trap 'rm -f "$log"; tests/env/second-host.sh down >/dev/null 2>&1 || true
      tests/env/nfs-server.sh down >/dev/null 2>&1 || true' EXIT
set +e
# test-fakes: the fake sysfs and kernel for tests/pci_fake.rs (and vapord's
# --fake-kernel); release builds never have them.
cargo test --locked --no-fail-fast --features test-fakes --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
grep -o 'test result: [a-zA-Z]*\. [0-9]* passed; [0-9]* failed' "$log" |
  awk '{p += $4; f += $6} END {printf "vapor: %d passed, %d failed\n", p, f}'
exit "$status"
