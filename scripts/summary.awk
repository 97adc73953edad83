# The closing line of scripts/test.sh, from the whole suite's output:
#
#   awk -v status=N -f scripts/summary.awk LOG
#
# prints "P passed, F failed, S skipped", prefixed with "FAILED: " and
# followed by what failed outside a test's own count when anything failed or
# the suite's exit status N is not 0. It reads:
# - each test binary's "test result:" line: passed, failed, and ignored
#   (counted as skipped); the VM guests' lines too (vm-tests/run.sh prints
#   them);
# - a binary that started ("Running", "Doc-tests", or the guest's
#   "corral-vm: running") and ended without a result, such as one that
#   crashed or was not found: one failure, named;
# - lines with "SKIP: " (corral-testkit's skip(), one per test that skips
#   at run time): skipped, and not passed though libtest says passed;
#   outside a binary, a line starting "SKIP: " is a whole suite skipped;
# - "vm-tests: cgroup L FAILED": one failure unless that guest's binaries
#   already account for it (a guest that never booted ran none).
#
# Tested on sample logs by corral-testkit's unit tests (testkit/src/lib.rs,
# `cargo test -p corral-testkit`), next to the skip helper whose lines it
# counts.

function fail_note(what) {
    notes = notes (notes == "" ? "" : "; ") what
}

# A binary's output ends: without a result line, it failed.
function close_binary() {
    if (current != "") {
        failed++
        fail_note(current " ended without a test result")
    }
    current = ""
}

function open_binary(name) {
    close_binary()
    current = name
}

{ sub(/\r$/, "") }

/^ *Running / {
    line = $0
    sub(/^ *Running /, "", line)
    open_binary(line)
    next
}
/^ *Doc-tests / {
    open_binary("doc-tests " $2)
    next
}
# At the start of the line only: the console dump after a failed guest
# ("console| corral-vm: running …") repeats it, and is not a new binary.
/^corral-vm: running / {
    line = $0
    sub(/^corral-vm: running /, "", line)
    open_binary("guest " line)
    next
}
/^test result:/ {
    passed += $4
    failed += $6
    skipped += $8
    current = ""
    next
}
/SKIP: / {
    if (current != "") {
        runtime_skips++
        skipped++
    } else if (/^SKIP: /) {
        skipped++
    }
    next
}
/^vm-tests: booting / {
    close_binary()
    layout_failed = failed
    next
}
/^vm-tests: cgroup .* FAILED/ {
    close_binary()
    if (failed == layout_failed) {
        failed++
        fail_note($0)
    }
    next
}
/corral-vm: done/ || /^vm-tests: / || /^error: could not compile/ {
    close_binary()
    if (/^error: could not compile/) fail_note($0)
    next
}

END {
    close_binary()
    passed -= runtime_skips
    if (status != 0 && failed == 0 && notes == "")
        fail_note("exit status " status " with no failed test (see above)")
    line = sprintf("%d passed, %d failed, %d skipped", passed, failed, skipped)
    if (failed > 0 || notes != "" || status != 0)
        line = "FAILED: " line
    if (notes != "")
        line = line " (" notes ")"
    print line
}
