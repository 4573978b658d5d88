// Fixes page: the reports `lmscope fix --atlas ATLAS` saves in ATLAS/fixes/. #/fix lists them;
// #/fix/<file.json> shows one: the chosen edit, its numbers on held-out prompts and held-out text
// next to the control edit's, and a few held-out prompts' continuations before and after, side by
// side. Every text from a report (prompts, generations, labels) is set as text, never as HTML.
"use strict";
(() => {
  const {el, api} = lmscope;

  const fmt = (s, d = 3) => s ? `${s.value.toFixed(d)} [${s.lo.toFixed(d)}, ${s.hi.toFixed(d)}]` : "";

  async function renderList(main) {
    const res = await api("/api/fixes");
    main.append(el("h1", {}, "Fixes"),
      el("p", {class: "muted"}, "Reports of `lmscope fix BUGS --atlas ATLAS`: an edit chosen on fit " +
        "prompts and judged on held-out ones, next to a random control edit (docs/correct.md)."));
    if (!res.fixes.length) {
      main.append(el("p", {class: "muted", id: "fix-list"}, `No report in ATLAS/${res.folder}/ yet.`));
      return;
    }
    main.append(el("table", {class: "hits", id: "fix-list"},
      el("tr", {}, ["report", "bug file", "chosen edit", "saved"].map(h => el("th", {}, h))),
      res.fixes.map(f => el("tr", {},
        el("td", {}, f.error ? el("code", {}, f.name)
                             : el("a", {href: `#/fix/${encodeURIComponent(f.name)}`, class: "feat"}, f.name)),
        el("td", {}, f.error ? el("span", {class: "muted"}, f.error) : f.bugs),
        el("td", {}, f.chosen ?? el("span", {class: "muted"}, "none")),
        el("td", {class: "muted"}, new Date(f.mtime * 1000).toLocaleString())))));
  }

  function numbers(r) {
    const f = r.fix, c = r.control;
    const change = r.behaviour && r.behaviour !== "margin" ? "bad-rate change (paired)" : "margin change";
    const rows = [
      ["bad-behaviour rate", fmt(r.before.bad_rate), fmt(f.bad_rate), fmt(c.bad_rate)],
      ["good-behaviour rate", fmt(r.before.good_rate), fmt(f.good_rate), fmt(c.good_rate)],
      [change, "", fmt(f.margin_change), fmt(c.margin_change)],
      ["added nats / token", "", fmt(f.text.added_nats, 4), fmt(c.text.added_nats, 4)],
      ["KL to the original", "", fmt(f.text.kl, 4), fmt(c.text.kl, 4)],
      ["next-token accuracy", (f.text.accuracy_before ?? 0).toFixed(3),
       (f.text.accuracy_after ?? 0).toFixed(3), (c.text.accuracy_after ?? 0).toFixed(3)],
    ];
    for (const [name, k] of Object.entries(f.knowledge || {})) {
      const kc = (c.knowledge || {})[name];
      rows.push([`knows: ${name}`, k.before.toFixed(3), fmt(k.after), kc ? fmt(kc.after) : ""]);
    }
    return el("table", {class: "hits", id: "fix-numbers"},
      el("tr", {}, ["held-out", "before", "after the fix", "control edit"].map(h => el("th", {}, h))),
      rows.map(row => el("tr", {}, row.map((x, i) => el(i ? "td" : "th", {class: i ? "num" : ""}, x)))));
  }

  function examples(r) {
    if (!r.examples || !r.examples.length) return [];
    return [el("h2", {}, "Held-out prompts: continuations before and after"),
      el("div", {id: "fix-examples"}, r.examples.map(x => el("div", {class: "fix-example"},
        el("p", {}, el("b", {}, "prompt "), x.prompt),
        x.bad ? el("p", {class: "muted"}, `bad: ${x.bad} · good: ${x.good}`) : "",
        el("div", {class: "cols3"},
          ["before", "after", "control"].map(k => el("div", {},
            el("h3", {}, k === "after" ? "after the fix" : k === "control" ? "control edit" : "before"),
            el("pre", {class: `gen-${k}`}, x[k] ?? "")))))))];
  }

  async function renderOne(main, name) {
    const r = await api(`/api/fix?name=${encodeURIComponent(name)}`);
    main.append(el("p", {}, el("a", {href: "#/fix"}, "← all fixes")),
      el("h1", {}, "Fix: ", el("code", {}, name)),
      el("p", {class: "muted"}, `bug file ${r.bugs} · model ${r.model} · ${r.n_fit} fit prompts, ` +
        `${r.n_heldout} held-out prompts`));
    if (!r.fix) {
      main.append(el("p", {id: "fix-note"}, r.note || "No edit was chosen."));
      return;
    }
    // A report whose best fit candidate failed on fit still shows it, marked (never as chosen).
    const failed = r.status && r.status !== "chosen";
    if (failed) main.append(el("p", {id: "fix-note"}, r.note || ""));
    main.append(el("p", {id: "fix-edit"},
      el("b", {}, failed ? `${r.status}, shown for reference: ` : "chosen edit: "), r.fix.edit),
      el("p", {class: "muted"}, `control: ${r.control.edit}`), numbers(r), ...examples(r));
  }

  lmscope.registerPage({name: "fix", title: "Fixes",
    render: (main, params) => params ? renderOne(main, params) : renderList(main)});
})();
