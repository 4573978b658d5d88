"""Stage 1: capture activations at named hook points, from a corpus, into a store."""

from .hooks import Edit, RunResult, StopForward, add, capture, edit, hooked, replace, run, scale

__all__ = ["Edit", "RunResult", "StopForward", "add", "capture", "edit", "hooked", "replace", "run", "scale"]
