"""Sections of docs/results.md: the model zoo, dataset inference's null, earlier runs."""

from __future__ import annotations

import json
import re

from bench.report.attack import LOSSES
from bench.report.common import REPO, load, md_table, pct, pv, results_dir, src


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




def _owm_label(r: dict) -> str:
    m = re.fullmatch(r"(stolen|unmarked)-(\w+)-(\d+)(?:-(cse-oracle|cse|spa))?", r["name"])
    if m:
        what = "copy of the marked API" if m[1] == "stolen" else "copy of the unmarked tier"
        attack = {None: "", "cse": ", CSE removal", "cse-oracle": ", CSE removal (victim as reference)",
                  "spa": ", SPA removal"}[m[4]]
        return f"{what}: {LOSSES.get(m[2], m[2]).split(' (')[0]}, {int(m[3]):,} queries{attack}"
    if r["truth"] == "victim":
        return "the victim's own weights (unmarked)"
    return f"independent, `{r['name'].removeprefix('independent-')}`"


def se(xs: list[float]) -> str:
    """' ± the standard error' of a mean, or nothing for fewer than 2 values."""
    if len(xs) < 2:
        return ""
    m = sum(xs) / len(xs)
    return f" ± {(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) ** 0.5:.2f}"


def _owm_statistic(verify_config: dict) -> str:
    """How a run's check read the shift along the targets (a file without ``owm_shrink`` used the plain
    projection, one without ``owm_fit`` the map fitted outside the regions)."""
    shrink = verify_config.get("owm_shrink", 1.0)
    read = "plain projection" if shrink >= 1 else f"GLS (shrink {shrink:g})"
    return f"{read}, {verify_config.get('owm_fit', 'outside')} fit"


def _owm_strengths() -> tuple[list[list[str]], list[str]]:
    """One row per output-watermark run (results/defender/owm*.json): its strength, how the copies stolen
    with 4,000 or more queries fared, and what customers lost."""
    rows, names = [], []
    for path in sorted(results_dir().glob("defender/owm*.json")):
        if path.stem.startswith("owm_design"):  # bench.owm_design's files: _owm_designs() renders them
            continue
        name = f"defender/{path.stem}"
        d = load(name)
        big = [r for r in d["rows"] if r["truth"] == "stolen" and r.get("removal") == "none"
               and int(re.search(r"-(\d+)$", r["name"])[1]) >= 4000]
        narrow = d["customers"]["narrow_drop_points"]
        main = d["customers"]["main_task_drop_points"]
        task = next(iter(main))
        rows.append([f"{d['key']['strength']:g}", d["key"].get("region_space", "isotropic"),
                     d["key"].get("target_weighting", "spread"), str(d["key"]["directions"]),
                     f"{d['key']['rate']:g}", f"{d['key'].get('full_share', 0.5):g}",
                     f"{sum(r['p'] < 1e-6 for r in big)} of {len(big)}", f"{min(r['z'] for r in big):.1f}" if big else "-",
                     f"{max(r['p'] for r in big):.1e}" if big else "-",
                     f"{sum(narrow) / len(narrow):+.2f}{se(narrow)} ({len(narrow)} customers)", f"{main[task]:+.2f}",
                     _owm_statistic(d["verify_config"]), f"`results/{name}.json`"])
        names.append(name)
    return rows, names


def _owm_removals() -> list[list[str]]:
    """The removal attacks of every output-watermark run other than the main one (results/defender/owm_s*.json)."""
    rows = []
    for path in sorted(results_dir().glob("defender/owm_s*.json")):
        d = load(f"defender/{path.stem}")
        key = f"{d['key']['strength']:g}, {d['key'].get('target_weighting', 'spread')} targets, {_owm_statistic(d['verify_config'])}"
        rows += [[key, LOSSES.get(r["loss"], r["loss"]).split(" (")[0], r["attack"], f"{r['z_plain']:.1f}", pv(r["p_plain"]),
                  pv(r["p_worst_obfuscated"]), pct(r["thief_probe"]) if r["thief_probe"] is not None else "",
                  "-" if r["attack"] == "none" else f"{r['probe_cost_points']:+.1f}", f"`results/defender/{path.stem}.json`"]
                 for r in d["removal"] if r["attack"] != "none"]
    return rows


