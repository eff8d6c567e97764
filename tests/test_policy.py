"""The policy's scoring against a plain full-logits forward; soft tokens; the reference."""

import pytest
import torch
from peft import LoraConfig
from torch.testing import assert_close

from plrlhf.policy import Policy, build_causal_lm, positions_from_mask, prepend_soft_tokens
from tests.conftest import TINY_MODELS

VOCAB = 100


def batch(rows: int = 3, width: int = 12):
    """Right-padded rows with responses of different lengths and positions."""
    ids = torch.randint(1, VOCAB, (rows, width))
    mask = torch.ones(rows, width, dtype=torch.long)
    response = torch.zeros(rows, width, dtype=torch.bool)
    response[0, 5:] = True
    mask[1, 9:] = 0
    response[1, 4:9] = True
    mask[2, 7:] = 0
    response[2, 3:7] = True
    return ids, mask, response


def naive_logps(model, ids, mask, response, inputs_embeds=None):
    kwargs = {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": ids}
    logps = model(attention_mask=mask, **kwargs).logits.float().log_softmax(-1)
    token = logps[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (token * response[:, 1:]).sum(-1)


@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
def test_response_logps_equal_full_logits(arch):
    model = build_causal_lm(TINY_MODELS[arch], vocab_size=VOCAB).eval()
    ids, mask, response = batch()
    sums, counts = Policy(model, reference_free=True).eval().response_logps(ids, mask, response)
    assert_close(sums, naive_logps(model, ids, mask, response), atol=1e-4, rtol=1e-5)
    assert counts.tolist() == [7, 5, 4]


@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
def test_soft_tokens_right_and_left_padding_agree(arch):
    """The same sequence scores the same whether padded on the right or on the left."""
    model = build_causal_lm(TINY_MODELS[arch], vocab_size=VOCAB).eval()
    policy = Policy(model, reference_free=True).eval()
    ids, mask, response = batch()
    soft = torch.randn(3, 4, 32)
    right, _ = policy.response_logps(ids, mask, response, soft_tokens=soft)
    lengths = mask.sum(-1)
    left_ids, left_mask, left_resp = torch.zeros_like(ids), torch.zeros_like(mask), torch.zeros_like(response)
    for i, n in enumerate(lengths.tolist()):
        left_ids[i, -n:], left_mask[i, -n:], left_resp[i, -n:] = ids[i, :n], 1, response[i, :n]
    left, _ = policy.response_logps(left_ids, left_mask, left_resp, soft_tokens=soft)
    assert_close(left, right, atol=1e-4, rtol=1e-5)


def test_soft_tokens_match_a_plain_forward_of_the_concatenation():
    model = build_causal_lm(TINY_MODELS["llama"], vocab_size=VOCAB).eval()
    ids, mask, response = batch()
    soft = torch.randn(3, 2, 32)
    sums, _ = Policy(model, reference_free=True).response_logps(ids, mask, response, soft_tokens=soft)
    embeds = torch.cat([soft, model.get_input_embeddings()(ids)], 1)
    full_mask = torch.cat([torch.ones(3, 2, dtype=torch.long), mask], 1)
    # score the same tokens, shifted by the two soft positions
    pad_ids = torch.cat([torch.zeros(3, 2, dtype=torch.long), ids], 1)
    pad_resp = torch.cat([torch.zeros(3, 2, dtype=torch.bool), response], 1)
    assert_close(
        sums, naive_logps(model, pad_ids, full_mask, pad_resp, inputs_embeds=embeds), atol=1e-4, rtol=1e-5
    )


def test_zero_soft_tokens_is_the_base_model():
    model = build_causal_lm(TINY_MODELS["llama"], vocab_size=VOCAB).eval()
    policy = Policy(model, reference_free=True)
    ids, mask, response = batch()
    plain, _ = policy.response_logps(ids, mask, response)
    empty, _ = policy.response_logps(ids, mask, response, soft_tokens=torch.zeros(3, 0, 32))
    assert_close(plain, empty)


def test_prepend_positions_skip_left_padding():
    embeds = torch.zeros(1, 4, 2)
    mask = torch.tensor([[0, 0, 1, 1]])
    _, new_mask, positions = prepend_soft_tokens(embeds, mask, torch.zeros(1, 2, 2))
    assert new_mask.tolist() == [[1, 1, 0, 0, 1, 1]]
    assert positions.tolist() == [[0, 1, 1, 1, 2, 3]]
    assert positions_from_mask(torch.tensor([[1, 1, 0]])).tolist() == [[0, 1, 1]]


def test_lora_reference_is_the_base_model_with_adapters_disabled():
    base = build_causal_lm(TINY_MODELS["llama"], vocab_size=VOCAB).eval()
    expected = naive_logps(base, *batch_seeded())
    policy = Policy(base, lora=LoraConfig(r=4, target_modules="all-linear")).eval()
    assert policy.reference is None  # no second copy of the weights
    with torch.no_grad():  # move the adapters away from their zero init
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    ref, _ = policy.reference_logps(*batch_seeded())
    pol, _ = policy.response_logps(*batch_seeded())
    assert_close(ref, expected, atol=1e-4, rtol=1e-5)
    assert (pol - ref).abs().max() > 1e-2
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_full_finetuning_reference_is_a_frozen_copy():
    model = build_causal_lm(TINY_MODELS["llama"], vocab_size=VOCAB)
    policy = Policy(model)
    assert policy.reference is not None
    assert not any(p.requires_grad for p in policy.reference.parameters())
    policy.train()
    assert not policy.reference.training
    before, _ = policy.reference_logps(*batch_seeded())
    with torch.no_grad():
        for p in policy.lm.parameters():
            p.mul_(1.5)
    after, _ = policy.reference_logps(*batch_seeded())
    assert_close(before, after)


def test_reference_free_gives_zero():
    policy = Policy(build_causal_lm(TINY_MODELS["llama"], vocab_size=VOCAB), reference_free=True)
    ref, counts = policy.reference_logps(*batch_seeded())
    assert ref.abs().sum() == 0 and counts.tolist() == [7, 5, 4]


def test_model_and_tokenizer_mismatch_is_reported():
    with pytest.raises(ValueError, match="do not belong together"):
        build_causal_lm({**TINY_MODELS["llama"], "vocab_size": 10}, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="model_type"):
        build_causal_lm({"hidden_size": 8})
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_causal_lm("HuggingFaceTB/SmolLM2-135M")


def batch_seeded():
    torch.manual_seed(1)
    return batch()


def test_loads_a_local_hugging_face_directory(tmp_path):
    model = build_causal_lm(TINY_MODELS["qwen2"], vocab_size=VOCAB).eval()
    model.save_pretrained(tmp_path / "model")
    loaded = build_causal_lm(str(tmp_path / "model"), vocab_size=VOCAB, pad_token_id=3).eval()
    ids, mask, response = batch_seeded()
    assert_close(naive_logps(loaded, ids, mask, response), naive_logps(model, ids, mask, response))
    assert loaded.config.pad_token_id == 3


def test_lora_reference_runs_without_dropout_while_training():
    policy = Policy(
        build_causal_lm(TINY_MODELS["gpt2"], vocab_size=VOCAB),
        lora=LoraConfig(r=4, target_modules="all-linear"),
    )
    policy.train()
    first, _ = policy.reference_logps(*batch_seeded())
    second, _ = policy.reference_logps(*batch_seeded())
    assert_close(first, second)
    assert policy.lm.training and policy.hf_model.transformer.h[0].attn.resid_dropout.training
