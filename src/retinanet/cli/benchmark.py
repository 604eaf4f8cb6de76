"""Transitional: the command still lives in its library module."""

from ..benchmark import add_arguments, run  # noqa: F401
