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
    bazel-bootstrap # tests/bazel.rs, tests/faults.rs: Debian's Bazel 4.2.3, works offline
    libnetty-tcnative-jni # tests/bazel.rs: Bazel's gRPC over TLS (its netty lacks the JDK's ALPN)
    python3-venv    # tests/python.rs: the venv below, with Debian's python3
    uidmap          # corral/tests/cli.rs: newuidmap for rootless runs with subordinate ids
    btrfs-progs     # sandbox probes: a loop-mounted btrfs image with qgroups (disk limit)
    chromium        # tests/browser.rs: the web UI in headless Chromium (20 s to install)
    docker-registry # tests/images.rs: an OCI registry on loopback to pull images from (4 s to install, 20 MB)
    busybox-static  # tests/images.rs, sandbox and worker image tests: the test image's one binary
    iproute2        # tests/hosts.rs: `ip netns`, veth pairs and a bridge for the test hosts
    curl            # tests/hosts.rs: the metrics pages, read over HTTPS from a test host
    systemd         # tests/deploy.rs: systemd-analyze verify on deploy/systemd (in the base image)
    strace          # tests/deploy.rs: the system calls each daemon makes, against its unit's filter
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

# Python packages for tests/python.rs, pinned in tests/python/requirements.txt,
# go in a venv under target/ (never the system's site-packages). pip runs
# only when the venv is missing or the requirements changed since it ran.
venv=target/test-venv
requirements=tests/python/requirements.txt
if ! cmp -s "$requirements" "$venv/requirements.txt" ||
    ! "$venv/bin/python" -c 'import grpc, grpc_tools, kubernetes_validate, yaml' 2>/dev/null; then
    rm -rf "$venv"
    if python3 -m venv "$venv" &&
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"; then
        cp "$requirements" "$venv/requirements.txt"
    else
        echo "scripts/test.sh: could not make the Python venv in $venv: tests/python.rs skips (fails under CI)" >&2
        rm -rf "$venv"
    fi
fi
if [[ -x $venv/bin/python ]]; then
    export CORRAL_TEST_PYTHON="$PWD/$venv/bin/python"
fi

# An S3-compatible server for storage/tests/it/object_store.rs: s3s-fs
# from crates.io (objects as files, multipart uploads, ranged GETs), built
# once into target/test-tools: about 3 minutes on 2 cores. 0.14.1 is the newest
# that builds with our rustc. Garage, which issue 17 names, takes far
# longer to build (docs/decisions/0015-object-store-tier.md).
tools=target/test-tools
if [[ ! -x $tools/bin/s3s-fs ]]; then
    cargo install --locked --quiet s3s-fs@0.14.1 --features binary --root "$tools" ||
        echo "scripts/test.sh: could not install s3s-fs in $tools: storage's object_store tests skip (fail under CI)" >&2
fi
# Azurite, the Azure Storage emulator, for storage/tests/it/azure.rs: from
# npm into target/test-tools (25 s, 186 MiB). Node comes from Debian's npm
# when the machine has none (a machine with NodeSource's nodejs has npm
# already, and Debian's npm conflicts with it).
if [[ ! -x $tools/node_modules/.bin/azurite-blob ]]; then
    if ! command -v npm >/dev/null && [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm
    fi
    npm install --prefix "$tools" --no-audit --no-fund --silent azurite@3.35.0 ||
        echo "scripts/test.sh: could not install azurite in $tools: storage's azure test skips (fails under CI)" >&2
fi
# Garage (issue 17's distributed S3 store: three nodes on loopback, one
# stopped) only on request: its build took 39 min wall (15.6 CPU-minutes)
# on a shared 2-core machine, most of CI's budget. With
# CORRAL_TEST_WITH_GARAGE=1 it is installed once into target/test-tools and
# its test must not skip.
if [[ -n ${CORRAL_TEST_WITH_GARAGE:-} && ! -x $tools/bin/garage ]]; then
    cargo install --locked --quiet garage@2.5.0 --root "$tools" ||
        echo "scripts/test.sh: could not install garage in $tools" >&2
fi

# --- the suite -----------------------------------------------------------
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# --no-fail-fast: every test binary runs, so the count below is the whole
# suite's, not what ran before the first failing binary.
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?

# The sandbox's tests again inside VMs booted with Debian's kernel, once
# with cgroup v2 and once with cgroup v1 (vm-tests/README.md). Needs root;
# without root it says so and is skipped, except under CI.
vm_status=0
vm-tests/run.sh 2>&1 | tee -a "$log" || vm_status=$?
((status)) || status=$vm_status

# One closing line for the whole suite, the VM guests' tests included:
# passed, failed (a binary that crashed or never ran counts), and skipped
# (ignored, and every "SKIP: " line of corral-testkit's skip helper);
# "FAILED: ..." naming what failed when anything did (scripts/summary.awk).
awk -v status="$status" -f scripts/summary.awk "$log"
exit "$status"
