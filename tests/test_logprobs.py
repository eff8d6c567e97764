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
def test_chunked_equals_full_logits_in_values_and_gradients(monkeypatch, bias, softcap):
    torch.manual_seed(0)
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 50 * 7)  # 7 rows per chunk: 23 rows -> 4 chunks
    head = nn.Linear(16, 50, bias=bias)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    weights = torch.randn(23)  # an arbitrary upstream gradient

    expected = naive(hidden, targets, head, softcap)
    (expected * weights).sum().backward()
    reference = [hidden.grad.clone(), head.weight.grad.clone(), *([head.bias.grad.clone()] if bias else [])]
    hidden.grad = None
    head.zero_grad()

    got = logprobs.token_logps(hidden, targets, head, softcap)
    assert_close(got, expected, atol=1e-5, rtol=1e-5)
    (got * weights).sum().backward()
    grads = [hidden.grad, head.weight.grad, *([head.bias.grad] if bias else [])]
    for a, b in zip(grads, reference):
        assert_close(a, b, atol=1e-5, rtol=1e-4)


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
