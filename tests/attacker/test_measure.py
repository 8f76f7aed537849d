"""The steal report: JSON and Markdown written, the accuracy plot drawn."""

from __future__ import annotations

import json


def test_report_json_written(tmp_path):
    from attacker.measure import plot_accuracy, write_report

    j, m = write_report(tmp_path, {"stolen": {"probe_shape": 0.5}, "victim_api": {"probe_shape": 0.55},
                                   "ratio": {"probe_shape": 0.909}, "cost": {"queries": 10}, "command": "x"})
    assert json.loads(j.read_text())["ratio"]["probe_shape"] == 0.909 and "0.909" in m.read_text()
    p = plot_accuracy([{"loss": "mse", "queries": 10, "probe_shape": 0.5}], tmp_path / "p.png", 0.55)
    assert p.stat().st_size > 1000
