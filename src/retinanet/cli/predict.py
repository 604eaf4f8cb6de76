"""Transitional: the command still lives in its library module."""

from ..predict import add_arguments, run  # noqa: F401
