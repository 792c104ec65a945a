"""The machine a figure was measured on, for the line above every results table: CPU model
and the x86 vector level it has (a figure holds for that level only), date, threads."""
from __future__ import annotations

import datetime
import platform


def cpu_line() -> str:
    """e.g. 'AMD EPYC (family 26 model 2; AVX-512 + VNNI), 2 cores, 2026-12-02'. The family
    and model tell CPU generations apart where a virtual machine's model name does not
    ("AMD EPYC" is every Zen)."""
    import os

    model, flags, generation = platform.processor() or "unknown CPU", set(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("cpu family", "model"):
                    generation[key.strip()] = value.strip()
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
    if generation:
        isa = f"family {generation.get('cpu family', '?')} model {generation.get('model', '?')}; {isa}"
    return f"{model} ({isa}), {os.cpu_count()} cores, {datetime.date.today()}"
