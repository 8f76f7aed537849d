"""bench.owm_design on the shipped victim at toy sizes: one row per design with the customers' paired
drops, the copy's z and the share of the planted shift it carries; a rerun resumes from the work folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import owm_design

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--victim", str(REPO / "assets" / "victim-cpu"), "--customers", "2", "--queries", "256", "--epochs", "1",
        "--align-n", "300", "--decoys", "100", "--threads", "1", "--designs", "isotropic:0.3", "principal:0.3:even"]


@pytest.mark.slow
def test_owm_design_rows_and_resume(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HEIST_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("HEIST_SERVER_SECRET", "owm-design-test-secret-0123")
    args = [*ARGS, "--work", str(tmp_path / "work"), "--out", "design"]
    assert owm_design.main(args) == 0
    out = json.loads((tmp_path / "results" / "defender" / "design.json").read_text())
    rows = {r["design"]: r for r in out["rows"]}
    assert list(rows) == ["isotropic-0.3", "principal-0.3-even"]
    for r in rows.values():
        assert len(r["customer_drops"]) == 2 and len(r["clean_accuracy"]) == 2
        assert r["planted"] > 0.05  # the marked answers carry the shift the check reads
        assert 0 < r["marked_share"] < 0.6 and r["p"] is not None
    assert rows["isotropic-0.3"]["clean_accuracy"] == rows["principal-0.3-even"]["clean_accuracy"]  # paired: same customers
    assert (tmp_path / "results" / "defender" / "design.png").is_file()
    saved = (tmp_path / "work" / "principal-0.3-even.json").read_text()
    assert owm_design.main(args) == 0  # resumes: nothing recomputed
    assert (tmp_path / "work" / "principal-0.3-even.json").read_text() == saved


def test_design_parser_refuses_unknown_spaces_and_strengths():
    assert owm_design.parse_design("principal:0.15") == ("principal", 0.15, "spread")
    assert owm_design.parse_design("isotropic:0.2:even") == ("isotropic", 0.2, "even")
    for bad in ("diagonal:0.2", "isotropic", "isotropic:0", "isotropic:x", "isotropic:1.5", "isotropic:0.2:odd",
                "isotropic:0.2:even:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            owm_design.parse_design(bad)
