"""bench/gpu_check.sh is the one script a GPU session runs, with minutes of device time and no second
try: its dry run (NCX_GPU_DRY_RUN=1: CPU, tiny sizes, no build, no nvidia-smi) runs every step here,
so a broken command line or script fails in CI instead of on the GPU. About 40 s on 2 cores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("ac", "eqinfo_b32", "eqinfo_b32_graphs", "vocab_b16_build", "vocab_b24_estimate", "eqinfo_b16_vocab")
GPU_ONLY_STAGES = ("eqinfo_b32_graphs",)  # skipped on the CPU, and said so
CODEC_STAGES = ("ac", "eqinfo_b32", "eqinfo_b16_vocab")


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", **extra)
    env.pop("OUT", None)
    return env


def _check_pipeline_json(path: Path) -> dict:
    r = json.loads(path.read_text())
    assert r["dry_run"] is True and r["device"] == "cpu"
    for key in ("card", "torch", "date", "config", "provenance", "wall_s"):
        assert key in r
    assert set(r["stages"]) == set(STAGES)
    for name, s in r["stages"].items():
        want = "skipped" if name in GPU_ONLY_STAGES else "ok"
        assert s["status"] == want, (name, s.get("error"), s.get("traceback"))
    for name in CODEC_STAGES:
        s = r["stages"][name]
        assert s["exact"] is True, name
        assert s["chunks_done"] >= 1 and s["bytes_done"] > 0, name
        for ph in ("encode", "decode"):  # plain chunks give the MB/s; on a loaded machine only one chunk may fit
            assert (s[f"{ph}_plain"] or s[f"{ph}_profiled"])["MBps"] > 0, (name, ph)
    for name in ("ac", "eqinfo_b32"):  # M1 in the loop: per step figures and the three shares (chunk 0 is profiled)
        s = r["stages"][name]
        for ph in ("encode", "decode"):
            p = s[f"{ph}_profiled"]
            assert p is not None and p["steps"] > 0 and p["ms_per_step"] > 0, (name, ph)
            assert 0 < p["m1_share"] <= 1 and 0 <= p["coder_share"] <= 1, (name, ph, p)
            assert abs(p["m1_share"] + p["coder_share"] + p["driver_share"] - 1) < 1e-9
    assert r["stages"]["vocab_b16_build"]["codes"] == 1 << 16
    assert r["stages"]["vocab_b24_estimate"]["estimate_full_build_s"] > 0
    assert r["all_ok"] is True
    return r


def test_gpu_pipeline_dry_run(tmp_path):
    out = tmp_path / "x.json"
    # A generous budget: the figures checked below need the chunks done, even on a loaded machine.
    p = subprocess.run([sys.executable, "bench/gpu_pipeline.py", "--dry-run", "--budget-s", "60", "--out", str(out)],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    _check_pipeline_json(out)
    assert "ncx pipeline on CPU (DRY RUN" in p.stdout
    for label in ("AC (M1)", "EqualInfoAC b=32 (M1)", "vocab build b=16", "vocab build b=24 (est.)",
                  "EqualInfoAC b=16 (vocab)"):
        assert label in p.stdout


def test_gpu_pipeline_failed_stage_is_reported(tmp_path):
    """A stage that fails is in the JSON and the table as failed, and the exit status says so."""
    out = tmp_path / "x.json"
    p = subprocess.run([sys.executable, "bench/gpu_pipeline.py", "--dry-run", "--out", str(out),
                        "--stages", "eqinfo_b16_vocab"],  # without the b=16 build it has no vocabulary
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    r = json.loads(out.read_text())
    assert r["stages"]["eqinfo_b16_vocab"]["status"] == "failed" and r["all_ok"] is False
    assert "FAILED" in p.stdout and "b=16 vocabulary" in p.stdout


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    log = tmp_path / "logs"
    p = subprocess.run(["bash", "bench/gpu_check.sh", str(log)], cwd=ROOT,
                       env=_env(NCX_GPU_DRY_RUN="1", NCX_PIPELINE_BUDGET_S="60"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-3000:]
    for name in ("build.log", "tests.log", "bench.log", "pipeline.log", "int_m1.log", "m2_mfu.log", "gpu_bench.json",
                 "gpu_pipeline.json", "int_m1_cuda.json", "int_m1_cpu.json", "m2_mfu.json"):
        assert (log / name).is_file() and (log / name).stat().st_size > 0, name
    assert "] device:" not in p.stdout and "build (TORCH_CUDA_ARCH_LIST" not in p.stdout  # neither ran
    assert "collected" in (log / "tests.log").read_text()
    assert json.loads((log / "gpu_bench.json").read_text())["dry_run"] is True
    _check_pipeline_json(log / "gpu_pipeline.json")
    assert "tests rc=0 bench rc=0 pipeline rc=0 int_m1 rc=0 m2 rc=0" in p.stdout
    m2 = json.loads((log / "m2_mfu.json").read_text())
    assert m2["dry_run"] is True and m2["presets"]["nano"]["status"] == "ok"
    assert m2["presets"]["nano"]["tokens_per_second"] > 0 and m2["presets"]["nano"]["flops_per_token"] > 0
    summary = p.stdout.split("==================== summary ====================", 1)[1]
    assert "ncx GPU figures on CPU (DRY RUN" in summary
    assert "ncx pipeline on CPU (DRY RUN" in summary
    for label in ("AC (M1)", "EqualInfoAC b=32 (M1)", "vocab build b=16", "EqualInfoAC b=16 (vocab)"):
        assert label in summary
    assert "EqualInfoAC b=16  paper" in summary  # int_m1_throughput's lines
    assert "M2 training on" in summary and "nano" in summary
