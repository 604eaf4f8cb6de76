"""Transitional: the command still lives in its library module."""

from ..export import add_arguments, run  # noqa: F401
