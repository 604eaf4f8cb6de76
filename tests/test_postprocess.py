import torch
from torchvision.ops import nms

from retinanet.boxes import BoxCoder
from retinanet.config import PostprocessConfig
from retinanet.postprocess import postprocess


def reference(cls_logits, box_deltas, anchors, counts, cfg, coder):
    """Straightforward per-image, per-level, per-class loops with torchvision.ops.nms."""
    out = []
    for i in range(cls_logits.shape[0]):
        cand_boxes, cand_scores, cand_labels = [], [], []
        start = 0
        for count in counts:
            s = torch.sigmoid(cls_logits[i, start : start + count]).flatten()
            top, idx = s.topk(min(cfg.topk, len(s)))
            keep = top > cfg.score_thresh
            top, idx = top[keep], idx[keep]
            a = idx // cls_logits.shape[2] + start
            cand_boxes.append(coder.decode(box_deltas[i, a], anchors[a]))
            cand_scores.append(top)
            cand_labels.append(idx % cls_logits.shape[2])
            start += count
        b, s, lab = torch.cat(cand_boxes), torch.cat(cand_scores), torch.cat(cand_labels)
        kept = []
        for c in lab.unique():
            ids = (lab == c).nonzero().squeeze(1)
            kept.append(ids[nms(b[ids], s[ids], cfg.nms_iou)])
        kept = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)
        order = s[kept].argsort(descending=True)[: cfg.max_detections]
        kept = kept[order]
        out.append((b[kept], s[kept], lab[kept]))
    return out


def test_postprocess_equals_per_image_per_class_nms():
    torch.manual_seed(1)
    n, k = 3, 4
    counts = [60, 15]
    anchors = torch.rand(75, 2) * 80
    anchors = torch.cat([anchors, anchors + 10 + torch.rand(75, 2) * 30], 1)
    cls = torch.randn(n, 75, k) * 2
    deltas = torch.randn(n, 75, 4) * 0.2
    cfg = PostprocessConfig(score_thresh=0.3, topk=50, nms_iou=0.5, max_detections=20)
    coder = BoxCoder()
    ours = postprocess(cls, deltas, anchors, counts, cfg, coder)
    ref = reference(cls, deltas, anchors, counts, cfg, coder)
    for det, (b, s, lab) in zip(ours, ref):
        assert len(det) == len(s) > 0
        torch.testing.assert_close(det.scores, s)
        torch.testing.assert_close(det.boxes, b)
        assert det.labels.tolist() == lab.tolist()


def test_rescale_and_clip_to_original_image():
    anchors = torch.tensor([[0.0, 0.0, 40.0, 40.0], [50.0, 50.0, 90.0, 90.0]])
    cls = torch.tensor([[[5.0], [5.0]]])
    deltas = torch.zeros(1, 2, 4)
    cfg = PostprocessConfig()
    det = postprocess(cls, deltas, anchors, [2], cfg, BoxCoder(), scales=torch.tensor([0.5]), orig_sizes=torch.tensor([[150, 170]]))[0]
    # Divided by the letterbox scale 0.5, then clipped to the 170 x 150 (w x h) image.
    torch.testing.assert_close(det.boxes, torch.tensor([[0.0, 0.0, 80.0, 80.0], [100.0, 100.0, 170.0, 150.0]]))


def test_no_candidates_gives_empty_detections():
    anchors = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    det = postprocess(torch.full((2, 1, 3), -10.0), torch.zeros(2, 1, 4), anchors, [1], PostprocessConfig(), BoxCoder())
    assert [len(d) for d in det] == [0, 0] and det[0].boxes.shape == (0, 4)
