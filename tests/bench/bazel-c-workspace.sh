#!/usr/bin/env bash
# Builds and tests a larger C/C++ workspace with Bazel four ways, the ways
# interleaved in each of N rounds, and prints the medians, the ratios and
# the critical path Bazel reports:
#   local       Bazel's own linux-sandbox on this machine
#   disk        every action from a local --disk_cache (the warm floor)
#   cold        remote execution on a fresh `corral up` (empty storage)
#   warm        remote again on the same farm after `bazel clean`
#
# The workspace is made in a temporary directory from sources the crate
# registry carries: SQLite's amalgamation (one 9 MB sqlite3.c, the
# longest action), zlib, Lua 5.4, LMDB (library and its five tools) and
# zstd, one test per library and a C++ test linking all five. About 110
# compile actions, 20 archive and link actions, 6 tests.
#
# Sources come from ~/.cargo/registry when cargo already has them, else
# from target/bench-sources/ (a .crate fetched once from static.crates.io
# and checked against its pinned SHA-256). Needs bazel (bazel-bootstrap,
# as scripts/test.sh installs) and, for linux-sandbox and the full Corral
# sandbox, root.
#
#   tests/bench/bazel-c-workspace.sh [runs] [--profile-action]
#
# runs: rounds of the four ways (default 3); medians are printed.
# --profile-action: afterwards, compile sqlite3.c alone on a fresh farm and
#   break its time down from Bazel's profile (upload, remote execution,
#   download), the farm's action page (queue, input layout, execution,
#   output hashing and upload) and the runner's spawn-time histogram.
#
# CORRAL=<path> uses that corral binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=3 profile_action=
for arg in "$@"; do
    case $arg in
        --profile-action) profile_action=1 ;;
        [0-9]*) runs=$arg ;;
        *) echo "usage: $0 [runs] [--profile-action]" >&2; exit 2 ;;
    esac
done

command -v bazel >/dev/null || { echo "bazel-c-workspace: bazel is not installed (apt-get install bazel-bootstrap)" >&2; exit 1; }
if [[ -z ${CORRAL:-} ]]; then
    cargo build --release --locked -p corral --quiet
    CORRAL=$PWD/target/release/corral
fi

# The directory of crate NAME-VERSION's sources, with the .crate's pinned
# SHA-256 (the crates.io index's cksum) checked when it is not already
# unpacked by cargo.
cache=$PWD/target/bench-sources
crate_dir() {
    local name=$1 version=$2 sum=$3 dir crate
    for dir in "$HOME"/.cargo/registry/src/*/"$name-$version" "$cache/$name-$version"; do
        [[ -d $dir ]] && { echo "$dir"; return; }
    done
    mkdir -p "$cache"
    crate=$(ls "$HOME"/.cargo/registry/cache/*/"$name-$version.crate" "$cache/$name-$version.crate" 2>/dev/null | head -1 || true)
    if [[ -z $crate ]]; then
        crate=$cache/$name-$version.crate
        echo "bazel-c-workspace: fetching $name $version from crates.io" >&2
        curl -fsSL --retry 2 -o "$crate.part" "https://static.crates.io/crates/$name/$name-${version//+/%2B}.crate"
        mv "$crate.part" "$crate"
    fi
    echo "$sum  $crate" | sha256sum -c --quiet - >&2 || { echo "bazel-c-workspace: $crate: checksum mismatch" >&2; return 1; }
    tar xzf "$crate" -C "$cache"
    echo "$cache/$name-$version"
}
sqlite=$(crate_dir libsqlite3-sys 0.36.0 95b4103cffefa72eb8428cb6b47d6627161e51c2739fc5e3b734584157bc642a)/sqlite3
zlib=$(crate_dir libz-sys 1.1.33 fee3f59f4321dab0c78d828942e7aa09d0bd8ad6e78a501977e6bf3d02938045)/src/zlib
lua=$(crate_dir lua-src 548.1.1 00bc4bd1f1d5c65b30717333cbec4fa7aa378978940a1bca62f404498d423233)/lua-5.4.8
lmdb=$(crate_dir lmdb-master-sys 0.2.6 aaeb9bd22e73bd1babffff614994b341e9b2008de7bb73bf1f7e9154f1978f8b)/lmdb/libraries/liblmdb
zstd=$(crate_dir zstd-sys 2.1.3+zstd.1.5.7 f729a06d0257428fd9d997ac8db7e1407bd0262ab016b085b36bc52957c0052d)/zstd/lib

