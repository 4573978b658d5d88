"""Read a prompt through an atlas: the one scan engine and its renderers.

from lmscope.read import Reader, compare
reader = Reader.open("atlas/")
res = reader.scan("The horse galloped across the field")     # ScanResult
cmp = compare(reader, "prompt A", "prompt B")                 # CompareResult
print(render_scan(res)); render_png(res, "scan.png"); write_html(res, "scan.html")
"""

from .compare import CompareResult, DiffMap, FeatureDiff, compare
from .render_html import render_html, write_html
from .render_png import render_diff_png, render_png
from .render_terminal import render_compare, render_diff, render_scan
from .scan import FeatureHit, Reader, ScanResult, scan

__all__ = [
    "CompareResult",
    "DiffMap",
    "FeatureDiff",
    "FeatureHit",
    "Reader",
    "ScanResult",
    "compare",
    "render_compare",
    "render_diff",
    "render_diff_png",
    "render_html",
    "render_png",
    "render_scan",
    "scan",
    "write_html",
]
