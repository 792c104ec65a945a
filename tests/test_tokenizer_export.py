"""export_tokenizer against a pure-Python greedy longest-match encoder on synthetic vocabularies.

Needs only numpy and tokenizers (no ncx._C): the vocabularies are made here.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from ncx.tokenizer_export import EOS_CHAR, METADATA_FILE, UNK_TOKEN, export_tokenizer  # noqa: E402

CORPUS = (
    "The quick brown fox jumps over the lazy dog. 0123456789 (a+b)*c = [x|y]^2 $HOME {k: v} \\n ~`!@#%&_-;:'\",.<>?/\n"
    "\tindented\ttabs  and   spaces\r\nwindows line\u00a0nbsp caf\u00e9 na\u00efve \u00fcber Stra\u00dfe \u00c5ngstr\u00f6m "
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587\u5b57\u7b26 \ud55c\uad6d\uc5b4 "
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u05e2\u05d1\u05e8\u05d9\u05ea \u0440\u0443\u0441\u0441\u043a\u0438\u0439 "
    "e\u0301 a\u0308 n\u0303 \U0001f600\U0001f680\U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 "
    "\u2603\u2764\ufe0f \U00010348 \u00bd \u2211 \u221e \U0001d11e end.\n"
)
CORPUS_BYTES = CORPUS.encode("utf-8")


def make_vocab(n: int, seed: int):
    """n codes: every single byte, EOS alone, byte slices of CORPUS (partial UTF-8 characters
    included) with and without EOS, the same strings again under other codes, empty codes; in
    shuffled code order so a string's smallest code is not always its first occurrence."""
    rng = random.Random(seed)
    strings = [(bytes([b]), False) for b in range(256)] + [(b"", True)]
    while len(strings) < n - n // 50 - n // 20:
        length = rng.choice([2, 2, 3, 3, 4, 5, 6, 8, 12, 20])
        start = rng.randrange(len(CORPUS_BYTES) - length)
        strings.append((CORPUS_BYTES[start:start + length], rng.random() < 0.1))
    strings += [rng.choice(strings) for _ in range(n // 20)]  # duplicates
    strings += [(b"", False)] * (n - len(strings))  # unusable codes
    rng.shuffle(strings)
    return strings


def to_arrays(strings):
    offsets = np.zeros(len(strings) + 1, np.int64)
    offsets[1:] = np.cumsum([len(s) for s, _ in strings])
    pool = np.frombuffer(b"".join(s for s, _ in strings), np.uint8)
    return pool, offsets, np.array([e for _, e in strings], np.bool_)


class Reference:
    """The ncx encoder as specified: greedy longest match over d + EOS, smallest code."""

    def __init__(self, strings):
        self.code = {}
        for c, key in enumerate(strings):
            if key != (b"", False):
                self.code.setdefault(key, c)
        self.longest = max(len(s) for s, _ in self.code)

    def encode(self, d: bytes) -> list[int] | None:
        out, p = [], 0
        while True:
            if len(d) - p <= self.longest and (d[p:], True) in self.code:  # the rest, EOS included
                return out + [self.code[d[p:], True]]
            for length in range(min(self.longest, len(d) - p), 0, -1):
                if (d[p:p + length], False) in self.code:
                    out.append(self.code[d[p:p + length], False])
                    p += length
                    break
            else:
                return None  # no string starts here: not encodable


def export(tmp_path, strings, **kw):
    summary = export_tokenizer(*to_arrays(strings), tmp_path / "tokenizer.json", **kw)
    return tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")), summary


def random_texts(seed: int, vocab_strings, count: int = 40):
    rng = random.Random(seed)
    words = [s.decode() for s, _ in vocab_strings if s and s.decode("utf-8", "ignore") == s.decode("utf-8", "replace")]
    alphabet = [chr(c) for c in [*range(32, 127), 9, 10, 13, 0, 0x7f, 0xa0, 0xe9, 0x301, 0x3000, 0x4e2d, 0xfeff,
                                 0xfffd, 0x10ffff, 0x1f600, 0x1f44d, 0x1f3fd, 0x200d]] + [EOS_CHAR, UNK_TOKEN]
    texts = ["", " ", "\n", "a", "  leading and trailing  ", "\n\n\t\r\n", "x" * 5000, " " * 3000, "\u65e5" * 700,
             "\U0001f600" * 400, CORPUS, CORPUS * 20, EOS_CHAR, UNK_TOKEN, "[UNK]", "\u0120\u010a"]
    for _ in range(count):
        start = rng.randrange(len(CORPUS))
        texts.append(CORPUS[start:start + rng.randrange(200)])  # slices of mostly-covered text
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(100))))  # random unicode
        texts.append("".join(chr(rng.randrange(0x20, 0x110000)) for _ in range(rng.randrange(30)))
                     .encode("utf-8", "replace").decode("utf-8", "replace"))  # any code point but surrogates
        texts.append("".join(rng.choice(words) for _ in range(rng.randrange(60))))  # vocabulary strings back to back
    return texts