work=$(mktemp -d)
farm_pid=
stop_farm() {
    if [[ -n $farm_pid ]]; then
        kill -INT "$farm_pid" 2>/dev/null && wait "$farm_pid" 2>/dev/null || true
        farm_pid=
    fi
}
cleanup() {
    stop_farm
    (cd "$work/ws" 2>/dev/null && bazel --output_user_root="$work/bazel-root" shutdown 2>/dev/null) || true
    rm -rf "$work"
}
trap cleanup EXIT

ws=$work/ws
mkdir -p "$ws"/{sqlite,zlib,lua,lmdb,zstd,app}
cp "$sqlite"/sqlite3.[ch] "$ws/sqlite/"
cp "$zlib"/*.[ch] "$ws/zlib/"
cp "$lua"/*.[ch] "$ws/lua/"
cp "$lmdb"/{mdb.c,midl.c,lmdb.h,midl.h,mdb_stat.c,mdb_copy.c,mdb_dump.c,mdb_load.c,mdb_drop.c} "$ws/lmdb/"
cp -r "$zstd" "$ws/zstd/lib"
chmod -R u+w "$ws"
# The assembly file is a separate source kind; the C fallback is the same
# work for every way.
rm -f "$ws"/zstd/lib/decompress/*.S
# Bazel 4.2.3's stand-ins for repositories it would download (see
# tests/bazel/WORKSPACE).
cp -r tests/bazel/stand_ins "$ws/"
sed -n '/^local_repository/,$p' tests/bazel/WORKSPACE > "$ws/WORKSPACE"

cat > "$ws/sqlite/BUILD" <<'EOF'
cc_library(
    name = "sqlite3",
    srcs = ["sqlite3.c"],
    hdrs = ["sqlite3.h"],
    copts = ["-O2"],
    defines = ["SQLITE_THREADSAFE=0", "SQLITE_OMIT_LOAD_EXTENSION"],
    includes = ["."],
    linkopts = ["-lm"],
    visibility = ["//visibility:public"],
)

cc_test(name = "sqlite_test", srcs = ["sqlite_test.c"], deps = [":sqlite3"])
EOF
cat > "$ws/sqlite/sqlite_test.c" <<'EOF'
#include <stdio.h>
#include <string.h>
#include "sqlite3.h"

static int row(void *out, int n, char **values, char **names) {
    (void)n, (void)names;
    snprintf(out, 64, "%s %s", values[0], values[1]);
    return 0;
}

int main(void) {
    sqlite3 *db;
    char got[64] = "", *err = NULL;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) return 1;
    const char *sql =
        "create table t(x integer primary key, y text);"
        "with recursive c(x) as (select 1 union all select x + 1 from c where x < 20000)"
        "  insert into t select x, hex(x * x) from c;"
        "create index ty on t(y);"
        "select count(*), sum(x) from t where y like '%A%' or x % 2 = 0;";
    if (sqlite3_exec(db, sql, row, got, &err) != SQLITE_OK) {
        fprintf(stderr, "sqlite: %s\n", err);
        return 2;
    }
    printf("sqlite %s: %s\n", sqlite3_libversion(), got);
    sqlite3_close(db);
    return strlen(got) ? 0 : 3;
}
EOF

cat > "$ws/zlib/BUILD" <<'EOF'
cc_library(
    name = "zlib",
    srcs = glob(["*.c"], exclude = ["zlib_test.c"]) + glob(["*.h"], exclude = ["zlib.h", "zconf.h"]),
    hdrs = ["zlib.h", "zconf.h"],
    copts = ["-O2", "-DHAVE_UNISTD_H", "-DHAVE_STDARG_H", "-D_LARGEFILE64_SOURCE=1"],
    includes = ["."],
    visibility = ["//visibility:public"],
)

cc_test(name = "zlib_test", srcs = ["zlib_test.c"], deps = [":zlib"])
EOF
cat > "$ws/zlib/zlib_test.c" <<'EOF'
#include <stdio.h>
#include <string.h>
#include "zlib.h"

static unsigned char in[1 << 20], packed[1 << 21], out[1 << 20];

int main(void) {
    for (size_t i = 0; i < sizeof in; i++) in[i] = (unsigned char)(i * 7 % 251 < 40 ? 'a' : i % 13);
    uLongf packed_len = sizeof packed, out_len = sizeof out;
    if (compress2(packed, &packed_len, in, sizeof in, 9) != Z_OK) return 1;
    if (uncompress(out, &out_len, packed, packed_len) != Z_OK) return 2;
    if (out_len != sizeof in || memcmp(in, out, out_len)) return 3;
    printf("zlib %s: %zu -> %lu bytes\n", zlibVersion(), sizeof in, (unsigned long)packed_len);
    return 0;
}
EOF

cat > "$ws/lua/BUILD" <<'EOF'
cc_library(
    name = "lua",
    srcs = glob(["*.c"], exclude = ["lua_test.c"]) + glob(["*.h"], exclude = ["lua.h", "lualib.h", "lauxlib.h", "luaconf.h"]),
    hdrs = ["lua.h", "lualib.h", "lauxlib.h", "luaconf.h"],
    copts = ["-O2"],
    defines = ["LUA_USE_POSIX"],
    includes = ["."],
    linkopts = ["-lm"],
    visibility = ["//visibility:public"],
)

cc_test(name = "lua_test", srcs = ["lua_test.c"], deps = [":lua"])
EOF
cat > "$ws/lua/lua_test.c" <<'EOF'
#include <stdio.h>
#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

int main(void) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    const char *script =
        "local t = {} for i = 1, 200000 do t[i] = i * i end "
        "local s = 0 for _, v in ipairs(t) do s = s + v % 7 end "
        "return string.format('%d %s', s, ('x'):rep(3))";
    if (luaL_dostring(L, script) != LUA_OK) {
        fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
        return 1;
    }
    printf("%s: %s\n", LUA_RELEASE, lua_tostring(L, -1));
    lua_close(L);
    return 0;
}
EOF

cat > "$ws/lmdb/BUILD" <<'EOF'
cc_library(
    name = "lmdb",
    srcs = ["mdb.c", "midl.c", "midl.h"],
    hdrs = ["lmdb.h"],
    copts = ["-O2", "-pthread", "-Wno-unused-parameter"],
    includes = ["."],
    linkopts = ["-pthread"],
    visibility = ["//visibility:public"],
)

[cc_binary(name = tool, srcs = [tool + ".c"], deps = [":lmdb"]) for tool in ["mdb_stat", "mdb_copy", "mdb_dump", "mdb_load", "mdb_drop"]]

cc_test(name = "lmdb_test", srcs = ["lmdb_test.c"], deps = [":lmdb"])
EOF
cat > "$ws/lmdb/lmdb_test.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lmdb.h"

#define CHECK(call) do { int rc_ = (call); if (rc_) { fprintf(stderr, "%s: %s\n", #call, mdb_strerror(rc_)); return 1; } } while (0)

int main(void) {
    const char *dir = getenv("TEST_TMPDIR");
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_stat stat;
    MDB_val k, v;
    char key[32], value[64];
    CHECK(mdb_env_create(&env));
    CHECK(mdb_env_set_mapsize(env, 64 << 20));
    CHECK(mdb_env_open(env, dir ? dir : ".", 0, 0644));
    CHECK(mdb_txn_begin(env, NULL, 0, &txn));
    CHECK(mdb_dbi_open(txn, NULL, 0, &dbi));
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "key-%08d", i);
        snprintf(value, sizeof value, "value-%d", i * 31);
        k.mv_size = strlen(key), k.mv_data = key;
        v.mv_size = strlen(value), v.mv_data = value;
        CHECK(mdb_put(txn, dbi, &k, &v, 0));
    }
    CHECK(mdb_txn_commit(txn));
    CHECK(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn));
    CHECK(mdb_stat(txn, dbi, &stat));
    snprintf(key, sizeof key, "key-%08d", 4242);
    k.mv_size = strlen(key), k.mv_data = key;
    CHECK(mdb_get(txn, dbi, &k, &v));
    int ok = stat.ms_entries == 20000 && v.mv_size == strlen("value-131502") && !memcmp(v.mv_data, "value-131502", v.mv_size);
    printf("%s: %zu entries, depth %u\n", MDB_VERSION_STRING, stat.ms_entries, stat.ms_depth);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return ok ? 0 : 2;
}
EOF

cat > "$ws/zstd/BUILD" <<'EOF'
cc_library(
    name = "zstd",
    srcs = glob(["lib/**/*.c", "lib/**/*.h"]),
    hdrs = ["lib/zstd.h", "lib/zdict.h", "lib/zstd_errors.h"],
    copts = ["-O2", "-Izstd/lib", "-Izstd/lib/common", "-Izstd/lib/legacy"],
    defines = ["ZSTD_DISABLE_ASM", "ZSTD_LEGACY_SUPPORT=5", "ZSTD_MULTITHREAD=0"],
    includes = ["lib"],
    visibility = ["//visibility:public"],
)

