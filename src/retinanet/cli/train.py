"""Transitional: the command still lives in its library module."""

from ..train import add_arguments, run  # noqa: F401
