// Graph page: attribution graphs (the circuit-tracer / Neuronpedia JSON `lmscope graph` writes)
// drawn as SVG. Token positions run left to right, layers bottom to top: embeddings at the bottom,
// logits at the top. Edge width is |weight|, colour its sign. Hover a node for its label; click a
// feature node to open its feature page. #/graph lists ATLAS/graphs/ (and builds new ones when
// the atlas has transcoders); #/graph/<file.json> shows one.
"use strict";
(() => {
  const {el, svg, api, showToken, showError} = lmscope;
  const POS = "#2563eb", NEG = "#dc2626";
  const EDGE_CHOICES = [100, 300, 1000, 3000];
  const LOGIT_W = 90, LOGIT_STEP = 96;  // output boxes: width, distance between centres
  let edgeLimit = 300;

  // --- the list and the build form ---------------------------------------------------------
  async function renderList(main) {
    const res = await api("/api/graphs");
    main.append(el("h1", {}, "Attribution graphs"));
    if (res.can_build) {
      const prompt = el("input", {type: "text", id: "graph-prompt", maxlength: 2000,
                                  placeholder: `a prompt (at most ${res.max_tokens} tokens)`});
      const target = el("input", {type: "text", id: "graph-target", class: "short",
                                  placeholder: "target token (optional)"});
      const go = el("button", {type: "submit", id: "graph-btn"}, "Build graph");
      const status = el("div", {id: "graph-status"});
      main.append(el("form", {class: "row", onsubmit: async (e) => {
        e.preventDefault();
        go.disabled = true;
        status.replaceChildren(el("p", {class: "muted"}, "Building the graph (one backward pass per batch of nodes)…"));
        try {
          const body = {prompt: prompt.value};
          if (target.value) body.target = target.value;
          const made = await api("/api/graph", body);
          location.hash = `#/graph/${encodeURIComponent(made.name)}`;
        } catch (err) { status.replaceChildren(); showError(status, err); }
        finally { go.disabled = false; }
      }}, prompt, target, go), status);
    } else {
      main.append(el("p", {class: "muted", id: "graph-note"},
        "Building graphs here needs a transcoder blocks.L.mlp_in → blocks.L.mlp_out for every layer. ",
        "Graphs written by `lmscope graph ATLAS PROMPT` (saved in ATLAS/graphs/) are listed below."));
    }
    if (!res.graphs.length) {
      main.append(el("p", {class: "muted", id: "graph-list"}, "No graph in ATLAS/graphs/ yet."));
      return;
    }
    main.append(el("h2", {}, "Saved graphs ", el("span", {class: "muted"}, `(ATLAS/${res.folder}/)`)),
      el("table", {class: "hits", id: "graph-list"},
      el("tr", {}, ["graph", "prompt", "target", "nodes", "links", "saved"].map(h => el("th", {}, h))),
      res.graphs.map(g => el("tr", {},
        el("td", {}, g.error ? el("code", {}, g.name)
                             : el("a", {href: `#/graph/${encodeURIComponent(g.name)}`, class: "feat"}, g.name)),
        el("td", {}, g.error ? el("span", {class: "muted"}, g.error) : g.prompt),
        el("td", {}, g.target === null ? "" : el("code", {class: "tok"}, showToken(g.target)),
           g.target_prob === null ? "" : el("span", {class: "muted"}, ` ${pct(g.target_prob)}`)),
        el("td", {class: "num"}, g.error ? "" : g.n_nodes),
        el("td", {class: "num"}, g.error ? "" : g.n_links),
        el("td", {class: "muted"}, new Date(g.mtime * 1000).toLocaleString())))));
  }

  // --- layout ------------------------------------------------------------------------------
  // Row of a node: 0 = embeddings, L + 1 = layer L (features and errors), top = logits.
  function layout(data) {
    const nodes = data.nodes;
    const nPos = Math.max((data.metadata.prompt_tokens || []).length,
                          1 + Math.max(0, ...nodes.map(n => n.ctx_idx || 0)));
    const logit = nodes.find(n => n.feature_type === "logit");
    const nLayers = logit ? Number(logit.layer) - 1
      : 1 + Math.max(0, ...nodes.filter(n => n.layer !== "E").map(n => Number(n.layer)));
    const top = nLayers + 1;
    const rowOf = n => n.feature_type === "embedding" ? 0 : n.feature_type === "logit" ? top : Number(n.layer) + 1;
    // Group per (row, position); features most influential first, errors last.
    const cells = new Map();
    for (const n of nodes) {
      const key = `${rowOf(n)}:${n.ctx_idx}`;
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(n);
    }
    const rank = n => (n.feature_type === "mlp reconstruction error" ? 1 : 0);
    for (const list of cells.values()) {
      list.sort((a, b) => rank(a) - rank(b) || (a.influence ?? 1) - (b.influence ?? 1) ||
                          (b.token_prob || 0) - (a.token_prob || 0));
    }
    // Column width: enough for the busiest cell of that position and for its token label.
    // The logits have the top row to themselves, so they do not widen the last column.
    const STEP = 17, PAD = 14;
    const width = new Array(nPos).fill(78);
    for (const [key, list] of cells) {
      const [row, p] = key.split(":").map(Number);
      if (row !== top) width[p] = Math.max(width[p], list.length * STEP + 2 * PAD);
    }
    const left = 64, rowH = nLayers > 12 ? 34 : 50, topPad = 30;
    const x0 = [];
    let acc = left;
    for (let p = 0; p < nPos; p++) { x0.push(acc); acc += width[p]; }
    const logits = nodes.filter(n => n.feature_type === "logit");
    let W = Math.max(acc, left + logits.length * LOGIT_STEP) + 16;
    const H = topPad + (top + 1) * rowH + 24;
    const yOf = row => topPad + (top - row) * rowH + rowH / 2;
    const pos = new Map();
    for (const [key, list] of cells) {
      const [row, p] = key.split(":").map(Number);
      if (row === top) continue;
      const cx = x0[p] + width[p] / 2;
      list.forEach((n, i) => pos.set(n.node_id, {x: cx + (i - (list.length - 1) / 2) * STEP, y: yOf(row), row}));
    }
    // Logits (most likely first) centred over the last position, shifted left to stay on the canvas.
    logits.sort((a, b) => (b.is_target_logit - a.is_target_logit) || (b.token_prob || 0) - (a.token_prob || 0));
    const span = logits.length * LOGIT_STEP;
    const last = nPos - 1;
    let start = x0[last] + width[last] / 2 - span / 2;
    start = Math.max(left, Math.min(start, W - 16 - span));
    logits.forEach((n, i) => pos.set(n.node_id, {x: start + (i + 0.5) * LOGIT_STEP, y: yOf(top), row: top}));
    W = Math.max(W, start + span + 16);
    return {pos, W, H, x0, width, nPos, nLayers, top, rowH, yOf, left};
  }

  // --- drawing -----------------------------------------------------------------------------
  function featureRef(n, meta) {
    if (n.feature_type !== "cross layer transcoder") return null;
    const parts = String(n.node_id).split("_");
    const layer = Number(n.layer);
    const hook = n.lmscope_hook || (meta.transcoder_list || [])[layer] || `blocks.${layer}.mlp_in`;
    const f = n.lmscope_feature ?? Number(parts[1]);
    return `${hook}/${f}`;
  }

  function title(n, meta) {
    const toks = meta.prompt_tokens || [];
    const at = `position ${n.ctx_idx} (${showToken(toks[n.ctx_idx] ?? "")})`;
    switch (n.feature_type) {
      case "embedding": return [`token ${showToken(n.clerp)} @${n.ctx_idx}`, at];
      case "logit": return [n.clerp || `logit ${n.feature}`, n.is_target_logit ? "target logit" : "logit"];
      case "mlp reconstruction error": return [`error L${n.layer} @${n.ctx_idx}`, `${at} · what the transcoder misses`];
      default: return [featureRef(n, meta), `layer ${n.layer} · ${at}`];
    }
  }

  function draw(data, tip, onEdgesShown) {
    const meta = data.metadata;
    const L = layout(data);
    const byId = new Map(data.nodes.map(n => [n.node_id, n]));
    const links = data.links.filter(l => L.pos.has(l.source) && L.pos.has(l.target))
      .sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, edgeLimit);
    onEdgesShown(links.length, data.links.length);
    const maxW = Math.max(1e-12, ...links.map(l => Math.abs(l.weight)));
    const root = svg("svg", {id: "graph-svg", class: "graph", width: L.W, height: L.H,
                             viewBox: `0 0 ${L.W} ${L.H}`, role: "img"});
    // Layer bands and labels.
    for (let row = 0; row <= L.top; row++) {
      const y = L.yOf(row);
      if (row % 2 === 1) root.append(svg("rect", {x: L.left - 6, y: y - L.rowH / 2, width: L.W - L.left, height: L.rowH, class: "band"}));
      const name = row === 0 ? "emb" : row === L.top ? "logit" : `L${row - 1}`;
      root.append(svg("text", {x: L.left - 12, y: y + 4, class: "axis", "text-anchor": "end"}, name));
    }
    for (let p = 1; p < L.nPos; p++) root.append(svg("line", {x1: L.x0[p], x2: L.x0[p], y1: 18, y2: L.H - 20, class: "colsep"}));
    // Edges (under the nodes), strongest last so they stay on top.
    const edgeEls = new Map();  // node id -> [edge elements]
    const gEdges = svg("g", {});
    for (const l of [...links].reverse()) {
      const s = L.pos.get(l.source), t = L.pos.get(l.target);
      const rel = Math.abs(l.weight) / maxW;
      const my = (s.y + t.y) / 2;
      const path = svg("path", {d: `M${s.x},${s.y} C${s.x},${my} ${t.x},${my} ${t.x},${t.y}`, class: "edge",
                                stroke: l.weight >= 0 ? POS : NEG, "stroke-width": (0.4 + 4.6 * Math.sqrt(rel)).toFixed(2),
                                "stroke-opacity": (0.18 + 0.62 * rel).toFixed(2), fill: "none"});
      gEdges.append(path);
      for (const id of [l.source, l.target]) {
        if (!edgeEls.has(id)) edgeEls.set(id, []);
        edgeEls.get(id).push({path, link: l});
      }
    }
    root.append(gEdges);
    // Nodes.
    const gNodes = svg("g", {});
    for (const n of data.nodes) {
      const p = L.pos.get(n.node_id);
      if (!p) continue;
      let shape;
      const ft = n.feature_type;
      if (ft === "embedding") {
        const w = Math.min(L.width[n.ctx_idx] - 10, 74);
        shape = svg("g", {class: "node emb"}, svg("rect", {x: p.x - w / 2, y: p.y - 11, width: w, height: 22, rx: 5}),
                    svg("text", {x: p.x, y: p.y + 4, "text-anchor": "middle"}, clip(showToken(n.clerp), 9)));
      } else if (ft === "logit") {
        const w = LOGIT_W;
        shape = svg("g", {class: n.is_target_logit ? "node logit target" : "node logit"},
                    svg("rect", {x: p.x - w / 2, y: p.y - 13, width: w, height: 26, rx: 5}),
                    svg("text", {x: p.x, y: p.y + 4, "text-anchor": "middle"},
                        `${clip(showToken(logitToken(n)), 7)} ${pct(n.token_prob)}`));
      } else if (ft === "mlp reconstruction error") {
        shape = svg("rect", {class: "node err", x: p.x - 4.5, y: p.y - 4.5, width: 9, height: 9,
                             transform: `rotate(45 ${p.x} ${p.y})`});
      } else {
        shape = svg("circle", {class: n.clerp ? "node feat labeled" : "node feat", cx: p.x, cy: p.y, r: 6.2});
      }
      shape.setAttribute("data-node", n.node_id);
      const ref = featureRef(n, meta);
      if (ref) shape.addEventListener("click", () => { location.hash = `#/feature/${encodeURIComponent(ref)}`; });
      shape.addEventListener("mouseenter", (e) => focus(n, e));
      shape.addEventListener("mousemove", (e) => place(e));
      shape.addEventListener("mouseleave", unfocus);
      gNodes.append(shape);
    }
    root.append(gNodes);

    function focus(n, e) {
      root.classList.add("focus");
      const mine = edgeEls.get(n.node_id) || [];
      mine.forEach(({path}) => path.classList.add("hi"));
      const [head, sub] = title(n, meta);
      const ins = mine.filter(x => x.link.target === n.node_id), outs = mine.filter(x => x.link.source === n.node_id);
      const strongest = (xs, key) => xs.sort((a, b) => Math.abs(b.link.weight) - Math.abs(a.link.weight)).slice(0, 3)
        .map(x => el("div", {class: "tipedge"}, el("span", {class: x.link.weight >= 0 ? "pos" : "neg"},
          (x.link.weight >= 0 ? "+" : "") + x.link.weight.toPrecision(3)), " ",
          clip(nodeName(byId.get(x.link[key]), meta), 34)));
      // replaceChildren turns a null argument into the text "null": drop the absent parts.
      tip.replaceChildren(...[
        el("div", {class: "tiphead"}, head),
        n.clerp && n.feature_type === "cross layer transcoder" ? el("div", {class: "label"}, n.clerp)
          : (n.feature_type === "cross layer transcoder" ? el("div", {class: "unlabeled"}, "(unlabeled)") : null),
        el("div", {class: "muted"}, sub),
        n.activation !== null && n.activation !== undefined ? el("div", {}, `activation ${Number(n.activation).toPrecision(3)}`) : null,
        n.influence !== null && n.influence !== undefined ? el("div", {class: "muted"}, `cumulative influence ${Number(n.influence).toFixed(3)}`) : null,
        ins.length ? el("div", {class: "tipsec"}, "strongest inputs", strongest(ins, "source")) : null,
        outs.length ? el("div", {class: "tipsec"}, "strongest outputs", strongest(outs, "target")) : null,
        featureRef(n, meta) ? el("div", {class: "muted"}, "click to open the feature page") : null,
      ].filter(Boolean));
      tip.hidden = false;
      place(e);
    }
    function place(e) {  // next to the pointer, kept inside the window (the tooltip is fixed)
      const w = tip.offsetWidth || 300, h = tip.offsetHeight || 120;
      let x = e.clientX + 14, y = e.clientY + 14;
      if (x + w > window.innerWidth - 8) x = e.clientX - w - 14;
      if (y + h > window.innerHeight - 8) y = Math.max(8, e.clientY - h - 14);
      tip.style.left = `${Math.max(8, x)}px`;
      tip.style.top = `${y}px`;
    }
    function unfocus() {
      root.classList.remove("focus");
      root.querySelectorAll(".edge.hi").forEach(p => p.classList.remove("hi"));
      tip.hidden = true;
    }
    return root;
  }

  function logitToken(n) {
    const m = /^Output "(.*)" \(p=/s.exec(n.clerp || "");
    return m ? m[1] : String(n.feature);
  }

  function nodeName(n, meta) {
    if (!n) return "?";
    if (n.feature_type === "cross layer transcoder") return n.clerp ? `${featureRef(n, meta)} ${n.clerp}` : featureRef(n, meta);
    return title(n, meta)[0];
  }

  function pct(p) { p = 100 * (p || 0); return p >= 9.5 ? `${p.toFixed(0)}%` : `${p.toFixed(1)}%`; }

  function clip(s, n) { s = String(s); return s.length > n ? s.slice(0, n - 1) + "…" : s; }

  // --- one graph -----------------------------------------------------------------------------
  async function renderGraph(main, name) {
    const data = await api(`/api/graph?name=${encodeURIComponent(name)}`);
    const meta = data.metadata || {};
    const extra = meta.lmscope || {};
    const target = data.nodes.find(n => n.is_target_logit);
    main.append(el("p", {class: "muted"}, el("a", {href: "#/graph"}, "← all graphs"), ` · ${name}`),
      el("h1", {id: "graph-title"}, el("span", {class: "prompt"}, meta.prompt ?? (meta.prompt_tokens || []).join("")),
         target ? el("span", {class: "arrow"}, " → ", el("code", {class: "tok"}, showToken(logitToken(target)))) : null));
    const facts = [`${data.nodes.length} nodes`, `${data.links.length} links`];
    if (extra.pruned_replacement_score !== undefined) {
      facts.push(`replacement score ${Number(extra.pruned_replacement_score).toFixed(3)} (full ${Number(extra.replacement_score).toFixed(3)})`,
                 `completeness ${Number(extra.pruned_completeness_score).toFixed(3)} (full ${Number(extra.completeness_score).toFixed(3)})`);
    }
    if (meta.scan) facts.push(String(meta.scan));
    const shown = el("span", {id: "edges-shown"});
    const pick = el("select", {id: "edge-limit", onchange: () => { edgeLimit = Number(pick.value); redraw(); }},
      EDGE_CHOICES.map(v => el("option", {value: v, selected: v === edgeLimit ? "selected" : null}, `${v} strongest edges`)));
    main.append(el("p", {class: "muted", id: "graph-facts"}, facts.join(" · ")),
      el("div", {class: "legend"},
        el("span", {}, el("i", {class: "sw pos"}), "excites"), el("span", {}, el("i", {class: "sw neg"}), "inhibits"),
        el("span", {}, el("i", {class: "dot feat"}), "feature (click: feature page)"),
        el("span", {}, el("i", {class: "dot feat labeled"}), "labeled feature"),
        el("span", {}, el("i", {class: "dot err"}), "error node"),
        el("span", {}, el("i", {class: "dot emb"}), "token"), el("span", {}, el("i", {class: "dot logit"}), "output"),
        pick, shown),
      el("p", {class: "muted hint"}, "Token positions run left to right, layers bottom to top. Edge width is the " +
        "direct effect's size. Hover a node for its label and strongest links; click a feature to open its page."));
    const wrap = el("div", {class: "graphwrap", id: "graph-wrap"});
    const tip = el("div", {class: "graphtip", id: "graph-tip", hidden: "hidden"});
    main.append(wrap);
    function redraw() {
      wrap.replaceChildren(draw(data, tip, (n, total) => {
        shown.textContent = n < total ? `showing ${n} of ${total}` : `all ${total} shown`;
      }), tip);
    }
    redraw();
  }

  async function render(main, params) {
    if (params) return renderGraph(main, params);
    return renderList(main);
  }

  lmscope.registerPage({name: "graph", title: "Graph", render});
})();
