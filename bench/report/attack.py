"""Sections of docs/results.md: stealing the victim and the defence trade-off."""

from __future__ import annotations

from bench.report.common import load, md_table, pct, src

LOSSES = {"mse": "MSE", "infonce": "InfoNCE", "softnn": "SoftNN", "wasserstein": "Wasserstein", "barlow": "Barlow Twins",
          "simsiam": "SimSiam", "supcon": "SupCon (uses the attack split's labels)"}


def stealing() -> str:
    a, s = load("attack/attack_table"), load("attack/attack_table_shifted")
    small, big = sorted({r["queries"] for r in a["rows"]})[:2]
    by = {(r["loss"], r["queries"]): r for r in a["rows"]}
    order = [x for x in a["config"]["losses"].split(",") if x != "supcon"] + ["supcon"]
    fair = [x for x in order if x != "supcon"]
    best = {n: max(fair, key=lambda x, n=n: by[(x, n)]["probe_shape"]) for n in (small, big)}

    def b(text: str, loss: str, n: int) -> str:
        return f"**{text}**" if best[n] == loss else text

    rows = [[LOSSES.get(x, x), b(pct(by[(x, small)]["probe_shape"]), x, small), f"{by[(x, small)]['ratio']:.2f}",
             b(pct(by[(x, big)]["probe_shape"]), x, big), pct(by[(x, big)]["probe_pattern"]),
             pct(by[(x, big)]["probe_shape_shifted"]), f"{by[(x, big)]['ratio']:.2f}"] for x in order]
    priv = a["victim_private_images"]
    close = [x for x in fair if by[(x, big)]["ratio"] >= 0.9]
    lag = [x for x in fair if by[(x, big)]["ratio"] < 0.9]
    sby = {(r["loss"], r["queries"]): r for r in s["rows"]}
    slosses = s["config"]["losses"].split(",")
    srows = [[LOSSES.get(x, x), pct(sby[(x, small)]["probe_shape"]), pct(sby[(x, big)]["probe_shape"]),
              f"{sby[(x, big)]['ratio']:.2f}", pct(sby[(x, big)]["probe_shape_shifted"])] for x in slosses]
    gap = [100 * (by[(x, big)]["probe_shape"] - sby[(x, big)]["probe_shape"]) for x in slosses]
    return f"""## Stealing the undefended victim

`{a["command"]}` ({src("attack/attack_table.json")}, table and plot beside it) starts the victim
API on tier `unlimited` and buys the first N images of the `attack` split over HTTP, through a
durable cache (each image bought once, shared by all losses, as an attacker would). It then
trains a ResNet18 at width {a["config"]["width"]} for {a["config"]["epochs"]} epochs by direct
extraction with each loss, linear-probes the copy, and saves it as `runs/stolen-<loss>-<N>` (the
defender's zoo). The victim's quality is measured the way a customer would: a probe on the API's
answers (**{pct(a["victim_api"]["probe_shape"])}** on `shape`). Ratios are stolen / victim on `shape`,
from one run each (seed 0).

{md_table(["loss", f"`shape`, {small:,} queries ({pct(small / priv, 0)} of the victim's {priv:,} training images)",
           "ratio", f"`shape`, {big:,} queries ({pct(big / priv, 0)})", "`pattern`", "`shape`, shifted", "ratio"], rows)}

Queries amounting to {pct(big / priv, 0)} of the victim's training set are enough to match it:
{", ".join(LOSSES[x] for x in close)} reach a ratio of at least {min(by[(x, big)]["ratio"] for x in close):.2f}
at {big:,} queries, and {LOSSES[best[small]]} is the best loss at the small budget.
{" and ".join(LOSSES[x] for x in lag)} lag at this training length. SupCon is not comparable: it
trains on the `shape` labels of the attacker's own images (a supervised thief), which is why it
beats the victim on `shape` and loses on `pattern`.

**Query domain.** `{s["command"]}` ({src("attack/attack_table_shifted.json")}) steals with
sketch-domain images only:

{md_table(["loss", f"`shape`, {small:,} sketches", f"`shape`, {big:,} sketches", f"ratio at {big:,}",
           f"`shape` on sketches at {big:,}"], srows)}

Off-domain queries still steal most of the encoder. The copies match the victim on the domain they
were queried with, but stay {min(gap):.0f}-{max(gap):.0f} points behind in-domain queries on
photos."""