cc_test(name = "zstd_test", srcs = ["zstd_test.c"], deps = [":zstd"])
EOF
cat > "$ws/zstd/zstd_test.c" <<'EOF'
#include <stdio.h>
#include <string.h>
#include "zstd.h"

static char in[1 << 20], packed[1 << 21], out[1 << 20];

int main(void) {
    for (size_t i = 0; i < sizeof in; i++) in[i] = (char)(i * 7 % 251 < 40 ? 'a' : i % 13);
    size_t n = ZSTD_compress(packed, sizeof packed, in, sizeof in, 19);
    if (ZSTD_isError(n)) return 1;
    size_t m = ZSTD_decompress(out, sizeof out, packed, n);
    if (ZSTD_isError(m) || m != sizeof in || memcmp(in, out, m)) return 2;
    printf("zstd %s: %zu -> %zu bytes\n", ZSTD_versionString(), sizeof in, n);
    return 0;
}
EOF

cat > "$ws/app/BUILD" <<'EOF'
cc_test(
    name = "store_test",
    srcs = ["store_test.cc"],
    deps = ["//lmdb", "//lua", "//sqlite:sqlite3", "//zlib", "//zstd"],
)
EOF
cat > "$ws/app/store_test.cc" <<'EOF'
// Lua makes a table of rows; each row is packed with zlib and zstd and
// stored in SQLite and LMDB, then read back and checked.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

