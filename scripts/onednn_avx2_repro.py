"""Minimal reproducer: oneDNN's AVX2 1x1 backward-weights kernel corrupts the heap.

Depends on torch only, so it can be attached to an upstream report as it is.

Trigger (all of them together): a 1x1 convolution with stride > 1, a channels_last input with
fewer than 8 channels (2-7; one channel and 8 or more are fine), the weight gradient computed by
oneDNN's ``jit:avx2`` 1x1 backward-weights kernel. That kernel is chosen when oneDNN's ISA is in
the AVX2 family: a CPU with AVX2 but no AVX-512, or ``ONEDNN_MAX_CPU_ISA=AVX2`` / ``AVX2_VNNI`` /
``AVX2_VNNI_2`` on any newer x86-64 CPU. On 1 thread the process aborts (``free(): invalid next
size``, ``double free or corruption``) or segfaults; on 2 threads it usually spins forever in the
GOMP region of ``jit_avx2_1x1_convolution_bwd_weights_t``. ``ONEDNN_MAX_CPU_ISA=AVX``, ``SSE41``
or ``AVX512_CORE`` pick other kernels and give the right gradient. The forward pass and the
backward-data pass are fine. A ResNet at width 4-7 hits it in its first stride-2 shortcut
(``mb32_ic4oc8_ih32oh16kh1sh2``), which is where stealing with InfoNCE crashed.

    python scripts/onednn_avx2_repro.py                       # one case, in this process (crashes when affected)
    python scripts/onednn_avx2_repro.py --sweep               # many shapes, each in a subprocess with a timeout
    ONEDNN_MAX_CPU_ISA=AVX2 python scripts/onednn_avx2_repro.py --sweep   # force the AVX2 path on an AVX-512 CPU

Each case computes the weight gradient once with oneDNN disabled (the reference) and then with
oneDNN, and reports ``ok`` (same gradient), ``wrong`` (a different gradient), ``crash`` (the
signal) or ``hang`` (the timeout). The workaround in the project (``shared/cpu.py``) computes the
same convolution as a stride-1 convolution of the subsampled input, which this kernel handles.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys

CASE_FIELDS = ("in_ch", "out_ch", "kernel", "stride", "batch", "size", "layout", "threads", "method")


def run_case(in_ch: int, out_ch: int, kernel: int, stride: int, batch: int, size: int, layout: str, threads: int,
             method: str = "conv") -> str:
    """Weight gradient of one convolution, oneDNN against the reference; returns ``ok`` or ``wrong ...``.

    ``method`` ``conv`` runs the convolution as it is; ``subsample`` runs the workaround
    (``x[:, :, ::s, ::s]`` then a stride-1 convolution), valid for 1x1 kernels only."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    w = torch.randn(out_ch, in_ch, kernel, kernel, requires_grad=True)
    x = torch.randn(batch, in_ch, size, size)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()

    def weight_grad(how: str) -> torch.Tensor:
        w.grad = None
        if how == "subsample":
            y = F.conv2d(x[:, :, ::stride, ::stride], w)
        else:
            y = F.conv2d(x, w, stride=stride, padding=kernel // 2)
        y.backward(torch.ones_like(y))
        return w.grad.clone()

    with torch.backends.mkldnn.flags(enabled=False):
        ref = weight_grad("conv")
    for _ in range(5):  # the corruption shows on the first call or on the allocator's next frees
        got = weight_grad(method)
    err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
    return "ok" if err < 1e-4 else f"wrong (relative error {err:.2g})"


def sweep_cases() -> list[tuple]:
    base = dict(in_ch=4, out_ch=8, kernel=1, stride=2, batch=32, size=32, layout="cl", threads=1, method="conv")
    cases = [base]
    cases += [{**base, "in_ch": c} for c in (1, 2, 3, 5, 6, 7, 8, 9, 12, 16)]
    cases += [{**base, "out_ch": c} for c in (4, 16, 64)]
    cases += [{**base, "stride": s} for s in (1, 3)]
    cases += [{**base, "batch": b} for b in (1, 8, 256)]
    cases += [{**base, "size": s} for s in (8, 64)]
    cases += [{**base, "layout": "nchw"}, {**base, "kernel": 3}]
    cases += [{**base, "threads": 2}, {**base, "threads": 2, "in_ch": 16}]
    cases += [{**base, "method": "subsample", "threads": t, "in_ch": c} for t, c in itertools.product((1, 2), (2, 4, 7))]
    return [tuple(c[f] for f in CASE_FIELDS) for c in cases]


def run_in_subprocess(case: tuple, timeout_s: float) -> str:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", *map(str, case)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"hang (> {timeout_s:.0f} s)"
    if r.returncode < 0:
        return f"crash ({signal.Signals(-r.returncode).name})"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"crash (exit {r.returncode}: {last[:60]})"
    return r.stdout.strip().splitlines()[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="store_true", help="run many shapes, each in its own subprocess")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a subprocess counts as hung")
    ap.add_argument("--case", nargs=len(CASE_FIELDS), metavar="V", help=" ".join(CASE_FIELDS))
    a = ap.parse_args()
    if a.case:
        v = a.case
        print(run_case(int(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[4]), int(v[5]), v[6], int(v[7]), v[8]))
        return 0
    import torch

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "(unset)")
    print(f"torch {torch.__version__}, oneDNN {torch.backends.mkldnn.is_available() and 'on'}, ONEDNN_MAX_CPU_ISA={isa}")
    if not a.sweep:
        print("in_ch 4, out_ch 8, 1x1, stride 2, batch 32, 32x32, channels_last, 1 thread:")
        print(run_case(4, 8, 1, 2, 32, 32, "cl", 1))
        return 0
    print(" | ".join(CASE_FIELDS) + " | result")
    for case in sweep_cases():
        print(" | ".join(map(str, case)) + " | " + run_in_subprocess(case, a.timeout), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
