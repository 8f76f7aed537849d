"""Application state of the victim API: config, store, model, batcher, defences (``app.state.heist``)."""

from __future__ import annotations

import gc
import logging
import sys

import anyio

from server.batcher import Batcher
from server.config import ServerConfig
from server.defences import DefenceContext, DefencePipeline, build_pipeline
from server.gpu_decode import DeviceJpegDecoder
from server.metrics import Metrics
from server.obfuscation import Obfuscator
from server.store import AccountStore
from shared.checkpoint import Checkpoint, load_checkpoint
from shared.device import resolve_device
from shared.images import ImageLimits
from shared.schemas import ModelInfo, NormalizationInfo

log = logging.getLogger("heist.api")


class ServerState:
    """Everything the routes, dependencies and handlers share; one per app, built by ``create_app``."""

    def __init__(self, config: ServerConfig, model: Checkpoint | None, store: AccountStore) -> None:
        self.config = config
        self.store = store
        self.metrics = Metrics(config.max_batch)
        self.model = model
        self.batcher: Batcher | None = None
        self.device_decoder: DeviceJpegDecoder | None = None  # JPEGs decoded on the device (device_decode)
        self._decode_limiter: anyio.CapacityLimiter | None = None
        self.obfuscator: Obfuscator | None = None
        self.limits = ImageLimits(formats=config.allowed_formats, max_pixels=config.max_image_pixels,
                                  max_bytes=config.max_image_bytes)
        ctx = DefenceContext(store=store, secret=config.secret_bytes(), metrics=self.metrics)
        self.pipelines: dict[str, DefencePipeline] = {t: build_pipeline(t, tc, ctx) for t, tc in config.tiers.items()}
        self.model_id = config.model_id or (config.checkpoint.name if config.checkpoint else "encoder")

    @property
    def decode_limiter(self) -> anyio.CapacityLimiter:
        """Bounds concurrent image decoding (made on first use, inside the event loop)."""
        if self._decode_limiter is None:
            self._decode_limiter = anyio.CapacityLimiter(self.config.decode_threads)
        return self._decode_limiter

    def tune_runtime(self) -> None:
        """Process settings for serving, applied from the event loop's thread once the model is loaded:

        - ``switch_interval_ms`` (process-wide): the inference thread gets the GIL back sooner;
        - ``faiss_threads``: FAISS's OpenMP count is per thread, so it is set on this thread, where the
          defences search (set in the thread that loads the model, it left the loop's searches on
          every core); ``blas_threads``: numpy's OpenBLAS, process-wide. Idle OpenMP/OpenBLAS workers
          spin for a while after each call, on the core the inference thread needs;
        - ``gc_freeze``: startup objects (torch, FastAPI, the model) leave the collector's scans;
        - ``malloc_retain`` (process-wide): freed memory stays in the process (``shared.malloc``).
        """
        if self.config.malloc_retain:
            from shared.malloc import retain_freed_memory

            retain_freed_memory()
        if self.config.switch_interval_ms is not None:
            sys.setswitchinterval(self.config.switch_interval_ms / 1000)
        if self.config.faiss_threads is not None:
            import faiss

            faiss.omp_set_num_threads(self.config.faiss_threads)
        if self.config.blas_threads is not None:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=self.config.blas_threads, user_api="blas")
        if self.config.gc_freeze:
            gc.collect()
            gc.freeze()

    def load(self) -> None:
        device = resolve_device(self.config.device)
        if self.model is None:
            if self.config.checkpoint is None:
                raise RuntimeError("no checkpoint configured (--checkpoint DIR or HEIST_CHECKPOINT)")
            model = load_checkpoint(self.config.checkpoint, device)
        else:
            model = self.model.to(device).eval()
        self.model = model
        if self.config.torch_threads:
            import torch

            torch.set_num_threads(self.config.torch_threads)
        self.batcher = Batcher(model, device, self.config.max_batch, self.config.max_wait_ms,
                               self.config.max_queue_images, on_batch=self.metrics.on_batch, jit=self.config.jit,
                               cuda_graphs=self.config.cuda_graphs, gpu_dtype=self.config.gpu_dtype,
                               gpu_bf16_tolerance=self.config.gpu_bf16_tolerance)
        self.batcher.start()
        mode = self.config.device_decode
        if mode == "on" or (mode == "auto" and device.type == "cuda"):
            self.device_decoder = DeviceJpegDecoder(device, model.config.input_size)
            if mode == "auto":
                self.device_decoder.calibrate()
        if self.config.obfuscation is not None:
            c = model.config
            self.obfuscator = Obfuscator(self.config.obfuscation, c.representation_dim, c.head.out_dim if c.head else None)
        self.metrics.queue.set_function(lambda: self.batcher.queued_images if self.batcher else 0)
        log.info("model loaded", extra={"model": self.model_id, "arch": model.config.arch,
                                         "device": str(device), "store": self.store.backend,
                                         "obfuscation": self.obfuscator.describe() if self.obfuscator else None,
                                         "device_decode_min_side": self.device_decoder.min_side if self.device_decoder else None,
                                         "policies": {t: p.describe() for t, p in self.pipelines.items()}})

    @property
    def loaded_model(self) -> Checkpoint:
        """The served model: given to the constructor, or read by :meth:`load` (the app's startup)."""
        if self.model is None:
            raise RuntimeError("no model loaded")
        return self.model

    @property
    def loaded_batcher(self) -> Batcher:
        """The model's batcher, which :meth:`load` (the app's startup) starts."""
        if self.batcher is None:
            raise RuntimeError("no model loaded")
        return self.batcher

    def model_info(self) -> ModelInfo:
        model = self.loaded_model
        c = model.config
        rep_dim, proj_dim = c.representation_dim, c.head.out_dim if c.head else None
        if self.obfuscator is not None:
            rep_dim = self.obfuscator.representation.out_dim
            proj_dim = self.obfuscator.projection.out_dim if self.obfuscator.projection else None
        return ModelInfo(id=self.model_id, architecture=c.arch, input_size=c.input_size,
                         representation_dim=rep_dim, projection_dim=proj_dim,
                         normalization=NormalizationInfo(mean=c.normalization.mean, std=c.normalization.std),
                         outputs=["representation", "projection"] if model.head is not None else ["representation"],
                         max_images_per_request=self.config.max_images_per_request)
