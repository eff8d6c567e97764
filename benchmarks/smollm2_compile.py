"""Does ``torch.compile`` pay for SmolLM2 training on CPU? (issue 12, part 3)

    python benchmarks/smollm2_compile.py [--rows 16] [--widths 136 200] [--repeats 3]

The bare step of ``benchmarks/smollm2_step.py`` (LoRA r 8 on all linear layers, forward +
backward of the decoder, log-probs of half the positions), eager against the same function
under ``torch.compile``, on random token rows of each width in ``--widths`` (length-grouped
batches come in many widths: each new width is a new shape for the compiler unless it compiles
dynamically). Prints the compile time (first call per width) and the median step after it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from plrlhf.logprobs import token_logps
from plrlhf.policy import _decoder, _head


def bare_loss(model: torch.nn.Module, ids: torch.Tensor, decoder: Callable = _decoder) -> torch.Tensor:
    """Decoder over the rows (plain causal attention), log-probs of the second half's tokens."""
    embeds = model.get_input_embeddings()(ids)
    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    hidden = decoder(model, embeds, None, positions)
    half = ids.shape[1] // 2
    return token_logps(hidden[:, half:-1].flatten(0, 1), ids[:, half + 1 :].flatten(), *_head(model)).sum()


MODES = ["eager", "compiled", "compiled, dynamic", "decoder compiled, dynamic"]


def loss_function(mode: str) -> Callable[..., torch.Tensor]:
    torch._dynamo.reset()
    dynamic = mode.endswith("dynamic")
    if mode == "eager":
        return bare_loss
    if mode.startswith("decoder"):  # the log-probs (chunked over the vocabulary) stay eager
        return partial(bare_loss, decoder=torch.compile(_decoder, dynamic=dynamic))
    return torch.compile(bare_loss, dynamic=dynamic)


def step(loss_fn: Callable[..., torch.Tensor], model: torch.nn.Module, ids: torch.Tensor) -> float:
    start = time.perf_counter()
    loss_fn(model, ids).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--rows", type=int, default=16, help="rows per batch (8 triples x 2 conditions)")
    parser.add_argument("--widths", type=int, nargs="+", default=[136, 200])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    args = parser.parse_args()
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(args.model)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    model = get_peft_model(base, lora).get_base_model().train()  # LoRA layers in place
    vocab = base.config.vocab_size
    batches = {w: torch.randint(0, vocab, (args.rows, w)) for w in args.widths}
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, {args.rows} rows")
    print("| mode | width | first call (s) | median step after (s) |\n|---|---|---|---|")
    for mode in args.modes:
        loss_fn = loss_function(mode)
        for width, ids in batches.items():
            first = step(loss_fn, model, ids)
            after = statistics.median(step(loss_fn, model, ids) for _ in range(args.repeats))
            print(f"| {mode} | {width} | {first:.1f} | {after:.2f} |", flush=True)


if __name__ == "__main__":
    main()
