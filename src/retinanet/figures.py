"""Every PNG plot is made and saved here: an Agg canvas (no display, no pyplot state, no
change to matplotlib's global backend) and text drawn literally.

Class names, file names and titles are user data. matplotlib would parse a string with two
``$`` as math (a class named ``$\\foo$`` raises while saving), so every text of a figure is
drawn as written: a plotting function runs under ``@literal_text`` (texts, tick labels
included, are created with math parsing off) and saves with ``save_figure``.
"""

from __future__ import annotations

from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib is imported when a plot is made, not when this module is: importing the
# package stays fast for commands that draw nothing.
LITERAL = {"text.parse_math": False}  # texts created while this is in force are never mathtext
F = TypeVar("F", bound=Callable[..., Any])


def literal_text(fn: F) -> F:
    """Run the plotting function ``fn`` with matplotlib's math parsing off."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from matplotlib import rc_context

        with rc_context(LITERAL):
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


def figure(**kwargs: Any) -> Figure:
    """A new figure on its own Agg canvas (``kwargs`` go to ``Figure``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its folder created), every text literal."""
    from matplotlib import rc_context
    from matplotlib.text import Text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for text in fig.findobj(Text):  # also for a figure drawn outside @literal_text
        text.set_parse_math(False)
    with rc_context(LITERAL):  # tick labels are made while drawing: they read the setting then
        fig.savefig(path, dpi=dpi)
    return path
