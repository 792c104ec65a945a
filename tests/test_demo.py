"""`ncx demo --quick` (the smoke version of the README's main job) runs end to end as a user
runs it, prints an exact-decode "ok" line for every method, and writes its table, figure and
samples."""
import json
import os
import subprocess
import sys
import time

import pytest

from ncx.demo import QUICK, demo_methods
from ncx.experiment import parse_method

EXPECTED = ["Bytes", f"SentencePiece[v={QUICK.sentencepiece_vocab}]", "GZip[v=256]", "StaticAC[v=256]",
            "AC[v=256]", "EqualInfoAC[b=16, v=256]", "EqualInfoAC[b=16, v=65k]"]


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ncx.cli", "demo", "--quick", "--out", str(out), "--threads", "1"],
                          capture_output=True, text=True, timeout=300, env=env)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    # One exact-decode line per method, from the final summary.
    start = lines.index("decode check (held-out documents decoded back exactly):")
    assert lines[start + 1:start + 1 + len(EXPECTED)] == [f"  {name}: ok" for name in EXPECTED]
    assert sum("[decode]" in ln and "decode ok" in ln for ln in lines) == len(EXPECTED)
    assert any(ln.startswith("| method | v | bytes/token | M2 |") for ln in lines)
    assert "samples (EqualInfoAC[b=16, v=256] M2, decoded by M1):" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["all_decoded"] and [m["name"] for m in results["methods"]] == EXPECTED
    trained = [r for r in results["runs"] if r["bits_per_byte"] is not None]
    assert len(trained) == len(EXPECTED) - 1  # v=65k is compressed and checked, not trained, by default
    assert all(r["flops_per_byte"] > 0 and r["tokens_per_second"] > 0 for r in trained)
    twin = results["m1"]["integer_twin"]
    assert twin["equal_info_decode_ok"] and twin["batch_independent"]
    assert abs(twin["heldout_bits_per_byte"] / twin["float_heldout_bits_per_byte"] - 1) < 0.02
    assert "[M1] integer twin: held-out" in proc.stdout
    for name in ("results.md", "results.png", "samples.txt", "m1.safetensors", "m1-int.safetensors"):
        assert (out / name).stat().st_size > 0
    assert [parse_method(m).label for m in demo_methods(QUICK)] == [m["method_request"] for m in results["methods"]]
    assert seconds < 240, f"the quick demo took {seconds:.0f} s"
