#!/usr/bin/env bash
# Installs what the tests need, then runs the whole test suite.
# This is the README's test command; .ci/run calls it as is.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- what the tests need -----------------------------------------------
# Rust crates come from crates.io through Cargo.lock, and protoc is
# vendored, so the Rust build needs no system package. Debian packages
# that tests use go in this list; they are installed when missing, as root
# (CI runs as root; without root, tests that need them say why they skip).
APT_PACKAGES=(
    bazel-bootstrap # tests/bazel.rs: Debian's Bazel 4.2.3, works offline
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "scripts/test.sh: not root, cannot install: ${missing[*]}" >&2
    else
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
fi

# --- the suite -----------------------------------------------------------
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?

# The sandbox's tests again inside VMs booted with Debian's kernel, once
# with cgroup v2 and once with cgroup v1 (vm-tests/README.md). Needs root;
# without root it says so and is skipped, except under CI.
vm_status=0
vm-tests/run.sh 2>&1 | tee -a "$log" || vm_status=$?
((status)) || status=$vm_status

# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
