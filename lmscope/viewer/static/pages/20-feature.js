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
    const peak = ex.score !== undefined ? el("span", {class: "exscore"}, Number(ex.score).toFixed(2)) : null;
    return el("div", {class: "example"}, peak, toks.map((t, i) => {
      const a = acts[i] || 0;
      return el("span", {class: a > 0 ? "etok on" : "etok", style: {background: a > 0 ? heat(a / max) : "transparent"},
                         title: `${Number(a).toFixed(3)}`}, String(t));
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
      el("figcaption", {}, `${title} (${Number(lo).toPrecision(3)} … ${Number(hi).toPrecision(3)}${h.log_scale ? ", log scale" : ""})`));
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
                el("p", {class: "bigLabel"}, labelSpan(f.label)),
                el("p", {}, el("a", {href: `#/steer/${encodeURIComponent(f.id)}`, id: "steer-link"}, "Steer with this feature →")));
    const facts = [];
    const density = f.density !== null && f.density !== undefined ? f.density : prof.density;
    if (density !== null && density !== undefined) facts.push(`density ${(100 * density).toPrecision(3)}%`);
    for (const k of ["fires", "max_act", "mean_firing"]) {
      if (prof[k] !== undefined && prof[k] !== null) facts.push(`${k.replace("_", " ")} ${Number(prof[k]).toPrecision(4)}`);
    }
    if (facts.length) main.append(el("p", {class: "muted"}, facts.join(" · ")));

    const exps = f.explanations || [];
    if (exps.length) {
      const scoreText = (sc) => Array.isArray(sc)
        ? sc.map(s => `${s.scorer} ${s.metric} ${Number(s.value).toFixed(2)}` + (s.n_pos ? ` (n=${s.n_pos}+${s.n_neg})` : "")).join(" · ")
        : Object.entries(sc || {}).map(([k, v]) => `${k} ${Number(v).toFixed(2)}`).join(" · ");
      main.append(el("h2", {}, "Explanations and scores"), el("table", {class: "hits", id: "explanations"},
        el("tr", {}, el("th", {}, "explanation"), el("th", {}, "method"), el("th", {}, "scores")),
        exps.map(x => el("tr", {}, el("td", {}, x.text || x.label || x.explanation || ""),
           el("td", {class: "muted"}, [x.method, x.version].filter(Boolean).join(" ")),
           el("td", {}, scoreText(x.scores))))));
    }

    const grid = el("div", {class: "cols"});
    const left = el("div", {}), right = el("div", {});
    grid.append(left, right);
    main.append(grid);

    const examples = prof.top || prof.examples || [];
    left.append(el("h2", {}, "Top activating examples"));
    if (examples.length) {
      const scale = prof.max_act || null;
      left.append(el("div", {id: "examples"}, examples.map(ex => example(ex, scale))));
    } else {
      left.append(el("p", {class: "muted"}, "No examples in the atlas DB yet (run the atlas build)."));
    }
    const quant = prof.quantiles || [];
    if (quant.length) {
      // Samples drawn per activation octave (bucket b holds activations in [2^b, 2^(b+1)) ).
      left.append(el("h2", {}, "Samples by activation interval"));
      const box = el("div", {id: "quantiles"});
      let bucket = null;
      for (const q of quant) {
        if (q.bucket !== bucket) {
          bucket = q.bucket;
          const r = q.range;
          box.append(el("h4", {}, r ? `activation ${Number(r[0]).toPrecision(3)} – ${r[1] === null ? "∞" : Number(r[1]).toPrecision(3)}`
                                    : `bucket ${bucket}`));
        }
        box.append(example(q, prof.max_act || null));
      }
      left.append(box);
    }
    const negs = prof.negatives || [];
    if (negs.length) {
      left.append(el("h2", {}, "Contexts where it does not fire"),
                  el("div", {}, negs.slice(0, 4).map(ex => example(ex, prof.max_act || 1))));
    }

    const hist = prof.histogram || prof.act_histogram;
    if (hist && hist.counts) right.append(el("h2", {}, "Activations"), histogram(hist, "nonzero activations"));
    const logits = f.logits;
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
