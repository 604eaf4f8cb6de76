"""`retinanet track VIDEO...`: multi-object tracking, the same as `retinanet predict --track`:
every box gets its track's id (ByteTrack), drawn on the output video and written to
OUT/tracks/<video>.txt as MOTChallenge lines."""

from __future__ import annotations

import argparse

from . import predict


def add_arguments(p: argparse.ArgumentParser) -> None:
    predict.add_arguments(p)
    p.set_defaults(track=True)


def run(args: argparse.Namespace) -> int:
    args.track = True
    return predict.run(args)