def check(tok, summary, ref, texts):
    for text in texts:
        want = ref.encode(text.encode("utf-8"))
        assert want is not None, f"test vocabulary cannot encode {text!r}"
        ids = tok.encode(text).ids
        if text == "":
            assert ids == [] and summary["empty_ids"] == want  # tokenizers skips normalizers on ""
            continue
        assert ids == want, text
        assert tok.decode(ids) == text


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(tmp_path, seed):
    strings = make_vocab(4096, seed)
    tok, summary = export(tmp_path, strings)
    check(tok, summary, Reference(strings), random_texts(seed, strings))


def test_full_size_vocabulary(tmp_path):
    strings = make_vocab(65536, 7)
    tok, summary = export(tmp_path, strings, metadata={"b": 16, "precision": 32, "m1_hash": "abc"})
    ref = Reference(strings)
    assert summary["codes"] == 65536 and summary["unk_id"] == 65536
    assert summary["pieces"] == len(ref.code) == tok.get_vocab_size() - 1
    assert summary["skipped_empty"] == sum(s == (b"", False) for s in strings)
    assert summary["pieces"] + summary["skipped_empty"] + summary["skipped_duplicate"] == 65536
    check(tok, summary, ref, random_texts(7, strings, count=20))
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    assert meta["b"] == 16 and meta["m1_hash"] == "abc" and meta["tokenizer_export"]["pieces"] == summary["pieces"]


def test_vocabulary_holds_smallest_codes(tmp_path):
    strings = [(b"", False), (b"b", False), (b"a", False), (b"a", False), (b"", True), (b"ab", True),
               (b"a", False), (b"", False), (b"ab", True), (b"b", False), (b"\xc3", False), (b"\xa9", False)]
    tok, summary = export(tmp_path, strings)
    assert summary["skipped_empty"] == 2 and summary["skipped_duplicate"] == 4 and summary["empty_ids"] == [4]
    assert tok.encode("ab").ids == [5]
    assert tok.encode("aab").ids == [2, 5]
    assert tok.encode("ba").ids == [1, 2, 4]
    assert tok.encode("\u00e9a").ids == [10, 11, 2, 4]  # U+00E9 is bytes C3 A9
    assert tok.decode([10, 11, 2, 4]) == "\u00e9a"


def test_unencodable_text_gives_unk(tmp_path):
    strings = [(bytes([b]), False) for b in range(256) if b != ord("z")] + [(b"", True), (b"x", True)]
    tok, summary = export(tmp_path, strings)
    ref = Reference(strings)
    assert ref.encode(b"xyz") is None
    enc = tok.encode("xyz")
    assert summary["unk_id"] == len(strings) and enc.ids == [ord("x"), ord("y"), len(strings), 255]
    assert UNK_TOKEN in enc.tokens and max(enc.ids) >= summary["codes"]
    assert tok.encode("x").ids == [256]  # "x" + EOS


def test_missing_eos_gives_unk(tmp_path):
    strings = [(bytes([b]), False) for b in range(256)]  # no string ends with EOS: nothing is encodable
    tok, summary = export(tmp_path, strings)
    assert summary["empty_ids"] is None
    assert tok.encode("hi").ids == [ord("h"), ord("i"), 256]


def test_tokenizer_json_has_no_extra_keys(tmp_path):
    export(tmp_path, make_vocab(512, 3), metadata={"b": 9})
    assert set(json.loads((tmp_path / "tokenizer.json").read_text())) == {
        "version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer", "post_processor",
        "decoder", "model"}
    assert json.loads((tmp_path / METADATA_FILE).read_text())["b"] == 9


def test_too_deep_for_oniguruma_is_an_error(tmp_path):
    strings = [(bytes([b]), False) for b in range(256)] + [(b" " * k, False) for k in range(2, 2100)]
    with pytest.raises(ValueError, match="tokenizers cannot load"):
        export(tmp_path, strings)


def test_bad_offsets(tmp_path):
    pool, offsets, eos = to_arrays([(b"a", False), (b"b", True)])
    with pytest.raises(ValueError, match="offsets"):
        export_tokenizer(pool, offsets[:-1], eos, tmp_path / "tokenizer.json")
