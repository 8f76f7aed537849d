"""Training state for resuming at an epoch boundary, without pickle: tensors in safetensors, the rest JSON.

Both files carry the epoch they were written after; a pair that disagrees (a kill between the two
renames) is refused rather than resumed from mismatched halves.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

STATE_WEIGHTS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_state(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, extra: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_t, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_t)
    save_file(tensors, str(folder / (STATE_WEIGHTS + ".tmp")), metadata={"epoch": str(epoch)})
    (folder / (STATE_JSON + ".tmp")).write_text(json.dumps({"epoch": epoch, "optimizer": opt_meta, **extra}))
    (folder / (STATE_WEIGHTS + ".tmp")).replace(folder / STATE_WEIGHTS)
    (folder / (STATE_JSON + ".tmp")).replace(folder / STATE_JSON)


def read_state_meta(folder: Path) -> dict | None:
    """The JSON part of a resume state (with 'epoch' done and 'config'), or None if there is none."""
    if not (folder / STATE_WEIGHTS).is_file() or not (folder / STATE_JSON).is_file():
        return None
    return json.loads((folder / STATE_JSON).read_text())


def load_state(folder: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict | None:
    """Restore model and optimiser; returns the JSON part or None if there is no state."""
    meta = read_state_meta(folder)
    if meta is None:
        return None
    with safe_open(str(folder / STATE_WEIGHTS), "pt") as f:
        written = (f.metadata() or {}).get("epoch")
    if written is not None and int(written) != meta["epoch"]:
        raise ValueError(f"{folder}: the resume state's weights are of epoch {written}, its JSON of epoch {meta['epoch']} "
                         "(interrupted while writing); delete both train_state files to start over")
    tensors = load_file(str(folder / STATE_WEIGHTS))
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for key, v in meta["optimizer"]["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    return meta
