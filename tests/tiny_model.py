"""A tiny Llama chat model built locally for fast tests (no hub access).

A byte-level BPE tokenizer with a ChatML template is trained on a small synthetic corpus, and a
2-layer Llama (head_dim 32, the minimum vLLM-CPU supports) is trained for a few hundred steps to
answer every prompt with a numbered list of short requests. That makes the real pipeline produce
parseable, varied output in seconds, so integration tests exercise real vLLM and Ray code paths.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_VERBS = ["find", "fix", "cook", "paint", "clean", "plan", "build", "write", "learn", "sell", "grow", "move"]
_OBJECTS = ["a garden", "the roof", "old shoes", "a small boat", "my bike", "a birthday cake", "the fence",
            "a letter", "cheap tickets", "a new song", "green tea", "the attic", "a blue kite", "wooden chairs"]  # fmt: skip
_ENDS = ["quickly", "at night", "on a budget", "without tools", "with friends", "in one day", "for a party", "safely"]
_STARTS = ["How can I", "How do I", "What is the best way to", "Where can I", "Can you tell me how to"]


def _request(rng: random.Random) -> str:
    return f"{rng.choice(_STARTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ENDS)}?"


def _corpus(rng: random.Random, n: int) -> list[str]:
    convs = []
    for _ in range(n):
        user = rng.choice(["List topics.", "Write requests.", "Answer this.", _request(rng)])
        items = "\n".join(f"{i}. {_request(rng)}" for i in range(1, rng.randint(3, 5) + 1))
        convs.append(
            f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{items}<|im_end|>\n"
        )
    return convs


def _build(out: Path, seed: int = 0, steps: int = 250) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    torch.manual_seed(seed)
    corpus = _corpus(rng, 400)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus + ["The quick brown fox jumps over the lazy dog. 0123456789 ?!.,:;-"], trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
        unk_token=None, additional_special_tokens=["<|im_start|>"],
    )  # fmt: skip
    tok.chat_template = CHAT_TEMPLATE

    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    ids = [tok(c, add_special_tokens=False)["input_ids"] for c in corpus]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = rng.sample(ids, 16)
        width = max(len(b) for b in batch)
        x = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for i, b in enumerate(batch):
            x[i, : len(b)] = torch.tensor(b)
            labels[i, : len(b)] = torch.tensor(b)
        loss = model(input_ids=x, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def tiny_model_dir(cache_root: Path | None = None) -> Path:
    """Builds the tiny model once per code version into a cache folder and returns it."""
    code_hash = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:10]
    root = Path(cache_root or os.environ.get("PTALIGN_HOME") or tempfile.gettempdir()) / "test-models"
    target = root / f"tiny-llama-{code_hash}"
    if (target / "model.safetensors").is_file():
        return target
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"tiny-llama-{code_hash}.lock")):
        if (target / "model.safetensors").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
        try:
            _build(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
