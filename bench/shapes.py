"""Shape grids of the benchmark, one list of plain dicts per op.

A shape is a JSON-able dict (what `--shapes FILE` holds too):

  layernorm:  {"op": "layernorm", "norm": "layer_norm" | "rms_norm" |
               "add_layer_norm" | "add_rms_norm", "rows": M, "hidden": N}
  attention, cross, decode:
              {"op": ..., "B", "Hq", "Hkv", "Lq", "Lk", "D",
               "causal": bool, "pad": fraction of padded tokens (0..0.9)}
  uneven:     {"op": "uneven", "B", "Hq", "L", "D", "lengths": [B ints <= L],
               "api": "padded" | "varlen"} (queries and keys share the lengths)
  percall:    {"op": "percall", "kind": "attention" | "layer_norm" |
               "rms_norm" | "add_layer_norm", "size": [B, H, L, D] for
               attention, [rows, hidden] for the norms}

`normalize` fills `family` (the curve a shape belongs to in the plots) and
`x` (the swept size along that curve) when a file leaves them out.

Grids follow the issues: norms over hidden 256..16384 and 4k..64k rows;
attention over BERT-base (B=32, H=12, D=64, L=128..512, 0/25/50% padding),
decoder causal self-attention, cross-attention (Lq=64..1024 over
Lk=128..4096) and long sequences (L=1k..16k, D=64/128, causal and not,
B*L = 16k tokens and H*D = 2048 as flash-attention's plots use); decoding
(B=1..64, Hq=8..32, Hkv in {Hq, Hq/4}, D=64/128, Lk=1k..64k, one query);
uneven padding (B=4, H=12, L=512, D=64, lengths in several orders such as
[512,512,256,256] or [128,128,128,512], padded and packed); tiny calls of
each op family (attention (1,2,16,32), norms (8,64)); attention variants
(`variants_grid`: windows, their overhead, T5 models; not a --shapes op).
A CPU gets the same families at sizes two cores finish in seconds.
"""

from __future__ import annotations

import json

NORMS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")
ATTENTION_OPS = ("attention", "cross", "decode")
OPS = ("layernorm",) + ATTENTION_OPS + ("uneven", "percall")
UNEVEN_APIS = ("padded", "varlen")
PERCALL_KINDS = ("attention", "layer_norm", "rms_norm", "add_layer_norm")
ATTENTION_KEYS = ("B", "Hq", "Hkv", "Lq", "Lk", "D")

# Decode configurations whose KV cache exceeds this are left out of the grid.
MAX_KV_CACHE_BYTES = 8 << 30


def _norm(norm, rows, hidden):
    return {"op": "layernorm", "norm": norm, "rows": rows, "hidden": hidden}


def _attn(op, B, Hq, Hkv, Lq, Lk, D, causal=False, pad=0.0, family=None, x=None):
    return {"op": op, "B": B, "Hq": Hq, "Hkv": Hkv, "Lq": Lq, "Lk": Lk, "D": D,
            "causal": causal, "pad": pad, "family": family, "x": x}


# ------------------------------------------------------------------ layernorm


def layernorm_grid(quick: bool, device_type: str) -> list[dict]:
    if device_type == "cpu":
        hiddens = (512, 2048) if quick else (256, 1024, 4096, 16384)
        rows = (2048,) if quick else (1024, 4096)
        norms = ("layer_norm", "add_layer_norm") if quick else NORMS
    else:
        hiddens = (1024, 4096, 16384) if quick else (256, 512, 1024, 2048, 4096, 8192, 16384)
        rows = (16384,) if quick else (16384, 4096, 65536)
        norms = ("layer_norm", "rms_norm", "add_layer_norm") if quick else NORMS
    # Whole curves (one norm, one row count, every hidden size) one after
    # another, the most telling row count first: a run cut short by its
    # time budget keeps complete curves.
    return [_norm(n, m, h) for m in rows for n in norms for h in hiddens]


# ------------------------------------------------------------------ attention


