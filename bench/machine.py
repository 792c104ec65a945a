"""The machine a figure was measured on, for the line above every results table: CPU model
and the x86 vector level it has (a figure holds for that level only), date, threads."""
from __future__ import annotations

import datetime
import platform


def cpu_line() -> str:
    """e.g. 'Intel(R) Xeon(R) Processor (AVX-512 + VNNI), 2 cores, 2026-11-30'."""
    import os

    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    if "avx512f" in flags:
        isa = "AVX-512" + (" + VNNI" if "avx512_vnni" in flags else "")
    elif "avx2" in flags:
        isa = "AVX2" + (" + FMA" if "fma" in flags else "")
    else:
        isa = "no AVX2"
    return f"{model} ({isa}), {os.cpu_count()} cores, {datetime.date.today()}"
