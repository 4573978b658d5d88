"""Correct: turn a finding into a repaired model (edits at run time, folded into weights,
exported as a Hugging Face folder), chosen on fit prompts and judged on held-out ones."""

from .edits import AddVector, EditSet, ProjectOut, as_edit_set, edit_tensors, load_edits
from .export import export
from .weights import check, fold, writers

__all__ = [
    "AddVector",
    "EditSet",
    "ProjectOut",
    "as_edit_set",
    "check",
    "edit_tensors",
    "export",
    "fold",
    "load_edits",
    "writers",
]
