"""Sections of docs/results.md: the model zoo, dataset inference's null, earlier runs."""

from __future__ import annotations

import re

from bench.report.attack import LOSSES
from bench.report.common import load, md_table, pct, pv, src


def _label(name: str) -> str:
    m = re.fullmatch(r"stolen-(\w+)-(\d+)", name)
    if m:
        return f"{LOSSES.get(m[1], m[1]).split(' (')[0]}, {int(m[2]):,} queries"
    return "victim" if name == "victim" else f"independent, `{name.removeprefix('independent-')}`"


def zoo_table(z: dict) -> str:
    rows = {r["name"]: r for r in z["rows"]}
    out = []
    for r in z["rows"]:
        if r.get("obfuscation"):
            continue
        pair = [r, rows.get(f"{r['name']}+affine", r)]

        def both(f, pair=pair) -> str:
            return " / ".join(f(x) for x in pair)

        def wm(x: dict) -> str:
            return pct(x["watermark_aligned"]["value"])

        def al_p(x: dict) -> str:
            return pv(x["dataset_inference_aligned"]["p"])

        def al_p0(x: dict) -> str:
            return pv(x["dataset_inference_aligned"]["zero_effect"][1])

        def di_p(x: dict) -> str:
            return pv(x["dataset_inference"]["p"])

        def di_t0(x: dict) -> str:
            return f"{x['dataset_inference']['zero_effect'][0]:+.1f}"

        def mi(x: dict) -> str:
            return f"{x['similarity']['value']:.2f}"

        out.append([_label(r["name"]), both(wm), f"**{both(al_p)}** ({both(al_p0)})", f"{both(di_p)} ({both(di_t0)})",
                    both(mi), both(lambda x: x["overall"])])
    return md_table(["suspect (plain / affine)", "aligned watermark", "**aligned DI p** (no-effect p)",
                     "DI p (no-effect t)", "MI (norm.)", "overall"], out)


def _zoo_facts(z: dict) -> dict:
    copies = [r for r in z["rows"] if r["truth"] == "stolen"]
    indep = [r for r in z["rows"] if r["truth"] == "independent"]
    wrong = [r["name"] for r in z["rows"] if r["overall"] != r["truth"]]
    return {"copies": copies, "indep": indep, "wrong": wrong,
            "copy_al": max(r["dataset_inference_aligned"]["p"] for r in copies),
            "ind_al": min(r["dataset_inference_aligned"]["p"] for r in indep),
            "ind_plain": min(r["dataset_inference"]["p"] for r in indep),
            "plain_missed": [r["name"] for r in copies if r["dataset_inference"]["p"] >= z["config"]["alpha"]]}


def zoo() -> str:
    z1, z2 = load("defender/zoo_di12"), load("defender/zoo_di12b")
    margin = next(r["dataset_inference"]["margin"] for r in z1["rows"] if r["dataset_inference"].get("margin"))
    f1, f2 = _zoo_facts(z1), _zoo_facts(z2)
    alpha = z1["config"]["alpha"]

    def verdict(f: dict, n: int) -> str:
        if not f["wrong"]:
            return f"The overall verdict is right on all {n} rows."
        return (f"The overall verdict is right on {n - len(f['wrong'])} of {n} rows; wrong: "
                + ", ".join(f"`{w}`" for w in f["wrong"]) + ".")

    def missed(f: dict) -> str:
        if not f["plain_missed"]:
            return "Plain DI with the margin flags every copy as well."
        them = "it" if len(f["plain_missed"]) == 1 else "them"
        return ("Plain DI with the margin misses " + " and ".join(f"`{w}`" for w in f["plain_missed"])
                + f"; its zero-effect test flags {them}.")

    return f"""## Ownership: the model zoo

Dataset inference needs a victim whose answers tell its own training images from other images.
The default victim sees 20,000 images 10 times and generalises, so the defender's zoo uses a victim
that sees a small private set many times: 500 images for 1,200 epochs (`runs/di12/victim`).

```
python -m heist_server_train_placeholder
```

Dataset inference scores the 500 private images in two cross-fitted parts of 250 against 4,000
`test` images. It learns its side (members *less* likely) and its GMM size on the victim alone.

**Dataset inference against a smallest effect of interest** (`--di-margin {margin["di_margin"]}`). The
paper's test asks whether members and public images differ at all, so every encoder that never saw
the private set has a 5% chance of p < 0.05, however strong the test. With a margin the null is
"the suspect's standardised member/public gap is at most {margin["di_margin"]} x the victim's own gap
on the same rows". The victim's gap is measured locally, at no query cost: d = {margin["victim_effect"]:.3f},
so the null is d <= {margin["min_effect"]:.3f}. Every p-value is at least the zero-effect one, and the
report keeps both ([docs/defender.md](defender.md)). The rule (rho = {margin["di_margin"]}, the victim
rule and the bar: aligned DI decides at alpha {alpha}) was fixed before any zoo suspect was tested.

**Round 1** ({src("defender/zoo_di12.json")}, table and plot beside it). Truth: the victim and its
copies are "stolen", the rest "independent". Cells are plain / affine-obfuscated. Bold: the
registered bar.

{zoo_table(z1)}

- **Independents ({len(f1["indep"])} rows):** every aligned DI p is >= {pv(f1["ind_al"])} and every
  plain DI p >= {pv(f1["ind_plain"])}.
- **The victim and its copies ({len(f1["copies"])} rows):** aligned DI p <= {pv(f1["copy_al"])}. {missed(f1)}
- {verdict(f1, len(z1["rows"]))}

**Round 2, confirmatory** ({src("defender/zoo_di12b.json")}): registered after round 1 and before any
of its suspects existed. The DI of record is `dataset_inference_aligned` with rho = {margin["di_margin"]}.
The suspects are new copies, bought with other query images (data seed 3's attack split) and
training seed 1, and four new negatives.

{zoo_table(z2)}

- **The registered bar:** every copy's aligned DI p is <= {pv(f2["copy_al"])} ({len(f2["copies"])} rows);
  every independent's is >= {pv(f2["ind_al"])} ({len(f2["indep"])} rows).
- {missed(f2)}
- {verdict(f2, len(z2["rows"]))}
- **The raw watermark decides only in the victim's coordinates.** The victim's rotation predictor,
  applied to a foreign (affine-mapped) space, reads whatever its decision function makes of someone
  else's features. The mean cosine of row-standardised answers to the public queries must reach
  {z1["config"]["wm_raw_min_cosine"]}; elsewhere the row is n/a and the aligned watermark decides
  (`raw_cosine` of each watermark row in the JSON)."""


