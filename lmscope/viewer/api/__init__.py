"""Viewer API modules: each file registers its routes with `lmscope.viewer.routes.route`."""
