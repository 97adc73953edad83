#!/usr/bin/env python3
"""Measures the kernel candidates for the disk limit (docs/decisions/0007).

Run as root: `python3 scripts/disk-limit-candidates.py`. Makes its own
loop-mounted images in a temporary directory and removes them. Needs
mkfs.ext4, and mkfs.xfs / mkfs.btrfs for those rows (xfsprogs,
btrfs-progs); a missing tool or kernel feature is reported, not fatal.
"""

import ctypes
import errno
import fcntl
import os
import shutil
import struct
import subprocess
import tempfile
import time

libc = ctypes.CDLL(None, use_errno=True)

# <linux/btrfs.h>: struct btrfs_ioctl_vol_args is 4096 bytes,
# struct btrfs_ioctl_qgroup_limit_args 48.
BTRFS_IOC_SUBVOL_CREATE = 0x5000940E
BTRFS_IOC_SNAP_DESTROY = 0x5000940F
BTRFS_IOC_QGROUP_LIMIT = 0x8030942B
BTRFS_QGROUP_LIMIT_MAX_EXCL = 1 << 1
FICLONE = 0x40049409


def check(ret):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def mount(source, target, fstype, options=""):
    check(libc.mount(source.encode(), target.encode(), fstype.encode(), 0, options.encode()))


def umount(target):
    check(libc.umount2(target.encode(), 0))


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True)


def dmesg_tail():
    out = run("dmesg").stdout.strip().splitlines()
    return out[-1] if out else ""


def per(f, n):
    t = time.perf_counter()
    for i in range(n):
        f(i)
    return (time.perf_counter() - t) / n * 1e6


def loop_mount(image, size, mkfs, target, options):
    with open(image, "wb") as f:
        f.truncate(size)
    made = run(*mkfs, image)
    if made.returncode != 0:
        return f"{mkfs[0]} failed: {made.stderr.strip()}"
    mounted = run("mount", "-o", "loop," + options if options else "loop", image, target)
    if mounted.returncode != 0:
        return f"mount -o {options} failed: {dmesg_tail()}"
    return None


def vol_args(name):
    return bytearray(struct.pack("q4088s", 0, name.encode()))


def layout(src, dst, how, count=1000):
    t = time.perf_counter()
    for i in range(count):
        s, d = os.path.join(src, f"f{i}"), os.path.join(dst, f"f{i}")
        if how == "link":
            os.link(s, d)
        else:
            a = os.open(s, os.O_RDONLY)
            b = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o555)
            fcntl.ioctl(b, FICLONE, a)
            os.close(a)
            os.close(b)
    return (time.perf_counter() - t) / count * 1e6


def fill_cache(directory, count=1000):
    os.makedirs(directory)
    for i in range(count):
        with open(os.path.join(directory, f"f{i}"), "wb") as f:
            f.write(os.urandom(10000))


def project_quotas(work):
    m = os.path.join(work, "pq")
    os.mkdir(m)
    for name, mkfs, options in [
        ("ext4", ["mkfs.ext4", "-q", "-F", "-O", "quota,project", "-E", "quotatype=prjquota"], "prjquota"),
        ("xfs", ["mkfs.xfs", "-q", "-f"], "prjquota"),
    ]:
        if shutil.which(mkfs[0]) is None:
            print(f"{name} project quota: {mkfs[0]} not installed")
            continue
        failed = loop_mount(os.path.join(work, f"{name}.img"), 512 << 20, mkfs, m, options)
        if failed:
            print(f"{name} project quota: {failed}")
        else:
            print(f"{name} project quota: mounts (measure it: this kernel has it)")
            umount(m)


