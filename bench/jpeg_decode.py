"""JPEG decoding on the served device against Pillow on the CPU, per image size (what the server's
``device_decode: auto`` measures at startup, ``server.gpu_decode``).

    python -m bench.jpeg_decode --device cuda          # a GPU host (scripts/gpu_bench.sh runs it)
    python -m bench.jpeg_decode --device cpu           # torchvision's CPU decoder against Pillow

For each shorter side, ``--batch`` synthetic photo-like JPEGs (quality 90) are decoded, resized and
centre-cropped to ``--size`` both ways, best of ``--repeats``; the device side is one batched
``decode_jpeg`` call (nvJPEG on CUDA) plus the resize, with the pixels back on the host. The
smallest side from which the device wins at every larger side is what the server would choose.
Prints a table and writes results/serving/jpeg_decode_<device>.json.
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench.harness import command, table, write_json
from server.gpu_decode import CALIBRATION_SIDES, DeviceJpegDecoder
from shared.device import resolve_device


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when present)")
    p.add_argument("--size", type=int, default=32, help="the model's input size")
    p.add_argument("--batch", type=int, default=16, help="images per decode call (a request's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sides", type=int, nargs="+", default=list(CALIBRATION_SIDES))
    args = p.parse_args(argv)
    device = torch.device(resolve_device(args.device))
    dec = DeviceJpegDecoder(device, args.size)
    chosen = dec.calibrate(batch=args.batch, repeats=args.repeats, sides=args.sides)
    if not dec.timings:
        print("the device decoder failed: see the log above", file=sys.stderr)
        return 1
    rows = [{**t, "cpu_img_s": round(args.batch / t["cpu_ms"] * 1e3), "device_img_s": round(args.batch / t["device_ms"] * 1e3),
             "device_vs_cpu": f"{t['cpu_ms'] / t['device_ms']:.2f}x"} for t in dec.timings]
    print(f"device {device}, {args.batch} JPEGs per call, resized to {args.size} px, best of {args.repeats}")
    print(table(rows, ["side", "cpu_ms", "device_ms", "cpu_img_s", "device_img_s", "device_vs_cpu"]))
    print(f"device decoding chosen from a shorter side of: {chosen}")
    path = write_json("serving", f"jpeg_decode_{device.type}", {
        "command": command("bench.jpeg_decode", argv), "device": str(device), "batch": args.batch, "size": args.size,
        "repeats": args.repeats, "min_side": chosen, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
