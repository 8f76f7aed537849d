"""Suspects behind one interface: ``embed(uint8 images (N, H, W, 3)) -> float32 (N, D)``.

- :class:`HttpSuspect`: any endpoint speaking the project's embeddings contract, through the
  shared :class:`shared.client.ApiClient` (API key, proof of work, 429/503 retries handled there);
- :class:`LocalSuspect`: a checkpoint folder (optionally behind a keyed output obfuscation from
  :mod:`shared.transforms`, to test the defender against permuted/padded/affine answers);
- :class:`FunctionSuspect`: any callable (another API's client, a model in memory).

Every answer is checked (row count, one fixed dimension, finite values): a bad answer raises
:class:`SuspectError` naming the suspect, so a broken suspect never turns into a wrong verdict.
Identical images are answered from a per-suspect cache and paid for once; ``queries`` counts the
images actually sent to the suspect and ``requests`` the calls made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from shared.images import image_digests
from shared.transforms import OutputTransform


class SuspectError(RuntimeError):
    """The suspect could not be queried or gave an unusable answer; the message says which and why."""


class Suspect:
    """Base: validation, caching and query counting around ``_embed``."""

    kind = "suspect"

    def __init__(self, name: str, chunk: int = 256, progress: bool = False) -> None:
        self.name = name
        self.chunk = chunk
        self.progress = progress
        self.dim: int | None = None
        self.queries = 0
        self.requests = 0
        self._cache: dict[str, np.ndarray] = {}

    # -- subclasses --
    def _embed(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind}

    def close(self) -> None:
        pass

    def __enter__(self) -> Suspect:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- public --
    def embed(self, images: np.ndarray, desc: str = "query suspect") -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        keys = image_digests(images)
        todo, seen = [], set()
        for i, k in enumerate(keys):  # every distinct image not answered before, once
            if k not in self._cache and k not in seen:
                seen.add(k)
                todo.append(i)
        bar = tqdm(total=len(todo), desc=f"{desc} ({self.name})", unit="img", disable=not self.progress or not todo, leave=False)
        try:
            for s in range(0, len(todo), self.chunk):
                idx = todo[s : s + self.chunk]
                rows = self._call(images[idx])
                for i, r in zip(idx, rows, strict=False):
                    self._cache[keys[i]] = r
                bar.update(len(idx))
        finally:
            bar.close()
        return np.stack([self._cache[k] for k in keys]) if keys else np.empty((0, self.dim or 0), np.float32)

    def _call(self, images: np.ndarray) -> np.ndarray:
        try:
            out = self._embed(images)
        except SuspectError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the suspect is reported as the suspect's
            raise SuspectError(f"suspect {self.name}: query of {len(images)} images failed: {type(e).__name__}: {e}") from e
        self.requests += 1
        self.queries += len(images)
        out = np.asarray(out)
        if out.ndim != 2 or out.shape[0] != len(images):
            raise SuspectError(f"suspect {self.name}: asked for {len(images)} representations, got an answer of shape {out.shape}")
        if self.dim is None:
            if out.shape[1] < 1:
                raise SuspectError(f"suspect {self.name}: answered 0-dimensional representations")
            self.dim = int(out.shape[1])
        elif out.shape[1] != self.dim:
            raise SuspectError(f"suspect {self.name}: answered {out.shape[1]}-d representations after {self.dim}-d ones")
        if not np.issubdtype(out.dtype, np.number):
            raise SuspectError(f"suspect {self.name}: answer is not numeric ({out.dtype})")
        bad = ~np.isfinite(out).all(1)
        if bad.any():
            raise SuspectError(f"suspect {self.name}: {int(bad.sum())} of {len(out)} representations contain NaN or inf "
                               f"(first at row {int(np.argmax(bad))})")
        return out.astype(np.float32)


class FunctionSuspect(Suspect):
    kind = "function"

    def __init__(self, name: str, fn: Callable[[np.ndarray], np.ndarray], **kw) -> None:
        super().__init__(name, **kw)
        self.fn = fn

    def _embed(self, images: np.ndarray) -> np.ndarray:
        return self.fn(images)


class LocalSuspect(Suspect):
    """A checkpoint on disk (or in memory), answers optionally obfuscated by ``transform``."""

    kind = "checkpoint"

    def __init__(self, checkpoint, transform: OutputTransform | None = None, name: str | None = None, batch_size: int = 256,
                 device: str = "cpu", **kw) -> None:
        from shared.checkpoint import Checkpoint, load_checkpoint

        if isinstance(checkpoint, Checkpoint):
            ckpt, label = checkpoint, name or "in-memory checkpoint"
        else:
            try:
                ckpt = load_checkpoint(checkpoint, device=device)
            except (ValueError, OSError) as e:
                raise SuspectError(f"suspect {checkpoint}: {e}") from e
            label = name or str(checkpoint)
        super().__init__(label + (f" [{transform.kind}]" if transform is not None else ""), **kw)
        self.ckpt, self.transform, self.batch_size, self.device = ckpt, transform, batch_size, device

    def describe(self) -> dict:
        cfg = self.ckpt.config
        return {"name": self.name, "kind": self.kind, "arch": cfg.arch, "width": cfg.width, "checkpoint_kind": cfg.kind,
                "representation_dim": cfg.representation_dim, "obfuscation": self.transform.kind if self.transform else None}

    def _embed(self, images: np.ndarray) -> np.ndarray:
        from shared.probe import extract_features

        with torch.inference_mode():
            y = extract_features(self.ckpt.encoder, images, batch_size=self.batch_size, device=self.device)
        if self.transform is not None:
            y = self.transform.apply(y, image_digests(images) if self.transform.pad else None)
        return y


class HttpSuspect(Suspect):
    """An embeddings endpoint (``POST /v1/embeddings``) queried with the shared API client."""

    kind = "http"

    def __init__(self, url: str, api_key: str, *, output: str = "representation", request_batch: int = 32,
                 concurrency: int = 4, timeout_s: float = 60, max_retries: int = 8, max_wait_s: float = 120,
                 pow_workers: int = 1, name: str | None = None, **kw) -> None:
        from shared.client import ApiClient

        if not api_key:
            raise SuspectError(f"suspect {url}: an API key is needed (--api-key or HEIST_API_KEY)")
        super().__init__(name or url, **kw)
        self.url, self.output, self.request_batch = url, output, request_batch
        self._loop = asyncio.new_event_loop()
        self.client = ApiClient(url, api_key, concurrency=concurrency, timeout_s=timeout_s, max_retries=max_retries,
                                max_wait_s=max_wait_s, pow_workers=pow_workers)
        self.model: dict | None = None
        try:
            info = self._loop.run_until_complete(self.client.models())
        except Exception as e:  # noqa: BLE001
            self.close()
            raise SuspectError(f"suspect {url}: cannot read /v1/models: {type(e).__name__}: {e}") from e
        self.model = info.model_dump() if hasattr(info, "model_dump") else dict(info)

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "url": self.url, "model": self.model,
                "client": self.client.stats.as_dict()}

    def _embed(self, images: np.ndarray) -> np.ndarray:
        return self._loop.run_until_complete(self.client.embed(images, output=self.output, batch_size=self.request_batch))

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self.client.aclose())
            self._loop.close()


def open_suspect(target: str | Path, api_key: str | None = None, transform: OutputTransform | None = None, **kw) -> Suspect:
    """A URL (http:// or https://) becomes an :class:`HttpSuspect`, anything else a checkpoint folder."""
    t = str(target)
    if t.startswith(("http://", "https://")):
        if transform is not None:
            raise ValueError("output obfuscation of an HTTP suspect is the server's business (heist-server serve --obfuscate)")
        return HttpSuspect(t, api_key or "", **kw)
    return LocalSuspect(Path(t), transform=transform, **kw)
