"""Resident memory of this process, as the benchmarks report it on every side."""


def rss_mb(key: str) -> float:
    """A line of /proc/self/status in MiB: VmRSS now, VmHWM the peak (NaN off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
