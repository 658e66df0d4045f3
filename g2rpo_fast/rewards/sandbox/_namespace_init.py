"""PID 1 of the ``namespace`` sandbox (used when bubblewrap is not installed).

Run by ``unshare --user --map-root-user --mount --net --pid --fork --ipc --uts`` as
``python -I -S _namespace_init.py ROOT CONFIG_JSON -- COMMAND...``; standard library only,
trusted (the completion starts only in COMMAND). It builds a minimal root on a tmpfs mounted at
ROOT: read-only binds of exactly the paths in CONFIG (the interpreter, its standard library,
the system libraries; site-packages hidden), /dev/{null,zero,full,random,urandom}, a fresh /proc and a size-capped
writable /tmp; pivots into it and detaches the host's tree; allows no further user namespace
(this namespace's `user.max_user_namespaces` set to 0, which only CAP_SYS_RESOURCE here could
raise again), as bwrap's --disable-userns; forks COMMAND without any capability (empty bounding
set, no_new_privs, SECBIT_NOROOT); then reaps until COMMAND exits.
When this process exits, the kernel kills every process left in the PID namespace.
"""
import ctypes
import json
import os
import platform
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 24, 28, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECBITS_LOCKED_NOROOT = 0x2F  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS_LOCKED and their locks
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
_STATVFS_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                  (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
DEVICES = ("null", "zero", "full", "random", "urandom")

libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source, target, fstype, flags, data=None):
    enc = (lambda s: s.encode() if s is not None else None)
    _check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {source} on {target}")


def bind_read_only(source, target):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND | MS_REC)
    # A remount inside a user namespace must keep the flags the kernel locked on the source.
    locked = os.statvfs(source).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    flags |= sum(ms for st, ms in _STATVFS_FLAGS if locked & st)
    mount(None, target, None, flags)


def build_root(root, config):
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    mount("sandbox-root", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for source, target in config["binds"]:
        bind_read_only(source, root + target)
    for path in config["hidden"]:  # e.g. the interpreter's site-packages
        mount("sandbox-hidden", root + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
    for link, target in config["symlinks"]:
        os.symlink(target, root + link)
    os.makedirs(root + "/dev")
    for name in DEVICES:
        bind_read_only_device(f"/dev/{name}", f"{root}/dev/{name}")
    os.makedirs(root + "/proc")
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/tmp")
    mount("sandbox-tmp", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={config['tmpfs_bytes']},mode=1777")
    os.makedirs(root + "/.old_root")
    os.chdir(root)
    _check(libc.syscall(SYS_PIVOT_ROOT[platform.machine()], b".", b".old_root"), "pivot_root")
    os.chdir("/")
    _check(libc.umount2(b"/.old_root", MNT_DETACH), "umount the host root")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def bind_read_only_device(source, target):
    open(target, "a").close()
    mount(source, target, None, MS_BIND)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC)  # writable, like /dev/null


def drop_capabilities():
    _check(libc.prctl(PR_SET_SECUREBITS, SECBITS_LOCKED_NOROOT, 0, 0, 0), "securebits")
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: all empty
    _check(libc.capset(header, data), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def forbid_user_namespaces():
    # The limit is per user namespace (Linux >= 4.9) and counts namespaces created in this one;
    # a kernel where it cannot be set fails the run (closed) rather than allowing nesting.
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")


def main():
    root, config = sys.argv[1], json.loads(sys.argv[2])
    command = sys.argv[sys.argv.index("--") + 1:]
    build_root(root, config)
    forbid_user_namespaces()
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            os.chdir("/tmp")
            drop_capabilities()
            os.execve(command[0], command, dict(os.environ))
        finally:
            os._exit(127)
    while True:  # PID 1 reaps every orphan; returns the command's status
        pid, status = os.wait()
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


if __name__ == "__main__":
    main()
