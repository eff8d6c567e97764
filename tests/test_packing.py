"""Shared-prompt (tree) layouts: structure by hand, and equality with one row per response."""

import warnings
from functools import partial

import pytest
import torch
from torch.testing import assert_close

from plrlhf import DPO, IndividualPDPO
from plrlhf.data.collate import EncodedTriple, PreferenceCollator
from plrlhf.packing import (
    PAD_SEGMENT,
    SHARED_PROMPT_PARENTS,
    USER_AFTER_PROMPT_PARENTS,
    USER_AFTER_PROMPT_SCORED,
    ancestor_table,
    pack_shared_prompt,
    pack_user_after_prompt,
    tree_layout,
)
from plrlhf.policy import Policy, build_causal_lm, flex_attention_supported
from plrlhf.user_models import IndividualUserModel
from tests.conftest import TINY_MODELS, TOKENIZER
from tests.test_methods import make_batch, randomize_user_model

P = PAD_SEGMENT


def collated():
    items = [
        EncodedTriple([5, 6, 7], [8, 9, 0], [10, 0], 1, 1, 0),
        EncodedTriple([5], [7, 7, 7, 11, 0], [9, 0], 0, 3, 2),
        EncodedTriple([3, 4, 5, 6, 7, 8], [9, 0], [10, 11, 12, 0], 0, 3, 2),
    ]
    return PreferenceCollator(pad_token_id=0)(items)


def test_pack_shared_prompt_by_hand():
    b = collated()
    ids, segments = pack_shared_prompt(
        b["input_ids"], b["attention_mask"], b["response_mask"], pad_token_id=0
    )
    assert ids.tolist() == [
        [5, 6, 7, 8, 9, 0, 10, 0, 0, 0, 0, 0],
        [5, 7, 7, 7, 11, 0, 9, 0, 0, 0, 0, 0],
        [3, 4, 5, 6, 7, 8, 9, 0, 10, 11, 12, 0],
    ]
    assert segments.tolist() == [
        [0, 0, 0, 1, 1, 1, 2, 2, P, P, P, P],
        [0, 1, 1, 1, 1, 1, 2, 2, P, P, P, P],
        [0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2],
    ]


def test_tree_layout_by_hand():
    # prompt of 2, chosen of 2, rejected of 2, one pad
    layout = tree_layout(torch.tensor([[0, 0, 1, 1, 2, 2, P]]), SHARED_PROMPT_PARENTS)
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 2, 3, 0]]
    # the first rejected token is predicted by the prompt's last token, not by the chosen response
    assert layout.predictor.tolist() == [[-1, 0, 1, 2, 1, 4, -1]]
    assert layout.visible[0, 4].tolist() == [True, True, False, False, True, False, False]
    assert layout.visible[0, 6].tolist() == [False] * 6 + [True]  # padding sees only itself


def dense_layout(segments, parents):
    """Positions, predictors and the attention pattern from their definitions, pair by pair."""
    table = ancestor_table(parents)
    batch, length = segments.shape
    visible = torch.zeros(batch, length, length, dtype=torch.bool)
    for b in range(batch):
        for q in range(length):
            for k in range(q + 1):
                sq, sk = int(segments[b, q]), int(segments[b, k])
                visible[b, q, k] = k == q or (sq != P and sk != P and bool(table[sq, sk]))
    positions = torch.where(segments != P, visible.sum(-1) - 1, 0)
    earlier = visible & ~torch.eye(length, dtype=torch.bool)
    predictor = torch.tensor(
        [
            [max([k for k in range(length) if earlier[b, q, k]], default=-1) for q in range(length)]
            for b in range(batch)
        ]
    )
    return visible, positions, predictor


def random_tree_rows(generator, parents, batch=3, length=40):
    """Rows of consecutive segments in the order of ``parents``, of random lengths, padded."""
    rows = []
    for _ in range(batch):
        row = []
        for segment in range(len(parents)):
            row += [segment] * int(torch.randint(0, 9, (), generator=generator))
        row = row[:length]
        rows.append(row + [P] * (length - len(row)))
    return torch.tensor(rows)


