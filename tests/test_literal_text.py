"""User strings (class names, titles, file names) are drawn as written in every plot:
matplotlib would parse a string with two '$' as math, and '$\\foo$' (an unknown symbol)
made saving the figure raise."""

import numpy as np
import pytest
from PIL import Image

from retinanet.data.dataset import DetectionDataset, Record
from retinanet.data.stats import dataset_stats, plot_stats
from retinanet.evaluation.plots import plot_confusion_matrix, plot_pr_curves
from retinanet.history import plot_curves

NAMES = ["$\\foo$", "cost $5 to $10", "plain"]


def _png(path):
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"


def test_confusion_matrix_draws_math_like_class_names(tmp_path):
    matrix = np.arange(16).reshape(4, 4)
    _png(plot_confusion_matrix(tmp_path / "cm.png", matrix, NAMES, title="$\\bar$ title"))


def test_pr_curves_draw_math_like_class_names_in_the_legend(tmp_path):
    recall = np.linspace(0, 1, 101)
    precision = np.tile(np.linspace(1, 0, 101), (3, 1))
    _png(plot_pr_curves(tmp_path / "pr.png", recall, {"$IoU\\nope$": precision}, NAMES))


def test_dataset_histogram_draws_math_like_class_names(tmp_path):
    records = [
        Record(tmp_path / "a.jpg", 1, 64, 48, np.array([[1.0, 2.0, 30.0, 40.0], [5, 5, 20, 20]], np.float32), np.array([0, 1]), np.zeros(2, bool))
    ]
    stats = dataset_stats(DetectionDataset(records, NAMES))
    _png(plot_stats(stats, tmp_path / "stats.png", title="$\\foo$ set"))


def test_training_curves_draw_math_like_labels(tmp_path):
    cols = {"epoch": np.arange(1, 4, dtype=float), "a": np.array([3.0, 2.0, 1.0]), "b": np.array([1.0, 2.0, 3.0])}
    _png(plot_curves(cols, tmp_path / "curves.png", [("$\\foo$", {"a": "$\\bar$", "b": "x $1 y $2"})]))


@pytest.mark.parametrize("name", NAMES)
def test_text_is_literal_after_saving(tmp_path, name):
    from matplotlib.text import Text

    from retinanet.figures import figure, save_figure

    fig = figure()
    ax = fig.subplots()
    ax.barh([name], [1])
    ax.set_title(name)
    save_figure(fig, tmp_path / "f.png")
    texts = [t for t in fig.findobj(Text) if t.get_text()]
    assert name in [t.get_text() for t in texts]
    assert not any(t.get_parse_math() for t in texts)
