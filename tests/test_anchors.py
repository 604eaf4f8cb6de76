import torch

from retinanet.anchors import AnchorGenerator


def test_anchors_hand_computed():
    # One level, stride 8, 16x8 image -> 2 rows x 1 column; base size 8, scales (1, 2), ratio 1 and 4.
    gen = AnchorGenerator(sizes=(8.0,), scales=(1.0, 2.0), ratios=(1.0, 4.0), strides=(8,))
    anchors, counts = gen((16, 8))
    # ratio 4 (h/w): side 8 -> w = 8/2 = 4, h = 8*2 = 16; side 16 -> w 8, h 32.
    cell = torch.tensor(
        [
            [-4.0, -4.0, 4.0, 4.0],  # scale 1, ratio 1
            [-2.0, -8.0, 2.0, 8.0],  # scale 1, ratio 4
            [-8.0, -8.0, 8.0, 8.0],  # scale 2, ratio 1
            [-4.0, -16.0, 4.0, 16.0],  # scale 2, ratio 4
        ]
    )
    centres = [(4.0, 4.0), (4.0, 12.0)]  # (x, y) of row 0 and row 1
    expected = torch.cat([cell + torch.tensor([cx, cy, cx, cy]) for cx, cy in centres])
    torch.testing.assert_close(anchors, expected)
    assert counts == [8]


def test_two_levels_ceil_sizes_and_cache():
    gen = AnchorGenerator(sizes=(32.0, 64.0), scales=(1.0,), ratios=(0.5, 1.0, 2.0), strides=(8, 16))
    anchors, counts = gen((100, 60))  # ceil(100/8)=13, ceil(60/8)=8; ceil(100/16)=7, ceil(60/16)=4
    assert counts == [13 * 8 * 3, 7 * 4 * 3]
    assert anchors.shape == (sum(counts), 4)
    again, _ = gen((100, 60))
    assert again is anchors  # cached
    # Every anchor of ratio r has height / width == r.
    wh = anchors[:, 2:] - anchors[:, :2]
    torch.testing.assert_close(wh[:, 1] / wh[:, 0], torch.tensor([0.5, 1.0, 2.0]).repeat(len(anchors) // 3))


def test_anchors_at_equal_the_grid_exactly():
    """The export decodes only its candidates, with anchors computed from their indices:
    bit-identical to the grid (so ONNX and eager boxes cannot drift apart)."""
    gen = AnchorGenerator(sizes=(32.0, 64.0, 128.0), scales=(1.0, 2 ** (1 / 3)), ratios=(0.5, 1.0, 2.0), strides=(8, 16, 32))
    for hw in ((96, 160), (160, 96), (32, 32)):
        anchors, counts = gen(hw)
        start = 0
        for level, ((fh, fw), count) in enumerate(zip(gen.feature_sizes(hw), counts)):
            index = torch.arange(count).reshape(2, -1) if count % 2 == 0 else torch.arange(count)  # any shape
            assert torch.equal(gen.anchors_at(level, index, fw), anchors[start : start + count][index])
            start += count
