"""The Markdown report and console tables of ``studies.retrieval`` (a pure function of its JSON)."""

from __future__ import annotations

from typing import Any


def _bits(run: dict[str, Any]) -> str:
    bits = run["effective_bits"]
    return f"{bits['key']:.2f} / {bits['value']:.2f}"


def accuracy_rows(out: dict[str, Any]) -> list[str]:
    """Markdown rows: run, accuracy (correct / prompts), accuracy per length, effective K / V bits."""
    lines = ["| run | accuracy | " + " | ".join(f"{n} tok" for n in out["lengths"]) + " | K / V bits |",
             "| --- | ---: | " + " | ".join("---:" for _ in out["lengths"]) + " | ---: |"]
    for run in out["runs"]:
        grid = out["accuracy"][run["name"]]
        per_length = " | ".join(f"{sum(r) / len(r):.0%}" for r in grid)
        lines.append(f"| {run['name']} | {run['accuracy']:.0%} ({run['correct']}/{run['prompts']}) | "
                     f"{per_length} | {_bits(run)} |")
    return lines


def grid_rows(out: dict[str, Any], name: str) -> list[str]:
    """Markdown rows of one run's accuracy grid: lengths down, depths across."""
    lines = ["| tokens \\ depth | " + " | ".join(f"{d:g}%" for d in out["depths"]) + " |",
             "| ---: | " + " | ".join(":---:" for _ in out["depths"]) + " |"]
    for length, row in zip(out["lengths"], out["accuracy"][name], strict=True):
        lines.append(f"| {length} | " + " | ".join(f"{v:.0%}" if out["samples"] > 1 else ("✓" if v else "✗")
                                                   for v in row) + " |")
    return lines


def head_rows(out: dict[str, Any]) -> list[str]:
    """Markdown rows of the per-head finding of each quantized run."""
    lines = ["| run | heads losing the most needle attention (layer.head: lost / dense mass) | share of all "
             "loss in these | loss summed over heads, wrong / right answers |", "| --- | --- | ---: | ---: |"]
    for name, found in out["heads"].items():
        top = ", ".join(f"{h['layer']}.{h['head']}: {h['needle_mass_lost']:.3f} / "
                        f"{h['needle_mass_dense']:.3f}" for h in found["top_heads"])
        share = "-" if found["top_share_of_loss"] is None else f"{found['top_share_of_loss']:.0%}"
        wrong, right = found["loss_summed_over_heads_when_wrong"], found["loss_summed_over_heads_when_right"]
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {name} | {top} | {share} of {found['heads']} heads | {fmt(wrong)} / {fmt(right)} |")
    return lines


def markdown(out: dict[str, Any]) -> str:
    """The report: setup, commands and time, accuracy with effective bits, each run's grid, heads."""
    model, cal = out["model"], out["calibration"]
    parts = [
        "# Retrieval through the real quantized cache: needle in a haystack on SmolLM2-135M",
        "",
        "Script: `studies/retrieval.py` (issue 16); results: `retrieval.json` (every run spec, accuracy "
        "grids, every prompt and answer, per-head means, versions, commit).",
        "",
        f"    {out['command']}",
        "",
        f"Run in {out['seconds']:,} s on `{out['device']}` (torch {out['versions']['torch']}, transformers "
        f"{out['versions']['transformers']}); code of commit `{str(out.get('commit', '?'))[:7]}`. Model: "
        f"`{model['id']}` ({model['layers']} layers, {model['heads']} query / {model['kv_heads']} KV heads). "
        f"Calibration: {cal.get('tokens')} tokens, rank {cal.get('rank')} kept. "
        f"Prompts: {len(out['prompts'])} "
        f"({len(out['lengths'])} lengths × {len(out['depths'])} depths × {out['samples']} sample), "
        f"{out['template']} template, haystack from `{out['dataset'].get('name')}` "
        f"({out['dataset'].get('split')}), needle \"The secret number of <name> is <7 digits>.\", answer "
        f"primed with \"The secret number of <name> is\", {out['new_tokens']} greedy tokens through "
        "each run's cache (dense: `DynamicCache`; others: `HeadQCache.from_run`, which prefills in full "
        "precision and reads the quantized cache from the first decoded token on); exact match of the "
        "7 digits.",
        "",
        "## Accuracy and effective bits",
        "",
        *accuracy_rows(out),
        "",
        "## Accuracy by context length (rows) and needle depth (columns)",
    ]
    for run in out["runs"]:
        parts += ["", f"### {run['name']}", "", *grid_rows(out, run["name"])]
    parts += ["", "## Which heads lose the needle", "",
              "Attention mass on the needle's tokens at the answer's first decode step (the first step "
              "that reads the quantized cache), dense minus quantized, mean over prompts; the share of "
              "all positive loss that the five worst heads carry; and the loss (heads that lose attention "
              "only) summed over heads, mean over the prompts a run answered wrongly vs rightly.", "",
              *head_rows(out), ""]
    return "\n".join(parts)


def print_tables(out: dict[str, Any]) -> None:
    """The accuracy table and the per-head finding on the console."""
    print("\n".join(accuracy_rows(out)))
    print()
    print("\n".join(head_rows(out)))
