"""The local web viewer (`lmscope serve`): scan, feature, search, overview, graph and steer pages.
See docs/viewer.md."""
