// Search page: features by label (the atlas DB's full-text search) or features that fire on a text.
"use strict";
(() => {
  const {el, api, featureLink, labelSpan, showToken, showError} = lmscope;

  function render(main, params) {
    const q = el("input", {type: "text", id: "search-q", placeholder: "a word, a label, or a text"});
    const mode = el("select", {id: "search-mode"},
      el("option", {value: "labels"}, "labels"), el("option", {value: "text"}, "features that fire on this text"));
    const out = el("div", {id: "search-out"});
    const go = el("button", {type: "submit", id: "search-btn"}, "Search");
    main.append(el("h1", {}, "Search features"),
      el("form", {class: "row", onsubmit: (e) => { e.preventDefault(); run(); }}, q, mode, go), out);
    if (params) { const [m, ...rest] = params.split("/"); mode.value = m; q.value = rest.join("/"); run(); }

    async function run() {
      if (!q.value.trim()) return;
      out.replaceChildren(el("p", {class: "muted"}, "Searching…"));
      try {
        const res = await api(`/api/search?mode=${encodeURIComponent(mode.value)}&q=${encodeURIComponent(q.value)}`);
        out.replaceChildren();
        if (res.note) out.append(el("p", {class: "muted"}, res.note));
        if (!res.results.length) { out.append(el("p", {class: "muted"}, "No feature found.")); return; }
        out.append(el("table", {class: "hits", id: "search-results"},
          el("tr", {}, el("th", {}, "feature"), el("th", {}, res.mode === "text" ? "max act" : "score"),
             el("th", {}, res.mode === "text" ? "on token" : "matched"), el("th", {}, "label")),
          res.results.map(r => el("tr", {},
            el("td", {}, featureLink(r)),
            el("td", {class: "num"}, r.act !== undefined ? Number(r.act).toFixed(2) : (r.score !== undefined ? Number(r.score).toFixed(2) : "")),
            el("td", {}, r.token !== undefined ? el("code", {class: "tok"}, showToken(r.token))
                         : el("span", {class: "muted"}, `${r.source || ""}: ${r.match || ""}`)),
            el("td", {}, labelSpan(r.label || r.text || r.explanation))))));
      } catch (err) { out.replaceChildren(); showError(out, err); }
    }
  }

  lmscope.registerPage({name: "search", title: "Search", render});
})();
