// lmscope viewer core: page registry, hash router, API calls, DOM helpers.
// Every model or corpus string reaches the page through textContent (el() below), never
// innerHTML: corpus text may contain HTML.
"use strict";

const lmscope = (() => {
  const pages = [];          // {name, title, nav, render(main, params)}
  let info = null;

  // el("div", {class: "x", onclick: fn}, child, "text", ...) -> Element; strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "style") Object.assign(node.style, v);
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  // svg("circle", {cx: 1, r: 2}, ...) -> an SVG element; same rules as el() (strings become text).
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  async function api(path, body) {
    const opts = body === undefined ? {} :
      {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
    const res = await fetch(path, opts);
    let data;
    try { data = await res.json(); } catch (e) { data = {error: `bad response (${res.status})`}; }
    if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
    return data;
  }

  function registerPage(page) {
    pages.push(Object.assign({nav: true}, page));
    renderNav();
  }

  function renderNav() {
    const nav = document.getElementById("nav");
    if (!nav) return;
    nav.replaceChildren(...pages.filter(p => p.nav).map(p =>
      el("a", {href: `#/${p.name}`, "data-page": p.name}, p.title)));
  }

  function route() {
    const hash = location.hash.replace(/^#\/?/, "");
    const [name, ...rest] = hash.split("/");
    const page = pages.find(p => p.name === name) || pages[0];
    const params = rest.map(decodeURIComponent).join("/");
    document.querySelectorAll("#nav a").forEach(a =>
      a.classList.toggle("active", a.dataset.page === page.name));
    const main = document.getElementById("main");
    main.replaceChildren();
    document.title = `lmscope · ${page.title}`;
    Promise.resolve(page.render(main, params)).catch(err => showError(main, err));
  }

  function showError(parent, err) {
    parent.append(el("p", {class: "error"}, String(err && err.message || err)));
  }

  // Color ramp for activity in [0, 1] (light yellow -> red), same as the HTML report.
  function heat(v) {
    v = Math.max(0, Math.min(1, v || 0));
    return `rgb(255, ${Math.round(250 - 180 * v)}, ${Math.round(220 - 200 * v)})`;
  }

  function featureLink(hit) {
    const id = hit.id || `${hit.hook}/${hit.feature}`;
    return el("a", {href: `#/feature/${encodeURIComponent(id)}`, class: "feat"}, id);
  }

  function labelSpan(label) {
    return label ? el("span", {class: "label"}, label) : el("span", {class: "unlabeled"}, "(unlabeled)");
  }

  function showToken(t) {   // make whitespace visible in token chips
    return String(t).replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "·") || "∅";
  }

  async function start() {
    try {
      info = await api("/api/info");
      const name = info.model.length > 40 ? "…" + info.model.slice(-39) : info.model;
      const m = document.getElementById("model");
      m.textContent = `${name} · ${info.hooks.length} dictionaries`;
      m.title = info.model;
    } catch (e) { /* pages still render their own errors */ }
    const {pages: scripts} = await api("/api/pages");
    for (const src of scripts) {
      await new Promise((ok, fail) => {
        const s = el("script", {src});
        s.onload = ok; s.onerror = () => fail(new Error(`cannot load ${src}`));
        document.body.append(s);
      });
    }
    window.addEventListener("hashchange", route);
    route();
  }

  return {el, svg, api, registerPage, heat, featureLink, labelSpan, showToken, showError, start,
          get info() { return info; }};
})();

window.lmscope = lmscope;
document.addEventListener("DOMContentLoaded", () => lmscope.start());