extern "C" {
#include "lauxlib.h"
#include "lmdb.h"
#include "lua.h"
#include "lualib.h"
#include "sqlite3.h"
#include "zlib.h"
#include "zstd.h"
}

namespace {

std::vector<std::string> rows_from_lua(int n) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    std::vector<std::string> rows;
    std::string script = "local t = {} for i = 1, " + std::to_string(n) +
                         " do t[i] = ('row %d '):format(i) .. ('abc'):rep(i % 50) end return t";
    if (luaL_dostring(L, script.c_str()) == LUA_OK) {
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            rows.emplace_back(lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    lua_close(L);
    return rows;
}

std::string deflated(const std::string &s) {
    std::string out(compressBound(s.size()), '\0');
    uLongf n = out.size();
    compress(reinterpret_cast<Bytef *>(&out[0]), &n, reinterpret_cast<const Bytef *>(s.data()), s.size());
    out.resize(n);
    return out;
}

std::string zstd_packed(const std::string &s) {
    std::string out(ZSTD_compressBound(s.size()), '\0');
    out.resize(ZSTD_compress(&out[0], out.size(), s.data(), s.size(), 3));
    return out;
}

}  // namespace

int main() {
    auto rows = rows_from_lua(2000);
    if (rows.size() != 2000) return 1;
    sqlite3 *db;
    sqlite3_open(":memory:", &db);
    sqlite3_exec(db, "create table r(id integer primary key, z blob, s blob)", nullptr, nullptr, nullptr);
    sqlite3_stmt *insert;
    sqlite3_prepare_v2(db, "insert into r values (?, ?, ?)", -1, &insert, nullptr);
    const char *dir = std::getenv("TEST_TMPDIR");
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    mdb_env_create(&env);
    if (mdb_env_open(env, dir ? dir : ".", 0, 0644) || mdb_txn_begin(env, nullptr, 0, &txn) ||
        mdb_dbi_open(txn, nullptr, 0, &dbi))
        return 2;
    for (size_t i = 0; i < rows.size(); i++) {
        std::string z = deflated(rows[i]), s = zstd_packed(rows[i]);
        sqlite3_bind_int64(insert, 1, static_cast<sqlite3_int64>(i));
        sqlite3_bind_blob(insert, 2, z.data(), static_cast<int>(z.size()), SQLITE_TRANSIENT);
        sqlite3_bind_blob(insert, 3, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
        if (sqlite3_step(insert) != SQLITE_DONE) return 3;
        sqlite3_reset(insert);
        std::string key = std::to_string(i);
        MDB_val k{key.size(), &key[0]}, v{s.size(), &s[0]};
        if (mdb_put(txn, dbi, &k, &v, 0)) return 4;
    }
    sqlite3_finalize(insert);
    if (mdb_txn_commit(txn)) return 5;
    sqlite3_stmt *select;
    sqlite3_prepare_v2(db, "select z from r where id = 1234", -1, &select, nullptr);
    if (sqlite3_step(select) != SQLITE_ROW) return 6;
    std::string back(1 << 12, '\0');
    uLongf n = back.size();
    uncompress(reinterpret_cast<Bytef *>(&back[0]), &n, static_cast<const Bytef *>(sqlite3_column_blob(select, 0)),
               sqlite3_column_bytes(select, 0));
    back.resize(n);
    sqlite3_finalize(select);
    sqlite3_close(db);
    mdb_env_close(env);
    std::printf("row 1234: %zu bytes, %s\n", back.size(), back == rows[1234] ? "same" : "DIFFERENT");
    return back == rows[1234] ? 0 : 7;
}
EOF

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
web=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bazel_in_ws() { (cd "$ws" && bazel --output_user_root="$work/bazel-root" "$@"); }
common=(--nosandbox_debug --experimental_repository_disable_download --test_output=errors)
remote=(--remote_executor=grpc://127.0.0.1:$port --spawn_strategy=remote --remote_local_fallback=false)
disk=(--disk_cache="$work/disk-cache" --spawn_strategy=linux-sandbox)
targets=(//...)

start_farm() {
    local data
    data=$(mktemp -d -p "$work")
    "$CORRAL" up --listen "127.0.0.1:$port" --metrics "127.0.0.1:$web" --data-dir "$data" >"$data.log" 2>&1 &
    farm_pid=$!
    until grep -q "corral up: ready" "$data.log"; do
        kill -0 "$farm_pid" 2>/dev/null || { cat "$data.log" >&2; exit 1; }
        sleep 0.1
    done
}

# Seconds of wall time of one clean `bazel test`; fails if it fails or did
# not run the way it was meant to. Leaves its profile at $work/last.profile.
timed_test() {
    local expect=$1
    shift
    bazel_in_ws clean >/dev/null 2>&1
    local start end out
    start=$(date +%s.%N)
    out=$(bazel_in_ws test "${common[@]}" --profile="$work/last.profile" "$@" "${targets[@]}" 2>&1) || { echo "$out" >&2; return 1; }
    end=$(date +%s.%N)
    grep -q "processes: .*$expect" <<<"$out" || { echo "bazel-c-workspace: expected '$expect' in:" >&2; echo "$out" >&2; return 1; }
    grep "processes: " <<<"$out" | tail -1 | sed 's/^INFO: //' >"$work/last.processes"
    python3 -c "print(f'{$end - $start:.3f}')"
}

# The critical path of the last build: its total and its longest steps.
critical_path() {
    bazel_in_ws analyze-profile "$work/last.profile" 2>/dev/null |
        python3 -c '
import re, sys
lines = sys.stdin.read().splitlines()
for i, l in enumerate(lines):
    if l.startswith("Critical path"):
        steps = []
        for s in lines[i + 1:]:
            m = re.match(r"\s*([\d.]+ m?s)\s+([\d.]+%)\s+(.*)", s)
            if m:
                steps.append(m.groups())
            elif steps or not s.strip():
                if steps: break
        steps.sort(key=lambda g: -float(g[0].split()[0]) * (0.001 if g[0].endswith(" ms") else 1))
        print(l.strip().rstrip(":"), "; longest:", "; ".join(f"{t} {what}" for t, _, what in steps[:3]))
        break
else:
    print("no critical path in the profile")
'
}

median() { python3 -c 'import statistics,sys; print(f"{statistics.median(map(float, sys.argv[1:])):.2f}")' "$@"; }

# The Bazel server starts outside the measurements; the disk cache is
# filled once, untimed, before the rounds.
bazel_in_ws info output_base >/dev/null 2>&1
echo "bazel-c-workspace: $(find "$ws" -name '*.c' -o -name '*.cc' | grep -v stand_ins | wc -l) C/C++ sources, filling the disk cache" >&2
fill=$(timed_test linux-sandbox "${disk[@]}")
echo "bazel-c-workspace: filled in $fill s ($(cat "$work/last.processes"))" >&2

declare -A times paths processes
ways=(local disk cold warm)
for ((i = 0; i < runs; i++)); do
    times[local]+=" $(timed_test linux-sandbox --spawn_strategy=linux-sandbox)"
    paths[local]=$(critical_path) processes[local]=$(cat "$work/last.processes")
    # Bazel 4.2.3 counts disk cache hits as "remote cache hit".
    times[disk]+=" $(timed_test "remote cache hit" "${disk[@]}")"
    paths[disk]=$(critical_path) processes[disk]=$(cat "$work/last.processes")
    start_farm
    times[cold]+=" $(timed_test remote "${remote[@]}")"
    paths[cold]=$(critical_path) processes[cold]=$(cat "$work/last.processes")
    times[warm]+=" $(timed_test "remote cache hit" "${remote[@]}")"
    paths[warm]=$(critical_path) processes[warm]=$(cat "$work/last.processes")
    stop_farm
    echo "bazel-c-workspace: round $((i + 1)) of $runs done" >&2
done

declare -A med
echo "C/C++ workspace (sqlite, zlib, lua, lmdb, zstd: bazel test //...), $runs runs each,"
echo "median wall seconds of a clean build and test:"
for way in "${ways[@]}"; do
    med[$way]=$(median ${times[$way]})
    printf '  %-6s %8s   (%s)\n' "$way" "${med[$way]}" "${times[$way]# }"
done
python3 -c "print(f'  ratios: remote-cold/local {${med[cold]}/${med[local]}:.2f}, remote-warm/disk-cache {${med[warm]}/${med[disk]}:.2f}')"
echo "last round, per way:"
for way in "${ways[@]}"; do
    echo "  $way: ${processes[$way]}"
    echo "    ${paths[$way]}"
done

[[ -n $profile_action ]] || exit 0

# One large compile through the farm, alone on a fresh farm: sqlite3.c.
start_farm
bazel_in_ws clean >/dev/null 2>&1
bazel_in_ws build "${common[@]}" "${remote[@]}" --output_groups=compilation_outputs \
    --profile="$work/action.profile" --execution_log_json_file="$work/exec.json" //sqlite:sqlite3 >"$work/action.out" 2>&1 ||
    { cat "$work/action.out" >&2; exit 1; }
curl -fsS "http://127.0.0.1:$web/metrics" >"$work/metrics.txt"
echo "one action: compiling sqlite/sqlite3.c alone on a fresh farm ($(grep "processes: " "$work/action.out" | sed 's/^INFO: //'))"
python3 - "$work" "$web" <<'EOF'
import datetime, gzip, json, re, sys, urllib.request
work, web = sys.argv[1], sys.argv[2]

# Bazel's execution log: the compile's action digest.
text, spawns, at = open(f"{work}/exec.json").read(), [], 0
decoder = json.JSONDecoder()
while at < len(text):
    while at < len(text) and text[at].isspace():
        at += 1
    if at < len(text):
        spawn, at = decoder.raw_decode(text, at)
        spawns.append(spawn)
spawn = next(s for s in spawns if s.get("mnemonic") == "CppCompile" and "sqlite/sqlite3.c" in s.get("commandArgs", []))
digest = spawn.get("digest")
if digest:
    digest = f'{digest["hash"]}-{digest.get("sizeBytes", 0)}'
else:
    # Bazel 4.2.3's log may not carry it: take the action the farm ran.
    home = urllib.request.urlopen(f"http://127.0.0.1:{web}/").read().decode()
    digest = next(m for m in re.findall(r'href="/action/([0-9a-f]{64}-\d+)"', home)
                  if "sqlite3.c" in urllib.request.urlopen(f"http://127.0.0.1:{web}/action/{m}").read().decode())
print(f"  action {digest} (runner in Bazel's log: {spawn.get('runner', '?')})")

# The farm's action page: the result's stage timestamps.
page = urllib.request.urlopen(f"http://127.0.0.1:{web}/action/{digest}").read().decode()
stamps = {}
for stage, t in re.findall(r"<th>([a-z ]+)</th><td>(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})Z", page):
    stamps[stage] = datetime.datetime.fromisoformat(t).replace(tzinfo=datetime.timezone.utc).timestamp()

# The runner's spawn time: the farm ran only this action, so the
# histogram's sum over its count is this spawn.
metrics = open(f"{work}/metrics.txt").read()
def metric(name):
    m = re.search(rf"^{name} ([\d.e+-]+)$", metrics, re.M)
    return float(m.group(1)) if m else None
spawn_sum, spawn_count = metric("corral_runner_spawn_seconds_sum"), metric("corral_runner_spawn_seconds_count")

# Bazel's profile: the action's own events on its thread.
opener = gzip.open if open(f"{work}/action.profile", "rb").read(2) == b"\x1f\x8b" else open
profile = json.load(opener(f"{work}/action.profile", "rt"))
events = profile["traceEvents"] if isinstance(profile, dict) else profile
action = next(e for e in events if e.get("ph") == "X" and "sqlite3.c" in e.get("name", "") and e.get("cat") == "action processing")
a0, a1 = action["ts"], action["ts"] + action["dur"]
inner = [e for e in events if e.get("ph") == "X" and e.get("tid") == action["tid"] and e is not action
         and a0 <= e["ts"] and e["ts"] + e["dur"] <= a1 and e["dur"] >= 1000]
bazel = {}
for e in inner:
    bazel[e["name"]] = bazel.get(e["name"], 0) + e["dur"] / 1e6

def row(what, seconds, note=""):
    print(f"  {what:<44} {seconds:8.3f} s  {note}")
row("Bazel: the action, end to end", action["dur"] / 1e6, action["name"])
for name, seconds in sorted(bazel.items(), key=lambda kv: -kv[1]):
    row(f"Bazel: {name}", seconds)
def gap(a, b):
    return stamps[b] - stamps[a] if a in stamps and b in stamps else float("nan")
row("farm: queued -> worker start (queue)", gap("queued", "worker start"))
row("farm: worker start -> input fetch start", gap("worker start", "input fetch start"))
row("farm: input fetch (input layout)", gap("input fetch start", "input fetch completed"))
row("farm: input fetch -> execution start", gap("input fetch completed", "execution start"))
execution = gap("execution start", "execution completed")
row("farm: execution (sandbox spawn + run)", execution)
if spawn_count == 1:
    row("  of which sandbox spawn (runner histogram)", spawn_sum)
    row("  of which the compiler's run", execution - spawn_sum)
else:
    print(f"  (spawn time not separable: {spawn_count} runs in the runner's histogram)")
row("farm: output hashing and upload", gap("output upload start", "output upload completed"))
row("farm: output upload -> worker completed", gap("output upload completed", "worker completed"))
row("farm: queued -> worker completed", gap("queued", "worker completed"))
print("  (farm stages to the millisecond, from the web UI's action page)")
EOF
stop_farm
