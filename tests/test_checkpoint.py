import os
import pickle

import pytest
import torch

from shared.checkpoint import (
    Checkpoint,
    CheckpointError,
    EncoderConfig,
    HeadSpec,
    WatermarkSpec,
    load_checkpoint,
    save_checkpoint,
)
from shared.models import build_encoder, representation_dim


def _config() -> EncoderConfig:
    d = representation_dim("resnet18", 8)
    return EncoderConfig(arch="resnet18", width=8, representation_dim=d, head=HeadSpec(hidden_dim=d, out_dim=16),
                         watermark=WatermarkSpec(), metrics={"probe_shape": 0.5})


@pytest.mark.parametrize("arch,width,dim", [("resnet18", 8, 64), ("resnet34", 4, 32), ("resnet50", 4, 128)])
def test_cifar_stem_and_dims(arch, width, dim):
    m = build_encoder(arch, width)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, torch.nn.Identity)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, dim) == (2, representation_dim(arch, width))


def _torchvision_cifar_resnet(arch: str, width: int) -> torch.nn.Module:
    """The encoder as built before shared/models/resnet.py stopped importing torchvision (kept as the reference)."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    block, layers = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
                     "resnet50": (Bottleneck, [3, 4, 6, 3])}[arch]
    m = ResNet(block, layers)
    m.inplanes, m.dilation = width, 1
    m.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    m.bn1 = m._norm_layer(width)
    m.maxpool = nn.Identity()
    for i, mult in enumerate((1, 2, 4, 8)):
        setattr(m, f"layer{i + 1}", m._make_layer(block, width * mult, layers[i], stride=1 if i == 0 else 2))
    m.fc = nn.Identity()
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)
    return m


@pytest.mark.parametrize("arch,width", [("resnet18", 4), ("resnet18", 16), ("resnet34", 4), ("resnet50", 4)])
def test_encoder_is_bit_identical_to_torchvision(arch, width):
    """Same parameter names, same seeded weights (and random stream after), same outputs as torchvision's ResNet."""
    torch.manual_seed(3)
    ours, after_ours = build_encoder(arch, width), torch.rand(3)
    torch.manual_seed(3)
    ref, after_ref = _torchvision_cifar_resnet(arch, width), torch.rand(3)
    assert torch.equal(after_ours, after_ref)
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(4, 3, 32, 32)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(ref, mode)()
        with torch.no_grad():
            assert torch.equal(ours(x), ref(x)), mode


def test_round_trip_same_outputs(tmp_path):
    torch.manual_seed(0)
    ck = Checkpoint(_config()).eval()
    x = torch.rand(4, 3, 32, 32)
    save_checkpoint(ck, tmp_path / "ck")
    back = load_checkpoint(tmp_path / "ck")
    assert back.config.metrics == {"probe_shape": 0.5}
    with torch.no_grad():
        assert torch.equal(ck.encoder(x), back.encoder(x))
        assert torch.equal(ck.head(ck.encoder(x)), back.head(back.encoder(x)))
        assert torch.equal(ck.watermark(ck.encoder(x)), back.watermark(back.encoder(x)))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_disguised_as_safetensors_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(Checkpoint(_config()), tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").write_bytes(pickle.dumps({"w": _Boom()}))
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(tmp_path / "ck")
    assert not (tmp_path / "PWNED").exists()


def test_pickle_checkpoint_file_is_refused(tmp_path):
    ck = tmp_path / "ck"
    save_checkpoint(Checkpoint(_config()), ck)
    (ck / "model.safetensors").unlink()
    torch.save({"state": 1}, ck / "model.pt")
    with pytest.raises(CheckpointError, match="refusing pickle"):
        load_checkpoint(ck)


def test_config_mismatch_and_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path / "nope")
    ck = tmp_path / "ck"
    save_checkpoint(Checkpoint(_config()), ck)
    text = (ck / "config.json").read_text().replace('"width": 8', '"width": 16')
    (ck / "config.json").write_text(text)
    with pytest.raises(CheckpointError):
        load_checkpoint(ck)
