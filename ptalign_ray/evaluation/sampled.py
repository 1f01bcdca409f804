"""Which prompts are also answered with sampled decoding, and the generation rows for one pass.

Greedy rows and the k sampled copies of a prompt are rows of ONE dataset (one engine start per
model): each row carries ``sample`` (-1 = greedy, 0..k-1 = sampled) and the row's own sampling
parameters are chosen from it. No per-request seed (see ``engine.sampling_params``): the k copies
differ because sampling at T > 0 is random, not because of seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ptalign_ray.config import EvaluationConfig

GREEDY = -1


def sampled_uids(prompts: pd.DataFrame, ecfg: EvaluationConfig, seed: int) -> list[str]:
    """Seeded subset of each set's prompts (in prompt order); sets not named, or absent, get none."""
    s = ecfg.sampled
    if s.k == 0:
        return []
    chosen: set[str] = set()
    for name, part in prompts.groupby("set", sort=False):
        n = s.prompts_per_set.get(str(name), 0)
        if n <= 0:
            continue
        uids = part["uid"].tolist()
        if n < len(uids):
            digest = int.from_bytes(str(name).encode()[:8].ljust(8, b"\0"), "big")
            rng = np.random.default_rng([seed, digest])
            uids = [uids[i] for i in sorted(rng.choice(len(uids), size=n, replace=False))]
        chosen.update(uids)
    return [u for u in prompts["uid"] if u in chosen]


def generation_rows(prompts: pd.DataFrame, sampled: list[str], k: int) -> pd.DataFrame:
    """rid, uid, sample, prompt: every prompt greedy, then k copies of each sampled prompt."""
    greedy = pd.DataFrame({"uid": prompts["uid"], "sample": GREEDY, "prompt": prompts["prompt"]})
    text = prompts.set_index("uid")["prompt"]
    extra = pd.DataFrame([{"uid": u, "sample": i, "prompt": text[u]} for u in sampled for i in range(k)],
                         columns=["uid", "sample", "prompt"])  # fmt: skip
    rows = pd.concat([greedy, extra], ignore_index=True)
    rows.insert(0, "rid", rows["uid"] + "#" + rows["sample"].astype(str))
    return rows
