"""What the benchmark scripts share: the result file they print and write, and this process's
memory as /proc reports it (CPU peaks; torch's allocator stats cover CUDA)."""


def emit(lines: list[str], out: str | None) -> str:
    """Print the markdown result and write it to `out` (when given)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(out, "w") as fh:
            fh.write(text)
    return text


def proc_status_bytes(key: str) -> int:
    """A /proc/self/status field in bytes (e.g. "VmRSS:", "VmHWM:"); 0 where it is missing."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0
