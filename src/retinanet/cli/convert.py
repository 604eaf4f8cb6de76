"""Transitional: the command still lives in its library module."""

from ..data.convert import add_arguments, run  # noqa: F401
