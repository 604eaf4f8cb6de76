from pathlib import Path

import pytest
import torch
import torchvision

from retinanet.backbones import (
    MOBILENET_V2_FILE,
    MOBILENET_V2_SHA256,
    MobileNetV1,
    _sha256,
    build_backbone,
    imagenet_state_dict,
    install_offline_weights,
)
from retinanet.config import BackboneConfig
from retinanet.data.images import read_image

EXPECTED = {
    "mobilenet_v1": (256, 512, 1024),
    "mobilenet_v2": (32, 96, 1280),
    "mobilenet_v3_large": (40, 112, 960),
    "mobilenet_v3_small": (24, 48, 576),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_backbone_contract(name):
    b = build_backbone(BackboneConfig(name=name, weights="none", freeze_bn=False)).eval()
    feats = b(torch.rand(1, 3, 96, 160))
    assert b.out_channels == EXPECTED[name] and b.strides == (8, 16, 32)
    assert [f.shape[1] for f in feats] == list(b.out_channels)
    assert [tuple(f.shape[-2:]) for f in feats] == [(12, 20), (6, 10), (3, 5)]


@pytest.mark.parametrize("width,c5", [(1.0, 1024), (0.75, 768), (0.5, 512), (0.25, 256)])
def test_mobilenet_v1_width_multiplier(width, c5):
    b = build_backbone(BackboneConfig(name="mobilenet_v1", width=width, weights="none", freeze_bn=False))
    assert b.out_channels == (int(256 * width), int(512 * width), c5)
    # Depthwise + pointwise only: every 3x3 conv after the stem is depthwise.
    convs = [m for m in b.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.groups == c.in_channels for c in convs[1:] if c.kernel_size == (3, 3))
    assert MobileNetV1(width)(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


def test_freeze_stages_and_bn():
    with pytest.warns(UserWarning, match="freeze_bn=false"):  # frozen random statistics: the user is told
        b = build_backbone(BackboneConfig(weights="none", freeze_stages=2, freeze_bn=True))
    frozen = [all(not p.requires_grad for p in s.parameters()) for s in b.stages]
    assert frozen == [True, True, False, False, False]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in b.modules())
    b.train()
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(b(x)[0], b.eval()(x)[0])  # frozen BN: same in train and eval


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v1"])
def test_image_by_image_stages_give_the_batched_features_and_gradients(name, monkeypatch):
    """With batch norm folded, a CPU batch runs its high-resolution stages image by image:
    the features and every gradient are those of the whole batch at once."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="freeze_bn=false"):
        b = build_backbone(BackboneConfig(name=name, weights="none", freeze_stages=1, freeze_bn=True)).train()
    x = torch.rand(3, 3, 96, 128)
    assert b._image_by_image(x) and not b._image_by_image(x[:1])

    def run(split: bool):
        monkeypatch.setattr(type(b), "_image_by_image", lambda self, x: split)
        b.zero_grad()
        feats = b(x)
        sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum() for f in feats).backward()
        return [f.detach() for f in feats], {k: p.grad.clone() for k, p in b.named_parameters() if p.requires_grad}

    (feats, grads), (ref_feats, ref_grads) = run(True), run(False)
    for f, r in zip(feats, ref_feats):
        torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and grads
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-5, msg=k)


def test_batch_norm_in_training_keeps_the_batch_whole():
    b = build_backbone(BackboneConfig(weights="none", freeze_bn=False)).train()
    x = torch.rand(2, 3, 64, 64)
    assert not b._image_by_image(x)  # batch statistics would differ image by image
    assert b.eval()._image_by_image(x)  # running statistics do not


def test_offline_weights_installed_with_checked_hash():
    path = install_offline_weights()
    # Exactly where torchvision's own download would have put it.
    assert path == Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_V2_FILE
    assert _sha256(path) == MOBILENET_V2_SHA256


def test_user_weights_file_loads_and_bad_file_is_reported(tmp_path):
    clf = torchvision.models.mobilenet_v3_small()
    torch.save(clf.state_dict(), tmp_path / "v3s.pth")
    b = build_backbone(BackboneConfig(name="mobilenet_v3_small", weights=str(tmp_path / "v3s.pth"), freeze_bn=False))
    torch.testing.assert_close(b.stages[0][0][0].weight, clf.features[0][0].weight)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="junk.pth"):
        build_backbone(BackboneConfig(name="mobilenet_v3_small", weights=str(tmp_path / "junk.pth")))
    with pytest.raises(RuntimeError, match="v3s.pth"):  # V3 weights offered to a V2 backbone
        build_backbone(BackboneConfig(name="mobilenet_v2", weights=str(tmp_path / "v3s.pth")))


# coco128 photos whose main object is an ImageNet class, and the acceptable ImageNet indices.
IMAGENET_CASES = {
    "000000000034.jpg": ("zebra", {340}),
    "000000000036.jpg": ("umbrella", {879}),
    "000000000263.jpg": ("elephant", {101, 385, 386}),  # tusker, Indian / African elephant
    "000000000397.jpg": ("pizza", {963}),
    "000000000471.jpg": ("school bus", {779}),
    "000000000623.jpg": ("teddy bear", {850}),
}


def test_imagenet_mobilenet_v2_ranks_right_class_in_top5(coco128):
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(imagenet_state_dict("mobilenet_v2"))
    model.eval()
    transform = weights.transforms()
    hits = {}
    with torch.no_grad():
        for name, (what, classes) in IMAGENET_CASES.items():
            logits = model(transform(read_image(coco128 / "train2017" / name))[None])
            top5 = set(logits.topk(5).indices[0].tolist())
            hits[f"{name} ({what})"] = bool(top5 & classes)
    assert all(hits.values()), hits


def test_detector_backbone_uses_the_imagenet_features():
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(imagenet_state_dict("mobilenet_v2"))
    b = build_backbone(BackboneConfig(freeze_bn=False)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(b(x)[-1], ref.eval().features(x))


class _Payload:
    """Unpickling this creates the file ``marker``: code run from a weights file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_poisoned_hub_cache_is_refused_without_running_its_payload(tmp_path, monkeypatch):
    import torchvision

    from retinanet.backbones import BACKBONES, imagenet_state_dict

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.get_weight(BACKBONES["mobilenet_v3_large"].imagenet).url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    marker = tmp_path / "payload_ran"
    torch.save({"features.0.0.weight": _Payload(marker)}, cached)
    with pytest.raises(RuntimeError, match="cannot load ImageNet weights for mobilenet_v3_large"):
        imagenet_state_dict("mobilenet_v3_large")
    assert not marker.exists()


def test_the_command_lines_list_of_backbones_is_the_table():
    from retinanet.backbones import BACKBONES
    from retinanet.config.model import BACKBONE_NAMES

    assert tuple(BACKBONES) == BACKBONE_NAMES
