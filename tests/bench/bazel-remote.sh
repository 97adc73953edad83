#!/usr/bin/env bash
# Builds a real C code base with Bazel three ways in one run and prints the
# wall times and their ratios:
#   local       Bazel's own linux-sandbox on this machine (the baseline)
#   cold        remote execution on a fresh `corral up`
#   warm        remote again after `bazel clean`: all from the Action Cache
# Targets (issue 7): cold at most 1.3x local, warm at most 0.3x.
#
# The code base is zstd's library (40 C files), taken from the zstd-sys
# crate that the workspace already depends on, so this needs no network.
# Needs bazel (bazel-bootstrap, as scripts/test.sh installs) and, for
# linux-sandbox and the full Corral sandbox, root.
#
#   tests/bench/bazel-remote.sh [runs]     # default 3 runs of each, medians
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}

command -v bazel >/dev/null || { echo "bazel-remote: bazel is not installed (apt-get install bazel-bootstrap)" >&2; exit 1; }
cargo build --release --locked -p corral --quiet
corral=$PWD/target/release/corral

zstd=$(cargo metadata --locked --format-version 1 |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="zstd-sys").rsplit("/",1)[0])')/zstd/lib

work=$(mktemp -d)
farm_pid=
cleanup() {
    [[ -n $farm_pid ]] && kill -INT "$farm_pid" 2>/dev/null && wait "$farm_pid" 2>/dev/null || true
    (cd "$work/ws" 2>/dev/null && bazel --output_user_root="$work/bazel-root" shutdown 2>/dev/null) || true
    rm -rf "$work"
}
trap cleanup EXIT

# The workspace: zstd's sources, one cc_library, and the stand-ins Bazel
# 4.2.3 needs offline (tests/bazel/WORKSPACE says why).
mkdir -p "$work/ws"
cp -r "$zstd" "$work/ws/lib"
chmod -R u+w "$work/ws/lib"
cp -r tests/bazel/stand_ins "$work/ws/"
sed -n '/^local_repository/,$p' tests/bazel/WORKSPACE > "$work/ws/WORKSPACE"
cat > "$work/ws/BUILD" <<'EOF'
cc_library(
    name = "zstd",
    srcs = glob([
        "lib/common/*.c",
        "lib/compress/*.c",
        "lib/decompress/*.c",
        "lib/dictBuilder/*.c",
        "lib/legacy/*.c",
        "lib/deprecated/*.c",
        "lib/**/*.h",
    ]),
    hdrs = ["lib/zstd.h", "lib/zdict.h", "lib/zstd_errors.h"],
    copts = ["-O2", "-Ilib", "-Ilib/common", "-Ilib/legacy"],
    # The x86-64 assembly is a separate source kind; the C fallback is the
    # same work for every strategy.
    defines = ["ZSTD_DISABLE_ASM", "ZSTD_LEGACY_SUPPORT=5", "ZSTD_MULTITHREAD=0"],
)
EOF

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bazel_in_ws() { (cd "$work/ws" && bazel --output_user_root="$work/bazel-root" "$@"); }
common=(--nosandbox_debug --experimental_repository_disable_download)
remote=(--remote_executor=grpc://127.0.0.1:$port --spawn_strategy=remote --remote_local_fallback=false)

# Seconds of wall time of one clean build; fails if the build fails or did
# not run the way it was meant to.
timed_build() {
    local expect=$1
    shift
    bazel_in_ws clean >/dev/null 2>&1
    local start end out
    start=$(date +%s.%N)
    out=$(bazel_in_ws build "${common[@]}" "$@" //:zstd 2>&1) || { echo "$out" >&2; return 1; }
    end=$(date +%s.%N)
    grep -q "processes: .*$expect" <<<"$out" || { echo "bazel-remote: expected '$expect' in:" >&2; echo "$out" >&2; return 1; }
    python3 -c "print(f'{$end - $start:.3f}')"
}

median() { python3 -c 'import statistics,sys; print(f"{statistics.median(map(float, sys.argv[1:])):.2f}")' "$@"; }

# The Bazel server starts outside the measurements.
bazel_in_ws info output_base >/dev/null 2>&1

local_times=() cold_times=() warm_times=()
for ((i = 0; i < runs; i++)); do
    local_times+=("$(timed_build linux-sandbox --spawn_strategy=linux-sandbox)")
    # A fresh farm for each cold run: empty storage and file cache.
    data=$(mktemp -d -p "$work")
    "$corral" up --listen "127.0.0.1:$port" --data-dir "$data" >"$data.log" 2>&1 &
    farm_pid=$!
    until grep -q "corral up: ready" "$data.log"; do
        kill -0 "$farm_pid" 2>/dev/null || { cat "$data.log" >&2; exit 1; }
        sleep 0.1
    done
    cold_times+=("$(timed_build remote "${remote[@]}")")
    warm_times+=("$(timed_build "remote cache hit" "${remote[@]}")")
    kill -INT "$farm_pid"
    wait "$farm_pid" || true
    farm_pid=
done

l=$(median "${local_times[@]}")
c=$(median "${cold_times[@]}")
w=$(median "${warm_times[@]}")
echo "zstd (40 C files), $runs runs each, median wall seconds of a clean build:"
echo "  local linux-sandbox  $l   (${local_times[*]})"
echo "  remote cold          $c   (${cold_times[*]})"
echo "  remote warm          $w   (${warm_times[*]})"
python3 -c "print(f'  ratios: cold/local {$c/$l:.2f} (target <= 1.3), warm/local {$w/$l:.2f} (target <= 0.3)')"