def btrfs(work):
    if shutil.which("mkfs.btrfs") is None:
        print("btrfs qgroups: mkfs.btrfs not installed")
        return
    m = os.path.join(work, "btrfs")
    os.mkdir(m)
    failed = loop_mount(os.path.join(work, "btrfs.img"), 1 << 30, ["mkfs.btrfs", "-q", "-f"], m, "")
    if failed:
        print(f"btrfs qgroups: {failed}")
        return
    try:
        if run("btrfs", "quota", "enable", m).returncode != 0:
            print("btrfs qgroups: quota enable failed")
            return
        parent = os.open(m, os.O_RDONLY | os.O_DIRECTORY)

        def subvolume(i, limit=True):
            fcntl.ioctl(parent, BTRFS_IOC_SUBVOL_CREATE, vol_args(f"s{i}"))
            if limit:
                fd = os.open(os.path.join(m, f"s{i}"), os.O_RDONLY | os.O_DIRECTORY)
                args = struct.pack("QQQQQQ", 0, BTRFS_QGROUP_LIMIT_MAX_EXCL, 0, 64 << 20, 0, 0)
                fcntl.ioctl(fd, BTRFS_IOC_QGROUP_LIMIT, bytearray(args))
                os.close(fd)
            fcntl.ioctl(parent, BTRFS_IOC_SNAP_DESTROY, vol_args(f"s{i}"))

        def mkdir_rmdir(i):
            os.mkdir(os.path.join(m, f"d{i}"))
            os.rmdir(os.path.join(m, f"d{i}"))

        print("btrfs subvolume create + qgroup limit + destroy: %.0f us" % per(subvolume, 200))
        print("btrfs mkdir + rmdir (baseline): %.0f us" % per(mkdir_rmdir, 200))

        # A 4 MiB limit: one large allocation, then empty files.
        fcntl.ioctl(parent, BTRFS_IOC_SUBVOL_CREATE, vol_args("q"))
        fd = os.open(os.path.join(m, "q"), os.O_RDONLY | os.O_DIRECTORY)
        args = struct.pack("QQQQQQ", 0, BTRFS_QGROUP_LIMIT_MAX_EXCL, 0, 4 << 20, 0, 0)
        fcntl.ioctl(fd, BTRFS_IOC_QGROUP_LIMIT, bytearray(args))
        os.close(fd)
        big = os.open(os.path.join(m, "q", "big"), os.O_WRONLY | os.O_CREAT)
        t = time.perf_counter()
        try:
            os.posix_fallocate(big, 0, 1 << 30)
            print("btrfs qgroup: fallocate 1 GiB under 4 MiB allowed")
        except OSError as e:
            took = (time.perf_counter() - t) * 1e3
            print(f"btrfs qgroup: fallocate 1 GiB under 4 MiB: {errno.errorcode[e.errno]} in {took:.0f} ms")
        os.close(big)
        os.unlink(os.path.join(m, "q", "big"))
        n = 0
        try:
            while n < 1_000_000:
                os.close(os.open(os.path.join(m, "q", f"e{n}"), os.O_WRONLY | os.O_CREAT))
                n += 1
            print("btrfs qgroup: 1,000,000 empty files allowed under 4 MiB")
        except OSError as e:
            print(f"btrfs qgroup: empty files under 4 MiB stop at {n}: {errno.errorcode[e.errno]}")

        fill_cache(os.path.join(m, "cache"))
        os.mkdir(os.path.join(m, "same"))
        print("layout on btrfs, hardlink per file: %.1f us" % layout(os.path.join(m, "cache"), os.path.join(m, "same"), "link"))
        fcntl.ioctl(parent, BTRFS_IOC_SUBVOL_CREATE, vol_args("root"))
        print("layout on btrfs, FICLONE per file into a subvolume: %.1f us" % layout(os.path.join(m, "cache"), os.path.join(m, "root"), "clone"))
        os.close(parent)
    finally:
        umount(m)


def overlay(work):
    lower, upper, merged = (os.path.join(work, d) for d in ("lower", "upper", "merged"))
    for d in (lower, upper, merged):
        os.mkdir(d)

    def once(i):
        mount("tmpfs", upper, "tmpfs", "size=64m,nr_inodes=1000")
        os.mkdir(os.path.join(upper, "u"))
        os.mkdir(os.path.join(upper, "w"))
        mount("overlay", merged, "overlay", f"lowerdir={lower},upperdir={upper}/u,workdir={upper}/w")
        umount(merged)
        umount(upper)

    print("overlay on a tmpfs upper, mount + umount: %.0f us" % per(once, 50))

    image = os.path.join(work, "upper.img")

    def loop_once(i):
        failed = loop_mount(image, 64 << 20, ["mkfs.ext4", "-q", "-F", "-N", "1024", "-E", "nodiscard"], upper, "")
        if failed:
            raise RuntimeError(failed)
        os.mkdir(os.path.join(upper, "u"))
        os.mkdir(os.path.join(upper, "w"))
        mount("overlay", merged, "overlay", f"lowerdir={lower},upperdir={upper}/u,workdir={upper}/w")
        umount(merged)
        umount(upper)
        os.unlink(image)

    print("overlay on a loop ext4 upper, mkfs + mounts + umounts: %.0f us" % per(loop_once, 5))


def main():
    work = tempfile.mkdtemp(prefix="disk-limit-candidates-")
    try:
        fill_cache(os.path.join(work, "cache"))
        os.mkdir(os.path.join(work, "root"))
        print("layout on the build file system, hardlink per file: %.1f us" % layout(os.path.join(work, "cache"), os.path.join(work, "root"), "link"))
        project_quotas(work)
        btrfs(work)
        overlay(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