def _owm_removal_text() -> str:
    rows = _owm_removals()
    if not rows:
        return ""
    return f"""
The removal attacks against the other runs that include them (the probe cost against the thief's plain
copy of the same loss and budget in that run):

{md_table(["run (strength, targets, statistic)", "loss", "attack", "z (plain)", "p (plain)", "largest p, obfuscated",
           "thief's probe", "probe cost (points)", "source"], rows)}
"""


def _owm_designs() -> str:
    """The design bench (results/defender/owm_design*.json): what a copy learns against what customers lose."""
    loaded = [(p.stem, load(f"defender/{p.stem}")) for p in sorted(results_dir().glob("defender/owm_design*.json"))]
    stems = [stem for stem, d in loaded if "designs" in d]  # pooled over keys
    runs = [d for _, d in loaded if "designs" in d]
    if not runs:
        return ""
    tab: list[list[str]] = []
    ok: list[tuple[str, str]] = []  # (design, copy's loss) within 0.5 points with every key's copy at p < 1e-6
    for d in runs:
        setting = d["rows"][0]["setting"]
        for g in d["designs"]:
            tab.append([setting["loss"], g["regions"], g["targets"], f"{g['rate']:g}", f"{g['full_share']:g}", f"{g['strength']:g}",
                        pct(g["marked_share"], 0), f"{g['keys']} ({g.get('copies', g['keys'])})",
                        f"{g['customer_drop_mean']:+.2f} ± {g['customer_drop_se']:.2f}",
                        f"{min(g['key_drops']):+.2f} to {max(g['key_drops']):+.2f}", pct(g["learnt"], 0) if g["learnt"] is not None else "-",
                        " / ".join(f"{x:.1f}" for x in g["z"]), pv(g["p_max"]),
                        " / ".join(f"{x:.1f}" for x in g["z_outside"]) if g.get("z_outside") else "-"])
            if g["customer_drop_mean"] <= 0.5 and g["p_max"] < 1e-6:
                ok.append((g["design"], setting["loss"]))
    setting = runs[0]["rows"][0]["setting"]
    # with no design at all the sentence before says it for every loss
    uncovered = [d["rows"][0]["setting"]["loss"] for d in runs if ok and d["rows"][0]["setting"]["loss"] not in {x[1] for x in ok}]
    distinct = setting.get("customers_per_key") == "distinct"
    return f"""**Designs.** Where the regions and targets lie, how many answers are marked, how gently and how strongly decide
both what a copy learns and what customers lose. Per design, {runs[0]["designs"][0]["keys"]} keys of one secret for the
customers' cost and a copy for {runs[0]["designs"][0].get("copies", runs[0]["designs"][0]["keys"])} of them (in brackets);
per key, the customers' drop is paired ({setting["customers"]} narrow tasks{" of that key's own" if distinct else ""} on clean and marked answers) and
a copy ({setting["queries"]:,} bought answers, {setting["epochs"]} epochs; the API's answer is a deterministic function of
the victim's, so the copy trains on exactly what it would buy) is verified on {setting["align_n"]:,} public images.
The drop is the mean over keys and customers, ± the standard error over keys{
" (each key has its own customers, so the keys' means are independent)" if distinct else " (the same customers under every key)"};
"learnt" is the copy's share of the statistic on the marked answers themselves (mean over copies);
the last column reads the same copies with the map fitted outside the key's regions only (`--owm-fit outside`).
"Rate" is the share of inputs each direction marks, "full" the share of those at full strength (the
rest on a linear ramp):

{"".join(f"```{chr(10)}{d['command']}{chr(10)}```{chr(10)}{chr(10)}" for d in runs)}{md_table(["copy's loss", "regions", "targets", "rate", "full", "strength", "answers marked", "keys (copies)",
           "customers' drop (points)", "keys' range", "learnt", "copy z per key", "largest p", "z, map fitted outside"], tab)}

{"Designs that keep customers within 0.5 points on average and flag every key's copy at p < 1e-6: "
 + ", ".join(f"{design} ({loss} copies)" for design, loss in ok) + "."
 if ok else "No design keeps customers within 0.5 points on average and flags every key's copy at p < 1e-6."}{
 "".join(f" No design does so for {loss} copies." for loss in uncovered)} (source: {
 ", ".join(src(f"defender/{stem}.json", f"defender/{stem}.md", f"defender/{stem}.png") for stem in stems)}).

"""


