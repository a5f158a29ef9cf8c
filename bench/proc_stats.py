"""What Linux's /proc says about a process, for the benchmarks: resident memory, its peak, CPU time.

Example::

    >>> from proc_stats import cpu_seconds, memory_mb
    >>> memory_mb()["VmHWM"] >= memory_mb()["VmRSS"] > 0
    True
    >>> cpu_seconds("self") > 0
    True
"""

from __future__ import annotations

import os
from pathlib import Path


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    """Resident memory now (``VmRSS``) and its high-water mark (``VmHWM``), in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {key: round(int(fields[key].split()[0]) / 1024, 1) for key in ("VmRSS", "VmHWM")}


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
