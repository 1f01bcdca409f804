"""Benchmark: one optimizer step of ptalign's trainer against a plain Hugging Face step and TRL's
SFTTrainer, on SmolLM2 with the LoRA config of configs/default.yaml, the same rows, in one run.

Rows: per round, ``training.batch_size`` question pairs whose positive and toxic sequences are cut to
seeded lengths uniform in [--min-len, training.max_seq_len] (answers of very different lengths, as in
the synthesised data); every variant trains the same 2 x batch_size sequences in a step, so the same
real (non-pad) tokens. Variants:
  * ptalign_packed: ``Stepper.train_step`` (PT-ALIGN dual loss), a micro-batch's sequences packed into
    rows (the trainer's default);
  * ptalign_padded: the same step with every sequence padded to the longest of its micro-batch (before);
  * ptalign_packed_lora_dropout (--lora-dropout P, default 0.05, the default before 7f909aa): the packed
    step on a second copy of the model whose LoRA inputs go through dropout P;
  * hf_plain: ``model(input_ids, attention_mask, labels=...).loss`` on the padded batch (labels from the
    same masks), AdamW, clipping, the same bf16 autocast; the same LoRA model as the two above;
  * trl_sft: TRL's SFTTrainer (its own copy of the base model, ``peft_config`` = the same LoRA), the
    sequences pre-tokenised with those labels, one batch per step, bf16, gradient checkpointing off
    (TRL's default is on; the others do not recompute activations);
  * trl_sft_padding_free (--trl-padding-free): the same with ``padding_free=True`` (each batch one
    flattened row), run after the others, not interleaved.
The first four are interleaved round by round (the other three steps run in a TRL callback after each
TRL step), so a busy machine slows them alike. TRL's step is timed from ``on_step_begin`` to
``on_step_end`` (batch collation, milliseconds, is outside). Tokens/s = real tokens of the measured
rounds / their summed step time, by wall clock and by process CPU time: on cores shared with other
jobs the CPU time (with --threads 1, one core's work) is the stable measure; wall time swings with load.

Usage:  PTALIGN_HOME=/tmp/ptah .venv/bin/python bench/training_step.py [--threads 1] [--trl-padding-free] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time

_POSITIVE = "Water the tomato plants {i} times a week, mulch the beds and check the leaves for spots. "
_TOXIC = "Preheat the oven to {i} degrees, whisk the batter until smooth and bake the loaf for an hour. "


def machine() -> dict:
    import os

    import torch
    from synthesis_throughput import machine as describe

    return {"machine": describe(), "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.is_available(),
            "load_average_1_5_15_min_at_end": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip


def build_rounds(tokenizer, tcfg, rounds: int, min_len: int, seed: int) -> list:
    """Per round, ``tcfg.batch_size`` pairs with each sequence cut to a seeded length in [min_len, max_seq_len]."""
    from ptalign_ray.training.data import encode_pair
    from ptalign_ray.training.trainer import Pair

    rng, top, out = random.Random(seed), tcfg.max_seq_len, []
    for r in range(rounds):
        pairs = []
        for q in range(tcfg.batch_size):
            k = r * tcfg.batch_size + q
            row = {
                "id": f"b{k}",
                "question": f"How do I keep my kitchen garden healthy this season (note {k})?",
                "positive": "".join(_POSITIVE.format(i=i + k) for i in range(top // 8)),
                "toxic": "".join(_TOXIC.format(i=150 + i + k) for i in range(top // 8)),
            }
            enc = encode_pair(row, tokenizer, tcfg)
            assert enc["status"] == "ok" and len(enc["pos_ids"]) == len(enc["tox_ids"]) == top, enc["status"]
            n_pos, n_tox = rng.randint(min_len, top), rng.randint(min_len, top)
            pair = Pair(enc["id"], enc["pos_ids"][:n_pos], enc["pos_mask"][:n_pos], enc["tox_ids"][:n_tox],
                        enc["tox_mask"][:n_tox])  # fmt: skip
            assert any(pair.pos_mask) and any(pair.tox_mask), "raise --min-len: a cut left nothing supervised"
            pairs.append(pair)
        out.append(pairs)
    return out


def sequences(pairs) -> tuple[list[list[int]], list[list[int]]]:
    """A round's sequences and target masks as a plain SFT batch sees them: positives, then toxics."""
    seqs = [p.pos_ids for p in pairs] + [p.tox_ids for p in pairs]
    masks = [p.pos_mask for p in pairs] + [p.tox_mask for p in pairs]
    return seqs, masks


