"""ncx experiment: method names, document chunking, and small grids run end to end (datasets,
exact held-out decode checks, M2 runs, table, JSON, figure) with numbers that follow the
paper's definitions (ncx.metrics)."""
import json
import math

import numpy as np
import pytest
import torch

from ncx import metrics
from ncx.cli import main
from ncx.dataset import open_dataset
from ncx.experiment import MethodRequest, chunk_documents, parse_method, parse_methods, run_experiment
from ncx.jobs import encoded_documents
from ncx.m1 import M1, preset as m1_preset, save_m1
from ncx.methods import EqualInfoACMethod, GZipMethod, StaticACMethod

SMALL_M2 = dict(batch_size=2, seq_len=32, warmup=1, log=None)



def text_docs(rng, n, words=(b"the ", b"cat ", b"sat ", b"on ", b"a ", b"mat", b".\n", b"\xc3\xa9t\xc3\xa9 ")):
    return [b"".join(words[i] for i in rng.integers(0, len(words), size=int(rng.integers(3, 40))))
            for _ in range(n)]


@pytest.fixture(scope="module")
def docs():
    rng = np.random.default_rng(0)
    return text_docs(rng, 60), text_docs(rng, 8)


@pytest.fixture(scope="module")
def tiny_m1():
    torch.manual_seed(0)
    return M1(m1_preset("tiny")).eval()


# ------------------------------------------------------------------------- names, chunks
def test_parse_method_names_and_parameters():
    r = parse_method("equal_info_ac[b=16,v=65k]")
    assert (r.kind, r.kwargs) == ("equal_info_ac", {"b": 16, "v": 65536})
    assert parse_method(" equal_info_ac[ v=65536 , b=16 ] ") == r  # order and spaces do not matter
    assert r.label == "equal_info_ac[b=16,v=65536]" and r.slug == "equal_info_ac-b16-v65536"
    assert parse_method("sentencepiece[v=300]").kwargs == {"vocab_size": 300}
    assert parse_method("bytes") == MethodRequest("bytes") and parse_method("bytes").label == "bytes"
    assert r.with_v(256) == parse_method("equal_info_ac[b=16,v=256]")
    listed = parse_methods("bytes,gzip[v=256],equal_info_ac[b=16,v=256],equal_info_ac[b=16,v=65k]")
    assert [m.label for m in listed] == ["bytes", "gzip[v=256]", "equal_info_ac[b=16,v=256]",
                                         "equal_info_ac[b=16,v=65536]"]
    for bad in ("equal_info_ac[b]", "gzip[v=abc]", "gzip[v=32k]", "Bad Name", "gzip[v=256"):
        with pytest.raises(ValueError):
            parse_method(bad)
    with pytest.raises(ValueError):
        parse_methods(" , ")


