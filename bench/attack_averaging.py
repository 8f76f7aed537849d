"""Query averaging vs output noise: keyed noise (same answer for the same account and image) gains
the attacker nothing; fresh (unkeyed) noise shrinks as 1/sqrt(repeats).

    python -m bench.attack_averaging [--images 64] [--repeats 1,4,16] [--sigma 1.0] [--mean 0.0]

Keyed row: the server's own ``gaussian_noise`` defence (server/defences/perturb.py; keyed by server
secret, account and image) on a real ``heist-server serve`` of runs/victim. Unkeyed row: the server
has no fresh-noise option, so a small real uvicorn app in this script serves the same checkpoint
with fresh N(mean, sigma) per answer (same decoding path, shared.images.preprocess). Both are
queried over HTTP by attacker.queries.acquire with ``repeats`` (each repeat is a paid answer).
Metric: relative error ||avg - clean|| / ||clean|| against clean answers from an ``unlimited``
account. Writes results/attack/attack_averaging.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request  # module level: FastAPI resolves annotations from globals

from attacker.cache import QueryCache
from attacker.queries import acquire, load_query_set
from bench.attack_table import local_victim
from bench.harness import command, output, table, write_json
from testbed.services import ThreadedServer, new_key


class FreshNoiseApp(ThreadedServer):
    """The victim behind a minimal v1 embeddings endpoint adding FRESH Gaussian noise to every answer."""

    def __init__(self, checkpoint: str, mean: float, sigma: float) -> None:
        import torch

        from shared.checkpoint import load_checkpoint
        from shared.images import ImageLimits, preprocess
        from shared.schemas import encode_embedding

        model = load_checkpoint(checkpoint)
        rng = np.random.default_rng()
        app = FastAPI()
        info = {"id": "fresh-noise", "architecture": model.config.arch, "input_size": 32,
                "representation_dim": model.config.representation_dim, "projection_dim": None,
                "normalization": {"mean": list(model.config.normalization.mean), "std": list(model.config.normalization.std)},
                "outputs": ["representation"], "max_images_per_request": 64}

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [info]}

        @app.post("/v1/embeddings")
        async def embeddings(request: Request):
            payload = await request.json()
            x = preprocess(payload["input"], 32, ImageLimits())
            with torch.no_grad():
                y = model.encoder(torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255)).numpy()  # as the batcher does
            y = y + rng.normal(mean, sigma, y.shape).astype(np.float32)
            return {"object": "list", "model": "fresh-noise", "usage": {"images": len(y)},
                    "data": [{"object": "embedding", "index": i, "embedding": encode_embedding(v, payload.get("encoding_format", "float"))}
                             for i, v in enumerate(y)]}

        super().__init__(app)


def rel_err(a: np.ndarray, clean: np.ndarray) -> float:
    return float(np.linalg.norm(a - clean) / np.linalg.norm(clean))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/victim")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--repeats", default="1,4,16")
    p.add_argument("--mean", type=float, default=0.0)
    p.add_argument("--sigma", type=float, default=1.0)
    a = p.parse_args(argv)
    reps = [int(r) for r in a.repeats.split(",")]
    imgs = load_query_set("attack", a.images).images
    tiers = {"unlimited": {"outputs": ["representation"]},
             "keyed_noise": {"defences": [{"name": "gaussian_noise", "params": {"mean": a.mean, "sigma": a.sigma}}]}}
    rows = []
    with tempfile.TemporaryDirectory() as d, QueryCache(Path(d) / "cache") as cache:
        with local_victim(a.checkpoint, tiers) as (url, admin):
            tag = secrets.token_hex(3)
            clean = asyncio.run(acquire(url, [new_key(url, admin, "unlimited", f"clean-{tag}")], imgs, cache, progress=False)).answers
            for r in reps:
                key = new_key(url, admin, "keyed_noise", f"keyed-{tag}-{r}")
                got = asyncio.run(acquire(url, [key], imgs, cache, repeats=r, progress=False))
                rows.append({"noise": "keyed (server gaussian_noise)", "repeats": r, "answers_bought": got.bought,
                             "rel_error": round(rel_err(got.answers, clean), 4)})
        with FreshNoiseApp(a.checkpoint, a.mean, a.sigma) as app:
            for r in reps:
                got = asyncio.run(acquire(app.url, [f"fresh-{r}"], imgs, cache, repeats=r, progress=False))
                rows.append({"noise": "fresh (bench app)", "repeats": r, "answers_bought": got.bought,
                             "rel_error": round(rel_err(got.answers, clean), 4)})
    txt = table(rows, ["noise", "repeats", "answers_bought", "rel_error"])
    cmd = command("bench.attack_averaging", argv)
    head = f"{a.images} images, noise N({a.mean}, {a.sigma}); rel_error = ||mean of answers - clean|| / ||clean||"
    print(head)
    print(txt)
    write_json("attack", "attack_averaging", {"command": cmd, "config": vars(a), "rows": rows})
    output("attack", "attack_averaging.md").write_text(f"# Query averaging vs noise\n\n{head}\n\nCommand: `{cmd}`\n\n```\n{txt}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
