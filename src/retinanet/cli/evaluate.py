"""Transitional: the command still lives in its library module."""

from ..evaluate import add_arguments, run  # noqa: F401
