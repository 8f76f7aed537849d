"""Reports of a verification: a terminal table, JSON, markdown and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from defender.verify import VerifyReport


def fmt(x: float | None, p: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:.2e}" if p else f"{x:.4g}"


def _statistic(r) -> str:
    out = r.statistic
    if r.detail.get("t_zero_effect") is not None:
        out += f"; vs no effect t {fmt(r.detail['t_zero_effect'])}, p {fmt(r.detail['p_zero_effect'], p=True)}"
    if r.detail.get("t_uncalibrated") is not None:
        out += f"; raw t {fmt(r.detail['t_uncalibrated'])}, p {fmt(r.detail['p_uncalibrated'], p=True)}"
    return out


def table_rows(rep: VerifyReport) -> list[list[str]]:
    return [[r.method, _statistic(r), fmt(r.value), fmt(r.p_value, p=True), r.verdict] for r in rep.rows]


def text_table(rep: VerifyReport) -> str:
    head = ["method", "statistic", "value", "p-value", "verdict"]
    cells = table_rows(rep)
    w = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    line = lambda c: "  ".join(v.ljust(w[i]) for i, v in enumerate(c))  # noqa: E731
    out = [f"suspect: {rep.suspect.get('name')}   victim: {rep.victim}", line(head), "  ".join("-" * x for x in w)]
    out += [line(c) for c in cells]
    q = rep.queries
    out.append(f"overall: {rep.overall.upper()}  ({rep.overall_rule})")
    out.append(f"queries: {q['sent']} images sent in {q['requests']} calls (checks needed {q['needed_total']}; "
               f"repeated images are paid once); {rep.seconds:.1f} s")
    return "\n".join(out)


def markdown(rep: VerifyReport) -> str:
    lines = [f"# Ownership verification: {rep.suspect.get('name')}", "", f"Victim: `{rep.victim}`", "",
             "| method | statistic | value | p-value | verdict |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(c) + " |" for c in table_rows(rep)]
    lines += ["", f"**Overall: {rep.overall}** ({rep.overall_rule}).", "", "## Queries", ""]
    lines += [f"- {k}: {v}" for k, v in rep.queries["needed"].items()]
    lines += [f"- sent to the suspect: {rep.queries['sent']} images in {rep.queries['requests']} calls", ""]
    for r in rep.rows:
        lines += [f"## {r.method}", "", "```json", json.dumps(r.detail, indent=2, default=float), "```", ""]
    return "\n".join(lines)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plots(rep: VerifyReport, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    a = rep.arrays
    if "ll_private" in a:
        fig, ax = plt.subplots(figsize=(6, 4))
        lo = float(np.percentile(np.concatenate([a["ll_private"], a["ll_public"]]), 1))
        hi = float(max(a["ll_private"].max(), a["ll_public"].max()))
        bins = np.linspace(lo, hi, 50)
        ax.hist(a["ll_private"], bins=bins, alpha=0.6, label=f"private members scored (n={len(a['ll_private'])})", density=True)
        ax.hist(a["ll_public"], bins=bins, alpha=0.6, label=f"public (n={len(a['ll_public'])})", density=True)
        di = rep.row("dataset_inference") or rep.row("dataset_inference_aligned")
        title = "dataset inference"
        if di and di.value is not None:
            title += f": t={di.value:.2f}, p={di.p_value:.2e}"
            if di.detail.get("p_zero_effect") is not None:
                title += f"\n(H0 effect <= {di.detail['min_effect']:.3g}; vs no effect p={di.detail['p_zero_effect']:.2e})"
        ax.set_title(title, fontsize=10)
        calibrated = bool(di and di.detail.get("references"))
        ax.set_xlabel("GMM log-likelihood of the suspect's representation"
                      + (", minus the references' fit (calibrated)" if calibrated else ""))
        ax.legend()
        made.append(_save(fig, out / "loglik_hist.png"))
    wm = [(m, a[f"{m}_accuracy"], a[f"{m}_n"]) for m in ("watermark", "watermark_aligned") if f"{m}_accuracy" in a]
    if wm:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        names = [m for m, _, _ in wm]
        acc = [x for _, x, _ in wm]
        err = [1.96 * np.sqrt(max(x * (1 - x), 1e-12) / n) for _, x, n in wm]
        ax.bar(names, acc, yerr=err, capsize=6, color=["tab:blue", "tab:orange"][: len(wm)])
        ax.axhline(0.5, color="k", ls="--", lw=1, label="chance")
        ax.set_ylim(0, 1)
        ax.set_ylabel("watermark accuracy (95% CI)")
        ax.legend()
        made.append(_save(fig, out / "watermark.png"))
    return made


def write(rep: VerifyReport, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "verify.json", "markdown": out / "verify.md"}
    paths["json"].write_text(json.dumps(rep.as_dict(), indent=2, default=float))
    paths["markdown"].write_text(markdown(rep))
    for p in plots(rep, out):
        paths[p.stem] = p
    return paths
