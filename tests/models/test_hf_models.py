"""swap_modules on Hugging Face transformers models: same outputs, gradients
and generated tokens as the original, and the swapped model runs fastattn.

Every model is tiny, built from its config class with random weights
(tests/models/hf_cases.py); nothing is downloaded. Accuracy follows
docs/TESTING.md: the swapped model in float32 against the original in float64
(the truth), within a small multiple of the original's own float32 error.
"""

import copy

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed "
                    "(optional extra: pip install 'fastattn[transformers]')")

import fastattn  # noqa: E402
from fastattn.integrations import hf  # noqa: E402
from fastattn.testing import check_close, max_err  # noqa: E402
from helpers import FastattnOpCounter, backend_params  # noqa: E402
from hf_cases import CASES, PAD, build  # noqa: E402

TRITON = backend_params("attention", devices=("cpu",))
# backend="auto" too, unless it picks one of the backends above (on CPU it
# picks cpu: the same run twice); test_hf_t5_bias.py and test_hf_dropin.py
# swap with the default backend anyway.
_RUNNABLE = {p.values[0] for p in TRITON if not p.marks}
_AUTO = fastattn._backends.resolve("auto", "attention", torch.device("cpu"), torch.float32)
BACKENDS = TRITON + ([] if _AUTO in _RUNNABLE else
                     [pytest.param("auto", "cpu", id="auto-cpu")])
# Through a whole model, rounding errors are amplified chaotically, and the
# largest error of one gradient tensor is a noisy statistic. Measured over 32
# seeded model cases, fastattn's error was a median 1.6x and at most 4.5x the
# worse of PyTorch's two float32 paths; a wrong mask, bias or gradient path
# gives errors of order 1e-1 relative, 4 orders of magnitude beyond.
MODEL_ERROR_MULTIPLE = 5.0


def _loss_weights(case, batch, logits_shape):
    """Fresh random weights for a linear loss on the logits of real tokens
    only (padded query rows legitimately differ between implementations)."""
    w = torch.randn(logits_shape, dtype=torch.float64)
    return w * case.valid(batch)[..., None]


def _step(model, batch, weights, dtype):
    """Forward and backward in `dtype`; returns the logits and the gradient
    of every parameter by name (None where a parameter is unused)."""
    model = model.to(dtype)
    model.zero_grad(set_to_none=True)
    logits = model(**batch).logits
    (logits.double() * weights).sum().backward()
    return logits, {n: p.grad for n, p in model.named_parameters()}


def _reference_runs(case, original, batch):
    """The float64 truth and PyTorch's own float32 results (eager and sdpa
    attention), with the loss weights they share."""
    truth_model = copy.deepcopy(original).double()
    with torch.no_grad():
        shape = truth_model(**batch).logits.shape
    weights = _loss_weights(case, batch, shape)
    truth = _step(truth_model, batch, weights, torch.float64)
    sdpa = copy.deepcopy(original)
    sdpa.set_attn_implementation("sdpa")
    bases = [_step(original, batch, weights, torch.float32),
             _step(sdpa, batch, weights, torch.float32)]
    return weights, truth, bases


def _close(actual, truth, bases, name, floor=0.0):
    """The accuracy protocol (docs/TESTING.md) at the model level: the baseline is the less
    accurate of PyTorch's two float32 attention paths (through a whole model
    rounding errors propagate chaotically; two implementations show how far
    they spread). `floor` covers results that are 0 in exact arithmetic."""
    base = max(bases, key=lambda b: max_err(b, truth))
    ok, message = check_close(actual, truth, base, name, MODEL_ERROR_MULTIPLE)
    assert ok or max_err(actual, truth) <= floor, f"{message} (floor {floor:.3g})"


def _compare(case, batch, got, truth, bases):
    valid = case.valid(batch)
    _close(got[0][valid], truth[0][valid], [b[0][valid] for b in bases], "logits")
    assert got[1].keys() == truth[1].keys()
    # Key projections: their gradient is a sum over queries of terms that
    # cancel exactly in exact arithmetic (softmax ignores a shift shared by
    # all keys: a key bias's gradient is 0), and fastattn's backward computes
    # the softmax gradient from delta = rowsum(dO * O) (as flash attention
    # does), whose rounding does not cancel the way PyTorch's does. Their
    # error is relative to the model's gradient scale, not their own: a
    # floor of 16 float32 ulps of the largest gradient covers it.
    scale = max(t.abs().max().item() for t in truth[1].values() if t is not None)
    floor = 16 * torch.finfo(torch.float32).eps * scale
    for name, g in got[1].items():
        t = truth[1][name]
        assert (g is None) == (t is None), f"grad of {name}: {g is None=} {t is None=}"
        if g is not None:
            _close(g, t, [b[1][name] for b in bases], f"grad of {name}", floor)


