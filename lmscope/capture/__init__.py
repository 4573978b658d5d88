"""Stage 1: capture activations from a corpus into a store (the hooking itself is lmscope.models.runtime)."""
