"""What checking a dataset found: ``Issue``s at three levels in a ``DataReport``, and
``DataError`` for a dataset that cannot be used as it is.

Three levels of problem:

- ``error``: the entry is unusable and is dropped: a missing or unreadable image, or a
  JPEG cut short by more than 1% of its rows (any cut of a progressive one); an image
  path in an annotation that leaves its folder (``path outside dataset root``; never
  opened); an annotation file that does not parse (or an xml with a DTD or entities,
  refused); a box with a NaN/inf coordinate, zero or negative size or lying wholly
  outside its image; an unknown class; a duplicate image id.
  ``load_dataset(drop_bad=False)`` (what training does) raises DataError when there is
  any; ``drop_bad=True`` drops them and carries on.
- ``fixed``: repaired and reported, never fatal: a box partly outside its image is
  clipped to it; a baseline JPEG missing at most 1% of its rows at the end (``truncated
  image``, images.TRUNCATED_ROWS_LIMIT) is used with the lost part grey.
- ``warning``: worth knowing, nothing changed: a duplicate annotation id, an image
  without a label file, a requested split the dataset does not define.

A problem with a whole annotation file (a COCO json that does not parse) cannot be
dropped piecemeal: the reader raises DataError at once.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .images import ImageError, MissingImageError
from .stats import DatasetStats, plot_stats, stats_dict, stats_text

ERROR = "error"
FIXED = "fixed"
WARNING = "warning"
LEVELS = (ERROR, FIXED, WARNING)

# How thoroughly image files are checked (load_dataset's ``check``; the report records it).
FULL = "full"  # decode every image: finds truncated / corrupt files
HEADER = "header"  # read the header only: finds missing and non-image files, and the true size
NONE = "none"  # trust the annotations' image sizes; only boxes and labels are checked
CHECK_MODES = (FULL, HEADER, NONE)

SUMMARY_EXAMPLES = 3  # issues quoted in the one-line DataError message


@dataclass(frozen=True)
class Issue:
    level: str
    """'error' (entry dropped), 'fixed' (repaired, e.g. clipped) or 'warning'."""
    kind: str
    """Short category used to group issues, e.g. 'unreadable image', 'degenerate box'."""
    file: str
    """The file to look at (annotation file, or the image when the problem is the image)."""
    reason: str

    def __str__(self) -> str:
        return f"{self.level}: {self.file}: {self.reason}"


@dataclass
class DataReport:
    source: str = ""
    split: str = ""
    format: str = ""
    mode: str = FULL
    issues: list[Issue] = field(default_factory=list)
    stats: DatasetStats | None = None
    dropped_images: int = 0
    """Images left out: by the reader (dropped_reading) and by validation."""
    dropped_boxes: int = 0
    dropped_reading: int = 0
    """Images a reader left out before validation (unreadable image, annotation file that
    does not parse, image path outside the dataset root, ...); counted in dropped_images."""

    def add(self, level: str, kind: str, file: str | Path, reason: str) -> None:
        assert level in LEVELS, level
        self.issues.append(Issue(level, kind, str(file), reason))

    def error(self, kind: str, file: str | Path, reason: str) -> None:
        self.add(ERROR, kind, file, reason)

    def fixed(self, kind: str, file: str | Path, reason: str) -> None:
        self.add(FIXED, kind, file, reason)

    def warning(self, kind: str, file: str | Path, reason: str) -> None:
        self.add(WARNING, kind, file, reason)

    def image_error(self, image: str | Path, err: ImageError) -> None:
        """An image that cannot be used: 'missing image' or 'unreadable image', with the
        reason (ImageError's message without the path it starts with)."""
        kind = "missing image" if isinstance(err, MissingImageError) else "unreadable image"
        self.error(kind, image, str(err).split(": ", 1)[-1])

    def of_level(self, level: str) -> list[Issue]:
        return [i for i in self.issues if i.level == level]

    @property
    def errors(self) -> list[Issue]:
        return self.of_level(ERROR)

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self, level: str | None = None) -> Counter:
        """(level, kind) -> number of issues."""
        return Counter((i.level, i.kind) for i in self.issues if level is None or i.level == level)

    @property
    def where(self) -> str:
        return f"{self.source} [{self.split}]" if self.split else self.source

    def summary(self, examples: int = SUMMARY_EXAMPLES) -> str:
        """One line: what is wrong, a few examples, and what to do (the DataError message)."""
        errors = self.errors
        if not errors:
            return f"{self.where}: no errors"
        ranked = sorted(self.counts(ERROR).items(), key=lambda item: (-item[1], item[0][1]))
        kinds = ", ".join(f"{n} {kind}" for (_, kind), n in ranked)
        shown = "; ".join(f"{i.file}: {i.reason}" for i in errors[:examples])
        more = f"; and {len(errors) - examples} more" if len(errors) > examples else ""
        listing = f"; `retinanet check-data {self.source}` lists them all" if more else ""
        return (
            f"{self.where}: {len(errors)} unusable entr{'y' if len(errors) == 1 else 'ies'} ({kinds}): {shown}{more}. "
            f"Fix them, or drop them with drop_bad=True (--drop-bad){listing}"
        )

    def to_text(self, max_per_kind: int | None = None) -> str:
        """The full human-readable report: statistics, histograms, then every issue."""
        lines = [f"dataset {self.where}  format {self.format or '?'}  image check: {self.mode}"]
        if self.stats is not None:
            lines += stats_text(self.stats)
        if self.dropped_images or self.dropped_boxes:
            lines.append(f"dropped: {self.dropped_images} images, {self.dropped_boxes} boxes")
        lines.append("")
        if not self.issues:
            lines.append("no problems found")
        for level in LEVELS:
            lines += self._issues_text(level, max_per_kind)
        return "\n".join(lines)

    def _issues_text(self, level: str, max_per_kind: int | None) -> list[str]:
        """The issues of one level grouped by kind, at most ``max_per_kind`` of each."""
        lines = []
        by_kind: dict[str, list[Issue]] = {}
        for i in self.of_level(level):
            by_kind.setdefault(i.kind, []).append(i)
        for kind, items in by_kind.items():
            lines.append(f"{level} - {kind}: {len(items)}")
            shown = items if max_per_kind is None else items[:max_per_kind]
            lines += [f"  {i.file}: {i.reason}" for i in shown]
            if len(shown) < len(items):
                lines.append(f"  ... and {len(items) - len(shown)} more")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "split": self.split,
            "format": self.format,
            "mode": self.mode,
            "dropped_images": self.dropped_images,
            "dropped_boxes": self.dropped_boxes,
            "issues": [dataclasses.asdict(i) for i in self.issues],
            "stats": None if self.stats is None else stats_dict(self.stats),
        }

    def write(self, out_dir: str | Path) -> list[Path]:
        """report.txt (everything), problems.json (machine-readable) and boxes.png (plots)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "report.txt", out / "problems.json"]
        paths[0].write_text(self.to_text() + "\n")
        paths[1].write_text(json.dumps(self.to_dict(), indent=1))
        if self.stats is not None:
            paths.append(plot_stats(self.stats, out / "boxes.png", title=self.where))
        return paths


class DataError(ValueError):
    """A dataset that cannot be used as it is. The message is a one-line summary; the full
    report (when there is one) is ``.report``."""

    def __init__(self, message: str, report: DataReport | None = None):
        super().__init__(message)
        self.report = report