def _norm_modules(model):
    return sum(isinstance(m, fastattn.nn.LayerNorm)
               or (type(m).__name__.startswith("Fastattn") and "Norm" in type(m).__name__)
               for m in model.modules())


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(CASES))
def test_swapped_model_matches(name, train, backend, device):
    case = CASES[name]
    original = build(case, "eager").train(train)
    swapped = fastattn.swap_modules(copy.deepcopy(original), backend=backend)
    batch = case.batch()

    weights, truth, bases = _reference_runs(case, original, batch)
    with FastattnOpCounter() as counter:
        got = _step(swapped, batch, weights, torch.float32)
    _compare(case, batch, got, truth, bases)

    if backend == "triton":
        # every attention and norm of the model ran fastattn's kernels
        calls = case.attention_calls
        assert counter.counts.get("attention_fwd") == calls, counter.counts
        assert counter.counts.get("attention_bwd") == calls, counter.counts
        assert counter.counts.get("norm_fwd", 0) == _norm_modules(swapped), counter.counts


@pytest.mark.parametrize("backend, device", TRITON)
@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.generates])
def test_greedy_generation_matches(name, backend, device):
    # float64 on both sides, so that no near-tie of random logits can flip a token
    case = CASES[name]
    original = build(case, "eager").eval().double()
    swapped = fastattn.swap_modules(copy.deepcopy(original), backend=backend)
    batch = case.batch()
    prompt = {k: batch[k] for k in ("input_ids", "attention_mask")}
    settings = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, num_beams=1,
                    use_cache=True, pad_token_id=PAD, return_dict_in_generate=True,
                    output_logits=True)
    expected = original.generate(**prompt, **settings)
    with FastattnOpCounter() as counter:
        got = swapped.generate(**prompt, **settings)
    # the prefill plus 4 cached decoding steps, each through every decoder attention
    assert counter.counts.get("attention_fwd", 0) >= 5 * case.decoder_attention_calls, \
        counter.counts
    assert torch.equal(got.sequences, expected.sequences), \
        f"fastattn {got.sequences.tolist()} != original {expected.sequences.tolist()}"
    # Random tiny models often repeat a token, so the logits of every step
    # are compared too: a stale or misaligned KV cache would show there.
    tol = 1e-9
    for step, (g, e) in enumerate(zip(got.logits, expected.logits)):
        scale = e.abs().max().item()
        torch.testing.assert_close(g, e, rtol=tol, atol=tol * scale,
                                   msg=lambda m: f"step {step}: {m}")


# swap_modules(unpad=True): the encoder stacks run on valid tokens only.
# Every case here has a padded encoder batch; the encoder's self-attention
# calls become packed (varlen) calls, everything else stays as it was.
UNPAD_CASES = {"bert": 2, "roberta": 2, "distilbert": 2, "bert2bert": 2, "bart": 2,
               "marian": 2}


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("name", list(UNPAD_CASES))
def test_unpadded_model_matches(name, backend, device):
    case = CASES[name]
    original = build(case, "eager").train()
    swapped = fastattn.swap_modules(copy.deepcopy(original), backend=backend, unpad=True)
    batch = case.batch()

    weights, truth, bases = _reference_runs(case, original, batch)
    with FastattnOpCounter() as counter:
        got = _step(swapped, batch, weights, torch.float32)
    _compare(case, batch, got, truth, bases)
    packed = UNPAD_CASES[name]
    assert counter.counts.get("attention_varlen_fwd") == packed, counter.counts
    assert counter.counts.get("attention_varlen_bwd") == packed, counter.counts
    assert counter.counts.get("attention_fwd", 0) == case.attention_calls - packed


def test_unpadded_encoder_outputs_zeros_at_padding():
    case = CASES["bert"]
    model = fastattn.swap_modules(build(case, "eager").eval(), unpad=True)
    batch = case.batch()
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
    assert (hidden[~batch["attention_mask"].bool()] == 0).all()
    assert hidden.shape[:2] == batch["input_ids"].shape


class _GraphOps:
    """A torch.compile backend that records the fastattn:: ops of the graphs
    it receives (a dispatch-mode counter cannot run under compile), then
    runs them with aot_eager (which traces forward and backward)."""

    def __init__(self):
        self.graphs, self.counts = 0, {}
        self.aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        self.counts = {}  # of the latest graph
        for node in gm.graph.nodes:
            name = getattr(node.target, "__name__", "")
            if node.op == "call_function" and str(node.target).startswith("fastattn."):
                name = str(node.target).split(".")[1]
                self.counts[name] = self.counts.get(name, 0) + 1
        return self.aot_eager(gm, example_inputs)


# dynamic=True: dynamo traces sizes and float arguments (the softmax scale)
# symbolically; checked on one encoder and one decoder-only model.
COMPILE_PARAMS = [pytest.param(name, False, id=name) for name in CASES] + [
    pytest.param(name, True, id=f"{name}-dynamic") for name in ("bert", "gpt2")]


