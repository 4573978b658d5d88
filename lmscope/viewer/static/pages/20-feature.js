// Feature page: the atlas profile of one feature (examples with highlighted tokens, quantile
// samples, activation histogram, logit effects, labels and scores). Works without an atlas DB:
// then it shows what the dictionary alone gives (logit effects, density if saved).
"use strict";
(() => {
  const {el, api, heat, labelSpan, showToken} = lmscope;

  // One example: tokens with a background proportional to activation / scale.
  function example(ex, scale) {
    const toks = ex.tokens || ex.str_tokens || [];
    const acts = ex.acts || ex.activations || [];
    const max = scale || Math.max(1e-9, ...acts);
    return el("div", {class: "example"}, toks.map((t, i) => {
      const a = acts[i] || 0;
      return el("span", {class: "etok", style: {background: a > 0 ? heat(a / max) : "transparent"},
                         title: `${a.toFixed ? a.toFixed(3) : a}`}, String(t));
    }));
  }

  function histogram(h, title) {
    // h: {counts, lo, hi} or {counts, edges}
    const counts = h.counts || [];
    const peak = Math.max(1, ...counts);
    const lo = h.lo !== undefined ? h.lo : (h.edges ? h.edges[0] : 0);
    const hi = h.hi !== undefined ? h.hi : (h.edges ? h.edges[h.edges.length - 1] : counts.length);
    return el("figure", {class: "hist"},
      el("div", {class: "bars"}, counts.map(c =>
        el("div", {class: "bar", title: String(c), style: {height: `${Math.max(1, 100 * c / peak)}%`}}))),
      el("figcaption", {}, `${title} (${Number(lo).toPrecision(3)} … ${Number(hi).toPrecision(3)})`));
  }

  function tokenList(items, cls) {
    return el("table", {class: `hits ${cls}`}, items.map(t =>
      el("tr", {}, el("td", {}, el("code", {class: "tok"}, showToken(t.token))),
         el("td", {class: "num"}, Number(t.value).toFixed(3)))));
  }

  async function render(main, id) {
    if (!id) {
      main.append(el("h1", {}, "Feature"), el("p", {class: "muted"},
        "Open a feature from a scan or a search, or type its id (HOOK/INDEX):"));
      const inp = el("input", {type: "text", id: "feature-id", placeholder: "blocks.15.resid_post/1234"});
      main.append(el("form", {onsubmit: (e) => { e.preventDefault(); location.hash = `#/feature/${encodeURIComponent(inp.value.trim())}`; }},
        inp, el("button", {type: "submit"}, "Open")));
      return;
    }
    const f = await api(`/api/feature?id=${encodeURIComponent(id)}`);
    const prof = f.profile || {};
    main.append(el("h1", {id: "feature-title"}, el("code", {}, f.id)),
                el("p", {class: "bigLabel"}, labelSpan(f.label)));
    const facts = [];
    const density = f.density !== null && f.density !== undefined ? f.density : prof.density;
    if (density !== null && density !== undefined) facts.push(`density ${(100 * density).toPrecision(3)}%`);
    for (const k of ["max_act", "mean_act", "n_tokens"]) {
      if (prof[k] !== undefined && prof[k] !== null) facts.push(`${k.replace("_", " ")} ${Number(prof[k]).toPrecision(4)}`);
    }
    if (facts.length) main.append(el("p", {class: "muted"}, facts.join(" · ")));

    const exps = f.explanations || [];
    if (exps.length) {
      main.append(el("h2", {}, "Explanations and scores"), el("table", {class: "hits"}, exps.map(x =>
        el("tr", {}, el("td", {}, x.text || x.label || x.explanation || ""),
           el("td", {class: "muted"}, x.method || x.explainer || ""),
           el("td", {}, Object.entries(x.scores || {}).map(([k, v]) => `${k} ${Number(v).toFixed(2)}`).join(" · "))))));
    }

    const grid = el("div", {class: "cols"});
    const left = el("div", {}), right = el("div", {});
    grid.append(left, right);
    main.append(grid);

    const examples = prof.examples || prof.top_examples || [];
    left.append(el("h2", {}, "Top activating examples"));
    if (examples.length) {
      const scale = prof.max_act || null;
      left.append(el("div", {id: "examples"}, examples.map(ex => example(ex, scale))));
    } else {
      left.append(el("p", {class: "muted"}, "No examples in the atlas DB yet (run the atlas build)."));
    }
    const quant = prof.quantiles || prof.quantile_samples || [];
    if (quant.length) {
      left.append(el("h2", {}, "Samples by activation interval"));
      for (const q of quant) {
        const lo = q.lo ?? q.low, hi = q.hi ?? q.high;
        left.append(el("h4", {}, lo !== undefined ? `${Number(lo).toPrecision(3)} – ${Number(hi).toPrecision(3)}` : "interval"));
        (q.examples || []).forEach(ex => left.append(example(ex, prof.max_act || null)));
      }
    }

    const hist = prof.histogram || prof.act_histogram;
    if (hist && hist.counts) right.append(el("h2", {}, "Activations"), histogram(hist, "nonzero activations"));
    const logits = (prof.logits && prof.logits.promoted) ? prof.logits : f.logits;
    if (logits) {
      right.append(el("h2", {}, "Logit effects"),
        el("div", {class: "cols2"},
          el("div", {}, el("h4", {}, "promoted"), tokenList(logits.promoted || [], "up")),
          el("div", {}, el("h4", {}, "suppressed"), tokenList(logits.suppressed || [], "down"))));
      if (logits.histogram) right.append(histogram(logits.histogram, "decoder · unembedding over the vocabulary"));
    }
  }

  lmscope.registerPage({name: "feature", title: "Feature", render});
})();
