"""Transitional: the command still lives in its library module."""

from ..pretrain import add_arguments, run  # noqa: F401
