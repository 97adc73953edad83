#!/bin/sh
# The guest's init (pid 1), run by busybox from the initramfs. Stage 1
# (here): load the virtio-9p modules, mount the host's root file system
# (shared read-only) and what the tests need inside it, then switch_root
# into it: the sandbox must run from a real root, since unshare of a user
# namespace is refused inside a chroot. Stage 2 is results/stage2.sh,
# written by vm-tests/run.sh. A watchdog powers off a hung guest.
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# Loopback up, as on any host: tests that serve on 127.0.0.1 (the
# runner's metrics port) need it; the guest has no other network.
ip link set lo up || echo "corral-vm: loopback not up"

arg() { sed -n "s/.*corral\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
LAYOUT=$(arg cgroup)
WATCHDOG=$(arg watchdog)
WORKSPACE=$(arg workspace)

# Runs from the initramfs' busybox, which stays mapped after switch_root.
(sleep "${WATCHDOG:-600}"; echo "corral-vm: watchdog fired after ${WATCHDOG}s"; poweroff -f) &

for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
         netfs fscache 9pnet 9pnet_virtio 9p; do
    insmod "/modules/$m.ko" || echo "corral-vm: insmod $m failed"
done

R=/newroot
mkdir -p $R
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot $R
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mount -t tmpfs -o mode=755 run $R/run
# The guest's /tmp is its own tmpfs, which hides the host's: a checkout
# under /tmp (a clone in `mktemp -d`) would vanish with it, test binaries
# and all. Keep it in view: hold it on a bind mount, then put it back at
# its own path inside the new /tmp.
case "$WORKSPACE" in
/tmp/*)
    mkdir -p $R/run/corral-workspace
    mount -o bind "$R$WORKSPACE" $R/run/corral-workspace
    ;;
esac
mount -t tmpfs -o mode=1777 tmp $R/tmp
case "$WORKSPACE" in
/tmp/*)
    mkdir -p "$R$WORKSPACE"
    mount -o bind $R/run/corral-workspace "$R$WORKSPACE"
    ;;
esac
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mkdir -p $R/run/corral-results
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 results $R/run/corral-results

case "$LAYOUT" in
v2)
    mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
    ;;
v1)
    mount -t tmpfs -o mode=755 cgroup $R/sys/fs/cgroup
    for c in memory pids cpu,cpuacct freezer; do
        mkdir -p $R/sys/fs/cgroup/$c
        mount -t cgroup -o $c cgroup $R/sys/fs/cgroup/$c
    done
    ;;
esac

echo "corral-vm: kernel $(uname -r), cgroup layout $LAYOUT"
exec switch_root $R /bin/sh /run/corral-results/stage2.sh
