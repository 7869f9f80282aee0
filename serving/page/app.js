// The kgrec page: calls the service's own /v1 routes; every text from the data goes through
// textContent (never innerHTML), so titles and ids cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("kgrec-api-key") || "";
keyInput.addEventListener("change", () => { sessionStorage.setItem("kgrec-api-key", keyInput.value); init(); });

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (keyInput.value) headers["X-API-Key"] = keyInput.value;
  const response = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const fields = (data.fields || []).filter((f) => f.field).map((f) => `${f.field}: ${f.message}`);
    throw new Error(`${response.status}: ${data.error || response.statusText}${fields.length ? " (" + fields.join("; ") + ")" : ""}`);
  }
  showError("");
  return data;
}

function currentUser() {
  return $("user").value.trim();
}

function sessionIds() {
  return $("session").value.split(",").map((s) => s.trim()).filter(Boolean);
}

function itemRow(item, { explainFor } = {}) {
  const li = el("li", { class: "result", "data-product-id": item.product_id },
    el("span", { class: "title", text: item.title || "(no title)" }), " ",
    el("span", { class: "pid", text: item.product_id }), " ",
    el("span", { class: "score", text: item.score.toFixed(3) }),
    el("button", { type: "button", class: "similar-button", text: "similar", onclick: () => similar(item) }));
  if (explainFor) {
    li.append(el("button", { type: "button", class: "explain-button", text: "explain",
      onclick: () => explain(explainFor, item) }));
  }
  return li;
}

async function search(event) {
  event.preventDefault();
  const user = currentUser();
  const body = { queries: [$("query").value], k: 10 };
  if (user) body.user_id = user;
  if (sessionIds().length) body.session = sessionIds();
  try {
    const data = await api("POST", "/v1/search", body);
    const list = $("search-results");
    list.replaceChildren(...data.results[0].items.map((item) => itemRow(item)));
    list.dataset.modelVersion = data.model_version;
  } catch (error) { showError(error.message); }
}

async function recommend(event) {
  event.preventDefault();
  const user = currentUser();
  const body = { user_ids: [user], k: 10, include_history: true };
  if (sessionIds().length) body.session = sessionIds();
  try {
    const data = await api("POST", "/v1/recommend", body);
    const result = data.results[0];
    const block = el("div", { class: "user-block" },
      el("div", {}, el("strong", { text: result.user_id }), " ",
        el("span", { class: `source source-${result.source}`, id: "rec-source", text: result.source }),
        el("span", { class: "muted small", text: `  model ${data.model_version}` })));
    if (result.history && result.history.length) {
      block.append(el("div", { class: "history", text: "recent history: " +
        result.history.map((h) => h.title || h.product_id).join(" · ") }));
    }
    block.append(el("ol", { class: "items", id: "rec-items" },
      ...result.items.map((item) => itemRow(item, { explainFor: result.user_id }))));
    $("recs").replaceChildren(block);
  } catch (error) { showError(error.message); }
}

async function similar(item) {
  try {
    const data = await api("POST", "/v1/similar", { product_ids: [item.product_id], k: 8 });
    $("similar-of").textContent = `like ${item.title || item.product_id}`;
    $("similar").replaceChildren(...data.results[0].items.map((i) => itemRow(i)));
  } catch (error) { showError(error.message); }
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function short(text, width = 22) {
  return text.length <= width ? text : text.slice(0, width - 1) + "…";
}

// One path as a small graph: nodes left to right, each relationship an arrow in its stored direction.
function drawPath(path, index) {
  const step = 170, radius = 14, top = 34;
  const width = 60 + step * (path.nodes.length - 1) + 60;
  const graph = svg("svg", { viewBox: `0 0 ${width} 92`, class: "path-graph", role: "img",
    "aria-label": path.text });
  const marker = `arrow-${index}`;
  const defs = svg("defs");
  const head = svg("marker", { id: marker, viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7",
    markerHeight: "7", orient: "auto-start-reverse" });
  head.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#475467" }));
  defs.append(head);
  graph.append(defs);
  const x = (i) => 60 + i * step;
  path.rels.forEach((rel, i) => {
    const [from, to] = rel.direction === "->" ? [i, i + 1] : [i + 1, i];
    const sign = to > from ? 1 : -1;
    graph.append(svg("line", { x1: x(from) + sign * radius, y1: top, x2: x(to) - sign * (radius + 2), y2: top,
      stroke: "#475467", "stroke-width": "1.5", "marker-end": `url(#${marker})` }));
    graph.append(svg("text", { x: (x(i) + x(i + 1)) / 2, y: top - 8, "text-anchor": "middle", class: "rel" }, rel.type));
  });
  path.nodes.forEach((node, i) => {
    const g = svg("g", { class: "node" });
    g.append(svg("title", {}, `${node.label} ${node.id}`));
    g.append(svg("circle", { cx: x(i), cy: top, r: radius, class: `node-${node.label}` }));
    g.append(svg("text", { x: x(i), y: top + radius + 14, "text-anchor": "middle" }, node.label));
    g.append(svg("text", { x: x(i), y: top + radius + 28, "text-anchor": "middle", class: "rel" }, short(node.id)));
    graph.append(g);
  });
  return graph;
}

async function explain(user, item) {
  const body = { user_id: user, product_ids: [item.product_id], max_paths: 4 };
  if (sessionIds().length) body.session = sessionIds();
  try {
    const data = await api("POST", "/v1/explain", body);
    const result = data.results[0];
    $("explain-of").textContent = `${result.title || result.product_id} for ${result.user_id} ` +
      `(${result.source}, model score ${result.model_score.toFixed(3)})`;
    const paths = result.paths.map((path, i) => {
      const copy = el("button", { type: "button", text: "copy Cypher", onclick: () =>
        navigator.clipboard && navigator.clipboard.writeText(`${path.browser_params}\n${path.cypher}`) });
      return el("div", { class: "path" },
        el("div", {}, el("strong", { text: path.kind }), " ", el("span", { text: path.text }),
          el("span", { class: "muted small", text: `  score ${path.score.toFixed(3)}` })),
        drawPath(path, i),
        el("div", { class: "muted small", text: "Open in the Neo4j Browser: run the :params line, then the query." }),
        el("pre", { class: "cypher", text: `${path.browser_params}\n${path.cypher}` }), copy);
    });
    $("explain").replaceChildren(...(paths.length ? paths :
      [el("p", { class: "muted", text: "no knowledge-graph path links this user's history to the product" })]));
  } catch (error) { showError(error.message); }
}

async function init() {
  try {
    const info = await api("GET", "/v1/model");
    $("model-info").textContent = `${info.model} · version ${info.model_version} · ` +
      `${info.products.toLocaleString()} products · ${info.users.toLocaleString()} users`;
    $("example-users").replaceChildren(...info.example_users.map((u) => el("option", { value: u })));
    if (!currentUser() && info.example_users.length) $("user").placeholder = `user id, e.g. ${info.example_users[0]}`;
    $("search-panel").hidden = !info.can_search;
  } catch (error) { showError(error.message); }
}

$("search-form").addEventListener("submit", search);
$("user-form").addEventListener("submit", recommend);
init();
