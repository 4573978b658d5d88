"""Stage 1: capture activations from a corpus into a store.

The hooking itself (capture/edit at hook points) is lmscope.models.runtime.
"""
