"""Section of docs/results.md: the papers' findings on the procedural set and on real digits, side by side.

Every cell is read from results/: the stealing tables (``attack/attack_table*.json``), the defence
trade-offs with their broad customer and off-distribution thieves (``attack/tradeoff*.json``) and
the defender's zoos (``defender/zoo_*.json``). Each finding's verdict ("holds" / "does not hold")
is computed here from those numbers against the paper's claim as RESEARCH.md states it.
"""

from __future__ import annotations

import json

from bench.report.attack import LOSSES as LOSS_NAMES
from bench.report.common import REPO, load, md_table, pct, results_dir, src

BENCHES = {"heist-shapes": "procedural shapes", "mnist5k": "real MNIST digits (mnist5k)"}
STEAL = {"heist-shapes": "attack/attack_table", "mnist5k": "attack/attack_table_mnist5k"}
TRADEOFF = {"heist-shapes": ["attack/tradeoff", "attack/tradeoff_thieves"], "mnist5k": ["attack/tradeoff_mnist5k"]}
ZOO = {"heist-shapes": ["defender/zoo_di12"],
       "mnist5k": ["defender/zoo_mnist5k", "defender/zoo_mnist5k_ref", "defender/zoo_mnist5k_qlog"]}
VICTIMS = {"heist-shapes": "assets/victim-cpu", "mnist5k": "assets/victim-cpu-mnist5k"}  # their reports: random init
LOSSES = ("mse", "infonce", "softnn")
POLICIES = ("none", "noise", "similar", "b4b", "pow", "all")
THIEF_NAMES = {"attack": "in-distribution", "shifted_train": "sketch domain", "heist-shapes:shifted_train": "sketch domain",
               "mnist5k:attack": "real digits", "mnist5k:shifted_train": "other real digits (8 px)"}


def available() -> bool:
    """The section needs the real-data runs; without them the page has no reproduction section."""
    root = results_dir()
    return all((root / f"{n}.json").is_file() for n in (STEAL["mnist5k"], TRADEOFF["mnist5k"][0], ZOO["mnist5k"][0]))


def random_init(bench: str, task: str) -> float:
    """The main-task probe of a random init of the victim's architecture (the shipped victim's own report)."""
    return json.loads((REPO / VICTIMS[bench] / "config.json").read_text())["metrics"][f"random_probe_{task}"]


def _steal_rows() -> tuple[list[list[str]], dict[str, dict]]:
    rows, facts = [], {}
    for bench, name in STEAL.items():
        t = load(name)
        priv = t["victim_private_images"]
        task = t.get("main_task", "shape")
        budgets = sorted({r["queries"] for r in t["rows"]})
        by = {(r["loss"], r["queries"]): r for r in t["rows"]}
        for loss in LOSSES:
            rows.append([BENCHES[bench], LOSS_NAMES[loss],
                         " / ".join(f"{by[(loss, n)]['ratio']:.2f}" if (loss, n) in by else "-" for n in budgets),
                         " / ".join(f"{n:,} ({pct(n / priv, 0)})" for n in budgets)])
        best = {n: max((x for x in LOSSES if (x, n) in by), key=lambda x, n=n: by[(x, n)]["ratio"]) for n in budgets}
        reach = [n for n in budgets if by[(best[n], n)]["ratio"] >= 0.95]
        facts[bench] = {"priv": priv, "task": task, "victim": t["victim_api"][f"probe_{task}"], "budgets": budgets,
                        "best": best, "by": by, "first95": reach[0] if reach else None, "command": t["command"]}
    return rows, facts


def _thief_label(r: dict) -> str:
    return THIEF_NAMES.get(r.get("thief", "attack"), r.get("thief", "attack"))


def _defence_rows() -> tuple[list[list[str]], dict[str, dict]]:
    rows, facts = [], {}
    for bench, names in TRADEOFF.items():
        runs = [load(n) for n in names if (results_dir() / f"{n}.json").is_file()]
        plain = [r for t in runs for r in t["rows"] if r["attack"] == "plain"]
        thieves = list(dict.fromkeys(_thief_label(r) for r in plain))
        cust: dict[str, dict] = {}
        for r in plain:  # per policy, the row that carries the customers' costs (the run with the broad customer first)
            if r.get("legit_cost") and (r["policy"] not in cust or ("broad" in r and "broad" not in cust[r["policy"]])):
                cust[r["policy"]] = r
        f: dict = {"thieves": thieves, "drops": {}, "coverage": {}}
        for pol in POLICIES:
            c = cust.get(pol)
            if c is None:
                continue
            cells = [BENCHES[bench], pol, f"{c['legit_drop']:+.1f}" if pol != "none" else pct(c["legit"]),
                     (f"{c['broad_drop']:+.1f}" if pol != "none" else pct(c["broad"])) if "broad" in c else "-"]
            for th in thieves:
                r = next((x for x in plain if x["policy"] == pol and _thief_label(x) == th), None)
                cells.append("-" if r is None else (pct(r["stolen"]) if pol == "none" else f"{r['stolen_drop']:+.1f}"))
                if r is not None:
                    f["drops"][(pol, th)] = r["stolen_drop"]
                    f.setdefault("stolen", {})[(pol, th)] = r["stolen"]
                    if pol == "b4b":
                        f["coverage"][th] = r["thief_defences"][0].get("coverage", 0.0)
            f["drops"][(pol, "customer")] = c["legit_drop"]
            if "broad" in c:
                f["drops"][(pol, "broad")] = c["broad_drop"]
                if pol == "b4b":
                    f["coverage"]["broad customer"] = (c.get("broad_cost") or {}).get("defence_state", {}).get("coverage")
                    f["coverage"]["narrow customer"] = (c.get("legit_cost") or {}).get("defence_state", {}).get("coverage")
            rows.append(cells)
        f["commands"] = [t["command"] for t in runs]
        f["header_thieves"] = thieves
        facts[bench] = f
    return rows, facts