@pytest.mark.parametrize("backend, device", TRITON)
@pytest.mark.parametrize("name,dynamic", COMPILE_PARAMS)
def test_compiled_swapped_model_matches(name, dynamic, backend, device):
    """torch.compile(fullgraph=True) of the swapped model's forward: one
    graph holding every fastattn attention, and the same logits."""
    case = CASES[name]
    original = build(case, "eager").eval()
    swapped = fastattn.swap_modules(copy.deepcopy(original), backend=backend)
    graph_ops = _GraphOps()
    torch._dynamo.reset()
    compiled = torch.compile(swapped, backend=graph_ops, fullgraph=True, dynamic=dynamic)
    batch = case.batch()
    valid = case.valid(batch)

    with torch.no_grad():
        got = compiled(**batch).logits
        truth = copy.deepcopy(original).double()(**batch).logits
        bases = [original(**batch).logits, swapped(**batch).logits]
    # dynamic=True may trace twice: dynamo first passes float attributes as
    # tensors and restarts with them as constants where an op takes a float
    # (fullgraph=True would raise on a graph break).
    assert graph_ops.graphs == 1 or (dynamic and graph_ops.graphs == 2)
    assert graph_ops.counts.get("attention_fwd") == case.attention_calls, graph_ops.counts
    # the baseline includes the swapped model run eagerly: compiling must
    # not make it less accurate
    _close(got[valid], truth[valid], [b[valid] for b in bases], "compiled logits")


class _Module(torch.nn.Module):
    """Stands for a transformers attention module: the attention function
    reads is_causal, num_key_value_groups and the chosen fastattn backend."""

    def __init__(self, is_causal, groups, backend):
        super().__init__()
        self.is_causal, self.num_key_value_groups = is_causal, groups
        self._fastattn_backend = backend


@pytest.mark.parametrize("backend, device", TRITON)
@pytest.mark.parametrize("lq, lk", [(5, 5), (3, 7), (1, 6), (6, 4)])
@pytest.mark.parametrize("mask", ["none", "bool", "float"])
@pytest.mark.parametrize("bias", [False, True], ids=["", "position_bias"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_attention_function_matches_sdpa(causal, bias, mask, lq, lk, backend, device):
    """The registered function against transformers' sdpa function on every
    kind of argument it receives: skipped masks (with the top-left is_causal
    of sdpa, incl. Lq != Lk), bool and float 4-D masks, T5's position bias
    (and its gradient), grouped kv heads. float64, forward and gradients."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, hq, hkv, d = 2, 4, 2, 16
    module = _Module(causal, hq // hkv, backend)
    q = torch.randn(b, hq, lq, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, hkv, lk, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, hkv, lk, d, dtype=torch.float64, requires_grad=True)
    attention_mask = None
    if mask == "bool":
        attention_mask = torch.rand(b, 1, lq, lk) < 0.7
        attention_mask[..., 0] = True  # every query keeps a key (sdpa gives NaN otherwise)
        attention_mask[1, ..., lk - 2:] = False  # right padding: kv_lengths < Lk
    elif mask == "float":
        attention_mask = torch.randn(b, 1, lq, lk, dtype=torch.float64)
    position_bias = None
    if bias:
        position_bias = torch.randn(1, hq, lq, lk, dtype=torch.float64, requires_grad=True)
    inputs = [t for t in (q, k, v, position_bias) if t is not None]

    def run(fn):
        out, weights = fn(module, q, k, v, attention_mask, dropout=0.0, scaling=0.3,
                          position_bias=position_bias)
        assert weights is None
        return (out, *torch.autograd.grad(out, inputs, grad_outputs=dout))

    dout = torch.randn(b, lq, hq, d, dtype=torch.float64)
    expected = run(sdpa_attention_forward)
    with FastattnOpCounter() as counter:
        got = run(hf.fastattn_attention_forward)
    if backend == "triton":
        assert counter.counts.get("attention_fwd") == 1, counter.counts
    for name, g, e in zip(["output", "dq", "dk", "dv", "dbias"], got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_swap_keeps_parameters_and_selects_fastattn():
    case = CASES["t5"]
    model = build(case, "sdpa")
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    assert fastattn.swap_modules(model) is model
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())
    assert model.config._attn_implementation == "fastattn"
    from transformers.models.t5.modeling_t5 import T5LayerNorm
    norms = [m for m in model.modules() if isinstance(m, T5LayerNorm)]
    assert norms and all(type(m) is not T5LayerNorm for m in norms)

    bert2bert = build(CASES["bert2bert"], "eager")
    fastattn.swap_modules(bert2bert)
    for config in (bert2bert.config, bert2bert.config.encoder, bert2bert.config.decoder,
                   bert2bert.encoder.config, bert2bert.decoder.config):
        assert config._attn_implementation == "fastattn"