def attention_grid(quick: bool, device_type: str) -> list[dict]:
    """Self-attention: BERT-base with padding, decoder causal, long sequences."""
    out = []
    if device_type == "cpu":
        bert_b, bert_ls = 4, ((128, 256) if quick else (128, 256, 512))
        pads = (0.0, 0.5) if quick else (0.0, 0.25, 0.5)
        dec_b, dec_ls = 2, ((256,) if quick else (256, 512, 1024))
        longs = () if quick else ((1024, 2048), (64,), (False, True))
    else:
        bert_b, bert_ls = 32, ((128, 512) if quick else (128, 256, 384, 512))
        pads = (0.0, 0.5) if quick else (0.0, 0.25, 0.5)
        dec_b, dec_ls = 8, ((1024,) if quick else (256, 512, 1024, 2048))
        longs = (((2048, 8192), (128,), (True,)) if quick
                 else ((1024, 2048, 4096, 8192, 16384), (64, 128), (False, True)))
    for pad in pads:
        for L in bert_ls:
            out.append(_attn("attention", bert_b, 12, 12, L, L, 64, pad=pad,
                             family=f"BERT-base pad {round(pad * 100)}%", x=L))
    for L in dec_ls:
        out.append(_attn("attention", dec_b, 12, 12, L, L, 64, causal=True,
                         family="decoder causal H=12 D=64", x=L))
    if longs:
        lengths, dims, causals = longs
        tokens = 16384 if device_type != "cpu" else 2048
        for D in dims:
            for causal in causals:
                for L in lengths:
                    H = 2048 // D if device_type != "cpu" else 4
                    out.append(_attn("attention", max(1, tokens // L), H, H, L, L, D,
                                     causal=causal,
                                     family=f"long D={D} {'causal' if causal else 'full'}",
                                     x=L))
    return out


def cross_grid(quick: bool, device_type: str) -> list[dict]:
    """Cross-attention, decoder queries over encoder keys (no causal mask)."""
    if device_type == "cpu":
        B, lqs = 4, ((64,) if quick else (64, 256))
        lks = (128, 512) if quick else (128, 512, 2048)
    else:
        B = 16
        lqs = (64, 1024) if quick else (64, 256, 1024)
        lks = (512, 4096) if quick else (128, 512, 1024, 2048, 4096)
    return [_attn("cross", B, 12, 12, lq, lk, 64, family=f"cross Lq={lq}", x=lk)
            for lq in lqs for lk in lks]


def decode_grid(quick: bool, device_type: str) -> list[dict]:
    """One new query per sequence over a KV cache of Lk keys."""
    if device_type == "cpu":
        bs, hqs, dims = (1,), (8,), (64,)
        lks = (1024, 4096) if quick else (1024, 4096, 16384)
    else:
        bs = (1, 16) if quick else (1, 16, 64)
        hqs = (32,) if quick else (8, 32)
        dims = (128,) if quick else (64, 128)
        lks = (1024, 16384) if quick else (1024, 4096, 16384, 65536)
    out = []
    for B in bs:
        for Hq in hqs:
            for Hkv in (Hq, Hq // 4):
                for D in dims:
                    for Lk in lks:
                        kv_bytes = 2 * B * Hkv * Lk * D * 2
                        if kv_bytes > MAX_KV_CACHE_BYTES:
                            continue
                        out.append(_attn("decode", B, Hq, Hkv, 1, Lk, D,
                                         family=f"decode B={B} Hq={Hq} Hkv={Hkv} D={D}", x=Lk))
    return out


# ---------------------------------------------------------- uneven padding

# Lengths of the four sequences as fractions of L, in orders that put the
# long rows first, last, alternating, or alone (a kernel whose cost follows
# the longest row, or the first, shows it as a ratio far above 1).
UNEVEN_ORDERS = ((1, 1, 1 / 2, 1 / 2), (1, 1 / 4, 1 / 4, 1 / 4), (1 / 4, 1 / 4, 1 / 4, 1),
                 (1 / 2, 1, 1 / 2, 1))


def _uneven(B, H, L, D, lengths, api, family):
    return {"op": "uneven", "B": B, "Hq": H, "Hkv": H, "Lq": L, "Lk": L, "D": D,
            "lengths": [int(x) for x in lengths], "api": api, "causal": False, "pad": 0.0,
            "family": family, "x": None}


def uneven_grid(quick: bool, device_type: str) -> list[dict]:
    """B=4, H=12, D=64 self-attention whose rows have uneven lengths (queries
    and keys alike, a padded encoder batch), through fastattn.attention with
    lengths ("padded") and fastattn.attention_varlen on the packed tokens
    ("varlen"). Each family starts with its unpadded call (every length L),
    the time every other row's work-proportional time is scaled from.
    L=512 (a GPU's full grid also 2048); a quick CPU run L=256, and a quick
    run only the orders with the long row first and last."""
    if device_type == "cpu":
        ls = (256,) if quick else (512,)
    else:
        ls = (512,) if quick else (512, 2048)
    # quick: the long row first and last only
    orders = UNEVEN_ORDERS[1:3] if quick else UNEVEN_ORDERS
    out = []
    for L in ls:
        for api in UNEVEN_APIS:
            for order in ((1, 1, 1, 1),) + orders:
                out.append(_uneven(4, 12, L, 64, [round(f * L) for f in order], api,
                                   f"uneven L={L} {api}"))
    return out


# ---------------------------------------------------------------- per call

PERCALL_SIZES = {"attention": (1, 2, 16, 32), "layer_norm": (8, 64), "rms_norm": (8, 64),
                 "add_layer_norm": (8, 64)}


def percall_grid(quick: bool, device_type: str) -> list[dict]:
    """One tiny call per op family: what a call costs beyond its arithmetic."""
    return [{"op": "percall", "kind": kind, "size": list(size), "family": "per call",
             "x": None} for kind, size in PERCALL_SIZES.items()]


# ------------------------------------------------------------------ variants

# (d_model, layers per stack, heads, d_ff) of the T5 models the variants part trains.
T5_CONFIGS = {"t5-small": (512, 6, 8, 2048), "t5-base": (768, 12, 12, 3072),
              "t5-tiny": (64, 1, 4, 128)}
T5_VOCAB = 32128


def _variant(group, role, B, H, L, D, causal, variant, modes, baseline=False, **extra):
    return {"op": "variants", "group": group, "role": role, "baseline": baseline,
            "variant": variant, "B": B, "Hq": H, "Hkv": H, "Lq": L, "Lk": L, "D": D,
            "causal": causal, "pad": 0.0, "modes": list(modes), "family": group, "x": L,
            **extra}


def _t5(model, L, T, quick):
    d, layers, heads, ffn = T5_CONFIGS[model]
    return {"op": "variants", "kind": "t5", "model": model, "d": d, "layers": layers,
            "heads": heads, "ffn": ffn, "vocab": 500 if model == "t5-tiny" else T5_VOCAB,
            "src_len": L, "tgt_len": T, "quick": quick, "warm": True,
            "family": f"T5 {model}", "x": L}


def variants_grid(quick: bool, device_type: str) -> dict:
    """{"kernels": groups (lists of member shapes timed together, the
    baseline first), "t5": T5 configurations}. Window: causal B=1 H=8 D=64,
    window_size=(127, -1) vs full causal at L=8192 forward (quick: 2048),
    fwd+bwd at 4096 on a CPU (8192 on a GPU; none in a quick run); the
    window alone over L=1024..8192 (quick 512..2048; a GPU's full grid
    16384 too); overhead: B=2 H=8 L=1024 D=64 (quick CPU: 512), causal and
    not, plain vs softcap=30, ALiBi, rel_bias (32 buckets), window (L, L).
    T5: T5-small (and T5-base on a GPU) at L=512..2048, decoder 64, B=1;
    a quick CPU run a tiny config at L=128 (decoder 16), a quick GPU run
    T5-small at L=1024."""
    gpu = device_type != "cpu"
    kernels = []
    win = (127, -1)
    fwd_l = 2048 if quick else 8192
    both_l = None if quick else (8192 if gpu else 4096)
    for L, modes in ((fwd_l, ("fwd",)), (both_l, ("fwd+bwd",))):
        if L is None:
            continue
        group = f"window L={L}"
        kernels.append([_variant(group, "window", 1, 8, L, 64, True, "full", modes, True),
                        _variant(group, "window", 1, 8, L, 64, True, "window", modes,
                                 window=list(win))])
    scan = (512, 1024, 2048) if quick else ((1024, 2048, 4096, 8192, 16384) if gpu
                                            else (1024, 2048, 4096, 8192))
    kernels.append([_variant("window scan", "scan", 1, 8, L, 64, True, "window", ("fwd",),
                             window=list(win)) for L in scan])
    L = 512 if quick and not gpu else 1024
    for causal in (True, False):
        group = f"overhead{' causal' if causal else ''} L={L}"
        m = ("fwd", "fwd+bwd")
        kernels.append([_variant(group, "overhead", 2, 8, L, 64, causal, "plain", m, True),
                        _variant(group, "overhead", 2, 8, L, 64, causal, "softcap", m,
                                 softcap=30.0),
                        _variant(group, "overhead", 2, 8, L, 64, causal, "alibi", m),
                        _variant(group, "overhead", 2, 8, L, 64, causal, "rel_bias", m,
                                 buckets=32),
                        _variant(group, "overhead", 2, 8, L, 64, causal, "window", m,
                                 window=[L, L])])
    if quick:
        t5 = [_t5("t5-small", 1024, 64, quick)] if gpu else [_t5("t5-tiny", 128, 16, quick)]
    else:
        models = ("t5-small", "t5-base") if gpu else ("t5-small",)
        t5 = [_t5(m, L, 64, quick) for m in models for L in (512, 1024, 2048)]
    return {"kernels": kernels, "t5": t5}


def _variant_text(s: dict) -> str:
    v = s["variant"]
    if v == "window":
        return f"window=({s['window'][0]},{s['window'][1]})"
    if v == "softcap":
        return f"softcap={s['softcap']:g}"
    if v == "rel_bias":
        return f"rel_bias {s['buckets']} buckets"
    return {"full": "full", "plain": "plain", "alibi": "alibi"}[v]


GRIDS = {"layernorm": layernorm_grid, "attention": attention_grid, "cross": cross_grid,
         "decode": decode_grid, "uneven": uneven_grid, "percall": percall_grid}


def grid(op: str, quick: bool, device_type: str) -> list[dict]:
    return [normalize(s) for s in GRIDS[op](quick, device_type)]


# ------------------------------------------------------------- user shapes


def _positive_int(shape: dict, key: str, where: str) -> int:
    value = shape.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: {key!r} must be a positive int, got {value!r}")
    return value


def normalize(shape: dict, where: str = "shape") -> dict:
    """Validated copy of `shape` with defaults, family and x filled in."""
    if not isinstance(shape, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(shape).__name__}")
    op = shape.get("op")
    if op not in OPS:
        raise ValueError(f"{where}: 'op' must be one of {OPS}, got {op!r}")
    s = dict(shape)
    if op == "layernorm":
        if s.get("norm", "layer_norm") not in NORMS:
            raise ValueError(f"{where}: 'norm' must be one of {NORMS}, got {s.get('norm')!r}")
        s.setdefault("norm", "layer_norm")
        _positive_int(s, "rows", where)
        _positive_int(s, "hidden", where)
        s.setdefault("family", f"{s['norm']} rows={s['rows']}")
        s.setdefault("x", s["hidden"])
        return s
    if op == "percall":
        if s.get("kind") not in PERCALL_KINDS:
            raise ValueError(f"{where}: 'kind' must be one of {PERCALL_KINDS}, "
                             f"got {s.get('kind')!r}")
        size = s.setdefault("size", list(PERCALL_SIZES[s["kind"]]))
        want = len(PERCALL_SIZES[s["kind"]])
        if (not isinstance(size, list) or len(size) != want
                or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                           for n in size)):
            raise ValueError(f"{where}: 'size' must be a list of {want} positive ints, "
                             f"got {size!r}")
        s.setdefault("family", "per call")
        s.setdefault("x", None)
        return s
    if op == "uneven":
        s.setdefault("api", "padded")
        if "L" not in s:  # a shape from the built-in grid (Lq = Lk = L)
            s["L"] = s.get("Lq")
        if s["api"] not in UNEVEN_APIS:
            raise ValueError(f"{where}: 'api' must be one of {UNEVEN_APIS}, got {s['api']!r}")
        for key in ("B", "Hq", "L", "D"):
            _positive_int(s, key, where)
        lengths = s.get("lengths")
        if (not isinstance(lengths, list) or len(lengths) != s["B"]
                or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= s["L"]
                           for n in lengths)):
            raise ValueError(f"{where}: 'lengths' must be a list of B={s['B']} ints in "
                             f"[1, L={s['L']}], got {lengths!r}")
        return _uneven(s["B"], s["Hq"], s["L"], s["D"], lengths, s["api"],
                       s.get("family") or f"uneven L={s['L']} {s['api']}")
    if op == "decode":
        s.setdefault("Lq", 1)
    if "L" in s:  # self-attention shorthand
        s.setdefault("Lq", s["L"])
        s.setdefault("Lk", s.pop("L"))
    s.setdefault("Hkv", s.get("Hq"))
    for key in ATTENTION_KEYS:
        _positive_int(s, key, where)
    if s["Hq"] % s["Hkv"]:
        raise ValueError(f"{where}: 'Hq' ({s['Hq']}) must be a multiple of 'Hkv' ({s['Hkv']})")
    s["causal"] = bool(s.get("causal", False))
    pad = s.get("pad", 0.0)
    if not isinstance(pad, (int, float)) or not 0.0 <= pad <= 0.9:
        raise ValueError(f"{where}: 'pad' must be a number in [0, 0.9], got {pad!r}")
    s["pad"] = float(pad)
    if s.get("family") is None:
        s["family"] = f"{op} D={s['D']}{' causal' if s['causal'] else ''}"
    if s.get("x") is None:
        s["x"] = s["Lk"]
    return s


