import torch

from retinanet.matcher import BACKGROUND, IGNORE, Matcher


def test_matcher_small_iou_matrix():
    # 2 boxes x 6 anchors.
    iou = torch.tensor(
        [
            [
                [0.70, 0.45, 0.10, 0.00, 0.30, 0.00],
                [0.20, 0.50, 0.39, 0.00, 0.30, 0.00],
            ]
        ]
    )
    valid = torch.tensor([[True, True]])
    m = Matcher(fg_iou=0.5, bg_iou=0.4, low_quality_matches=False)
    assert m(iou, valid).tolist() == [[0, 1, BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND]]
    iou2 = iou.clone()
    iou2[0, 1, 1] = 0.45  # anchor 1 now in the ignore band for both boxes
    assert m(iou2, valid).tolist() == [[0, IGNORE, BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND]]


def test_low_quality_matches_keep_each_box_best_anchor():
    # Box 1's best anchor (index 2, IoU 0.3) is below fg: it still gets it. Box 0's best is anchor 0.
    iou = torch.tensor([[[0.60, 0.10, 0.00], [0.05, 0.20, 0.30]]])
    valid = torch.tensor([[True, True]])
    assert Matcher(low_quality_matches=False)(iou, valid).tolist() == [[0, BACKGROUND, BACKGROUND]]
    assert Matcher(low_quality_matches=True)(iou, valid).tolist() == [[0, BACKGROUND, 1]]


def test_padding_never_matches_and_crowd_ignores_background():
    iou = torch.tensor([[[0.9, 0.0, 0.0], [0.0, 0.8, 0.0]]])
    valid = torch.tensor([[True, False]])  # box 1 is padding
    crowd_ioa = torch.tensor([[0.0, 0.0, 0.7]])
    out = Matcher()(iou, valid, crowd_ioa)
    assert out.tolist() == [[0, BACKGROUND, IGNORE]]


def test_image_without_boxes_is_all_background():
    out = Matcher()(torch.zeros(2, 0, 5), torch.zeros(2, 0, dtype=torch.bool))
    assert (out == BACKGROUND).all() and out.shape == (2, 5)
