#!/usr/bin/env bash
# Runs the sandbox's and the runner's kernel tests inside a VM booted with
# Debian's packaged kernel, once with pure cgroup v2 and once with cgroup
# v1, and fails if any guest test failed.
#
#   vm-tests/run.sh [v2|v1]...        (default: both)
#
# The guest shares the host's root file system read-only over virtio-9p,
# so it runs the test binaries just built here; its init (init.sh) lives
# in a tiny busybox initramfs. Software emulation (TCG) by default: nested
# KVM stalls on this kind of machine. CORRAL_VM_ACCEL=kvm to try KVM.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

layouts=("$@")
((${#layouts[@]})) || layouts=(v2 v1)

if [[ $(id -u) -ne 0 ]]; then
    # The skip line scripts/summary.awk counts, as corral-testkit's.
    echo "SKIP: vm-tests: needs root (apt packages, and the guest tests run as root)" >&2
    [[ -z "${CI:-}" ]] || exit 1
    exit 0
fi

# --- what the VM needs, from Debian's packages ----------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[[ -x /bin/busybox ]] || need+=(busybox-static)
if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cache=${CORRAL_VM_CACHE:-/var/cache/corral-vm-tests}
mkdir -p "$cache"
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -n1)
if [[ -z "$kpkg" ]]; then
    apt-get update -qq
    kpkg=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -n1)
fi
kver=${kpkg#linux-image-}
kdir=$cache/$kver
if [[ ! -f $kdir/vmlinuz ]]; then
    echo "vm-tests: unpacking $kpkg"
    rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp"
    (cd "$kdir.tmp" && apt-get download -qq "$kpkg" 2>/dev/null && dpkg-deb -x ./*.deb x)
    mkdir -p "$kdir.tmp/modules"
    cp "$kdir.tmp/x/boot/vmlinuz-$kver" "$kdir.tmp/vmlinuz"
    for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
             drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci fs/netfs/netfs \
             fs/fscache/fscache net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p; do
        cp "$kdir.tmp/x/lib/modules/$kver/kernel/$m.ko" "$kdir.tmp/modules/"
    done
    rm -rf "$kdir.tmp/x" "$kdir.tmp"/*.deb "$kdir"
    mv "$kdir.tmp" "$kdir"
fi

# --- the test binaries -----------------------------------------------------
echo "vm-tests: building the test binaries"
tests=$(cargo test -p corral-sandbox -p corral-runner --test it --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "it":
        print(m["executable"])')
[[ -n "$tests" ]] || { echo "vm-tests: no test binaries found" >&2; exit 1; }

# --- the initramfs -----------------------------------------------------------
work=$(mktemp -d)
logs=${CORRAL_VM_LOGS:-$work}
mkdir -p "$logs"
trap 'rm -rf "$work"' EXIT
initrd=$work/initrd
mkdir -p "$initrd"/{bin,proc,sys,dev,modules,newroot,results}
cp /bin/busybox "$initrd/bin/busybox"
for applet in sh mount mkdir insmod cat echo sed sleep switch_root poweroff uname ip; do
    ln -s busybox "$initrd/bin/$applet"
done
cp "$kdir"/modules/*.ko "$initrd/modules/"
cp vm-tests/init.sh "$initrd/init"
(cd "$initrd" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$work/initrd.gz"

accel=${CORRAL_VM_ACCEL:-tcg}
failed=0
for layout in "${layouts[@]}"; do
    results=$work/results-$layout
    mkdir -p "$results"
    {
        echo '#!/bin/sh'
        echo '# Stage 2, in the host root file system: run the tests, record, power off.'
        echo 'export PATH=/usr/bin:/bin HOME=/tmp TMPDIR=/tmp CORRAL_VM=1'
        echo 'status=0'
        for t in $tests; do
            echo "echo 'corral-vm: running $t'"
            echo "'$t' --test-threads=2 --color=never || status=1"
        done
        echo 'echo "$status" > /run/corral-results/status'
        echo 'sync'
        echo 'echo "corral-vm: done, status $status"'
        echo '/bin/busybox poweroff -f'
    } > "$results/stage2.sh"
    echo "vm-tests: booting $kver with cgroup $layout ($accel)"
    start=$(date +%s)
    timeout 900 qemu-system-x86_64 -accel "$accel" -m 3072 -smp 2 -nographic -no-reboot \
        -kernel "$kdir/vmlinuz" -initrd "$work/initrd.gz" \
        -append "console=ttyS0 panic=-1 quiet corral.cgroup=$layout corral.watchdog=840 corral.workspace=$PWD" \
        -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
        -virtfs "local,path=$results,mount_tag=results,security_model=none" \
        > "$logs/console-$layout.log" 2>&1 || true
    cp "$logs/console-$layout.log" "$results/console.log"
    took=$(( $(date +%s) - start ))
    # What scripts/summary.awk counts: each binary's start and result, and
    # skip lines (anywhere: the guest's console may run lines together).
    grep -E "^(corral-vm|test result|test .* FAILED|failures:|---- )|SKIP: " "$results/console.log" || true
    status=$(cat "$results/status" 2>/dev/null || echo missing)
    if [[ "$status" != 0 ]]; then
        echo "vm-tests: cgroup $layout FAILED (status $status) after ${took}s; console:" >&2
        # Prefixed: these lines were counted above and must not be twice.
        tail -n 60 "$results/console.log" | sed 's/^/console| /' >&2
        failed=1
    else
        echo "vm-tests: cgroup $layout passed in ${took}s"
    fi
done
exit "$failed"
