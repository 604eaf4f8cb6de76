import torch

from retinanet.boxes import batched_box_ioa, batched_box_iou
from retinanet.data.labels import CROWD_LABEL, PAD_LABEL
from retinanet.matcher import BACKGROUND, IGNORE, ATSSMatcher, Matcher


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


# --- ATSS (Zhang et al. 2020) -------------------------------------------------------------


def _square_grid(stride: float, side: float, cells: int) -> torch.Tensor:
    """(cells * cells, 4) square anchors of one level, row-major: index = row * cells + col."""
    c = (torch.arange(cells, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    cx, cy = cx.reshape(-1), cy.reshape(-1)
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=-1)


# A 32 x 32 image, one anchor per location. Level 0: 8 x 8 anchors at stride 8 (indices
# 0..15, centres 4, 12, 20, 28); level 1: 16 x 16 anchors at stride 16 (indices 16..19,
# centres 8, 24).
ANCHORS = torch.cat([_square_grid(8, 8, 4), _square_grid(16, 16, 2)])
PER_LEVEL = [16, 4]


def _atss(gt_boxes, gt_labels, topk=3, crowd_ioa=None):
    gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float32)
    gt_labels = torch.as_tensor(gt_labels)
    iou = batched_box_iou(gt_boxes, ANCHORS)
    return ATSSMatcher(topk=topk)(iou, gt_labels >= 0, gt_boxes, ANCHORS, PER_LEVEL, crowd_ioa)


def test_atss_small_and_large_box_by_hand():
    # Small box S = [2, 2, 12, 10] (area 80, centre (7, 6)). The 3 nearest anchors per level:
    #   level 0: a0 (4,4) d^2 13, a1 (12,4) d^2 29, a4 (4,12) d^2 45 -> IoU 36/108, 24/120, 12/132
    #   level 1: a16 (8,8), a17 (24,8), a18 (8,24)                   -> IoU 80/256, 0, 0
    #   IoUs [1/3, 1/5, 1/11, 5/16, 0, 0]: mean 0.1561 + unbiased std 0.1489 = threshold 0.3050,
    #   so a0 (0.333) and a16 (0.3125) pass; both centres lie inside S.
    # Large box L = [0, 0, 25, 22] (area 550, centre (12.5, 11)):
    #   level 0: a5 (12,12) d^2 1.25, a1 (12,4) 49.25, a6 (20,12) 57.25 -> inside L: 64/550 each
    #   level 1: a16 (8,8) 29.25, a17 (24,8) 141.25, a18 (8,24) 189.25 -> 256/550, 144/662, 96/710
    #   IoUs [.1164 x 3, .4655, .2175, .1352]: threshold 0.1945 + 0.1384 = 0.3329: a16 only.
    # a16 is positive for both: it goes to L (IoU 0.465 > 0.3125). S keeps a0.
    small, large = [2.0, 2.0, 12.0, 10.0], [0.0, 0.0, 25.0, 22.0]
    expected = [BACKGROUND] * 20
    expected[0], expected[16] = 0, 1
    assert _atss([[small, large]], [[0, 1]]).tolist() == [expected]
    # Alone, S keeps a16 too: the contest above decided it, not S's threshold.
    alone = [BACKGROUND] * 20
    alone[0], alone[16] = 0, 0
    assert _atss([[small]], [[0]]).tolist() == [alone]
    # Box order does not matter.
    expected[0], expected[16] = 1, 0
    assert _atss([[large, small]], [[1, 0]]).tolist() == [expected]


def test_atss_needs_the_centre_inside_the_box():
    # Level 0 only, topk 2. B = [5, 0, 11, 8] lies between the centres x = 4 and 12: its two
    # candidates a0, a1 have IoU 24/88 each, so both reach the threshold (mean + std of two
    # equal values is that value), but neither centre is inside B: B gets no anchor (as in
    # the paper's reference code).
    level0 = ANCHORS[:16]

    def atss(box):
        box = torch.tensor([[box]])
        return ATSSMatcher(topk=2)(batched_box_iou(box, level0), torch.tensor([[True]]), box, level0, [16])[0]

    assert (atss([5.0, 0.0, 11.0, 8.0]) == BACKGROUND).all()
    # Widened to [2, 0, 14, 8] (IoU 48/112 each), covering both centres: both are positive.
    out = atss([2.0, 0.0, 14.0, 8.0])
    assert out[:2].tolist() == [0, 0] and (out[2:] == BACKGROUND).all()


