"""Export a window vocabulary as a Hugging Face `tokenizers` tokenizer.json.

    summary = export_tokenizer(pool, offsets, eos, "out/tokenizer.json", metadata={"b": 16})
    tok = tokenizers.Tokenizer.from_file("out/tokenizer.json")
    tok.encode(text).ids       # == the ncx codes of text.encode("utf-8") + EOS (text != "")
    tok.decode(ids) == text

The pipeline, and why it reproduces ncx's greedy longest match exactly:

1. Normalizer: ByteLevel maps every UTF-8 byte of the text to one character of GPT-2's
   256-character byte alphabet (one-to-one, no prefix space), then Replace(\\z) appends
   EOS_CHAR, a character outside that alphabet. The normalized string is the document's symbol
   sequence, one character per symbol, and EOS_CHAR can only stand at its end.
2. Pre-tokenizer: Split with one regex, built as a trie of all vocabulary strings (each mapped
   the same way, EOS strings ending in EOS_CHAR). At every node the longer continuations are
   tried before stopping there, so Oniguruma's leftmost-first backtracking picks, at each
   position, the longest vocabulary string that is a prefix of the rest: the greedy longest
   match, in time linear in the text (~0.4 s/MB at b = 16; a WordPiece model would do the same match itself but is cubic in the
   length of its one word: minutes for 30 kB).
3. Model: WordLevel maps each piece, which is a whole vocabulary string, to the smallest code
   of that string. A stretch where no vocabulary string starts (ncx: "cannot encode") is left
   between matches by Split and becomes one UNK_TOKEN (per stretch), whose id is N = len(eos), outside the code
   range: `max(ids) >= N` (or `UNK_TOKEN in encoding.tokens`) says the text was not encodable.
4. Decoder: drop EOS_CHAR, then ByteLevel maps characters back to bytes and UTF-8 text.

Byte strings that are not valid UTF-8 on their own (pieces of a multi-byte character) are
kept: matching is per byte, so they match exactly where ncx's encoder would use them.

Limits:
- Input is a Python str (UTF-8 encodable: no lone surrogates); the ncx document is its UTF-8.
- "" encodes to []: tokenizers skips normalizers on empty input, so no EOS_CHAR is appended.
  The ncx encoding of the empty document is summary["empty_ids"] (the smallest code of the
  string "EOS" alone, or None if there is none); callers special-case "".
- The tokenizers vocabulary is one-to-one, so codes that are not the smallest code of their
  string are left out (the encoder never emits them), and so are empty-string codes. Decoding
  such ids, or a partial sequence that splits a UTF-8 character, is not exact (tokenizers
  decodes unknown ids to nothing and bad UTF-8 to U+FFFD).
- Oniguruma limits a regex's nesting to 4096, and a string whose every prefix is also in the
  vocabulary nests two levels per character: strings of about 2,000 such characters or more
  cannot be exported (export_tokenizer raises ValueError; it loads what it writes to check).
  Windows hold at most M1's context - 1 symbols (1,023 for the presets), well within.
- tokenizer.json rejects unknown keys, so `metadata` goes to a sibling ncx_vocab.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tokenizers

__all__ = ["export_tokenizer", "export_window_vocab", "EOS_CHAR", "UNK_TOKEN", "METADATA_FILE", "byte_to_unicode",
           "add_arguments", "run"]

EOS_CHAR = "\u2404"  # SYMBOL FOR END OF TRANSMISSION: not in the byte alphabet
UNK_TOKEN = "\u2047"  # DOUBLE QUESTION MARK: not in the byte alphabet, so no vocabulary string
METADATA_FILE = "ncx_vocab.json"


def byte_to_unicode() -> list[str]:
    """GPT-2's byte -> character table, the one tokenizers' ByteLevel uses: printable bytes map
    to themselves, the other 68 to U+0100.. in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = [""] * 256, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b], extra = chr(256 + extra), extra + 1
    return table


def _escape(ch: str) -> str:
    return ch if ch.isalnum() or ord(ch) > 0x7F else f"\\x{ord(ch):02x}"


def _trie_regex(keys) -> str:
    """One regex matching, at a position, the longest of keys that starts there: a trie whose
    nodes try their children before ending (`(?:...)?` when a key ends at the node)."""
    end, root = "", {}  # "" marks a key ending at a node (children are keyed by one character)
    for key in keys:
        node = root
        for ch in key:
            node = node.setdefault(ch, {})
        node[end] = {}
    done, stack = {}, [(root, False)]  # post-order without recursion: keys can be long
    while stack:
        node, ready = stack.pop()
        kids = sorted((ch, child) for ch, child in node.items() if ch != end)
        if not ready:
            stack.append((node, True))
            stack.extend((child, False) for _, child in kids)
            continue
        alts = [_escape(ch) + done.pop(id(child)) for ch, child in kids]
        if not alts:
            done[id(node)] = ""
        elif end in node:
            done[id(node)] = "(?:" + "|".join(alts) + ")?"
        else:
            done[id(node)] = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
    return done[id(root)]


