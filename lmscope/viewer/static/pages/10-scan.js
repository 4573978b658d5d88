// Scan page: type a prompt, see the brain map (layers x tokens, each row's fit = 1 - FVU on the
// prompt beside it); hover or click a token to see its features in every layer; click a cell to
// see that layer's top features at that token; click a feature to open its page.
"use strict";
(() => {
  const {el, api, heat, featureLink, labelSpan, showToken, showError} = lmscope;
  let last = {prompt: "The horse galloped across the field", result: null, pinned: null};

  function tokenPanel(res, pos) {
    const box = el("div", {class: "panel", id: "token-panel"});
    box.append(el("h3", {}, "Token ", el("code", {class: "tok"}, showToken(res.tokens[pos])),
                  el("span", {class: "muted"}, ` position ${pos}`)));
    if (res.hooks.length > 8) {  // a whole-model atlas: one compact row per layer, top 2 features
      box.append(el("table", {class: "hits compact"}, res.hooks.map(hook => {
        const hits = res.top[hook][pos].slice(0, 2);
        return el("tr", {}, el("td", {class: "muted"}, hook),
          el("td", {}, hits.length ? hits.map(h => el("span", {class: "hit"}, featureLink(h), " ",
            h.act.toFixed(1), " ", labelSpan(h.label))) : el("span", {class: "muted"}, "no active feature")));
      })));
      return box;
    }
    for (const hook of res.hooks) {
      const hits = res.top[hook][pos];
      box.append(el("h4", {}, hook));
      if (!hits.length) { box.append(el("p", {class: "muted"}, "no active feature")); continue; }
      box.append(el("table", {class: "hits"}, hits.map(h =>
        el("tr", {}, el("td", {}, featureLink(h)), el("td", {class: "num"}, h.act.toFixed(2)),
           el("td", {}, labelSpan(h.label))))));
    }
    return box;
  }

  function cellPanel(res, r, pos) {
    const hook = res.hooks[r], hits = res.top[hook][pos];
    const rel = res.relative && res.relative[r] ? res.relative[r][pos] : null;
    const box = el("div", {class: "panel", id: "cell-panel", "data-hook": hook, "data-pos": pos});
    box.append(el("h3", {}, hook, " at ", el("code", {class: "tok"}, showToken(res.tokens[pos])),
                  el("span", {class: "muted"}, ` position ${pos}`)));
    box.append(el("p", {class: "muted"}, `${res.n_active[r][pos]} active · activity ` +
      res.activity[r][pos].toFixed(2) + (rel !== null ? ` = ${rel.toFixed(2)}× the layer's corpus mean` : "") +
      ` · layer fit on this prompt ${fitText(res, r)}`));
    if (!hits.length) box.append(el("p", {class: "muted"}, "no active feature"));
    else box.append(el("table", {class: "hits"}, hits.map(h =>
      el("tr", {}, el("td", {}, featureLink(h)), el("td", {class: "num"}, h.act.toFixed(2)),
         el("td", {}, labelSpan(h.label))))));
    return box;
  }

  function fitText(res, r) {
    const f = res.explained ? res.explained[r] : null;
    if (f === null || f === undefined) return "–";
    return f < -9.99 ? "<−999%" : `${Math.round(100 * f)}%`;  // the JSON has the exact value
  }

  function brainMap(res, onPick) {
    const n = res.tokens.length;
    const dense = res.hooks.length > 12 ? " dense" : "";
    const grid = el("div", {class: "brain" + dense, id: "brain", style: {gridTemplateColumns: `max-content max-content repeat(${n}, minmax(2.2em, max-content))`}});
    grid.append(el("div", {class: "corner"}), el("div", {class: "fithead", title: "1 − FVU of the dictionary's output on this prompt (BOS excluded)"}, "fit"));
    res.tokens.forEach((t, p) => grid.append(
      el("div", {class: "tokhead", "data-pos": p, title: `token ${p}`, onclick: () => onPick(p, true),
                 onmouseenter: () => onPick(p, false)}, showToken(t))));
    res.hooks.forEach((hook, r) => {
      grid.append(el("div", {class: "hookname"}, hook),
                  el("div", {class: "fit", "data-row": r, title: "1 − FVU on this prompt"}, fitText(res, r)));
      res.brain[r].forEach((v, p) => grid.append(
        el("div", {class: "cell", "data-pos": p, "data-row": r, style: {background: heat(v)},
                   title: `${hook} · ${res.n_active[r][p]} active · activity ${res.activity[r][p].toFixed(2)}`,
                   onclick: () => onPick(p, true, r), onmouseenter: () => onPick(p, false)})));
    });
    return grid;
  }

  function render(main) {
    const input = el("textarea", {id: "prompt", rows: 2, maxlength: 20000}, last.prompt);
    const vs = el("input", {id: "vs", type: "text", placeholder: "optional: compare with another prompt (--vs)"});
    const out = el("div", {id: "scan-out"});
    const go = el("button", {id: "scan-btn", type: "submit"}, "Scan");
    const form = el("form", {class: "scanform", onsubmit: (e) => { e.preventDefault(); run(); }},
                    input, el("div", {class: "row"}, vs, go));
    main.append(el("h1", {}, "Scan a prompt"), form, out);
    input.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); run(); } });

    async function run() {
      last.prompt = input.value;
      out.replaceChildren(el("p", {class: "muted"}, "Scanning…"));
      go.disabled = true;
      try {
        const res = await api("/api/scan", {prompt: input.value, top_k: 5});
        last.result = res; last.pinned = null;
        show(res);
        if (vs.value.trim()) {
          const cmp = await api("/api/compare", {prompt_a: input.value, prompt_b: vs.value});
          if (cmp.map) out.append(diffMap(cmp.map));
          out.append(compareTable(cmp));
        }
      } catch (err) { out.replaceChildren(); showError(out, err); }
      finally { go.disabled = false; }
    }

    function show(res) {
      const side = el("div", {class: "side"});
      // pick(p, pin, r): show token p (and, from a cell click, layer r's features there first).
      const pick = (p, pin, r) => {
        if (!pin && last.pinned !== null) return;
        const key = r === undefined ? `${p}` : `${p}/${r}`;
        if (pin) last.pinned = (last.pinned === key ? null : key);
        document.querySelectorAll("#brain .tokhead").forEach(c =>
          c.classList.toggle("sel", Number(c.dataset.pos) === p));
        document.querySelectorAll("#brain .cell").forEach(c =>
          c.classList.toggle("sel", Number(c.dataset.pos) === p &&
            (r === undefined || Number(c.dataset.row) === r)));
        side.replaceChildren(...(r === undefined ? [] : [cellPanel(res, r, p)]), tokenPanel(res, p));
      };
      const scale = res.brain_norm === "corpus_mean"
        ? "colour = feature activity (sum of active feature activations) against the layer's mean over the atlas corpus, " +
          "log scale: white ≤ ¼×, mid-orange = the mean, red ≥ 4×. "
        : "colour = feature activity (sum of active feature activations), normalized per dictionary (red = the row's peak). ";
      out.replaceChildren(
        el("p", {class: "muted", id: "scan-legend"}, `${res.tokens.length} tokens · ${res.hooks.length} dictionaries · ` +
           scale + "fit = 1 − FVU of the layer's output on this prompt (BOS excluded): low fit = blurry layer. " +
           "Hover a token to see its features; click a cell for that layer's features at that token."),
        el("div", {class: "scanview"}, el("div", {class: "brainwrap"}, brainMap(res, pick)), side));
      // Start on the token with the most activity (BOS excluded).
      let best = res.has_bos && res.tokens.length > 1 ? 1 : 0, bestV = -1;
      res.tokens.forEach((_, p) => {
        if (res.has_bos && p === 0) return;
        const v = res.brain.reduce((s, row) => s + row[p], 0);
        if (v > bestV) { bestV = v; best = p; }
      });
      pick(best, false);
    }

    // The --vs diff map: layers x aligned positions, cell = share of the layer's features that
    // changed at that position (0 = same, 1 = none in common).
    function diffMap(m) {
      const n = m.change.length ? m.change[0].length : 0;
      const dense = m.hooks.length > 12 ? " dense" : "";
      const grid = el("div", {class: "brain" + dense, id: "diffmap", style: {gridTemplateColumns: `max-content max-content repeat(${n}, minmax(2.2em, max-content))`}});
      grid.append(el("div", {class: "corner"}), el("div", {class: "fithead", title: "mean change over positions (BOS excluded)"}, "mean"));
      for (let p = 0; p < n; p++) {
        const a = m.tokens_a[p], b = m.tokens_b[p];
        grid.append(el("div", {class: "tokhead", title: `position ${p}`}, a === b ? showToken(a) : `${showToken(a)} / ${showToken(b)}`));
      }
      m.hooks.forEach((hook, r) => {
        grid.append(el("div", {class: "hookname"}, hook),
                    el("div", {class: "fit"}, `${Math.round(100 * m.layer_change[r])}%`));
        m.change[r].forEach((v, p) => grid.append(el("div", {class: "cell", "data-row": r, "data-pos": p,
          style: {background: heat(v)}, title: `${hook} · position ${p} · ${Math.round(100 * v)}% of the features changed`})));
      });
      return el("div", {class: "panel", id: "diff-panel"},
        el("h3", {}, "Diff map: where the two prompts differ, layer by layer"),
        el("p", {class: "muted"}, "Positions aligned (token p of A against token p of B); colour = share of the layer's feature activity that changed at that position (white = the same features, red = none in common)." +
           (m.note ? " " + m.note : "")),
        el("div", {class: "brainwrap"}, grid));
    }

    function compareTable(cmp) {
      return el("div", {class: "panel", id: "compare"},
        el("h3", {}, "Features that differ most"),
        el("table", {class: "hits"},
          el("tr", {}, el("th", {}, "feature"), el("th", {}, "A"), el("th", {}, "B"), el("th", {}, "A−B"), el("th", {}, "label")),
          cmp.diffs.map(d => el("tr", {}, el("td", {}, featureLink(d)), el("td", {class: "num"}, d.act_a.toFixed(2)),
            el("td", {class: "num"}, d.act_b.toFixed(2)), el("td", {class: "num"}, d.diff.toFixed(2)),
            el("td", {}, labelSpan(d.label))))));
    }

    if (last.result) show(last.result);
  }

  lmscope.registerPage({name: "scan", title: "Scan", render});
})();
