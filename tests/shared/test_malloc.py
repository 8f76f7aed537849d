"""shared.malloc: freed memory stays in the process, so a loop of forward-sized allocations stops
faulting pages in. Each side runs in a fresh interpreter: mallopt cannot be undone."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from server.batcher import held_input
from tests.support import REPO

LOOP = """
import json, resource, sys
from shared.malloc import retain_freed_memory
# retain: the server's setting; start: glibc's starting thresholds (128 KiB) held fixed, the state its
# dynamic thresholds begin in and, depending on what the process allocated before, stay in
assert retain_freed_memory() if sys.argv[1] == "retain" else retain_freed_memory(128 * 1024)
import numpy as np, torch
from server.batcher import held_input, serving_module
from shared.checkpoint import load_checkpoint
torch.set_num_threads(1)
module = serving_module(load_checkpoint(sys.argv[2]), projections=False)
x, anchor = held_input(np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
with torch.inference_mode():
    for _ in range(3):
        module(x)
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        module(x)
print(json.dumps({"faults_per_forward": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 10}))
"""


def _faults(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", LOOP, mode, str(REPO / "assets" / "victim-cpu")], capture_output=True,
                         text=True, check=True, timeout=120, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])["faults_per_forward"]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_retained_memory_stops_page_faults_in_the_serving_forward():
    """The shipped victim's frozen forward of 64 images, as the server's batcher runs it."""
    default, retained = _faults("start"), _faults("retain")
    assert default > 500, default  # activations mapped afresh: thousands of pages a pass
    assert retained < default / 20, (default, retained)


def test_retain_refuses_a_negative_limit():
    from shared.malloc import retain_freed_memory

    with pytest.raises(ValueError):
        retain_freed_memory(-1)


def test_held_input_shares_memory_and_anchors_the_input():
    import numpy as np

    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    x, anchor = held_input(images)
    assert x.data_ptr() == images.__array_interface__["data"][0]  # no copy
    assert not x.is_inference() and anchor._base is x  # a tracked view: it holds a C++ reference to x
    assert (x.numpy() == images).all()
