"""shared/cpu.py: which oneDNN ISA a process gets, and the workaround for its AVX2 1x1 kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from shared.cpu import (
    ENV_WORKAROUND,
    OneDnnIsa,
    cpu_flags,
    cpu_model,
    decide_workaround,
    onednn_isa,
    set_strided_pointwise_workaround,
)
from shared.models.resnet import StridedPointwiseConv, build_encoder
from shared.proc import run as run_child
from testbed.services import REPO

AVX512 = frozenset("fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512cd".split())
AVX2_ONLY = frozenset("fpu sse2 avx avx2 fma bmi2".split())  # e.g. AMD Zen 2/3, Intel Haswell
AVX_ONLY = frozenset("fpu sse2 sse4_1 avx".split())


@pytest.mark.parametrize("machine,flags,env,family", [
    ("x86_64", AVX512, {}, "avx512"),
    ("x86_64", AVX2_ONLY, {}, "avx2"),
    ("x86_64", AVX_ONLY, {}, "older"),
    ("x86_64", AVX512 - {"avx512bw"}, {}, "avx2"),  # AVX-512F alone is not oneDNN's avx512_core
    ("x86_64", AVX512, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "avx2"),
    ("x86_64", AVX512, {"ONEDNN_MAX_CPU_ISA": "avx2_vnni"}, "avx2"),
    ("x86_64", AVX512, {"DNNL_MAX_CPU_ISA": "AVX2"}, "avx2"),
    ("x86_64", AVX512, {"ONEDNN_MAX_CPU_ISA": "AVX"}, "older"),
    ("x86_64", AVX2_ONLY, {"ONEDNN_MAX_CPU_ISA": "SSE41"}, "older"),
    ("x86_64", AVX512, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "avx512"),
    ("x86_64", AVX2_ONLY, {"ONEDNN_MAX_CPU_ISA": "ALL"}, "avx2"),
    ("x86_64", AVX_ONLY, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "older"),  # a cap never raises the ISA
    ("aarch64", frozenset(), {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "non-x86"),
])
def test_onednn_isa_family(machine, flags, env, family):
    assert onednn_isa(machine, flags, env).family == family


def test_cpu_flags_parse_x86_and_arm():
    assert cpu_flags("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nflags\t: sse\n") == {"fpu", "avx2", "avx512f"}
    assert cpu_flags("processor\t: 0\nFeatures\t: fp asimd sve\n") == {"fp", "asimd", "sve"}
    assert cpu_flags("") == frozenset()
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t: fpu\n") == "AMD EPYC"


def test_decide_workaround_only_on_the_avx2_family_unless_forced():
    avx2, avx512 = OneDnnIsa("avx2", "t"), OneDnnIsa("avx512", "t")
    assert decide_workaround(avx2, "auto") and not decide_workaround(avx512, "auto")
    assert decide_workaround(avx512, "on") and not decide_workaround(avx2, "off")
    with pytest.raises(ValueError, match=ENV_WORKAROUND):
        decide_workaround(avx2, "maybe")


@pytest.mark.parametrize("in_ch,stride,size", [(4, 2, 32), (3, 2, 15), (7, 3, 16), (16, 2, 8)])
def test_subsampled_pointwise_equals_the_strided_convolution(in_ch, stride, size):
    """The workaround's output, input gradient and weight gradient against the plain convolution,
    computed without oneDNN (safe on every CPU)."""
    torch.manual_seed(0)
    conv = StridedPointwiseConv(in_ch, 8, kernel_size=1, stride=stride, bias=False)
    x0 = torch.randn(6, in_ch, size, size).contiguous(memory_format=torch.channels_last)

    def run(workaround: bool | None) -> tuple[torch.Tensor, ...]:
        set_strided_pointwise_workaround(workaround)
        try:
            x = x0.clone().requires_grad_()
            conv.weight.grad = None
            y = conv(x)
            y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
            return y.detach(), x.grad, conv.weight.grad.clone()
        finally:
            set_strided_pointwise_workaround(None)

    with torch.backends.mkldnn.flags(enabled=False):
        ref = run(False)
    got = run(True)
    assert got[0].shape == ref[0].shape
    for a, b in zip(got, ref, strict=True):  # sums in another order: float32 rounding, relative to the scale
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_workaround_leaves_inference_and_wide_layers_alone():
    set_strided_pointwise_workaround(True)
    try:
        enc = build_encoder("resnet18", 4)
        narrow = [m for m in enc.modules() if isinstance(m, StridedPointwiseConv) and m.in_channels < 8]
        assert len(narrow) == 1  # layer2's shortcut: 4 -> 8 channels, stride 2
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():  # inference takes the stock path
            y1 = enc.eval()(x)
        set_strided_pointwise_workaround(False)
        with torch.no_grad():
            y2 = enc(x)
        torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    finally:
        set_strided_pointwise_workaround(None)


# Every stealing loss, direct and recreate-head, at the shapes that crashed (width 4, batch 32), on
# 1 and 2 threads, with oneDNN forced onto its AVX2 kernels, in a subprocess: a crash or a hang
# fails this test instead of the suite.
STEAL_ALL_LOSSES = textwrap.dedent("""
    import sys, numpy as np, torch
    from attacker.steal import StealConfig, train_stolen
    from shared.losses import STEALING_LOSSES
    torch.set_num_threads(int(sys.argv[1]))
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    answers = rng.random((64, 24)).astype(np.float32)
    labels = rng.integers(0, 3, 64)
    for mode in ("direct", "recreate-head"):
        for loss in STEALING_LOSSES:
            cfg = StealConfig(loss=loss, mode=mode, width=4, epochs=1, batch_size=32, aug_reuse=1 if loss == "mse" else 0)
            _, hist = train_stolen(imgs, answers, cfg, labels, progress=False)
            assert np.isfinite(hist["losses"][0]), (loss, mode)
            print("trained", loss, mode, flush=True)
""")


def _x86_with_avx2() -> bool:
    isa = onednn_isa(env={})
    return isa.family in ("avx2", "avx512")


@pytest.mark.slow
@pytest.mark.skipif(not _x86_with_avx2(), reason="oneDNN's AVX2 kernels need an x86-64 CPU with AVX2")
@pytest.mark.parametrize("threads", [1, 2])
def test_every_loss_trains_on_the_avx2_kernels(threads):
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": str(threads)}
    env.pop(ENV_WORKAROUND, None)
    try:
        r = run_child([sys.executable, "-c", STEAL_ALL_LOSSES, str(threads)], cwd=REPO, env=env, capture_output=True,
                      text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"stealing hung on the AVX2 kernels ({threads} threads); last output: {(e.stdout or '')[-500:]}")
    assert r.returncode == 0, f"exit {r.returncode} on {threads} threads\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}"
    assert r.stdout.count("trained") == 14
    assert r.stderr.count("oneDNN runs its AVX2 kernels here") == 1  # decided and logged once per process