@pytest.mark.parametrize("max_bytes", [1, 7, 64, 1000])
def test_chunk_documents_round_trip(max_bytes):
    """Pieces concatenate back to each document, none exceeds max_bytes, none is empty, and a
    cut falls after a newline whenever the piece's second half has one."""
    rng = np.random.default_rng(max_bytes)
    docs = [b"", b"\n" * 50, bytes(rng.integers(0, 256, 300, dtype=np.uint8)), b"x" * 130]
    docs += text_docs(rng, 20, words=(b"alpha ", b"be\n", b"\xf0\x9f\x98\x80", b"gamma\n\n"))
    pieces = chunk_documents(docs, max_bytes)
    assert all(0 < len(p) <= max_bytes for p in pieces)
    assert b"".join(pieces) == b"".join(docs)
    at = 0
    for d in docs:  # pieces never span documents
        got, mine = b"", []
        while len(got) < len(d):
            mine.append(pieces[at])
            got += pieces[at]
            at += 1
        assert got == d
        for p in mine[:-1]:  # an inner cut is after a newline, or there was none late enough
            assert p.endswith(b"\n") or (len(p) == max_bytes and b"\n" not in p[max_bytes // 2:])
    with pytest.raises(ValueError):
        chunk_documents(docs, 0)


# ------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def cheap_run(tmp_path_factory, docs):
    out = tmp_path_factory.mktemp("exp")
    train, held = docs
    results = run_experiment(["bytes", "gzip[v=256]"], ["nano"], train, held, None, out, 3, **SMALL_M2)
    return out, results


def test_tiny_experiment_writes_table_json_and_plot(cheap_run, docs):
    out, results = cheap_run
    assert results["all_decoded"] and [m["decode_ok"] for m in results["methods"]] == [True, True]
    table = (out / "results.md").read_text()
    assert "| method | v | bytes/token | M2 | non-embedding params | held-out bits/byte" in table
    assert "| Bytes | 256 | 1.000 | nano |" in table and "| GZip[v=256] | 256 |" in table
    assert json.loads((out / "results.json").read_text())["runs"] == json.loads(json.dumps(results["runs"]))
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(results["runs"]) == 2 and {r["size"] for r in results["runs"]} == {"nano"}


def test_bits_per_byte_follow_the_metrics(cheap_run, docs):
    """Every number of a row is the paper's formula over the held-out dataset and the run's
    loss: bits/byte, uniform bits/byte, bytes/token, FLOPs/byte (no M1 here)."""
    out, results = cheap_run
    held_bytes = sum(len(d) for d in docs[1])
    for row, info in zip(results["runs"], results["methods"]):
        ds = open_dataset(info["heldout_dir"])
        assert row["valid_bytes"] == ds.total_bytes == held_bytes and row["valid_tokens"] == ds.total_tokens
        assert row["bits_per_byte"] == pytest.approx(
            metrics.bits_per_byte(row["valid_loss_nats"], row["valid_tokens"], row["valid_bytes"]), rel=1e-12)
        assert row["bytes_per_token"] == pytest.approx(held_bytes / ds.total_tokens, rel=1e-12)
        assert row["uniform_bits_per_byte"] == pytest.approx(math.log2(256) / row["bytes_per_token"], rel=1e-12)
        assert row["flops_per_byte"] == pytest.approx(
            2 * row["non_embedding_params"] / row["bytes_per_token"], rel=1e-12)
        summary = json.loads((out / "m2" / parse_method(info["method_request"]).slug / "nano" /
                              "summary.json").read_text())
        assert summary["bits_per_byte"] == row["bits_per_byte"]
        # An M2 after 3 steps is near uniform: within a bit or two per token of log2(256).
        per_token = row["valid_loss_nats"] / math.log(2)
        assert 5.0 < per_token < 9.0


def test_rerun_reuses_datasets_and_runs(cheap_run, docs):
    out, first = cheap_run
    logs = []
    again = run_experiment(["bytes", "gzip[v=256]"], ["nano"], *docs, None, out, 3, **{**SMALL_M2, "log": logs.append})
    assert any("Bytes: reusing" in m for m in logs) and any("(resuming)" in m for m in logs)
    assert [r["bits_per_byte"] for r in again["runs"]] == [r["bits_per_byte"] for r in first["runs"]]
    assert again["all_decoded"] and [m["reused"] for m in again["methods"]] == [True, True]


def test_damaged_or_stale_datasets_are_compressed_again(tmp_path, docs, monkeypatch):
    """A stored dataset is reused only when its files are intact and its held-out part decodes
    with this ncx; otherwise it is compressed again (and its M2 run starts over)."""
    logs = []
    run_experiment(["gzip[v=256]"], ["nano"], *docs, None, tmp_path, 2, **{**SMALL_M2, "log": logs.append})
    ds = open_dataset(tmp_path / "data" / "gzip-v256" / "heldout")
    path = ds.path / ds.shards[0].files["tokens"]
    data = bytearray(path.read_bytes())
    data[3] ^= 0x20
    path.write_bytes(bytes(data))
    results = run_experiment(["gzip[v=256]"], ["nano"], *docs, None, tmp_path, 2, **{**SMALL_M2, "log": logs.append})
    assert any("stored dataset is damaged" in m for m in logs)
    assert results["all_decoded"] and not results["methods"][0]["reused"]
    assert not any("(resuming)" in m for m in logs)
    # Intact files that another coder made (simulated: this decoder disagrees) are redone too.
    monkeypatch.setattr(GZipMethod, "_decode_docs", lambda self, encoded, lenient: [b"?"] * len(encoded))
    results = run_experiment(["gzip[v=256]"], ["nano"], *docs, None, tmp_path, 2, **{**SMALL_M2, "log": logs.append})
    assert any("does not decode with this ncx" in m for m in logs)
    # ... and a fresh dataset that does not decode is reported, in the results and the table.
    assert not results["all_decoded"] and "CRC-32" in results["methods"][0]["decode_problem"]
    assert "FAILED" in (tmp_path / "results.md").read_text()


def test_windows_of_an_older_window_rule_are_compressed_again(tmp_path, docs, tiny_m1):
    """Equal-Info datasets written under window rule 1 (before the window order) are not
    reused: this ncx cannot decode them, so they are compressed again."""
    methods = ["equal_info_ac[b=16,v=256]"]
    run_experiment(methods, ["nano"], *docs, tiny_m1, tmp_path, 2, compress_only=methods, **SMALL_M2)
    for split in ("train", "heldout"):
        path = tmp_path / "data" / "equal_info_ac-b16-v256" / split / "manifest.json"
        manifest = json.loads(path.read_text())
        del manifest["method"]["window_rule"]
        path.write_text(json.dumps(manifest))
    logs = []
    results = run_experiment(methods, ["nano"], *docs, tiny_m1, tmp_path, 2, compress_only=methods,
                             **{**SMALL_M2, "log": logs.append})
    assert any("made by another ncx" in m and "window rule 1" in m for m in logs)
    assert results["all_decoded"] and not results["methods"][0]["reused"]
    assert open_dataset(results["methods"][0]["heldout_dir"]).method["window_rule"] == 2


def test_m1_methods_and_65k_tokens_from_the_256_bit_streams(tmp_path, docs, tiny_m1):
    """EqualInfoAC and StaticAC at v=65k are derived from their v=256 bit streams: the result
    equals coding with the v=65k method directly, decodes exactly, and FLOPs/byte adds M1's
    cost only for the methods that code with M1."""
    train, held = docs
    methods = ["static_ac[v=256]", "equal_info_ac[b=16,v=65k]", "equal_info_ac[b=16,v=256]", "static_ac[v=65k]",
               "ac[v=256]"]
    logs = []
    results = run_experiment(methods, ["nano"], train, held, tiny_m1, tmp_path, 2,
                             compress_only=methods[:-1], **{**SMALL_M2, "log": logs.append})
    assert results["all_decoded"]
    assert any("EqualInfoAC[b=16, v=65k]" in m and "from the EqualInfoAC[b=16, v=256] bit streams" in m for m in logs)
    by_name = {m["name"]: m for m in results["methods"]}
    direct = {"EqualInfoAC[b=16, v=65k]": EqualInfoACMethod(tiny_m1.coder(), b=16, v=65536),
              "StaticAC[v=65k]": StaticACMethod.fit(train, v=65536)}
    for name, method in direct.items():
        stored = encoded_documents(open_dataset(by_name[name]["heldout_dir"]))
        for got, want in zip(stored, method.encode_batch(held)):
            assert np.array_equal(got.tokens, want.tokens) and got.exceptions == want.exceptions
    flops_m1 = float(tiny_m1.config.flops_per_byte)
    assert by_name["StaticAC[v=256]"]["m1_flops_per_byte"] == 0.0
    assert by_name["EqualInfoAC[b=16, v=256]"]["m1_flops_per_byte"] == flops_m1
    (ac_row,) = [r for r in results["runs"] if r["size"] is not None]
    assert ac_row["method"] == "AC[v=256]"
    assert ac_row["flops_per_byte"] == pytest.approx(
        2 * ac_row["non_embedding_params"] / ac_row["bytes_per_token"] + flops_m1, rel=1e-12)
    assert sum(r["size"] is None for r in results["runs"]) == 4


def test_experiment_errors(tmp_path, docs):
    train, held = docs
    with pytest.raises(ValueError, match="M1"):
        run_experiment(["ac[v=256]"], ["nano"], train, held, None, tmp_path, 1, **SMALL_M2)
    with pytest.raises(ValueError, match="size"):
        run_experiment(["bytes"], ["huge"], train, held, None, tmp_path, 1, **SMALL_M2)
    with pytest.raises(ValueError, match="compress_only"):
        run_experiment(["bytes"], ["nano"], train, held, None, tmp_path, 1, compress_only=["gzip"], **SMALL_M2)
    with pytest.raises(ValueError, match="parameters"):
        run_experiment(["gzip[b=3]"], ["nano"], train, held, None, tmp_path, 1, **SMALL_M2)


def test_cli_experiment(tmp_path, docs, tiny_m1, capsys):
    train, held = docs
    (tmp_path / "train.txt").write_bytes(b"".join(d.replace(b"\n", b" ") + b"\n" for d in train))
    (tmp_path / "held.txt").write_bytes(b"".join(d.replace(b"\n", b" ") + b"\n" for d in held))
    save_m1(tiny_m1, str(tmp_path / "m1.safetensors"))
    out = tmp_path / "out"
    rc = main(["experiment", "--methods", "bytes,equal_info_ac[b=16,v=256]", "--sizes", "nano", "--m1",
               str(tmp_path / "m1.safetensors"), "--out", str(out), "--steps", "2", "--data",
               str(tmp_path / "train.txt"), "--heldout", str(tmp_path / "held.txt"), "--lines",
               "--chunk-bytes", "0", "--batch-size", "2", "--seq-len", "16", "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "decode ok" in printed and "| EqualInfoAC[b=16, v=256] | 256 |" in printed
    assert (out / "results.md").exists() and (out / "results.png").exists()
    assert main(["experiment", "--methods", "nope", "--out", str(out)]) == 2