def _zoo_rows() -> tuple[list[list[str]], dict[str, dict]]:
    rows, facts = [], {}
    for bench, name in [(b, n) for b, ns in ZOO.items() for n in ns if (results_dir() / f"{n}.json").is_file()]:
        z = load(name)
        plain = [r for r in z["rows"] if not r.get("obfuscation")]
        obf = [r for r in z["rows"] if r.get("obfuscation")]
        f = {}
        for label, group in (("plain", plain), ("obfuscated", obf)):
            for truth in ("stolen", "independent"):
                g = [r for r in group if r["truth"] == truth]
                right = sum(r["overall"] == truth for r in g)
                f[(label, truth)] = (right, len(g))
        methods = {}
        for m in ("watermark_aligned", "dataset_inference", "query_log"):
            got = [(r["truth"], (r.get(m) or {}).get("verdict")) for r in z["rows"]]
            methods[m] = (sum(t == v for t, v in got), sum(v in ("stolen", "independent") for _, v in got))
        copies = sum(r["truth"] == "stolen" and r["name"] != "victim" for r in plain)
        indep = sum(r["truth"] == "independent" for r in plain)
        refs = z.get("wm_references") or []
        chance = "references' level" if refs else "50%"
        missed = sorted({r["group"] for r in z["rows"] if r["truth"] == "stolen" and r["overall"] != "stolen"},
                        key=lambda g: (len(g), g))  # plain or obfuscated
        logs = " ; query logs" if z.get("query_log_investigated") else ""
        rows.append([BENCHES[bench], f"{copies} copies, {indep} independents; watermark chance {chance}{logs}",
                     *[f"{f[(lab, t)][0]}/{f[(lab, t)][1]}" for lab in ("plain", "obfuscated") for t in ("stolen", "independent")],
                     *[f"{a}/{b}" if b else "-" for a, b in methods.values()], ", ".join(missed) or "none"])
        facts[bench] = {"copies": copies, "indep": indep, "f": f, "command": z.get("command"), "missed": missed}
    return rows, facts


def _holds(ok: bool) -> str:
    return "holds" if ok else "**does not hold**"


