"""Correct: turn a finding into a repaired model (edits at run time, folded into weights,
exported as a Hugging Face folder)."""

from .edits import AddVector, EditSet, ProjectOut, as_edit_set
from .export import export
from .weights import check, fold, writers

__all__ = [
    "AddVector",
    "EditSet",
    "ProjectOut",
    "as_edit_set",
    "check",
    "export",
    "fold",
    "writers",
]