POLICY_NAMES = {"none": "none", "noise": "keyed Gaussian noise", "similar": "similar-query (head space)",
                "b4b": "**B4B** (coverage-priced noise + per-account affine map)", "pow": "calibrated PoW",
                "all": "all four (B4B first)"}


def tradeoff() -> str:
    t = load("attack/tradeoff")
    rows = []
    by = {r["label"]: r for r in t["rows"]}
    for r in t["rows"]:
        plain = r["attack"] == "plain"
        name = POLICY_NAMES.get(r["label"], r["label"]) if plain else POLICY_NAMES.get(r["policy"], r["policy"])
        rows.append([name, "plain" if plain else r["label"], pct(r["legit"]) if plain else "",
                     f"{r['legit_drop']:.1f}" if plain and r["label"] != "none" else "", pct(r["stolen"]),
                     f"{r['stolen_drop']:.1f}" if r["label"] != "none" else "", f"{r['attacker_cost'].get('pow_hashes', 0):,}"])
    none, b4b, pow_, noise = by["none"], by["b4b"], by["pow"], by["noise"]
    thief = b4b["thief_defences"][0]
    syb = by.get("sybils x4")
    avg = by.get("averaging x4")
    sy_cov = [d["coverage"] for d in syb["thief_defences"]] if syb else []
    cmds = " and then ".join(f"`{c}`" for c in t["commands"])
    out = f"""## Defence trade-off: the customer's accuracy vs the thief's

{cmds} ({src("attack/tradeoff.json")}, table and plot beside it; rows from the first command are
kept by `--update`). One victim API hosts one tier per policy (`testbed/policies.py`). Per policy,
a fresh **customer** account runs a narrow task: {none["legit_cost"]["task"]["classes"]} shape classes,
{none["legit_cost"]["task"]["images"]:,} images of the `{none["legit_cost"]["task"]["split"]}` split, embeddings bought over
HTTP, a linear probe trained on two thirds and tested on the rest. A fresh **thief** account runs
`heist-attack steal` ({t["config"]["loss"].upper() if t["config"]["loss"] == "mse" else t["config"]["loss"]},
{t["config"]["queries"]:,} `attack` images, {t["config"]["epochs"]} epochs), and its copy is
linear-probed on the 10-class `shape` task. Noise levels are relative to the victim's mean
per-dimension standard deviation ({t["scale"]:.2f}).

{md_table(["policy", "attack", "customer", "customer drop", "stolen `shape`", "stolen drop", "thief's PoW hashes"], rows)}

{t["verdict"][0].upper() + t["verdict"][1:]}. Under B4B the thief's copy falls from {pct(none["stolen"])} to
{pct(b4b["stolen"])} (chance is 10%) while the customer's accuracy moves by {-b4b["legit_drop"]:+.1f}
points (one test image is 0.25 points). The thief's coverage of the SimHash buckets outgrows the
legitimate envelope recorded by `python -m testbed.profile`: its early answers, inside the
envelope, are clean, and at its final coverage of {thief["coverage"]:.3f} the noise reaches sigma
{thief["sigma"]:.0f} (from the admin view stored in the JSON). Noisy targets of that size ruin the MSE
regression entirely.

What the other rows say:
- **Noise** costs the customer more ({noise["legit_drop"]:.1f} points) than the thief
  ({noise["stolen_drop"]:.1f}).
- **Similar-query** perturbation hurts the thief badly ({by["similar"]["stolen_drop"]:.1f} points), but it
  also hits an honest narrow customer's distinct images, costing {by["similar"]["legit_drop"]:.1f} points.
- **PoW** leaves every answer intact: its effect is the thief's cost,
  {pow_["attacker_cost"]["pow_hashes"]:,} hashes against {pow_["legit_cost"]["pow_hashes"]} for the customer. The bits
  are scaled down to this testbed's Python solver; real deployments use 20-28 bits
  (`python -m bench.pow_cost`)."""
    if syb:
        out += f"""
- **Sybils** keep each account under the envelope (coverage {min(sy_cov):.2f}-{max(sy_cov):.2f} each)
  and recover part of what B4B took: {pct(syb["stolen"])}. The per-account affine maps are undone by
  the mapper, imperfectly with {syb["attacker_cost"]["anchors"]} anchors."""
    if avg:
        out += f"""
- **Averaging** gains nothing against keyed noise ({pct(avg["stolen"])} vs {pct(noise["stolen"])})."""
    if "avoid-similar" in by:
        out += """
- **Avoiding near-duplicate thumbnails** does not help against head-space detection on distinct
  images."""
    return out