def test_atss_threshold_uses_the_unbiased_std():
    # Box [0, 0, 8, 14], topk 3 on level 0 only: candidates a0, a4, a1 with IoU 4/7, 3/8, 0.
    # Mean 0.3155; unbiased std 0.2903 -> threshold 0.606 > 4/7: no positive anchor.
    # (The biased std, 0.2370, would give 0.553 and make a0 positive.)
    box = torch.tensor([[[0.0, 0.0, 8.0, 14.0]]])
    level0 = ANCHORS[:16]
    out = ATSSMatcher(topk=3)(batched_box_iou(box, level0), torch.tensor([[True]]), box, level0, [16])
    assert (out == BACKGROUND).all()


def test_atss_ignores_padding_and_treats_images_independently():
    small, large = [2.0, 2.0, 12.0, 10.0], [0.0, 0.0, 25.0, 22.0]
    ref = _atss([[small, large]], [[0, 1]])
    # Image 0: the same boxes with padding slots, one of them a copy of L; image 1: padding only.
    padded = _atss(
        [[small, [0.0] * 4, large, large], [large, [0.0] * 4, small, small]],
        [[0, PAD_LABEL, 1, PAD_LABEL], [PAD_LABEL] * 4],
    )
    remap = {0: 0, 1: 2, BACKGROUND: BACKGROUND}
    assert padded[0].tolist() == [remap[v] for v in ref[0].tolist()]
    assert (padded[1] == BACKGROUND).all()
    # No box slot at all.
    no_slot = torch.zeros(2, 0, dtype=torch.bool)
    out = ATSSMatcher()(torch.zeros(2, 0, 20), no_slot, torch.zeros(2, 0, 4), ANCHORS, PER_LEVEL)
    assert out.shape == (2, 20) and (out == BACKGROUND).all()


def test_atss_crowd_region_ignores_only_background():
    # A crowd region over the right half: covered background anchors become IGNORE, the
    # positive a16 stays positive, and the crowd slot itself never takes an anchor.
    small, crowd = [2.0, 2.0, 12.0, 10.0], [16.0, 0.0, 32.0, 32.0]
    boxes = torch.tensor([[small, crowd]])
    labels = torch.tensor([[0, CROWD_LABEL]])
    ioa = batched_box_ioa(boxes, ANCHORS).masked_fill(~(labels == CROWD_LABEL)[:, :, None], 0).max(dim=1).values
    out = _atss(boxes, labels, crowd_ioa=ioa)[0]
    right = (ANCHORS[:, 0] + ANCHORS[:, 2]) / 2 > 16
    assert out[0].item() == 0 and out[16].item() == 0
    assert (out[right] == IGNORE).all()
    assert (out[~right & (out != 0)] == BACKGROUND).all()


def test_atss_candidates_count_locations_times_anchors_per_location():
    # With A anchors per location the reference code takes topk * A anchors per level.
    box = torch.tensor([[[2.0, 2.0, 12.0, 10.0]]])
    stacked = ANCHORS.repeat_interleave(2, dim=0)  # A = 2 anchors at every location
    cand = ATSSMatcher(topk=3, anchors_per_location=2).candidates(box, stacked, [32, 8])
    assert cand.shape == (1, 1, 12)
    # Level 1 has 4 locations: topk larger than the level takes the whole level.
    cand = ATSSMatcher(topk=9).candidates(box, ANCHORS, PER_LEVEL)
    assert cand.shape == (1, 1, 13) and sorted(cand[0, 0, 9:].tolist()) == [16, 17, 18, 19]