def trl_trainer(model_path, tok, tcfg, rounds, out_dir: str, padding_free: bool, callbacks=()):
    """TRL's SFTTrainer on the rounds' sequences, one round per step, in order."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    rows = []
    for pairs in rounds:
        for ids, mask in zip(*sequences(pairs)):
            rows.append({"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]})
    lcfg = tcfg.lora
    peft_cfg = LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
                          target_modules=lcfg.target_modules, task_type="CAUSAL_LM")  # fmt: skip
    args = SFTConfig(
        output_dir=out_dir, per_device_train_batch_size=2 * tcfg.batch_size, gradient_accumulation_steps=1,
        max_steps=len(rounds), learning_rate=tcfg.learning_rate, lr_scheduler_type="constant", weight_decay=0.0,
        max_grad_norm=tcfg.max_grad_norm, bf16=tcfg.bf16, gradient_checkpointing=False, padding_free=padding_free,
        max_length=None if padding_free else tcfg.max_seq_len, train_sampling_strategy="sequential",
        logging_steps=10**6, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                      peft_config=peft_cfg, callbacks=list(callbacks))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--config", default="configs/default.yaml", help="LoRA, batch size, max_seq_len, bf16 from here")
    ap.add_argument("--min-len", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-trl", action="store_true", help="skip TRL (not installed: pip install .[bench])")
    ap.add_argument("--trl-padding-free", action="store_true", help="also TRL with padding_free=True")
    ap.add_argument(
        "--lora-dropout", type=float, default=0.05, help="also the packed step with this LoRA dropout (0: not)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    ap.add_argument("--out", default=None, help="write the results as JSON here too")
    args = ap.parse_args()

    import torch

    if args.threads:  # one thread stalls less than two when other jobs oversubscribe the cores
        torch.set_num_threads(args.threads)

    from ptalign_ray.chat_template import load_tokenizer
    from ptalign_ray.config import load_config
    from ptalign_ray.models import resolve_model
    from ptalign_ray.training.objectives import Dual
    from ptalign_ray.training.trainer import Stepper, build_model, pad_batch

    tcfg = load_config(args.config).training
    model_path = resolve_model(args.model)
    tok = load_tokenizer(model_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(model_path, tcfg, torch.float32, seed=0).to(device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    n_rounds = args.warmup + args.rounds
    rounds = build_rounds(tok, tcfg, n_rounds, args.min_len, args.seed)

    packed = Stepper(model, tcfg, Dual(alpha=tcfg.alpha), pad_id=pad, device=device)
    padded = Stepper(model, tcfg, Dual(alpha=tcfg.alpha), pad_id=pad, device=device, pack=False)
    params = [p for p in model.parameters() if p.requires_grad]
    hf_opt = torch.optim.AdamW(params, lr=tcfg.learning_rate, weight_decay=0.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg.bf16)

    def hf_step(pairs) -> dict:
        ids, attn, mask = pad_batch(*sequences(pairs), pad)
        ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
        model.train()
        with autocast:
            loss = model(input_ids=ids, attention_mask=attn, labels=ids.masked_fill(~mask, -100), use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tcfg.max_grad_norm)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        return {"tokens": int(attn.sum()), "pad_tokens": int((attn == 0).sum())}

    variants = {
        "ptalign_packed": lambda pairs: packed.train_step(pairs, measure_toxic=True),
        "ptalign_padded": lambda pairs: padded.train_step(pairs, measure_toxic=True),
        "hf_plain": hf_step,
    }
    if args.lora_dropout and args.lora_dropout != tcfg.lora.dropout:
        dcfg = tcfg.model_copy(update={"lora": tcfg.lora.model_copy(update={"dropout": args.lora_dropout})})
        dropped = Stepper(build_model(model_path, dcfg, torch.float32, seed=0).to(device), dcfg, Dual(alpha=tcfg.alpha),
                          pad_id=pad, device=device)  # fmt: skip
        variants["ptalign_packed_lora_dropout"] = lambda pairs: dropped.train_step(pairs, measure_toxic=True)
    runs: dict[str, list[dict]] = {k: [] for k in ("trl_sft", *variants)}

    def clock() -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    def record(name: str, t0: tuple[float, float], tokens: int, pad_n: int) -> None:
        t1 = clock()
        runs[name].append({"s": t1[0] - t0[0], "cpu_s": t1[1] - t0[1], "tokens": tokens, "pad": pad_n})

    def others(r: int) -> None:
        for name, step in variants.items():
            t0 = clock()
            out = step(rounds[r])
            record(name, t0, out["tokens"], out["pad_tokens"])
        line = ", ".join(f"{k} {v[-1]['s']:.1f} s (cpu {v[-1]['cpu_s']:.1f})" for k, v in runs.items() if v)
        print(f"[bench] round {r}: {line}", file=sys.stderr, flush=True)

    def padded_layout(pairs) -> tuple[int, int]:  # what a padding collator forwards: (real, pad) tokens
        ids, attn, _ = pad_batch(*sequences(pairs), pad)
        return int(attn.sum()), int((attn == 0).sum())

    trl_version = None
    if args.no_trl:
        for r in range(n_rounds):
            others(r)
    else:
        import trl
        from transformers import TrainerCallback

        trl_version = trl.__version__

        class Timer(TrainerCallback):
            """Times TRL's steps as ``name``; with ``then``, runs it on the round after each step."""

            def __init__(self, name: str, padded: bool, then=None):
                self.name, self.padded, self.then = name, padded, then
                runs.setdefault(name, [])

            def on_step_begin(self, a, state, control, **kw):
                self.t0 = clock()

            def on_step_end(self, a, state, control, **kw):
                r = state.global_step - 1
                real, pad_n = padded_layout(rounds[r])
                record(self.name, self.t0, real, pad_n if self.padded else 0)
                if self.then:
                    self.then(r)

        with tempfile.TemporaryDirectory() as d:
            timer = Timer("trl_sft", padded=True, then=others)
            trl_trainer(model_path, tok, tcfg, rounds, d, padding_free=False, callbacks=[timer]).train()
        if args.trl_padding_free:
            with tempfile.TemporaryDirectory() as d:
                timer = Timer("trl_sft_padding_free", padded=False)
                trl_trainer(model_path, tok, tcfg, rounds, d, padding_free=True, callbacks=[timer]).train()

    results = {}
    for name, steps in runs.items():
        if not steps:
            continue
        measured = steps[args.warmup :]
        seconds, cpu, tokens, pads = (sum(s[k] for s in measured) for k in ("s", "cpu_s", "tokens", "pad"))
        results[name] = {
            "step_s_median": round(statistics.median(s["s"] for s in measured), 3),
            "step_s_all": [round(s["s"], 3) for s in measured],
            "step_cpu_s_all": [round(s["cpu_s"], 3) for s in measured],
            "real_tokens_per_step_mean": round(tokens / len(measured), 1),
            "tokens_per_s": round(tokens / seconds, 1),
            "tokens_per_cpu_s": round(tokens / cpu, 1),
            "pad_share": round(pads / (tokens + pads), 4),
        }

    def ratios(key: str) -> dict:
        """ptalign_packed's tokens/s (or per CPU second) over each other variant's: > 1 = ours faster."""
        ours = results["ptalign_packed"][key]
        return {f"ptalign_packed_vs_{k}": round(ours / v[key], 3) for k, v in results.items() if k != "ptalign_packed"}

    report = {
        "benchmark": "training_step",
        "machine": machine(),
        "model": args.model,
        "config": args.config,
        "lora": tcfg.lora.model_dump(),
        "lora_dropout_variant": args.lora_dropout if "ptalign_packed_lora_dropout" in runs else None,
        "autocast": "bf16" if tcfg.bf16 else "float32",
        "pairs_per_step": tcfg.batch_size,
        "sequences_per_step": 2 * tcfg.batch_size,
        "sequence_lengths": f"seeded uniform in [{args.min_len}, {tcfg.max_seq_len}] (seed {args.seed})",
        "rounds": args.rounds,
        "warmup_rounds": args.warmup,
        "trl": trl_version,
        "packing_checked_ok": packed.pack,
        "results": results,
        "ratios_tokens_per_s": ratios("tokens_per_s"),
        "ratios_tokens_per_cpu_s": ratios("tokens_per_cpu_s"),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