def load(path: str) -> list[dict]:
    """Shapes from a JSON file holding a list of shape dicts."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of shape objects")
    return [normalize(s, f"{path}[{i}]") for i, s in enumerate(data)]


def label(s: dict) -> str:
    """Short human-readable name of a shape (table rows, progress bar)."""
    if s["op"] == "percall":
        return f"{s['kind']} {'x'.join(map(str, s['size']))}"
    if s["op"] == "uneven":
        return (f"{s['api']} B={s['B']} H={s['Hq']} L={s['Lq']} D={s['D']} "
                f"lengths {','.join(map(str, s['lengths']))}")
    if s["op"] == "layernorm":
        return f"{s['norm']} {s['rows']}x{s['hidden']}"
    if s["op"] == "variants":
        if s.get("kind") == "t5":
            return (f"{s['model']} d={s['d']} layers={s['layers']}+{s['layers']} "
                    f"H={s['heads']} train B=1 L={s['src_len']} tgt={s['tgt_len']}")
        return (f"B={s['B']} H={s['Hq']} L={s['Lq']} D={s['D']}"
                f"{' causal' if s['causal'] else ''} {_variant_text(s)}")
    if s["op"] == "model":
        if not s["tgt_len"]:  # encoder-only: one padded batch
            return (f"{s['model']} d={s['d']} layers={s['layers']} B={s['batch']} "
                    f"L={s['src_len']} pad={round(s['pad'] * 100)}%")
        return (f"{s['model']} d={s['d']} layers={s['layers']} train B={s['batch']} "
                f"src<={s['src_len']} tgt<={s['tgt_len']}; generate B={s['gen_batch']} "
                f"x{s['gen_tokens']}")
    heads = f"H={s['Hq']}" if s["Hq"] == s["Hkv"] else f"Hq={s['Hq']} Hkv={s['Hkv']}"
    length = f"L={s['Lq']}" if s["Lq"] == s["Lk"] else f"Lq={s['Lq']} Lk={s['Lk']}"
    extra = (" causal" if s["causal"] else "") + (f" pad={round(s['pad'] * 100)}%" if s["pad"] else "")
    return f"B={s['B']} {heads} {length} D={s['D']}{extra}"