def _null_counts(d: dict) -> dict:
    never = [s for s in d["suspects"] if not re.search(r"/(victim|stolen-)", s["suspect"])]
    margin = bool(d.get("min_effect"))
    out = {"never": len(never), "tests": sum(len(s["p"]) - 1 for s in never), "margin": margin}
    for key, field in (("m", "p"), ("z", "p_zero_effect" if margin else "p")):
        ps = [p for s in never for p in s[field][1:]]
        out[key] = (sum(p < 0.05 for p in ps), sum(p < 0.01 for p in ps))
    return out


def di_null() -> str:
    rows, level = [], []
    for name in ("defender/di_null_di12", "defender/di_null_di12_aligned"):
        d, c = load(name), _null_counts(load(name))
        kind = "aligned" if d["args"].get("aligned") else "plain"
        rows.append([f"`results/{name}.json`", kind, d["args"]["pools"], c["never"],
                     f"{c['m'][0]} / {c['m'][1]} of {c['tests']}", f"{c['z'][0]} / {c['z'][1]} of {c['tests']}"])
        level.append(f"{pct(c['m'][0] / c['tests'])} with the margin and {pct(c['z'][0] / c['tests'])} "
                     f"with the zero-effect test on {kind} DI")
    d = load("defender/di_null_di12")
    private = {s["suspect"]: s["p"][0] for s in d["suspects"] if re.search(r"/(victim|stolen-)", s["suspect"])}
    return f"""**The margin's null on unseen data.** `python -m bench.di_null` runs the same test on
{d["args"]["pools"]} disjoint pools of 500 `{d["args"]["public_split"]}` images nobody trained on, beside the private set:

```
python -m bench.di_null --victim runs/di12/victim --suspects runs/di12/victim \\
    runs/di12/stolen-softnn-4000 runs/di12/stolen-mse-10000 runs/di12/independent-* \\
    runs/di12b/independent-* --pools 30 --di-margin 0.1 --out di_null_di12 [--aligned --out di_null_di12_aligned]
```

{md_table(["file", "DI", "pools", "encoders that never saw the private set",
           "their pool tests below 0.05 / 0.01, margin", "zero-effect test"], rows)}

Against a nominal 5%, the share of their pool tests below 0.05 is {"; ".join(level)}.
The victim and the copies carry their signal on the private set only (plain DI):
{", ".join(f"`{k}` p = {pv(v)}" for k, v in private.items())}."""


def _of(k: int, n: int) -> str:
    return f"{k} of {n}" if n else "-"




def earlier() -> str:
    rows = []
    for name in ("defender/zoo_di12", "defender/zoo_di12b", *(f"defender/earlier/{n}" for n in
                 ("zoo", "zoo_di", "zoo_di2_pilot", "zoo_di2_fidelity", "zoo_di5", "zoo_di5_panel", "zoo_di5_sketchref"))):
        z = load(name)
        c = z["confusion"]["overall"]
        v = next(r for r in z["rows"] if r["name"] == "victim")["dataset_inference"]
        t = (v.get("zero_effect") or [None])[0]
        t = v["value"] if t is None else t
        rows.append([f"`results/{name}.json`", len(z["rows"]), f"{t:.2f}", _of(c["stolen"]["stolen"], sum(c["stolen"].values())),
                     _of(c["independent"]["independent"], sum(c["independent"].values()))])
    nulls = []
    for name in ("di_null", "di_null_30", "di_null_attack", "di_null_trainlate", "di_null_panel"):
        d, c = load(f"defender/earlier/{name}"), _null_counts(load(f"defender/earlier/{name}"))
        nulls.append([f"`results/defender/earlier/{name}.json`", d["args"].get("public_split", "test"), d["args"]["pools"],
                      c["never"], f"{c['z'][0]} of {c['tests']} ({pct(c['z'][0] / c['tests'])})"])
    return f"""**Earlier zoos.** Each zoo JSON keeps its confusion table; the ones under
`results/defender/earlier/` come from smaller victims or earlier versions of the checks and data
([docs/defender.md](defender.md) explains what each one showed). The victim's DI t is its
zero-effect t where the run stored one.

{md_table(["zoo", "rows", "victim's DI t", "copies called stolen", "independents called independent"], rows)}

Empirical nulls of the zero-effect test on the `runs/di5` victim (`python -m bench.di_null` with
each public sample):

{md_table(["file", "public split", "pools", "encoders that never saw the private set", "pool tests below 0.05"], nulls)}"""


