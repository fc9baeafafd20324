# SPDX-License-Identifier: Apache-2.0
"""Benchmark plots with matplotlib (`pip install lynx-ops[bench]`; the GPU machine's image has it,
the CPU tier installs it from requirements/test.txt)."""

from __future__ import annotations

import textwrap
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _title(head: str, router: str) -> str:
    """The router's description is long: wrapped, so the figure does not cut it off."""
    return "\n".join([head, *textwrap.wrap(router, 80)])


def line_chart(path: Path, title: str, xlabel: str, ylabel: str, xs: list,
               series: dict[str, list[float | None]]) -> Path:  # fmt: skip
    """One line per series over categorical x (equally spaced, labelled with xs); None = gap."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 4.6), dpi=100)
    pos = list(range(len(xs)))
    for label, ys in series.items():
        ax.plot(pos, [float("nan") if y is None else y for y in ys], marker="o", label=label)
    ax.set_xticks(pos, [str(x) for x in xs])
    ax.set_title(title, fontsize=10)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_offline(
    rows: list[dict], ceiling: dict[int, dict[int, float]], out_dir: Path
) -> list[Path]:
    batches = [r["batch"] for r in rows]
    router = rows[0].get("router", "") if rows else ""
    tpot = {"stock": [r["stock_tpot_ms_reference"] for r in rows],
            "lynx": [r["lynx_tpot_ms_median"] for r in rows]}  # fmt: skip
    for k, per_batch in sorted(ceiling.items()):
        tpot[f"ceiling {k} experts"] = [per_batch.get(b) for b in batches]
    experts = {"before (stock routing)": [r.get("lynx_experts_before") for r in rows],
               "after (lynx)": [r.get("lynx_experts_after") for r in rows],
               "uniform routing, expected": [r.get("experts_uniform_expected") for r in rows]}  # fmt: skip
    return [
        line_chart(
            out_dir / "tpot_vs_batch.png",
            _title("time per output token vs batch", router),
            "batch size",
            "ms",
            batches,
            tpot,
        ),  # fmt: skip
        line_chart(
            out_dir / "experts_vs_batch.png",
            _title("distinct experts per MoE layer", router),
            "batch size",
            "experts",
            batches,
            experts,
        ),  # fmt: skip
    ]


def plot_online(agg: list[dict], slos: list[float], out_dir: Path, router: str) -> Path:
    """Output throughput against median TPOT, one curve per side over its load points, with the
    min-max spread of repeats as error bars and the declared TPOT SLOs as vertical lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for side in dict.fromkeys(a["side"] for a in agg):
        pts = sorted((a for a in agg if a["side"] == side and a["tpot_ms_p50"] is not None),
                     key=lambda a: (a["load"], a["value"]))  # fmt: skip
        x = [a["tpot_ms_p50"] for a in pts]
        y = [a["output_tok_s"] for a in pts]
        xerr = [[a["tpot_ms_p50"] - a["tpot_ms_p50_min"] for a in pts],
                [a["tpot_ms_p50_max"] - a["tpot_ms_p50"] for a in pts]]  # fmt: skip
        yerr = [[a["output_tok_s"] - a["output_tok_s_min"] for a in pts],
                [a["output_tok_s_max"] - a["output_tok_s"] for a in pts]]  # fmt: skip
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=side)
        for a in pts:
            tag = f"C={a['value']:g}" if a["load"] == "concurrency" else f"{a['value']:g}/s"
            ax.annotate(tag, (a["tpot_ms_p50"], a["output_tok_s"]), fontsize=7,
                        textcoords="offset points", xytext=(4, -10))  # fmt: skip
    for slo in slos:
        ax.axvline(slo, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(f"SLO {slo:.1f} ms", (slo, 0), fontsize=7, rotation=90,
                    textcoords="offset points", xytext=(2, 4))  # fmt: skip
    ax.set_title(_title("vllm bench serve: throughput vs TPOT", router), fontsize=10)
    ax.set(xlabel="median TPOT (ms)", ylabel="output tokens/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(out_dir) / "throughput_vs_tpot.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_frontier(table: list[dict], batches: list[int], out_dir: Path, model: str) -> Path:
    """Distinct experts after the remap against the NLL change, one panel per batch size, one
    marker series per policy kind, the frontier joined by a line."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4.5), dpi=100,
                             squeeze=False)  # fmt: skip
    for ax, batch in zip(axes[0], batches, strict=True):
        rows = [r for r in table if r["batch"] == batch and r["experts_after"] is not None]
        for kind in dict.fromkeys(r["kind"] for r in rows):
            pts = [r for r in rows if r["kind"] == kind]
            ax.errorbar([r["dnll_pct"] for r in pts], [r["experts_after"] for r in pts],
                        xerr=[[r["dnll_pct"] - r["dnll_pct_min"] for r in pts],
                              [r["dnll_pct_max"] - r["dnll_pct"] for r in pts]],
                        fmt="o", capsize=3, label=kind)  # fmt: skip
            for r in pts:
                ax.annotate(r["setting"].split(":", 1)[1], (r["dnll_pct"], r["experts_after"]),
                            fontsize=6, textcoords="offset points", xytext=(3, 3))  # fmt: skip
        front = sorted((r for r in rows if r["frontier"]), key=lambda r: r["dnll_pct"])
        ax.plot([r["dnll_pct"] for r in front], [r["experts_after"] for r in front], "k--",
                linewidth=0.8, label="frontier")  # fmt: skip
        if rows:
            ax.axhline(rows[0]["experts_before"], color="grey", linewidth=0.8)
            ax.annotate("stock", (0, rows[0]["experts_before"]), fontsize=7)
        ax.set(title=f"B={batch}", xlabel="decode NLL change vs stock (%)",
               ylabel="distinct experts per MoE layer")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"lynx-bench frontier: {model}")
    fig.tight_layout()
    path = Path(out_dir) / "frontier.png"
    fig.savefig(path)
    plt.close(fig)
    return path
