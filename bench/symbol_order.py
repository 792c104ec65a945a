"""Does the order of symbols in the coder's CDF change Equal-Info packing?
An experiment, not part of ncx: a static permutation of the 256 byte values
(EOS stays last) is applied around a float M1, and EqualInfoAC[b=16, P=14]
windows of the first 16 KB of held-out pieces are counted for each order.

    python bench/symbol_order.py      # needs runs/m1-small-27min.safetensors
"""
import torch, sys, collections
sys.path.insert(0, "bench")
from methods_table import pieces
from ncx import corpus, m1
from ncx.int_m1 import load_int_m1
from ncx.model_coding import encode_windows
torch.set_num_threads(2)
held = corpus.default_corpus("heldout"); train = corpus.default_corpus("train")
docs, tot = [], 0
for d in pieces(held, 512):
    if tot >= 16384: break
    docs.append(d); tot += len(d)
cnt = collections.Counter(b"".join(train))
freq_desc = sorted(range(256), key=lambda b: -cnt.get(b, 0))
class Perm:
    """Codes symbol b at position pos[b] (bytes only; EOS stays 256)."""
    def __init__(self, coder, order):  # order: list of bytes, position -> byte
        self.c = coder
        for a in ("vocab_size", "bos", "logits", "max_symbols", "device", "weights_hash", "arithmetic"):
            setattr(self, a, getattr(coder, a))
        self.byte_at = torch.tensor(list(order) + [256])          # position -> symbol
        self.pos_of = torch.argsort(self.byte_at)                   # symbol -> position
    def __call__(self, tokens, positions):
        real = torch.where(tokens < 257, self.byte_at[tokens.clamp(max=256)], tokens)
        out = self.c(real, positions)
        return out[:, self.byte_at]
fm, _ = m1.load_m1("runs/m1-small-27min.safetensors")
orders = {"natural": list(range(256)), "freq_desc": freq_desc, "freq_asc": freq_desc[::-1],
          "organ": freq_desc[1::2][::-1] + freq_desc[0::2]}
for name, order in orders.items():
    c = Perm(fm.coder(), order)
    pos = c.pos_of
    pdocs = [bytes(int(pos[b]) for b in d) for d in docs]
    w = encode_windows(pdocs, c, 16, 14, m1.EOS, 256)
    n = sum(len(x.codes) for x in w); kept = sum(int(x.window_symbols.sum()) for x in w); back = sum(int(x.given_back.sum()) for x in w)
    print(f"{name:10s} windows {n} symbols/window {kept/n:.4f} greedy {(kept+back)/n:.4f} give-back {100*back/(kept+back):.3f}%", flush=True)
