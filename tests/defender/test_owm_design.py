"""bench.owm_design on the shipped victim at toy sizes: one row per design and key with the customers'
paired drops (each key its own customers), the copy's z and the share of the planted shift it carries
for the first keys, pooled per design over its keys; a rerun resumes from the work folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from bench import owm_design

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--victim", str(REPO / "assets" / "victim-cpu"), "--customers", "2", "--queries", "256", "--epochs", "1",
        "--align-n", "300", "--decoys", "100", "--threads", "1", "--designs", "isotropic:0.3", "principal:0.3:even:0.1:0.05",
        "--keys", "2", "--cost-keys", "3"]


@pytest.mark.slow
def test_owm_design_rows_and_resume(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HEIST_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("HEIST_SERVER_SECRET", "owm-design-test-secret-0123")
    args = [*ARGS, "--work", str(tmp_path / "work"), "--out", "design"]
    assert owm_design.main(args) == 0
    out = json.loads((tmp_path / "results" / "defender" / "design.json").read_text())
    rows = {(r["design"], r["key"]): r for r in out["rows"]}
    assert list(rows) == [(d, k) for d in ("isotropic-0.3", "principal-0.3-even-r0.1-f0.05") for k in range(3)]
    for (_, k), r in rows.items():
        assert len(r["customer_drops"]) == 2 and len(r["clean_accuracy"]) == 2
        assert r["planted"] > 0.05  # the marked answers carry the shift the check reads
        assert (r["p"] is not None) == (r["z"] is not None) == (r["z_outside"] is not None) == (k < 2)  # copies: first --keys keys
    assert 0 < rows[("isotropic-0.3", 0)]["marked_share"] < 0.5 < rows[("principal-0.3-even-r0.1-f0.05", 0)]["marked_share"]
    for k in range(3):  # every design sees key k's own customers
        assert rows[("isotropic-0.3", k)]["clean_accuracy"] == rows[("principal-0.3-even-r0.1-f0.05", k)]["clean_accuracy"]
    assert rows[("isotropic-0.3", 0)]["customer_drops"] != rows[("isotropic-0.3", 1)]["customer_drops"]  # another key
    pooled = {d["design"]: d for d in out["designs"]}
    iso = pooled["isotropic-0.3"]
    assert (iso["keys"], iso["copies"]) == (3, 2) and iso["z"] == [rows[("isotropic-0.3", k)]["z"] for k in (0, 1)]
    assert iso["customer_drop_mean"] == pytest.approx(np.mean(sum((rows[("isotropic-0.3", k)]["customer_drops"] for k in range(3)), [])),
                                                      abs=1e-3)
    key_means = np.array(iso["key_drops"])
    assert iso["customer_drop_se"] == pytest.approx(key_means.std(ddof=1) / np.sqrt(3), abs=1e-3)
    assert (tmp_path / "results" / "defender" / "design.png").is_file()
    saved = {k: (tmp_path / "work" / f"principal-0.3-even-r0.1-f0.05-key{k}.json").read_text() for k in (1, 2)}
    assert owm_design.main(args) == 0  # resumes: nothing recomputed
    assert {k: (tmp_path / "work" / f"principal-0.3-even-r0.1-f0.05-key{k}.json").read_text() for k in (1, 2)} == saved
    with pytest.raises(SystemExit):
        owm_design.main([*args, "--keys", "4"])  # more copies than cost keys


def test_design_parser_refuses_unknown_spaces_and_strengths():
    assert owm_design.parse_design("principal:0.15") == owm_design.Design("principal", 0.15, "spread", 0.05, 0.5)
    assert owm_design.parse_design("isotropic:0.2:even").name == "isotropic-0.2-even"
    long_ramp = owm_design.parse_design("isotropic:0.2:even:0.1:0.05")
    assert (long_ramp.rate, long_ramp.full_share, long_ramp.name) == (0.1, 0.05, "isotropic-0.2-even-r0.1-f0.05")
    for bad in ("diagonal:0.2", "isotropic", "isotropic:0", "isotropic:x", "isotropic:1.5", "isotropic:0.2:odd",
                "isotropic:0.2:even:1", "isotropic:0.2:even:0.1:0", "isotropic:0.2:even:0.1:0.5:1", "isotropic:0.2:even:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            owm_design.parse_design(bad)
