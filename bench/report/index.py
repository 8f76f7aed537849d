"""results/README.md: every file in results/, by area, with the command behind it."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
from pathlib import Path

from bench.report.common import GENERATED, _portable, md_table, portable, results_dir

# ---- the index of results/ ------------------------------------------------------------------------

# (pattern relative to results/, what the file holds, the bench that writes it)
INDEX: list[tuple[str, str, str]] = [
    ("serving/api_throughput.json", "API vs in-process images/s, p50/p99, server CPU per concurrency", "bench.api_throughput"),
    ("serving/api_throughput_httpx.json", "the same with the httpx load client", "bench.api_throughput"),
    ("serving/api_throughput_workers2.json", "the same served by --workers 2 on a private Redis", "bench.api_throughput"),
    ("serving/api_throughput_cuda.json", "the same on a GPU, with every defence on too (scripts/gpu_bench.sh)",
     "bench.api_throughput"),
    ("serving/defence_overhead.json", "each defence tier's throughput as a share of the undefended one", "bench.defence_overhead"),
    ("serving/defence_overhead.txt", "console output of that run", "bench.defence_overhead"),
    ("serving/faiss_lookup.json", "FAISS flat vs IVF search time and recall vs history size", "bench.faiss_lookup"),
    ("serving/gil_contention.json", "forward pass next to a GIL-busy thread, per-op vs fused", "bench.gil_contention"),
    ("serving/jpeg_decode_*.json", "JPEG decode + resize: the device decoder (torchvision; nvJPEG on CUDA) vs Pillow per image size",
     "bench.jpeg_decode"),
    ("serving/page_faults.json", "page faults of the serving forward, glibc's default malloc vs freed memory kept", "bench.page_faults"),
    ("serving/import_time.json", "start-up import time per module, as a ratio to import torch", "bench.import_time"),
    ("serving/pow_cost.json", "PoW verify cost, solver hash rate, calibrated cost on recorded workloads", "bench.pow_cost"),
    ("serving/pow_cost.txt", "console output of that run", "bench.pow_cost"),
    ("attack/attack_table.json", "stealing table: losses x query budgets against the undefended victim", "bench.attack_table"),
    ("attack/attack_table.md", "its table", "bench.attack_table"),
    ("attack/attack_accuracy_vs_queries.png", "its plot", "bench.attack_table"),
    ("attack/attack_table_shifted.json", "the stealing table with sketch-domain queries", "bench.attack_table"),
    ("attack/attack_table_shifted.md", "its table", "bench.attack_table"),
    ("attack/attack_accuracy_vs_queries_shifted.png", "its plot", "bench.attack_table"),
    ("attack/attack_table_mnist5k.json", "the stealing table on the real-digit victim (assets/victim-cpu-mnist5k)",
     "bench.attack_table"),
    ("attack/attack_table_mnist5k.md", "its table", "bench.attack_table"),
    ("attack/attack_accuracy_vs_queries_mnist5k.png", "its plot", "bench.attack_table"),
    ("attack/attack_table_gpu_r18.json", "the stealing table at width 64 against the gpu-r18 victim "
     "(scripts/gpu_train.sh --steal)", "bench.attack_table"),
    ("attack/attack_averaging.json", "query averaging vs keyed and fresh noise", "bench.attack_averaging"),
    ("attack/attack_averaging.md", "its table", "bench.attack_averaging"),
    ("attack/coverage_curve.json", "B4B SimHash coverage of attacker vs legitimate streams", "bench.coverage_curve"),
    ("attack/coverage_curve.png", "its plot", "bench.coverage_curve"),
    ("attack/tradeoff.json", "customer vs thief accuracy and costs per defence policy, adaptive attacks", "bench.tradeoff"),
    ("attack/tradeoff.md", "its table", "bench.tradeoff"),
    ("attack/tradeoff.png", "its plot", "bench.tradeoff"),
    ("attack/tradeoff_thieves.json", "the same policies against sketch-domain and real-digit thieves, with a broad customer",
     "bench.tradeoff"),
    ("attack/tradeoff_thieves.md", "its table", "bench.tradeoff"),
    ("attack/tradeoff_thieves.png", "its plot", "bench.tradeoff"),
    ("attack/tradeoff_mnist5k.json", "the trade-off on the real-digit victim: in-distribution, sketch and 8 px digit thieves, "
     "narrow and broad customers", "bench.tradeoff"),
    ("attack/tradeoff_mnist5k.md", "its table", "bench.tradeoff"),
    ("attack/tradeoff_mnist5k.png", "its plot", "bench.tradeoff"),
    ("defender/detection_table.json", "similar-query detection FPR / FNR per space, metric and tau", "bench.detection_table"),
    ("defender/zoo_di12.json", "model zoo of record, round 1: verdicts and p-values per suspect", "bench.zoo"),
    ("defender/zoo_di12b.json", "model zoo of record, round 2 (confirmatory)", "bench.zoo"),
    ("defender/zoo_mnist5k.json", "model zoo of the real-digit victim: copies and independents, verdicts and p-values",
     "bench.zoo"),
    ("defender/zoo_mnist5k_qlog.json", "the real-digit zoo stolen through a tier with a query log, one account per copy: "
     "query-log inference next to the other checks, and each independent against every account's log", "bench.zoo"),
    ("defender/zoo_mnist5k_ref.json", "the same zoo with the watermarks' chance level measured on two unwatermarked "
     "reference encoders (--wm-reference)", "bench.zoo"),
    ("defender/zoo_*.md", "the zoo's table and confusion", "bench.zoo"),
    ("defender/owm_design.json", "output watermark designs: per region space, target weighting, rate, ramp and strength, "
     "over 3 keys each, the customers' paired probe drop over 40 narrow tasks and a locally stolen MSE copy's z and "
     "learnt share of the mark", "bench.owm_design"),
    ("defender/owm_design_softnn.json", "the same designs and keys with SoftNN copies", "bench.owm_design"),
    ("defender/owm_design*.md", "their tables", "bench.owm_design"),
    ("defender/owm_design*.png", "copy z against customers' drop per design", "bench.owm_design"),
    ("defender/owm*.json", "output watermark (one file per strength): copies through the marked API, independents, "
     "removal attacks, customers' cost and the null's level on unseen pools", "bench.owm"),
    ("defender/owm*.md", "the output watermark's table", "bench.owm"),
    ("defender/owm*.png", "the output watermark's p-values per suspect and the null's QQ plot", "bench.owm"),
    ("defender/zoo_*.png", "the zoo's p-values per suspect", "bench.zoo"),
    ("defender/di_null_di12.json", "dataset inference's null on unseen pools, with the margin", "bench.di_null"),
    ("defender/di_null_di12_aligned.json", "the same for aligned dataset inference", "bench.di_null"),
    ("defender/earlier/zoo*.json", "an earlier model zoo (smaller victim or earlier checks)", "bench.zoo"),
    ("defender/earlier/zoo*.md", "its table and confusion", "bench.zoo"),
    ("defender/earlier/zoo*.png", "its p-values per suspect", "bench.zoo"),
    ("defender/earlier/di_null*.json", "dataset inference's null on the earlier `runs/di5` victim", "bench.di_null"),
    ("reliability/soak.json", "10-minute soak: answers per status, RSS, descriptors and p99 every 10 s", "bench.soak"),
    ("reliability/soak.png", "its plot", "bench.soak"),
    ("cpu/matrix.json", "raw training step per oneDNN instruction-set cap and workaround mode", "bench.cpu_matrix"),
    ("cpu/matrix.md", "its table (README's CPU block reads the JSON)", "bench.cpu_matrix"),
    ("cpu/train_throughput_*_w*.json", "one cell of the CPU matrix", "bench.cpu_matrix"),
    ("cpu/gpu_train_r18.json", "the full gpu-r18 preset's wall time and probes on a GPU (scripts/gpu_train.sh)",
     "scripts/gpu_train.sh"),
    ("cpu/train_throughput.json", "full training step vs raw step on the default path", "bench.train_throughput"),
    ("demo/summary.json", "a `heist-demo` run's summary (README's main-job block)", "heist-demo"),
    ("demo/summary.md", "its table", "heist-demo"),
]

AREA_TEXT = {
    "serving": "The API's speed and the cost of serving with defences",
    "reliability": "Behaviour under failures and load",
    "attack": "Stealing the encoder, and what each defence policy costs the customer and the thief",
    "defender": "Ownership checks on the model zoo, and the similar-query detector",
    "defender/earlier": "Runs kept for reference, superseded by the ones of record in `defender/`",
    "cpu": "Training speed per CPU path",
    "demo": "The main job's summary",
}


def _files() -> list[str]:
    root = results_dir()
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "README.md")
    try:  # leave out what git ignores (caches, logs)
        r = subprocess.run(["git", "check-ignore", "--stdin"], cwd=root, input="\n".join(files), capture_output=True, text=True)
        ignored = set(r.stdout.split("\n")) if r.returncode in (0, 1) else set()
    except OSError:
        ignored = set()
    return [f for f in files if f not in ignored]


def _command(path: str, bench: str) -> str:
    """The command stored with a result (or in the markdown beside it), else the bench's module."""
    root = results_dir()
    json_path = root / Path(path).with_suffix(".json")
    if path.endswith(".json") and json_path.is_file():
        d = _portable(json.loads(json_path.read_text()))
        cmds = d.get("commands") or ([d["command"]] if d.get("command") else [])
        if cmds:
            return " && ".join(f"`{c.strip()}`" for c in cmds)
        md = json_path.with_suffix(".md")
        if md.is_file():
            m = re.search(r"`(?:nice -n \d+ )?(python -m bench\.[^`]+)`", portable(md.read_text()))
            if m:
                return f"`{m[1].strip()}`"
        if isinstance(d.get("args"), dict) and d["args"].get("out"):
            return f"`python -m {bench} ... --out {d['args']['out']}`"
    return f"`python -m {bench}`" if bench.startswith("bench.") else f"`{bench}`"


def index() -> tuple[str, list[str]]:
    by_area: dict[str, list[list[str]]] = {}
    unindexed = []
    for f in _files():
        hit = next((e for e in INDEX if fnmatch.fnmatch(f, e[0])), None)
        if hit is None:
            unindexed.append(f)
            continue
        area = str(Path(f).parent)
        by_area.setdefault(area, []).append([f"`{Path(f).name}`", hit[1], _command(f, hit[2])])
    out = ["# Results", "", GENERATED.replace("results/*.json", "the files in results/"), "",
           "Every file in `results/`, by area, with what produced it. Benches write here through",
           "`bench.harness` (`results/<area>/<name>.json`); [docs/results.md](../docs/results.md) shows the",
           "figures of record. `assets/profiles/` holds the recorded legitimate profile that some benches read.", ""]
    for area in sorted(by_area, key=lambda a: (list(AREA_TEXT).index(a) if a in AREA_TEXT else 99, a)):
        out += [f"## {area}", "", AREA_TEXT.get(area, "") + ".", "", md_table(["file", "what", "produced by"], by_area[area]), ""]
    return "\n".join(out), unindexed


