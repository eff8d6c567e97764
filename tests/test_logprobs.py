"""Chunked log-probs of a linear LM head: the same values and gradients as the full logits, with at
most a chunk of logits alive (forward and backward)."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import plrlhf.logprobs as logprobs


def naive(hidden, targets, head, softcap=None):
    logits = head(hidden).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("frozen_head", [False, True])
@pytest.mark.parametrize(
    "budget, min_slice",  # 23 rows, vocabulary 50
    [
        (50 * 7, 4096),  # blocks of 7 rows with the whole vocabulary: 4 blocks
        (23 * 15, 8),  # all rows together, vocabulary slices of 15: 4 slices, the last of 5
        (16 * 10, 16),  # blocks of 10 rows, slices of 16: 3 x 4 blocks, ragged at both ends
        (10**6, 4096),  # one block: its logits are kept for backward instead of recomputed
    ],
)
def test_chunked_equals_full_logits_in_values_and_gradients(
    monkeypatch, bias, softcap, frozen_head, budget, min_slice
):
    torch.manual_seed(0)
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", budget)
    monkeypatch.setattr(logprobs, "MIN_VOCAB_SLICE", min_slice)
    head = nn.Linear(16, 50, bias=bias).requires_grad_(not frozen_head)  # frozen: as under LoRA
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    weights = torch.randn(23)  # an arbitrary upstream gradient

    expected = naive(hidden, targets, head, softcap)
    (expected * weights).sum().backward()
    trained = [] if frozen_head else [head.weight, *([head.bias] if bias else [])]
    reference = [hidden.grad.clone(), *(t.grad.clone() for t in trained)]
    hidden.grad = None
    head.zero_grad()

    got = logprobs.token_logps(hidden, targets, head, softcap)
    assert_close(got, expected, atol=1e-5, rtol=1e-5)
    (got * weights).sum().backward()
    grads = [hidden.grad, *(t.grad for t in trained)]
    assert len(grads) == len(reference) and all(g is not None for g in grads)
    for a, b in zip(grads, reference):
        assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert head.weight.grad is None or not frozen_head


@pytest.mark.parametrize(
    "n_rows, vocab, budget, min_slice, expected",
    [
        (23, 50, 350, 4096, [(7, [50]), (7, [50]), (7, [50]), (2, [50])]),
        (23, 50, 345, 8, [(23, [15, 15, 15, 5])]),
        (480, 262144, 1 << 24, 4096, [(480, [34952] * 7 + [17480])]),  # the benchmark's shape
        (3, 10, 1000, 4096, [(3, [10])]),
    ],
)
def test_blocks_cover_every_logit_once_within_the_budget(
    n_rows, vocab, budget, min_slice, expected, monkeypatch
):
    monkeypatch.setattr(logprobs, "MIN_VOCAB_SLICE", min_slice)
    blocks = list(logprobs._blocks(n_rows, vocab, budget))
    got = [(r.stop - r.start, [c.stop - c.start for c in cs]) for r, cs in blocks]
    assert got == expected
    assert all((r.stop - r.start) * (c.stop - c.start) <= budget for r, cs in blocks for c in cs)


def test_a_frozen_head_keeps_one_vector_per_row_and_never_recomputes_logits(monkeypatch):
    """Under LoRA the head is frozen: backward must not run the head again (it would cost a
    ``N x d x V`` matmul) and only an ``(N, d)`` tensor is kept, not the weight nor the logits."""
    torch.manual_seed(0)
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 40 * 4)
    head = nn.Linear(8, 40, bias=False).requires_grad_(False)
    hidden = torch.randn(10, 8, requires_grad=True)
    targets = torch.randint(0, 40, (10,))
    calls = []
    real_linear = nn.functional.linear
    monkeypatch.setattr(nn.functional, "linear", lambda *a: calls.append(1) or real_linear(*a))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        out = logprobs.token_logps(hidden, targets, head)
    assert len(calls) == 3  # 10 rows in chunks of 4: forward only
    assert saved == [torch.Size([10, 8])]
    out.sum().backward()
    assert len(calls) == 3 and hidden.grad is not None


def test_gradcheck_in_float64():
    torch.manual_seed(0)
    hidden = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 9, (5,))

    def f(h, w, b):  # the function keeps float32 outputs: compare in float64 by hand instead
        logits = torch.nn.functional.linear(h, w, b)
        return torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)

    out = logprobs._ChunkedLinearLogps.apply(hidden, weight, bias, targets, None, 2)
    assert_close(out.double(), f(hidden, weight, bias), atol=1e-6, rtol=1e-6)
    out.sum().backward()
    grads = [hidden.grad.clone(), weight.grad.clone(), bias.grad.clone()]
    for t in (hidden, weight, bias):
        t.grad = None
    f(hidden, weight, bias).sum().backward()
    for a, t in zip(grads, (hidden, weight, bias)):
        assert_close(a, t.grad, atol=1e-5, rtol=1e-5)


def test_a_tied_head_gets_its_gradient_once():
    """SmolLM2 and many small models tie the head to the input embeddings."""
    torch.manual_seed(0)
    embeddings = nn.Embedding(30, 8)
    head = nn.Linear(8, 30, bias=False)
    head.weight = embeddings.weight
    ids = torch.randint(0, 30, (6,))
    targets = torch.randint(0, 30, (6,))
    logprobs.token_logps(embeddings(ids), targets, head).sum().backward()
    chunked = embeddings.weight.grad.clone()
    embeddings.weight.grad = None
    naive(embeddings(ids), targets, head).sum().backward()
    assert_close(chunked, embeddings.weight.grad, atol=1e-5, rtol=1e-4)
