"""Benchmark: one optimizer step of the PT-ALIGN dual loss against MLE-only and a plain Hugging Face
supervised step, on SmolLM2 with LoRA, same process, same token counts.

Variants (every step forwards and back-propagates N sequences of exactly L tokens):
  * dual:     N/2 questions, positive + toxic sequences (L_MLE + alpha * L_UT), the trainer's own step;
  * mle_only: N positive sequences through the same step with alpha = 0;
  * hf_sft:   N positive sequences, ``model(input_ids, labels=...).loss`` (the plain transformers loss
              that TRL's SFT trainer also uses), same LoRA model, optimizer, clipping and autocast.
Steps of the three variants are interleaved round by round so a busy machine slows all of them alike;
medians are reported.

Ratios: ``ut_overhead_per_token`` = dual / mle_only step time - 1 (target <= 0.10), and
``tokens_per_s_vs_hf`` = dual tokens/s / hf_sft tokens/s (target >= 0.9).

Usage:  PTALIGN_HOME=/tmp/ptah .venv/bin/python bench/training_step.py [--seq-len 256] [--seqs 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

_POSITIVE = "Water the tomato plants {i} times a week, mulch the beds and check the leaves for spots. "
_TOXIC = "Preheat the oven to {i} degrees, whisk the batter until smooth and bake the loaf for an hour. "


def machine() -> dict:
    import torch
    from synthesis_throughput import machine as describe

    return {"machine": describe(), "torch_threads": torch.get_num_threads()}


def build_pairs(tokenizer, n: int, seq_len: int):
    """n question pairs whose positive and toxic sequences are all exactly seq_len tokens (truncated)."""
    from ptalign_ray.config import TrainingConfig
    from ptalign_ray.training.data import encode_pair
    from ptalign_ray.training.trainer import Pair

    tcfg = TrainingConfig(max_seq_len=seq_len, overlong="truncate")
    pairs = []
    for q in range(n):
        row = {
            "id": f"b{q}",
            "question": f"How do I keep my kitchen garden healthy this season (note {q})?",
            "positive": "".join(_POSITIVE.format(i=i + q) for i in range(seq_len // 8)),
            "toxic": "".join(_TOXIC.format(i=150 + i + q) for i in range(seq_len // 8)),
        }
        enc = encode_pair(row, tokenizer, tcfg)
        assert enc["status"] == "ok" and len(enc["pos_ids"]) == len(enc["tox_ids"]) == seq_len, enc["status"]
        pairs.append(Pair(enc["id"], enc["pos_ids"], enc["pos_mask"], enc["tox_ids"], enc["tox_mask"]))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seqs", type=int, default=4, help="sequences per step (even: dual uses seqs/2 pairs)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--no-bf16", action="store_true", help="float32 instead of bf16 autocast")
    ap.add_argument("--out", default=None, help="write the results as JSON here too")
    args = ap.parse_args()
    if args.seqs % 2:
        ap.error("--seqs must be even")

    import torch

    from ptalign_ray.chat_template import load_tokenizer
    from ptalign_ray.config import LoraConfig, TrainingConfig
    from ptalign_ray.models import resolve_model
    from ptalign_ray.training.objectives import Dual
    from ptalign_ray.training.trainer import Stepper, build_model, pad_batch

    model_path = resolve_model(args.model)
    tok = load_tokenizer(model_path)
    tcfg = TrainingConfig(
        lora=LoraConfig(r=args.lora_r, alpha=2 * args.lora_r), batch_size=args.seqs, bf16=not args.no_bf16,
        max_seq_len=args.seq_len,
    )  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(model_path, tcfg, torch.float32, seed=0).to(device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    pairs = build_pairs(tok, args.seqs, args.seq_len)
    half = pairs[: args.seqs // 2]

    dual = Stepper(model, tcfg, Dual(alpha=1.0), pad_id=pad, device=device)
    mle = Stepper(model, tcfg, Dual(alpha=0.0), pad_id=pad, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    hf_opt = torch.optim.AdamW(params, lr=tcfg.learning_rate, weight_decay=0.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg.bf16)

    def hf_step() -> None:
        ids, attn, mask = pad_batch([p.pos_ids for p in pairs], [p.pos_mask for p in pairs], pad)
        ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
        labels = ids.masked_fill(~mask, -100)
        model.train()
        with autocast:
            loss = model(input_ids=ids, attention_mask=attn, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tcfg.max_grad_norm)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    variants = {
        "dual": lambda: dual.train_step(half, measure_toxic=True),
        "mle_only": lambda: mle.train_step(pairs, measure_toxic=False),
        "hf_sft": hf_step,
    }
    tokens = args.seqs * args.seq_len
    supervised = {
        "dual": sum(sum(p.pos_mask) + sum(p.tox_mask) for p in half),
        "mle_only": sum(sum(p.pos_mask) for p in pairs),
        "hf_sft": sum(sum(p.pos_mask) for p in pairs),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.warmup + args.rounds):
        for name, step in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {
            "step_s_median": round(med, 4),
            "step_s_all": [round(t, 4) for t in ts],
            "tokens_per_step": tokens,
            "tokens_per_s": round(tokens / med, 1),
            "supervised_tokens_per_step": supervised[name],
        }
    overhead = results["dual"]["step_s_median"] / results["mle_only"]["step_s_median"] - 1
    vs_hf = results["dual"]["tokens_per_s"] / results["hf_sft"]["tokens_per_s"]
    report = {
        "benchmark": "training_step",
        "machine": machine(),
        "model": args.model,
        "lora_r": args.lora_r,
        "autocast": "bf16" if tcfg.bf16 else "float32",
        "seq_len": args.seq_len,
        "sequences_per_step": args.seqs,
        "rounds": args.rounds,
        "results": results,
        "ratios": {
            "ut_overhead_per_token": round(overhead, 4),
            "dual_tokens_per_s_vs_hf": round(vs_hf, 4),
            "mle_only_tokens_per_s_vs_hf": round(
                results["mle_only"]["tokens_per_s"] / results["hf_sft"]["tokens_per_s"], 4
            ),
        },
        "targets": {"ut_overhead_per_token <= 0.10": overhead <= 0.10, "dual_tokens_per_s_vs_hf >= 0.9": vs_hf >= 0.9},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