TREES = [SHARED_PROMPT_PARENTS, USER_AFTER_PROMPT_PARENTS, (-1, 0, 1, 1, 0), (-1, -1, 1)]


@pytest.mark.parametrize("parents", TREES)
def test_tree_layout_equals_its_definition_on_random_rows(parents):
    generator = torch.Generator().manual_seed(len(parents))
    for _ in range(5):
        segments = random_tree_rows(generator, parents)
        visible, positions, predictor = dense_layout(segments, parents)
        layout = tree_layout(segments, parents)
        assert torch.equal(layout.visible, visible)
        assert torch.equal(layout.position_ids, positions)
        assert torch.equal(layout.predictor, predictor)


@pytest.mark.parametrize("parents", TREES)
def test_flex_block_mask_attends_exactly_like_the_dense_mask(parents):
    """FlexAttention's CPU kernel runs forward only: enough to check the block mask (the GPU run
    of benchmarks/gpu_check.py checks the gradients)."""
    from torch.nn.attention.flex_attention import flex_attention

    generator = torch.Generator().manual_seed(0)
    segments = random_tree_rows(generator, parents, length=150)  # more than one 128-token block
    segments[:, 140:] = P
    layout = tree_layout(segments, parents)
    q, k, v = (torch.randn(3, 2, 150, 8, generator=generator) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=layout.visible[:, None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex_attention warns that it is not compiled
        got = flex_attention(q, k, v, block_mask=layout.block_mask())
    assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture
def eager_flex(monkeypatch):
    """transformers compiles FlexAttention (tens of seconds on CPU): the eager kernel instead,
    without gradients (its CPU kernel has no backward)."""
    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import flex_attention

    def eager(query, key, value, score_mod=None, block_mask=None, training=False, **kwargs):
        return flex_attention(query, key, value, score_mod=score_mod, block_mask=block_mask, **kwargs)

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", eager)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # flex_attention warns that it is not compiled
        yield


@pytest.mark.parametrize("attention", ["sdpa", "eager", "flex_attention"])
@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
def test_shared_prompt_scores_equal_one_row_per_response(arch, attention, request):
    if attention == "flex_attention":
        if arch == "gpt2":
            pytest.skip("transformers runs GPT-2 without FlexAttention (attention: auto keeps SDPA)")
        request.getfixturevalue("eager_flex")
    model = build_causal_lm({**TINY_MODELS[arch], "attn_implementation": "sdpa"}, vocab_size=100).eval()
    policy = Policy(model, reference_free=True).eval()
    b = collated()
    ids, segments = pack_shared_prompt(b["input_ids"], b["attention_mask"], b["response_mask"])
    soft = torch.randn(3, 2, 32)
    for tokens in (None, soft):
        policy.set_attention("sdpa")  # the rows of their own: the plain layout, as a reference
        rows, counts = policy.response_logps(
            b["input_ids"],
            b["attention_mask"],
            b["response_mask"],
            soft_tokens=None if tokens is None else tokens.repeat(2, 1, 1),
        )
        policy.set_attention(attention)
        sums, tree_counts = policy.tree_logps(
            ids, segments, SHARED_PROMPT_PARENTS, (1, 2), soft_tokens=tokens
        )
        assert_close(sums, torch.stack(rows.chunk(2), -1), atol=1e-4, rtol=1e-5)
        assert torch.equal(tree_counts, torch.stack(counts.chunk(2), -1))


@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
def test_auto_attention_is_flex_only_on_cuda_for_architectures_that_have_it(arch):
    model = build_causal_lm(TINY_MODELS[arch], vocab_size=100)
    assert not flex_attention_supported(model, torch.device("cpu"))
    assert flex_attention_supported(model, torch.device("cuda")) == (arch != "gpt2")


def test_wrong_tree_changes_scores():
    """Negative control: if rejected could see chosen, the scores would differ."""
    policy = Policy(build_causal_lm(TINY_MODELS["llama"], vocab_size=100), reference_free=True).eval()
    b = collated()
    ids, segments = pack_shared_prompt(b["input_ids"], b["attention_mask"], b["response_mask"])
    right, _ = policy.tree_logps(ids, segments, SHARED_PROMPT_PARENTS, (1, 2))
    wrong, _ = policy.tree_logps(ids, segments, (-1, 0, 1), (1, 2))
    assert (right[:, 1] - wrong[:, 1]).abs().max() > 1e-3


@pytest.mark.parametrize("method", [DPO, IndividualPDPO])
def test_methods_give_the_same_values_with_a_shared_prompt(tmp_path, method):
    _, batch = make_batch(tmp_path)
    kwargs = dict(model=TINY_MODELS["llama"], tokenizer=TOKENIZER, num_users=3)
    torch.manual_seed(0)
    plain = method(**kwargs).eval()
    torch.manual_seed(0)
    shared = method(**kwargs, shared_prompt=True).eval()
    if method is IndividualPDPO:
        randomize_user_model(plain)
        shared.user_model.load_state_dict(plain.user_model.state_dict())
    plain_scores, shared_scores = plain.score(batch), shared.score(batch)
    for condition, expected in plain_scores.items():
        got = shared_scores[condition]
        for field in ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected"):
            assert_close(getattr(got, field), getattr(expected, field), atol=1e-4, rtol=1e-5)
        assert torch.equal(got.n_chosen, expected.n_chosen)
    objective, _ = shared.objective(batch)
    objective.backward()


def naive_after_prompt(model, triple, soft, response):
    """Score ``response`` after ``[prompt, soft]`` in a row of its own."""
    embed = model.get_input_embeddings()
    prompt = torch.tensor(triple.prompt_ids)
    tokens = torch.tensor(response)
    embeds = torch.cat([embed(prompt), soft, embed(tokens)])[None]
    logps = model(inputs_embeds=embeds).logits[0].float().log_softmax(-1)
    start = len(prompt) + len(soft)
    predicted = logps[start - 1 : start - 1 + len(tokens)]
    return predicted.gather(-1, tokens[:, None]).sum()


@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
def test_user_tokens_after_the_prompt_equal_separate_rows(arch):
    model = build_causal_lm(TINY_MODELS[arch], vocab_size=100).eval()
    policy = Policy(model, reference_free=True).eval()
    items = [
        EncodedTriple([5, 6, 7], [8, 9, 0], [10, 0], 1, 1, 0),
        EncodedTriple([5], [7, 7, 7, 11, 0], [9, 0], 0, 3, 2),
    ]
    b = PreferenceCollator(pad_token_id=0)(items)
    n_soft = 3
    personal, generic = torch.randn(2, n_soft, 32), torch.randn(2, n_soft, 32)
    ids, segments, column = pack_user_after_prompt(
        b["input_ids"], b["attention_mask"], b["response_mask"], n_soft
    )
    assert column == 3 and segments[1].tolist()[:3] == [P, P, 0]
    sums, counts = policy.tree_logps(
        ids,
        segments,
        USER_AFTER_PROMPT_PARENTS,
        USER_AFTER_PROMPT_SCORED,
        soft_tokens=torch.cat([personal, generic], 1),
        soft_column=column,
    )
    for i, item in enumerate(items):
        for k, (soft, response) in enumerate(
            [
                (personal, item.chosen_ids),
                (personal, item.rejected_ids),
                (generic, item.chosen_ids),
                (generic, item.rejected_ids),
            ]
        ):
            expected = naive_after_prompt(model, item, soft[i], response)
            assert_close(sums[i, k], expected, atol=1e-4, rtol=1e-5)
            assert counts[i, k] == len(response)


def test_pdpo_after_prompt_trains(tmp_path):
    _, batch = make_batch(tmp_path)
    module = IndividualPDPO(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=3,
        user_model=partial(IndividualUserModel, n_tokens=2),
        user_tokens="after_prompt",
    )
    objective, values = module.objective(batch)
    objective.backward()
    assert module.user_model.offsets.weight.grad.abs().sum() > 0
    # at initialisation every user is the generic user: both conditions agree
    assert_close(values["user"]["logps/chosen"], values["generic"]["logps/chosen"])
