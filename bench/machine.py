"""What machine a benchmark ran on, for the tables' captions (shared by every bench script)."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    """1-minute load average: these machines are shared, and the caption should say how busy it was."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"
