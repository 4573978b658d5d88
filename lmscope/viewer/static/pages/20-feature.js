// Feature page: the atlas profile of one feature (examples with highlighted tokens, quantile
// samples, activation histogram, logit effects, labels and scores). Works without an atlas DB:
// then it shows what the dictionary alone gives (logit effects, density if saved).
// It reads /api/feature, whose one shape is lmscope/atlas/feature_page.py (FeaturePage.to_dict);
// tests/test_viewer.py checks that this page reads every field written there and no other.
"use strict";
(() => {
  const {el, api, heat, labelSpan, showToken} = lmscope;

  // One example (an Example: tokens, acts, position, score): tokens with a background
  // proportional to activation / scale; the peak token (position) is outlined.
  function example(ex, scale) {
    const max = scale || Math.max(1e-9, ...ex.acts);
    const where = ex.token_index === null ? "" : ` (corpus token ${ex.token_index})`;
    return el("div", {class: "example"},
      el("span", {class: "exscore", title: `peak activation${where}`}, Number(ex.score).toFixed(2)),
      ex.tokens.map((t, i) => {
        const a = ex.acts[i] || 0;
        return el("span", {class: (a > 0 ? "etok on" : "etok") + (i === ex.position ? " peak" : ""),
                           style: {background: a > 0 ? heat(a / max) : "transparent"},
                           title: `${Number(a).toFixed(3)} · token id ${ex.token_ids[i]}`}, String(t));
      }));
  }

  function histogram(h, title) {
    // h: a Histogram {counts [N], edges [N+1], log_scale}
    const counts = h.counts;
    const peak = Math.max(1, ...counts);
    const lo = h.edges[0], hi = h.edges[h.edges.length - 1];
    return el("figure", {class: "hist"},
      el("div", {class: "bars"}, counts.map(c =>
        el("div", {class: "bar", title: String(c), style: {height: `${Math.max(1, 100 * c / peak)}%`}}))),
      el("figcaption", {}, `${title} (${Number(lo).toPrecision(3)} … ${Number(hi).toPrecision(3)}${h.log_scale ? ", log scale" : ""})`));
  }

  function tokenList(items, cls) {
    return el("table", {class: `hits ${cls}`}, items.map(t =>
      el("tr", {}, el("td", {title: `token id ${t.token_id}`}, el("code", {class: "tok"}, showToken(t.token))),
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
    const prof = f.profile || {top: [], quantiles: [], negatives: []};  // null before the atlas build
    main.append(el("h1", {id: "feature-title"}, el("code", {}, f.id)),
                el("p", {class: "bigLabel"}, labelSpan(f.label)),
                el("p", {}, el("a", {href: `#/steer/${encodeURIComponent(f.id)}`, id: "steer-link"}, "Steer with this feature →")));
    const facts = [];
    if (f.density !== null) facts.push(`density ${(100 * f.density).toPrecision(3)}%`);
    const stats = [["fires", prof.fires], ["max act", prof.max_act], ["mean act", prof.mean_act],
                   ["mean when firing", prof.mean_firing]];
    for (const [name, v] of stats) {
      if (v !== undefined && v !== null) facts.push(`${name} ${Number(v).toPrecision(4)}`);
    }
    if (facts.length) main.append(el("p", {class: "muted"}, facts.join(" · ")));

    const exps = f.explanations;
    if (exps.length) {
      const scoreText = (sc) => sc.map(s => `${s.scorer} ${s.metric} ${Number(s.value).toFixed(2)}`
                                           + (s.n_pos ? ` (n=${s.n_pos}+${s.n_neg})` : "")).join(" · ");
      main.append(el("h2", {}, "Explanations and scores"), el("table", {class: "hits", id: "explanations"},
        el("tr", {}, el("th", {}, "explanation"), el("th", {}, "method"), el("th", {}, "scores")),
        exps.map(x => el("tr", {}, el("td", {}, x.text),
           el("td", {class: "muted", title: `written ${x.created}`}, [x.method, x.version].filter(Boolean).join(" ")),
           el("td", {}, scoreText(x.scores))))));
    }

    const grid = el("div", {class: "cols"});
    const left = el("div", {}), right = el("div", {});
    grid.append(left, right);
    main.append(grid);

    const examples = prof.top;
    left.append(el("h2", {}, "Top activating examples"));
    if (examples.length) {
      const scale = prof.max_act || null;
      left.append(el("div", {id: "examples"}, examples.map(ex => example(ex, scale))));
    } else {
      left.append(el("p", {class: "muted"}, "No examples in the atlas DB yet (run the atlas build)."));
    }
    const quant = prof.quantiles;
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
    const negs = prof.negatives;
    if (negs.length) {
      left.append(el("h2", {}, "Contexts where it does not fire"),
                  el("div", {}, negs.slice(0, 4).map(ex => example(ex, prof.max_act || 1))));
    }

    const hist = prof.histogram;
    if (hist) right.append(el("h2", {}, "Activations"), histogram(hist, "nonzero activations"));
    const logits = f.logits;
    right.append(el("h2", {}, "Logit effects"),
      el("div", {class: "cols2"},
        el("div", {}, el("h4", {}, "promoted"), tokenList(logits.promoted, "up")),
        el("div", {}, el("h4", {}, "suppressed"), tokenList(logits.suppressed, "down"))));
    if (logits.histogram) right.append(histogram(logits.histogram, "decoder · unembedding over the vocabulary"));
  }

  lmscope.registerPage({name: "feature", title: "Feature", render});
})();
