// Steer page: a prompt, feature interventions (HOOK/INDEX with =8 clamp, +8 add, *2 scale, 0 ablate)
// and/or a contrastive steering vector; shows the unsteered and steered continuations side by side
// and how the next-token probabilities move. Same engine as `lmscope steer` (POST /api/steer).
// #/steer/<HOOK/INDEX> opens it with that feature filled in (the feature page links here).
"use strict";
(() => {
  const {el, api, featureLink, labelSpan, showToken, showError} = lmscope;
  const state = {prompt: "the cat sat on the", rows: [], vector: null, targets: "", generate: 20};

  function interventionRow(id, value, onRemove) {
    const fid = el("input", {type: "text", class: "fid", placeholder: "HOOK/INDEX, e.g. blocks.2.mlp_in/17", value: id || ""});
    const val = el("input", {type: "text", class: "val", placeholder: "+8, 8, *2, 0", value: value || "+8",
                             title: "8 clamps, +8 adds 8 x the decoder row, -8 subtracts, *2 scales, 0 ablates"});
    const row = el("div", {class: "row ivrow"}, fid, val,
      el("button", {type: "button", class: "ghost", title: "remove", onclick: () => onRemove(row)}, "✕"));
    row.spec = () => {
      const f = fid.value.trim(), v = val.value.trim();
      if (!f) return null;
      return `${f}=${v.startsWith("=") ? v.slice(1) : v}`;
    };
    return row;
  }

  function probRows(rows, maxP) {
    return rows.map(t => {
      const ratio = t.p_unsteered > 0 ? t.p_steered / t.p_unsteered : Infinity;
      const change = t.p_steered - t.p_unsteered;
      const w = p => `${Math.max(1, 110 * p / maxP).toFixed(0)}px`;
      return el("tr", {},
        el("td", {}, el("code", {class: "tok"}, showToken(t.token))),
        el("td", {class: "num"}, t.p_unsteered.toFixed(4)), el("td", {class: "num"}, t.p_steered.toFixed(4)),
        el("td", {class: change >= 0 ? "num up" : "num down"},
           `${change >= 0 ? "+" : ""}${change.toFixed(4)}` + (Number.isFinite(ratio) ? ` (×${ratio.toPrecision(3)})` : "")),
        el("td", {}, el("div", {}, el("span", {class: "pbar base", style: {width: w(t.p_unsteered)}})),
                     el("div", {}, el("span", {class: "pbar steer", style: {width: w(t.p_steered)}}))));
    });
  }

  function probTable(id, title, rows) {
    const maxP = Math.max(1e-9, ...rows.map(t => Math.max(t.p_unsteered, t.p_steered)));
    return el("div", {},
      el("h3", {}, title),
      el("table", {class: "hits", id},
        el("tr", {}, ["token", "p unsteered", "p steered", "change", ""].map(h => el("th", {}, h))),
        probRows(rows, maxP)));
  }

  function result(res) {
    const box = el("div", {id: "steer-out"});
    box.append(el("div", {class: "chips", id: "steer-chips"}, res.interventions.map(s => el("span", {class: "chip"}, s))));
    const labeled = Object.entries(res.labels || {}).filter(([, v]) => v);
    if (labeled.length) {
      box.append(el("p", {class: "muted"}, labeled.map(([id, lab]) =>
        el("span", {}, featureLink({id}), " ", labelSpan(lab), "  "))));
    }
    box.append(el("div", {class: "cols2"},
      el("div", {class: "panel", id: "unsteered"}, el("h3", {}, "Unsteered"),
         el("div", {class: "gen"}, el("span", {class: "given"}, res.prompt), el("span", {class: "cont"}, res.unsteered))),
      el("div", {class: "panel steered", id: "steered"}, el("h3", {}, "Steered"),
         el("div", {class: "gen"}, el("span", {class: "given"}, res.prompt), el("span", {class: "cont"}, res.steered)))));
    const tables = el("div", {class: "cols2 probs"});
    if (res.targets.length) tables.append(probTable("steer-targets", "Target tokens, right after the prompt", res.targets));
    tables.append(probTable("steer-next", "Most likely next tokens (either run)", res.next_tokens));
    box.append(tables, el("p", {class: "muted"}, el("span", {class: "pbar base", style: {width: "18px"}}), " unsteered  ",
                          el("span", {class: "pbar steer", style: {width: "18px"}}), " steered: next-token probability"));
    if (res.vector) {
      box.append(el("p", {class: "muted"}, `steering vector at ${res.vector.hook} (${res.vector.mode}), ` +
        `norm ${res.vector.norm.toPrecision(3)} × coeff ${res.vector.coeff}` +
        (res.vector.n_tokens ? `, added at the first ${res.vector.n_tokens} positions` : ", added at every position")));
    }
    return box;
  }

  function render(main, params) {
    const info = lmscope.info || {};
    const nLayers = info.n_layers || 1;
    if (params && !state.rows.some(r => r[0] === params)) state.rows = [[params, "+8"]];
    if (!state.rows.length) state.rows = [["", "+8"]];
    const prompt = el("textarea", {id: "steer-prompt", rows: 2, maxlength: 20000}, state.prompt);
    const rows = el("div", {id: "steer-rows"});
    const remove = (row) => { row.remove(); };
    const addRow = (id, v) => rows.append(interventionRow(id, v, remove));
    state.rows.forEach(([id, v]) => addRow(id, v));
    const vec = state.vector || {};
    const pos = el("input", {type: "text", id: "vec-pos", placeholder: "positive, e.g. Love", value: vec.positive || ""});
    const neg = el("input", {type: "text", id: "vec-neg", placeholder: "negative, e.g. Hate", value: vec.negative || ""});
    const layer = el("select", {id: "vec-layer"}, Array.from({length: nLayers}, (_, L) =>
      el("option", {value: L, selected: L === (vec.layer ?? Math.floor(nLayers / 3)) ? "selected" : null}, `layer ${L}`)));
    const coeff = el("input", {type: "number", id: "vec-coeff", class: "num", step: "any", value: vec.coeff ?? 5});
    const mode = el("select", {id: "vec-mode"}, el("option", {value: "actadd"}, "ActAdd (first positions)"),
                    el("option", {value: "mean"}, "mean difference (every position)"));
    mode.value = vec.mode || "actadd";
    const gen = el("input", {type: "number", id: "steer-generate", class: "num", min: 0, max: info.max_generate || 64,
                             value: state.generate});
    const temp = el("input", {type: "number", id: "steer-temp", class: "num", min: 0, max: 5, step: "any", value: 0});
    const targets = el("input", {type: "text", id: "steer-targets-in", value: state.targets,
                                 placeholder: "target tokens, comma-separated (spaces count: ' Paris, London')"});
    const go = el("button", {type: "submit", id: "steer-btn"}, "Generate");
    const out = el("div", {id: "steer-result"});
    const form = el("form", {class: "steerform", onsubmit: (e) => { e.preventDefault(); run(); }},
      prompt,
      el("fieldset", {}, el("legend", {}, "Feature interventions"), rows,
         el("button", {type: "button", class: "ghost", id: "steer-add", onclick: () => addRow("", "+8")}, "+ feature")),
      el("fieldset", {}, el("legend", {}, "Steering vector (optional)"),
         el("div", {class: "row"}, pos, el("span", {class: "muted"}, "−"), neg),
         el("div", {class: "row"}, layer, el("label", {}, "coeff", coeff), mode)),
      el("div", {class: "row"}, el("label", {}, "new tokens", gen), el("label", {}, "temperature", temp),
         el("label", {class: "grow"}, "targets", targets), go));
    main.append(el("h1", {}, "Steer"),
      el("p", {class: "muted"}, "Change features (the dictionary's error term is kept, so only they change) or add a " +
        "steering vector, and compare the continuations. Same engine as `lmscope steer`."),
      form, out);

    async function run() {
      const specs = [...rows.children].map(r => r.spec()).filter(Boolean);
      state.prompt = prompt.value;
      state.rows = [...rows.children].map(r => [r.querySelector(".fid").value, r.querySelector(".val").value]);
      state.targets = targets.value;
      state.generate = Number(gen.value);
      const body = {prompt: prompt.value, features: specs, generate: Number(gen.value), temperature: Number(temp.value),
                    targets: targets.value.split(",").filter(t => t.trim())};
      if (pos.value.trim() || neg.value.trim()) {
        body.vector = {positive: pos.value, negative: neg.value, layer: Number(layer.value),
                       coeff: Number(coeff.value), mode: mode.value};
      }
      state.vector = body.vector || null;
      out.replaceChildren(el("p", {class: "muted"}, "Generating (twice: without and with the interventions)…"));
      go.disabled = true;
      try {
        out.replaceChildren(result(await api("/api/steer", body)));
      } catch (err) { out.replaceChildren(); showError(out, err); }
      finally { go.disabled = false; }
    }
  }

  lmscope.registerPage({name: "steer", title: "Steer", render});
})();
