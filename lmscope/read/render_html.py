"""The scan as one self-contained static HTML file (no script, no CDN; all text escaped).

Model and corpus text can contain HTML, so every string goes through html.escape; the page has
no JavaScript at all: the brain map is a table whose cells carry the token's top features in a
tooltip (title attribute, also escaped).
"""

from __future__ import annotations

import html
from pathlib import Path

from .compare import CompareResult
from .scan import ScanResult

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table.brain{border-collapse:collapse;font-size:12px}
table.brain td,table.brain th{padding:2px 4px;text-align:center;border:1px solid #fff}
table.brain th.hook{text-align:right;font-weight:normal;font-family:monospace}
th.tok{font-family:monospace;font-weight:normal;white-space:pre}
.feats{font-size:13px}.feats td{padding:1px 8px;vertical-align:top}
.unl{color:#888;font-style:italic}code{font-size:12px}
"""


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _color(v: float) -> str:
    # Light yellow -> deep red ramp; readable text on both ends.
    v = min(max(v, 0.0), 1.0)
    r, g, b = 255, int(250 - 180 * v), int(220 - 200 * v)
    return f"rgb({r},{g},{b})"


def render_html(res: ScanResult, cmp: CompareResult | None = None) -> str:
    rows = []
    head = "".join(f'<th class="tok">{_e(t)}</th>' for t in res.tokens)
    rows.append(f"<tr><th></th><th>fit</th>{head}</tr>")
    fits = res.explained or [None] * len(res.hooks)
    for hook, row, fit in zip(res.hooks, res.brain, fits):
        cells = []
        for p, v in enumerate(row):
            tip = "\n".join(f"{h.id} {h.act:.2f} {h.display()}" for h in res.top[hook][p])
            cells.append(f'<td style="background:{_color(v)}" title="{_e(tip)}">{v:.2f}</td>')
        fit_s = f"{fit:.0%}" if fit is not None else "-"
        rows.append(f'<tr><th class="hook">{_e(hook)}</th><td>{fit_s}</td>{"".join(cells)}</tr>')
    feats = []
    for p, tok in enumerate(res.tokens):
        hits = res.token_features(p, limit=5)
        items = "<br>".join(
            f"<code>{_e(h.id)}</code> {h.act:.2f} "
            + (f"{_e(h.label)}" if h.label else '<span class="unl">(unlabeled)</span>')
            for h in hits
        )
        feats.append(
            f"<tr><td><code>{p}</code></td><td><code>{_e(repr(tok))}</code></td><td>{items}</td></tr>"
        )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>lmscope scan: {_e(res.prompt[:60])}</title><style>{CSS}</style></head><body>",
        f"<h1>lmscope scan</h1><p>Prompt: <b>{_e(res.prompt)}</b><br>Model: {_e(res.model)}</p>",
        "<h2>Brain map</h2><p>Feature activity per token, "
        + (
            "against the layer's mean over the atlas corpus (log scale: 0.5 = the mean, "
            "each 0.25 a factor of 2)"
            if res.brain_norm == "corpus_mean"
            else "normalized per dictionary (1 = the row's peak on this prompt)"
        )
        + "; fit = 1 - FVU of the dictionary's output on this prompt (BOS excluded). "
        "Hover a cell for its top features.</p>",
        f"<table class='brain'>{''.join(rows)}</table>",
        f"<h2>Top features per token</h2><table class='feats'>{''.join(feats)}</table>",
    ]
    if cmp is not None:
        diff_rows = "".join(
            f"<tr><td><code>{_e(d.id)}</code></td><td>{d.act_a:.2f}</td><td>{d.act_b:.2f}</td>"
            f"<td>{d.diff:+.2f}</td><td>{_e(d.label) if d.label else '(unlabeled)'}</td></tr>"
            for d in cmp.diffs
        )
        parts.append(
            f"<h2>Differences: A = {_e(cmp.prompt_a)} vs B = {_e(cmp.prompt_b)}</h2>"
            f"<table class='feats'><tr><th>feature</th><th>A</th><th>B</th><th>A-B</th>"
            f"<th>label</th></tr>{diff_rows}</table>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(res: ScanResult, path: str | Path, cmp: CompareResult | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_html(res, cmp), encoding="utf-8")
    tmp.replace(path)
    return path