def _level(null: dict) -> str:
    over = [k for k, v in null["rate"].items() if v > float(k) * 1.2]
    if not over:
        return ": the normal tail holds its level."
    return (f": the normal tail is somewhat liberal at {', '.join(over)} (the decoys' distribution has slightly heavier "
            "tails than a normal); each row also holds the exact rank p-value `p_rank`, floored at 1 / (decoys + 1).")


def owm() -> str:
    """The output watermark: copies, independents, removal attacks, the customers' cost, the null's level."""
    try:
        d = load("defender/owm")
    except FileNotFoundError:
        return ""
    key, s, null, cust = d["key"], d["summary"], d["null"], d["customers"]
    alpha = d["verify_config"]["alpha"]
    by: dict[str, list[dict]] = {}
    for r in d["rows"]:
        by.setdefault(r["name"], []).append(r)
    rows = []
    for name, rs in by.items():
        plain = next(r for r in rs if not r["obfuscation"])
        obf = [r for r in rs if r["obfuscation"]]
        probe = d["thief_probes"].get(name)
        rows.append([_owm_label(plain), f"{plain['z']:.1f}", pv(plain["p"]),
                     pv(max(r["p"] for r in obf)) if obf else "-",
                     f"{sum(r['p'] < alpha for r in rs)} of {len(rs)}", pct(probe) if probe is not None else ""])
    removal = [[LOSSES.get(r["loss"], r["loss"]).split(" (")[0], r["attack"], f"{r['z_plain']:.1f}", pv(r["p_plain"]),
                pv(r["p_worst_obfuscated"]), pct(r["thief_probe"]) if r["thief_probe"] is not None else "",
                "-" if r["attack"] == "none" else f"{r['probe_cost_points']:+.1f}", f"{r['removal_queries']:,}"]
               for r in d["removal"]]
    victim = json.loads((REPO / "assets" / "victim-cpu" / "config.json").read_text())["metrics"]
    cse = [r for r in d["removal"] if r["attack"] == "cse"]
    spa = [r for r in d["removal"] if r["attack"] == "spa"]
    sw_cse = [r["mark_left"] for r in d.get("removal_sweep", []) if r["attack"] == "cse"]
    sw_spa = [r["mark_left"] for r in d.get("removal_sweep", []) if r["attack"] == "spa"]
    sweep = [[f"{r['strength']:g}", r["attack"], pct(r["mark_left"], 0), pct(r["marked_dropped"], 0),
              pct(r["unmarked_dropped"], 0), f"{r['unmarked_change']:.2f}"] for r in d.get("removal_sweep", [])]
    narrow = cust["narrow_drop_points"]
    main = cust["main_task_drop_points"]
    return f"""## Ownership: the output watermark

The `output_watermark` defence (`server/defences/output_watermark.py`, math in `shared/output_watermark.py`)
pulls answers for images in {key["directions"]} keyed regions of the victim's representation space (each
about {pct(key["rate"], 0)} of natural images) toward keyed target directions, at strength {key["strength"]}; the key comes from the
server secret and a calibration file (`heist-server watermark-key`). `heist-defend verify --owm-key FILE`
reads it on the suspect's answers to {d["verify_config"]["align_n"]:,} public queries (per key, a linear map from the victim's
principal coordinates to the suspect's answers, {"fitted outside the key's regions, recovers the region images' coordinates"
if d["verify_config"].get("owm_fit", "outside") == "outside" else "fitted on every image jointly with the key's mark weights, maps each direction's shift back"};
the shift along each target is read by {_owm_statistic(d["verify_config"])}), against {d["verify_config"]["owm_decoys"]:,} decoy keys drawn like the true one: the decoys' spread is the null. Copies were stolen over HTTP from a tier with the watermark, controls from a tier
without it; each suspect is verified plain and behind permute, affine and pad-shuffle obfuscation:

```
{d["command"]}
```

{md_table(["suspect", "z (plain)", "p (plain)", "largest p, obfuscated", "flagged at p < " + str(alpha), "thief's probe"], rows)}

- Copies stolen with 4,000 or more queries flagged at p < 1e-6, plain and obfuscated: {s["stolen_plain_ge4000_flagged_1e-6"]}.
- Independent encoders ({s["independent_encoders"]}, all obfuscations counted) flagged at p < 0.01: {s["independents_flagged_0.01"]};
  copies of the unmarked tier: {s["unmarked_copies_flagged_0.01"]}. At most {s["max_queries_per_suspect"]:,} queries per suspect.
- The null on unseen data: {null["tests"]:,} tests (each independent and unmarked copy on {null["pools"]} disjoint pools of
  1,000 public/test images nobody chose, under {null["secrets"]} server secrets) reject at
  {", ".join(f"{pct(v)} at {k}" for k, v in null["rate"].items())} (KS test against uniform: p = {pv(null["ks_uniform_p"])}){_level(null)}
- The customers' cost (both tiers of the same server, over HTTP): narrow 3-class customers lose
  {", ".join(f"{x:+.2f}" for x in narrow)} points (mean {sum(narrow) / len(narrow):+.2f}); the main-task probe on API answers loses
  {", ".join(f"{k.removeprefix('probe_')} {v:+.2f}" for k, v in main.items())} points.

**Removal attacks** (`heist-attack steal --remove-watermark cse|spa`): CSE clusters the bought answers,
selects pairs that are closer than the thief's own encoder says, and projects the selected answers'
principal directions out; SPA buys perturbed copies of every query and drops answers that move unlike
their neighbours. The thief's probe cost is against its plain copy of the same loss and budget:

{md_table(["loss", "attack", "z (plain)", "p (plain)", "largest p, obfuscated", "thief's probe", "probe cost (points)",
           "extra queries"], removal)}

The same attacks on the marked answers to the thief's {d["removal_budget"]:,} queries at several strengths (local: the mark is the API's deterministic function of the victim's answer):
the share of the planted shift toward the targets left on the marked answers, the shares of marked and
unmarked answers SPA drops, and how far CSE moves the unmarked answers (median distance, relative to
their distance from the mean answer; 1 means they are replaced wholesale):

{md_table(["strength", "attack", "mark left", "marked dropped", "unmarked dropped", "unmarked change"], sweep)}

CSE beats the watermark: no CSE copy is flagged (smallest p {pv(min(r["p_plain"] for r in cse))}), but only by replacing the answers
wholesale: its copies fall to {", ".join(pct(r["thief_probe"]) for r in cse)} on `shape`, against {pct(victim["probe_shape"])} for the victim and
{pct(victim["random_probe_shape"])} for a random init of its architecture. The targets lie in the victim's principal subspace, where
CSE cannot tell them from the directions that carry the answers' content; in the sweep it leaves at most
{pct(max(sw_cse), 0)} of the mark at any strength from {min(r["strength"] for r in d["removal_sweep"]):g} to {max(r["strength"] for r in d["removal_sweep"]):g}, and
never stops working at those strengths, at the same cost. SPA does not beat it: its copies stay flagged
(largest p {pv(max(r["p_plain"] for r in spa))}) and the sweep leaves {pct(min(sw_spa), 0)} to {pct(max(sw_spa), 0)} of the mark, because half of each
region is at full weight and moves no more than its neighbours.

**Strength.** Each run of `bench.owm` at its strength (`--strength S --work runs/owm-sS --out owm_sS`
for the extra ones, same victim, directions and rate, a key of its own secret): the copies stolen with
4,000 or more queries (plain and obfuscated rows) and the customers' mean cost:

{md_table(["strength", "regions", "targets", "directions", "rate", "at full strength", "copies >= 4,000 queries at p < 1e-6", "smallest z", "largest p",
           "narrow customers' drop (points)", "main-task drop (points)", "statistic", "source"], _owm_strengths()[0])}
{_owm_removal_text()}
{_owm_designs()}Source: {src("defender/owm.json", "defender/owm.md", "defender/owm.png")}."""
