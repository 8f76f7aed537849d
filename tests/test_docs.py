"""The front page stays a front page: short, generated where it shows results, no links outside the repo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_readme_is_at_most_200_lines():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_readme_generated_blocks_are_up_to_date():
    r = subprocess.run([sys.executable, "scripts/update_readme.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_relative_links_resolve_inside_the_repo():
    bad = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if target.startswith(("http://", "https://")):
                bad.append(f"{doc.name}: external link {target}")
                continue
            path = (doc.parent / target).resolve()
            if not path.is_relative_to(REPO) or not path.exists():
                bad.append(f"{doc.name}: {target}")
    assert not bad, "\n".join(bad)


def test_results_page_and_index_are_generated_from_the_results(tmp_path):
    """docs/results.md and results/README.md match what bench.report renders, whatever the working directory."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HEIST_RESULTS_DIR", None)
    r = subprocess.run([sys.executable, "-m", "bench.report", "--check"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr
    assert "not in the index" not in r.stderr, r.stderr