def reproduction() -> str:
    if not available():
        return ""
    srows, sf = _steal_rows()
    drows, df = _defence_rows()
    zrows, zf = _zoo_rows()
    shapes, digits = sf["heist-shapes"], sf["mnist5k"]

    def reach(f: dict) -> str:
        n = f["first95"]
        return (f"{n:,} queries ({pct(n / f['priv'], 0)} of its {f['priv']:,} training images, best loss "
                f"{LOSS_NAMES[f['best'][n]]}, ratio {f['by'][(f['best'][n], n)]['ratio']:.2f})") if n else "no budget measured"

    def fifth(f: dict) -> bool:
        return f["first95"] is not None and f["first95"] <= f["priv"] / 5

    def mse_small_infonce_large(f: dict) -> bool:
        lo, hi = f["budgets"][0], f["budgets"][-1]
        by = f["by"]
        return by[("mse", lo)]["ratio"] >= by[("infonce", lo)]["ratio"] and by[("infonce", hi)]["ratio"] >= by[("mse", hi)]["ratio"]

    thieves_all = list(dict.fromkeys(t for f in df.values() for t in f["header_thieves"]))
    dtable = []
    for r in drows:  # align the thief columns across benchmarks
        bench = next(b for b, n in BENCHES.items() if n == r[0])
        th = df[bench]["header_thieves"]
        dtable.append(r[:4] + [r[4 + th.index(t)] if t in th else "-" for t in thieves_all])

    def b4b_claim(bench: str) -> tuple[bool, str]:
        d = df[bench]["drops"]
        c, t = d.get(("b4b", "customer")), d.get(("b4b", "in-distribution"))
        ok = c is not None and t is not None and c <= 1 and t >= 15
        return ok, f"customer {c:+.1f} points, in-distribution thief {t:+.1f}" if c is not None and t is not None else "not measured"

    def leaks(bench: str) -> list[str]:
        d, s = df[bench]["drops"], df[bench].get("stolen", {})
        rnd = random_init(bench, sf[bench]["task"])
        return [f"{th} thief {d[('b4b', th)]:+.1f} points (its copy {pct(s[('b4b', th)])}; random init {pct(rnd)})"
                for th in df[bench]["header_thieves"] if th != "in-distribution" and ("b4b", th) in d and d[("b4b", th)] < 15]

    def cov(bench: str) -> str:
        c = df[bench]["coverage"]
        return ", ".join(f"{k} {v:.3f}" for k, v in c.items() if v is not None)

    def broad_hit(bench: str) -> str:
        d = df[bench]["drops"]
        return f"{d[('b4b', 'broad')]:+.1f}" if ("b4b", "broad") in d else "not measured"

    def zoo_ok(bench: str) -> bool:
        f = zf[bench]["f"]
        return all(f[(lab, t)][0] == f[(lab, t)][1] for lab in ("plain", "obfuscated") for t in ("stolen", "independent"))

    findings = [
        ["stealing: queries under 1/5 of the victim's training set suffice (ratio >= 0.95)",
         *[f"{_holds(fifth(f))}: {reach(f)}" for f in (shapes, digits)]],
        ["stealing: MSE is better with few queries, InfoNCE with many",
         *[_holds(mse_small_infonce_large(f)) + f" ({f['budgets'][0]:,} vs {f['budgets'][-1]:,} queries)" for f in (shapes, digits)]],
        ["B4B: the customer loses under 1 point, the thief over 15",
         *[f"{_holds(ok)}: {txt}" for ok, txt in (b4b_claim("heist-shapes"), b4b_claim("mnist5k"))]],
        ["B4B: off-distribution thieves are priced like the in-distribution one (a drop of 15 points or more)",
         *[("not measured" if len(df[b]["header_thieves"]) < 2 else _holds(not leaks(b)) + (": " + "; ".join(leaks(b)) if leaks(b) else ""))
           for b in BENCHES]],
        ["B4B: a broad customer is told apart from a thief (coverage at the end; drop)",
         *[f"coverage {cov(b)}; broad customer's drop {broad_hit(b)}" for b in BENCHES]],
        ["ownership: every copy flagged and every independent cleared (overall verdict, plain and obfuscated; "
         "the last zoo of each benchmark)",
         *[_holds(zoo_ok(b)) + (f": copies missed in {', '.join(zf[b]['missed'])}" if zf[b]["missed"] else "")
           + (f"; independents flagged {zf[b]['f'][('plain', 'independent')][1] - zf[b]['f'][('plain', 'independent')][0]}"
              if zf[b]["f"][("plain", "independent")][0] < zf[b]["f"][("plain", "independent")][1] else "")
           for b in BENCHES]],
    ]
    steps = [f"`{shapes['command']}`", f"`{digits['command']}`"]
    for f in df.values():
        steps += [f"`{c}`" for c in f["commands"]]
    steps += [f"`{z['command']}`" if z["command"] else "the model zoo section's commands" for z in zf.values()]
    return f"""## Reproduction: procedural shapes and real digits side by side

The same commands on both benchmarks: the procedural `heist-shapes` victim (`assets/victim-cpu`,
20,000 private images, probe {pct(shapes["victim"])} on `shape` through the API, a random init of the
same architecture {pct(random_init("heist-shapes", shapes["task"]))}; its ownership zoo is the memorising
`runs/di12` victim's) and the real-digit victim `assets/victim-cpu-mnist5k` (2,500 private MNIST
digits, probe {pct(digits["victim"])} on `digit` through the API, random init
{pct(random_init("mnist5k", digits["task"]))}: on digits a random network's features are already good,
so only the distance above that level is the victim's). Sources: {src(*STEAL.values(), *[
    n for ns in (*TRADEOFF.values(), *ZOO.values()) for n in ns if (results_dir() / f"{n}.json").is_file()])}.

**Stealing** (direct extraction, stolen / victim probe on the main task, at each budget; a
budget's share of the victim's private set in brackets):

{md_table(["benchmark", "loss", "ratio per budget", "queries per budget"], srows)}

**Defences** (customer and thief drops in points against the same account kind on the undefended
tier, whose absolute accuracy is the `none` row; the narrow customer has 3 classes, the broad one
every class and the thief's volume):

{md_table(["benchmark", "policy", "narrow customer", "broad customer", *[f"{t} thief" for t in thieves_all]], dtable)}

**Ownership** (overall verdict right / suspects, and per check right / decided over all suspects):

{md_table(["benchmark", "zoo", "copies (and the victim) flagged", "independents cleared", "obfuscated copies flagged",
           "obfuscated independents cleared", "aligned watermark", "dataset inference", "query-log inference",
           "groups with a copy missed"], zrows)}

**Findings** (each verdict computed from the tables above):

{md_table(["claim (RESEARCH.md)", BENCHES["heist-shapes"], BENCHES["mnist5k"]], findings)}

Commands, in order: {"; ".join(steps)}."""
