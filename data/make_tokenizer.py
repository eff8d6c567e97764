"""Train the small byte-level BPE tokenizer bundled in data/tokenizer/ on the bundled data.

The quickstart and the tests use it, so that nothing is downloaded. It has an EOS token, no pad
token (plrlhf pads with EOS, as for GPT-2 or Llama), and a ChatML-style chat template so that
conversational records work too.
"""

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).parent
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def texts(data_dir: Path):
    for path in sorted(data_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            yield from (row["prompt"], row["chosen"], row["rejected"])


def build(data_dir: Path = HERE / "synthetic", out_dir: Path = HERE / "tokenizer", vocab_size: int = 1024):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts(data_dir), trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(out_dir)
    return wrapped


if __name__ == "__main__":
    tok = build()
    print(f"saved {len(tok)} tokens to {HERE / 'tokenizer'}")