def export_tokenizer(pool: np.ndarray, offsets: np.ndarray, eos: np.ndarray, path, *,
                     metadata: dict | None = None) -> dict:
    """Write tokenizer.json for the table (pool, offsets, eos) to path, and metadata (if any) to
    ncx_vocab.json beside it. Returns a summary: codes, pieces written, codes skipped as empty or
    as duplicates of a smaller code, unk_id, empty_ids, the files written."""
    pool, offsets, eos = np.asarray(pool, np.uint8), np.asarray(offsets, np.int64), np.asarray(eos, np.bool_)
    n = len(eos)
    if offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != len(pool) or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be [N + 1], non-decreasing, from 0 to len(pool)")
    table = byte_to_unicode()
    vocab, empty, duplicate = {}, 0, 0
    for code in range(n):
        key = "".join(table[b] for b in pool[offsets[code]:offsets[code + 1]].tolist()) + EOS_CHAR * bool(eos[code])
        if not key:
            empty += 1
        elif key in vocab:
            duplicate += 1  # the encoder emits the smallest code, which came first
        else:
            vocab[key] = code
    vocab[UNK_TOKEN] = n
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "ByteLevel"},
            {"type": "Replace", "pattern": {"Regex": r"\z"}, "content": EOS_CHAR}]},
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": _trie_regex(k for k in vocab if k != UNK_TOKEN)},
                          "behavior": "Isolated", "invert": False},
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": EOS_CHAR}, "content": ""},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK_TOKEN},
    }
    text = json.dumps(tokenizer, ensure_ascii=False)
    try:  # the regex nests two levels per character of a long string; Oniguruma stops at 4096
        tokenizers.Tokenizer.from_str(text)
    except Exception as e:
        raise ValueError(f"tokenizers cannot load the exported vocabulary: {e}") from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    summary = {"codes": n, "pieces": len(vocab) - 1, "skipped_empty": empty, "skipped_duplicate": duplicate,
               "unk_id": n, "empty_ids": [vocab[EOS_CHAR]] if EOS_CHAR in vocab else None,
               "tokenizer": str(path)}
    if metadata is not None:
        meta_path = path.with_name(METADATA_FILE)
        meta_path.write_text(json.dumps({**metadata, "tokenizer_export": summary}, indent=1, sort_keys=True) + "\n",
                             encoding="utf-8")
        summary["metadata"] = str(meta_path)
    return summary


def export_window_vocab(vocab, out_dir) -> dict:
    """`ncx export-tokenizer`: out_dir/tokenizer.json for an ncx.window_vocab.WindowVocab, and
    out_dir/ncx_vocab.json with what it was built from (b, P, window rule, M1, the table's sha256).
    Token ids are window codes, 0..2^b - 1 (the v=65536 view of b=16 windows; a v=256 dataset
    stores each code as two tokens, high byte first)."""
    meta = {**vocab.meta(), "window_vocab_sha256": vocab.sha256, "token_ids": "window codes (big-endian b-bit values)"}
    return export_tokenizer(vocab.pool.numpy(), vocab.offsets.numpy(), vocab.eos.numpy(), Path(out_dir) / "tokenizer.json",
                            metadata=meta)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", metavar="DIR", help="a token dataset that carries a window vocabulary")
    src.add_argument("--vocab", metavar="FILE", help="a window vocabulary file (window_vocab.safetensors)")
    src.add_argument("--m1", metavar="CKPT", help="an M1 checkpoint: build its b=16 window vocabulary first")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for tokenizer.json and ncx_vocab.json")


def run(args: argparse.Namespace) -> int:
    from .window_vocab import build_window_vocab, dataset_vocab, load_window_vocab

    if args.dataset:
        from .dataset import open_dataset

        vocab = dataset_vocab(open_dataset(args.dataset))
        if vocab is None:
            raise ValueError(f"{args.dataset}: carries no window vocabulary (compress EqualInfoAC b=16 with "
                             f"--engine vocab, the default)")
    elif args.vocab:
        vocab = load_window_vocab(args.vocab)
    else:
        from .m1_loader import load_m1_coder

        vocab = build_window_vocab(load_m1_coder(args.m1)[0], b=16, progress=True)
    summary = export_window_vocab(vocab, args.out)
    print(f"{summary['tokenizer']}: {summary['pieces']:,} pieces for {summary['codes']:,} codes "
          f"(b={vocab.b}, window vocabulary {vocab.sha256[:16]}...); load with "
          f"tokenizers.Tokenizer.from_file; ids are window codes")
    return 0
