"""Similar-query perturbation (stealing paper, section 4 of RESEARCH.md), over the whole history.

For every image the server computes z = g_v(y) (head space; ``space="representation"`` uses y),
searches the account's history with FAISS (cosine >= tau or l2 <= tau) and the earlier images of the
same request. A hit means "an augmentation of an image this account already sent": that answer gets
heavy keyed noise (``action="noise"``) or the whole request is refused (``action="refuse"``, 403).
Beyond the paper, a global index over every account's history flags accounts sending the same
images (sybils): the pair is ranked in the store and the hit counted (or also noised/refused).

The z's go to the request's atomic commit (account stream + global stream). The FAISS indexes here
are per-process *views*: before searching, a view reads the stream entries after the last id it
saw (XRANGE), so replicas sharing one Redis hold the same history and decide alike.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from server.defences.base import Defence, DefenceParams, DefenceRefusal, Rejection
from server.defences.index import Metric, VectorIndex, is_hit, pairwise_scores
from server.defences.keyed import keyed_normal
from server.defences.keys import Counters
from server.store.base import AccountStore, HistoryAppend


class HistoryView:
    """A FAISS view of one history stream (an account's, or the global one) with its stream offset."""

    def __init__(self, index: VectorIndex) -> None:
        self.index = index
        self.last = "0-0"
        self.lock = asyncio.Lock()
        self.accounts: dict[str, int] = {}  # global view: account id -> label
        self.names: list[str] = []

    def label(self, account: str) -> int:
        if account not in self.accounts:
            self.accounts[account] = len(self.names)
            self.names.append(account)
        return self.accounts[account]

    async def sync(self, store: AccountStore, account_id: str | None, chunk: int = 10000) -> None:
        async with self.lock:
            while True:
                rows = await store.history_since(account_id, self.last, chunk)
                if not rows:
                    return
                vecs = np.frombuffer(b"".join(r.vector for r in rows), dtype="<f4").reshape(len(rows), -1)
                labels = np.array([self.label(r.account) for r in rows]) if account_id is None else 0
                self.index.add(vecs, labels)
                self.last = rows[-1].id
                if len(rows) < chunk:
                    return


class HistoryViews:
    """Per-process cache of views (LRU over accounts; an evicted view is rebuilt from the stream)."""

    def __init__(self, metric: Metric, maxlen: int, global_maxlen: int, switch_at: int, nprobe: int, max_views: int = 2048) -> None:
        self.metric, self.maxlen, self.global_maxlen = metric, maxlen, global_maxlen
        self.switch_at, self.nprobe, self.max_views = switch_at, nprobe, max_views
        self._views: OrderedDict[str, HistoryView] = OrderedDict()
        self._global: HistoryView | None = None

    def _new(self, dim: int, maxlen: int) -> HistoryView:
        return HistoryView(VectorIndex(dim, self.metric, maxlen, self.switch_at, self.nprobe))

    async def account(self, store: AccountStore, account_id: str, dim: int) -> HistoryView:
        v = self._views.get(account_id)
        if v is None or v.index.dim != dim:
            v = self._views[account_id] = self._new(dim, self.maxlen)
            while len(self._views) > self.max_views:
                self._views.popitem(last=False)
        self._views.move_to_end(account_id)
        await v.sync(store, account_id)
        return v

    async def global_view(self, store: AccountStore, dim: int) -> HistoryView:
        if self._global is None or self._global.index.dim != dim:
            self._global = self._new(dim, self.global_maxlen)
        await self._global.sync(store, None)
        return self._global


class SimilarQuery(Defence):
    name = "similar_query"
    needs_projections = True
    params: Params  # the validated Params below (Defence.__init__ stores it)

    class Params(DefenceParams):
        space: Literal["projection", "representation"] = "projection"
        metric: Metric = "cosine"
        tau: float = Field(default=0.93, description="cosine: hit when similarity >= tau; l2: hit when distance <= tau")
        action: Literal["noise", "refuse"] = "noise"
        noise_mean: float = 1000.0
        noise_sigma: float = Field(default=1.0, ge=0)
        history: int = Field(default=10_000, ge=1, le=10_000_000, description="vectors kept per account (stream MAXLEN)")
        global_index: bool = True
        global_history: int = Field(default=1_000_000, ge=1, le=100_000_000)
        sybil_tau: float | None = Field(default=None, description="default: tau")
        sybil_action: Literal["flag", "noise", "refuse"] = "flag"
        switch_at: int = Field(default=5_000, ge=1000, description="history size where flat search gives way to IVF "
                               "(bench/faiss_lookup.py measures both searches against the history size)")
        nprobe: int = Field(default=16, ge=1)

        @model_validator(mode="after")
        def _tau(self):
            if self.metric == "cosine" and not -1 <= self.tau <= 1:
                raise ValueError("cosine tau must be in [-1, 1]")
            if self.metric == "l2" and self.tau < 0:
                raise ValueError("l2 tau must be >= 0")
            return self

    def __init__(self, ctx, params) -> None:
        super().__init__(ctx, params)
        p = self.params
        key = f"views:{p.space}:{p.metric}:{p.history}:{p.global_history}:{p.switch_at}:{p.nprobe}"
        self.views: HistoryViews = ctx.cache.setdefault(key, HistoryViews(p.metric, p.history, p.global_history, p.switch_at, p.nprobe))

    async def transform(self, account, request, images, representations, projections):
        p = self.params
        z = projections if (p.space == "projection" and projections is not None) else representations
        z = np.ascontiguousarray(z, dtype=np.float32)
        n, dim = z.shape
        view = await self.views.account(self.ctx.store, account.id, dim)
        scores, _ = view.index.search(z, 1)
        hits = is_hit(scores[:, 0], p.metric, p.tau)
        if n > 1:  # an augmentation of an earlier image of the same request
            within = is_hit(pairwise_scores(z, p.metric), p.metric, p.tau)
            hits |= np.tril(within, -1).any(axis=1)
        sybil = np.zeros(n, bool)
        if p.global_index:
            sybil = await self._sybils(account.id, z, request)
        punish = hits | (sybil if p.sybil_action != "flag" else False)
        request.record.count(Counters.SIMILAR_HITS, int(hits.sum()))
        request.record.count(Counters.SYBIL_HITS, int(sybil.sum()))
        request.record.history = HistoryAppend(z, p.history, p.global_history if p.global_index else 0)
        self.ctx.count(self.name, "hit", int(hits.sum()))
        self.ctx.count(self.name, "miss", int(n - hits.sum()))
        self.ctx.count(self.name, "sybil", int(sybil.sum()))
        if punish.any() and (p.action == "refuse" and hits.any() or p.sybil_action == "refuse" and sybil.any()):
            self.ctx.count(self.name, "refuse")
            what = "an image this account already sent" if hits.any() else "images another account already sent"
            raise DefenceRefusal(Rejection(403, "similar_query_refused",
                                           f"{int(punish.sum())} of {n} images are near-duplicates of {what}", param="input"))
        if punish.any():
            idx = np.flatnonzero(punish)
            digests = request.digests(images)
            noise = keyed_normal(self.ctx.secret, self.name, account.id, [digests[i] for i in idx],
                                 representations.shape[1], p.noise_mean, p.noise_sigma)
            representations = representations.copy()
            representations[idx] += noise
        return representations

    async def _sybils(self, account_id: str, z: np.ndarray, request) -> np.ndarray:
        p = self.params
        tau = p.tau if p.sybil_tau is None else p.sybil_tau
        gview = await self.views.global_view(self.ctx.store, z.shape[1])
        own = gview.label(account_id)
        k = min(8, max(1, len(gview.index)))
        scores, pos = gview.index.search(z, k)
        labels = gview.index.labels(pos)
        other = (labels != own) & (labels >= 0) & is_hit(scores, p.metric, tau)
        flagged = other.any(axis=1)
        for i in np.flatnonzero(flagged):  # one ZINCRBY per shared image
            peer = gview.names[int(labels[i, int(np.argmax(other[i]))])]
            request.record.sybil_pairs.append("|".join(sorted((account_id, peer))))
        return flagged
