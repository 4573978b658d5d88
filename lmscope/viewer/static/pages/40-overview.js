// Atlas overview: the dictionaries (shape, architecture), their density distribution, DB summary.
"use strict";
(() => {
  const {el, api} = lmscope;

  function bars(h, caption) {
    const peak = Math.max(1, ...h.counts);
    return el("figure", {class: "hist"},
      el("div", {class: "bars"}, h.counts.map(c =>
        el("div", {class: "bar", title: String(c), style: {height: `${Math.max(1, 100 * c / peak)}%`}}))),
      el("figcaption", {}, `${caption} (${h.edges[0].toFixed(1)} … ${h.edges[h.edges.length - 1].toFixed(1)})`));
  }

  async function render(main) {
    const o = await api("/api/overview");
    main.append(el("h1", {}, "Atlas overview"),
      el("p", {class: "muted"}, `model ${o.model} · ${o.dictionaries.length} dictionaries · ` +
        (o.has_db ? "atlas DB present" : "no atlas DB yet (features are unlabeled)")));
    main.append(el("table", {class: "hits", id: "dict-table"},
      el("tr", {}, ["hook", "arch", "d_in", "features", "k", "dead"].map(h => el("th", {}, h))),
      o.dictionaries.map(d => el("tr", {},
        el("td", {}, el("code", {}, d.hook)), el("td", {}, d.arch + (d.transcoder ? " transcoder" : "")),
        el("td", {class: "num"}, d.d_in), el("td", {class: "num"}, d.d_sae),
        el("td", {class: "num"}, d.k ?? ""), el("td", {class: "num"}, d.dead ?? "")))));
    const figs = o.dictionaries.filter(d => d.density_histogram);
    if (figs.length) {
      main.append(el("h2", {}, "Feature density (log10 firing frequency)"),
        el("div", {class: "cols"}, figs.map(d => bars(d.density_histogram, d.hook))));
    }
    if (o.db) {
      main.append(el("h2", {}, "Atlas DB"),
        el("p", {id: "db-summary"}, `${o.db.n_features ?? "?"} profiled features · ${o.db.n_explanations ?? 0} explanations`));
    }
    if (o.scores && o.scores.length) {
      main.append(el("h2", {}, "Explanation scores"),
        el("div", {class: "cols", id: "score-hists"}, o.scores.map(s =>
          bars(s.histogram, `${s.name} · n=${s.n} · mean ${s.mean.toFixed(2)}`))));
    }
  }

  lmscope.registerPage({name: "overview", title: "Atlas", render});
})();
