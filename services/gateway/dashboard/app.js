// The legato dashboard: instances, one instance live, definitions,
// schedules, agents, entities. Plain
// modules, no build step; the gateway serves these files from its binary.
// Every call goes to the gateway's own API with the signed-in token (an API
// key or an access token) when the gateway asks for one; live updates come
// through the stock SignalR client, which negotiates at /api/v1 and so
// works unchanged against the local hub and Azure SignalR.

import { entityPages } from "./entities.js";

const TOKEN_KEY = "legato.token";
const view = document.getElementById("view");
const banner = document.getElementById("banner");
let live = null; // the open SignalR connection of the instance page
let refreshTimer = null;
// The instance page's next read after a quiet period (see instancePage).
let idleTimer = null;
const IDLE_REFRESH_MS = 5000;
// Counts pages left, so work a page started stops with it.
let pageGeneration = 0;
// Counts navigations: a read or a connection a page started that ends
// after the next page is shown must not show the page it was for.
let routeSeq = 0;
// What agents of the instance page write as they write it (`output`
// invocations), by step: never stored, so gone with the page; the whole
// text is in the task's journal and result once recorded.
let liveOutput = new Map();
// Each step's journal entries (model turns, tool calls) by name, from the
// instance page's history.
let stepJournals = new Map();
// The instance list's next refresh (see instancesPage).
let listTimer = null;
const LIST_REFRESH_MS = 2000;

// ---- small DOM helpers (text only: nothing from the API becomes HTML) ----

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the page's CSP
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const status = (s) => el("span", { class: `status ${s}`, "data-status": s }, s);
const json = (v) => el("pre", {}, JSON.stringify(v, null, 2));
const when = (t) => (t ? new Date(t).toLocaleString() : "");

function duration(from, to) {
  if (!from) return "";
  const ms = (to ? new Date(to) : new Date()) - new Date(from);
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

// Live updates draw the instance page again while a person may be typing
// in its fields (a budget, an event): what they typed, and where, stays.
function show(...nodes) {
  const samePage = view.dataset.page === location.hash;
  const typed = samePage
    ? [...view.querySelectorAll("input[id], textarea[id]")].filter((f) => f.value !== "").map((f) => [f.id, f.value])
    : [];
  const focused = samePage ? document.activeElement?.id : undefined;
  view.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined && n !== false));
  view.dataset.page = location.hash;
  for (const [id, value] of typed) {
    const field = document.getElementById(id);
    if ((field instanceof HTMLInputElement || field instanceof HTMLTextAreaElement) && !field.disabled && field.value === "") {
      field.value = value;
    }
  }
  if (focused) document.getElementById(focused)?.focus();
}

function alert(message) {
  banner.textContent = message;
  banner.hidden = !message;
}

// ---- the API ----

class Refused extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function api(method, path, body) {
  const headers = {};
  if (token()) headers.authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Refused(response.status, data || {});
  return data;
}

// An action's outcome in the banner; sign-in and permission problems get
// their own page.
async function attempt(action) {
  try {
    alert("");
    return await action();
  } catch (error) {
    if (error.status === 401) return signIn(error.message);
    if (error.status === 403) return notAllowed(error.message);
    alert(error.message);
  }
}

// ---- sign-in ----

function signIn(reason) {
  closeLive();
  document.getElementById("sign-out").hidden = !token();
  const input = el("input", { type: "password", id: "token", placeholder: "API key or access token", autocomplete: "off" });
  const submit = async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    route();
  };
  show(
    el("form", { class: "signin", id: "sign-in", onsubmit: submit },
      el("h1", {}, "Sign in"),
      el("p", { class: "muted" }, reason || "This gateway asks who you are."),
      el("label", { for: "token" }, "API key or access token"),
      input,
      el("button", { class: "primary", type: "submit" }, "Sign in"),
    ),
  );
}

function notAllowed(reason) {
  closeLive();
  show(
    el("div", { class: "signin", id: "not-allowed" },
      el("h1", {}, "Not allowed"),
      el("p", {}, reason),
      el("p", { class: "muted" }, "Your credential does not have the role this needs; ask for it, or sign in with another."),
    ),
  );
}

// ---- instances ----

async function instancesPage(params) {
  const filters = {
    status: params.get("status") || "",
    workflow: params.get("workflow") || "",
    createdFrom: params.get("createdFrom") || "",
    createdTo: params.get("createdTo") || "",
  };
  const query = new URLSearchParams({ top: "25" });
  for (const [k, v] of Object.entries(filters)) {
    if (v) query.set(k, k.startsWith("created") ? new Date(v).toISOString() : v);
  }
  if (params.get("continuationToken")) query.set("continuationToken", params.get("continuationToken"));
  const page = await api("GET", `/api/v1/instances?${query}`);

  const navigate = (changes) => {
    const next = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) v ? next.set(k, v) : next.delete(k);
    location.hash = `#/?${next}`;
  };
  const statusSelect = el("select", { id: "filter-status", onchange: (e) => navigate({ status: e.target.value, continuationToken: "" }) },
    ["", "Pending", "Running", "Suspended", "Completed", "Failed", "Terminated"].map((s) =>
      el("option", { value: s, selected: s === filters.status }, s || "any status")));
  const workflowInput = el("input", { id: "filter-workflow", placeholder: "workflow", value: filters.workflow });
  const fromInput = el("input", { id: "filter-from", type: "datetime-local", value: filters.createdFrom, title: "created from" });
  const toInput = el("input", { id: "filter-to", type: "datetime-local", value: filters.createdTo, title: "created before" });
  const search = el("input", { id: "search", placeholder: "instance id" });

  const tbody = el("tbody", {}, instanceRows(page.items));
  show(
    el("h1", {}, "Instances"),
    el("div", { class: "filters" },
      statusSelect, workflowInput, fromInput, toInput,
      el("button", { onclick: () => navigate({ workflow: workflowInput.value, createdFrom: fromInput.value, createdTo: toInput.value, continuationToken: "" }) }, "Filter"),
      el("form", { onsubmit: (e) => { e.preventDefault(); if (search.value) location.hash = `#/instances/${encodeURIComponent(search.value.trim())}`; } },
        search, el("button", { type: "submit" }, "Open")),
    ),
    el("table", { id: "instances" },
      el("thead", {}, el("tr", {}, ["id", "workflow", "status", "created", "updated"].map((h) => el("th", {}, h)))),
      tbody),
    el("div", { class: "actions" },
      params.get("continuationToken") ? el("button", { onclick: () => history.back() }, "Previous") : null,
      page.continuationToken ? el("button", { id: "next", onclick: () => navigate({ continuationToken: page.continuationToken }) }, "Next") : null),
  );
  // The first page stays current: read again every LIST_REFRESH_MS while
  // it is shown in a visible tab (one small request, never more), so new
  // runs appear at the top and statuses change in place. A later page is
  // a snapshot: paging through a moving list would skip or repeat rows.
  if (!params.get("continuationToken")) {
    const tick = async () => {
      if (!tbody.isConnected) return;
      if (!document.hidden) {
        try {
          tbody.replaceChildren(...instanceRows((await api("GET", `/api/v1/instances?${query}`)).items));
        } catch {
          // The next tick tries again; the rows shown stay.
        }
      }
      if (tbody.isConnected) listTimer = setTimeout(tick, LIST_REFRESH_MS);
    };
    listTimer = setTimeout(tick, LIST_REFRESH_MS);
  }
}

function instanceRows(items) {
  if (!items.length) return [el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No instances match."))];
  return items.map((item) =>
    el("tr", { class: "row", "data-id": item.id, onclick: () => (location.hash = `#/instances/${encodeURIComponent(item.id)}`) },
      el("td", {}, item.id), el("td", {}, item.workflow), el("td", {}, status(item.runtimeStatus)),
      el("td", {}, when(item.createdAt)), el("td", {}, when(item.updatedAt))));
}

// Steps by depth in the workflow's graph: a step sits one column after the
// deepest step it needs.
function levels(steps) {
  const depth = new Map();
  const byId = new Map(steps.map((s) => [s.id, s]));
  const of = (step, seen = new Set()) => {
    if (depth.has(step.id)) return depth.get(step.id);
    if (seen.has(step.id)) return 0;
    seen.add(step.id);
    const d = Math.max(-1, ...step.needs.map((n) => (byId.has(n) ? of(byId.get(n), seen) : -1))) + 1;
    depth.set(step.id, d);
    return d;
  };
  const columns = [];
  for (const step of steps) (columns[of(step)] ??= []).push(step);
  return columns.filter(Boolean);
}

// A step's card; a loop's or race's holds its body's cards (from `all`,
// the instance's steps), drawn like the workflow's; a loop's also its
// iteration count.
function tokens(usage) {
  return (usage.inputTokens || 0) + (usage.outputTokens || 0);
}

// "1,234 tokens (1,000 in, 234 out) · cost 0.42"
function spent(usage) {
  const n = (x) => (x || 0).toLocaleString("en");
  return `${n(tokens(usage))} tokens (${n(usage.inputTokens)} in, ${n(usage.outputTokens)} out)` +
    (usage.cost ? ` · cost ${usage.cost.toFixed(4).replace(/\.?0+$/, "")}` : "");
}

function overBudget(instance) {
  const { budget, usage } = instance;
  if (!budget || !usage || instance.runtimeStatus !== "Suspended") return false;
  return (budget.tokens !== undefined && tokens(usage) > budget.tokens) || (budget.cost !== undefined && (usage.cost || 0) > budget.cost);
}

function stepCard(step, all = []) {
  const items = step.items;
  const retries = Math.max(0, step.attempts - (items ? Math.max(1, items.total) : 1));
  const body = all.filter((s) => s.parent === step.id);
  const loop = step.kind === "loop";
  return el("div", { class: `step ${step.status}${body.length ? " block" : ""}`, "data-step": step.id, "data-status": step.status },
    el("div", { class: "name" }, step.id, " ", status(step.status)),
    el("div", { class: "meta" },
      step.kind.replaceAll("_", " "),
      step.event ? ` · waits for “${step.event}”` : "",
      step.workflow ? ` · runs ${step.workflow}` : "",
      step.attempts ? ` · ${step.attempts} attempt${step.attempts === 1 ? "" : "s"}` : "",
      retries ? ` (${retries} retried)` : "",
      step.startedAt ? ` · ${duration(step.startedAt, step.completedAt)}` : ""),
    loop ? el("div", { class: "meta", "data-iteration": `${step.iteration ?? 0}/${step.maxIterations}` },
      `iteration ${step.iteration ?? 0} of at most ${step.maxIterations}`) : null,
    items ? el("div", { class: "meta", "data-items": `${items.completed}/${items.total}` },
      `${items.completed}/${items.total} items`, items.failed ? `, ${items.failed} failed` : "", items.running ? `, ${items.running} running` : "") : null,
    items ? el("div", { class: "bar" }, el("span", { style: `width: ${items.total ? (100 * items.completed) / items.total : 0}%` })) : null,
    step.usage ? el("div", { class: "meta", "data-usage": tokens(step.usage) }, spent(step.usage)) : null,
    stepJournals.has(step.id) ? el("div", { class: "meta", "data-journal": step.id },
      `journal: ${stepJournals.get(step.id).join(" · ")}`) : null,
    liveOutput.has(step.id) ? el("pre", { class: "output", "data-output": step.id }, liveOutput.get(step.id).text) : null,
    step.error ? el("div", { class: "meta" }, step.error) : null,
    // Each child run (the latest attempt's of each task), by its page.
    ...(step.children || []).map((child) =>
      el("div", { class: "meta" }, el("a", { class: "child", "data-child": child, href: `#/instances/${encodeURIComponent(child)}` }, `↳ ${child}`))),
    body.length ? el("div", { class: "graph body" }, levels(body).map((column) => el("div", { class: "level" }, column.map((s) => stepCard(s, all))))) : null);
}

// Appends a piece of an agent's output to its step's text, headed anew
// when another call (or item, or attempt) of the step starts writing.
function appendOutput(piece) {
  const from = `${piece.call}${piece.item !== undefined ? ` · item ${piece.item}` : ""} · attempt ${piece.attempt}`;
  const shown = liveOutput.get(piece.step);
  if (!shown || shown.from !== from) {
    const text = `${shown ? `${shown.text}\n` : ""}— ${from} —\n`;
    liveOutput.set(piece.step, { from, text });
  }
  liveOutput.get(piece.step).text += piece.text;
  const node = document.querySelector(`[data-output="${CSS.escape(piece.step)}"]`);
  if (node) node.textContent = liveOutput.get(piece.step).text;
  return Boolean(node);
}

async function instancePage(id) {
  const path = `/api/v1/instances/${encodeURIComponent(id)}`;
  liveOutput = new Map();
  let ended = false;
  const visit = routeSeq;
  const render = async () => {
    const instance = await api("GET", `${path}?history=true`);
    if (visit !== routeSeq) return;
    stepJournals = new Map();
    for (const row of instance.history || []) {
      for (const p of row.progress || []) {
        if (p.kind !== "journal_recorded" || !p.step || !p.data?.name) continue;
        const names = stepJournals.get(p.step) || [];
        if (!names.includes(p.data.name)) names.push(p.data.name);
        stepJournals.set(p.step, names);
      }
    }
    const finished = ["Completed", "Failed", "Terminated"].includes(instance.runtimeStatus);
    ended = finished;
    const waiting = instance.steps.filter((s) => s.status === "Waiting" && s.event);
    // Questions tasks ask a person: answered with JSON that fits their schema.
    const asking = instance.steps.filter((s) => s.question);
    const answerBox = (step) => el("textarea", { class: "answer", "data-answer": step.question.name, rows: 3, cols: 50,
      placeholder: step.question.schema ? JSON.stringify(step.question.schema) : '{"any": "json"}' });
    const reason = el("input", { id: "reason", placeholder: "reason (for a rejection)" });
    const signal = (event, data) => attempt(async () => { await api("POST", `${path}/events/${encodeURIComponent(event)}`, data); });
    const operate = (operation, question, body = {}) => attempt(async () => {
      if (question && !confirm(question)) return;
      if (operation === "purge") {
        await api("DELETE", path);
        location.hash = "#/";
        return;
      }
      await api("POST", `${path}/${operation}`, body);
    });
    const redrivable = ["Failed", "Terminated"].includes(instance.runtimeStatus);
    // Redrive onto a later version of the definition (a fixed one), if given.
    const redriveVersion = el("input", { id: "redrive-version", type: "number", min: instance.version, placeholder: `version (${instance.version})`, disabled: !redrivable, style: "width: 8em" });
    // A run suspended for its budget resumes with a higher one.
    const budgetTokens = el("input", { id: "budget-tokens", type: "number", min: 1, placeholder: "budget tokens", disabled: finished, style: "width: 9em" });
    const budgetCost = el("input", { id: "budget-cost", type: "number", min: 0, step: "any", placeholder: "budget cost", disabled: finished, style: "width: 8em" });
    const resume = () => {
      const budget = {};
      if (budgetTokens.value) budget.tokens = Number(budgetTokens.value);
      if (budgetCost.value) budget.cost = Number(budgetCost.value);
      return operate("resume", null, Object.keys(budget).length ? { budget } : {});
    };
    const limits = instance.budget ? [instance.budget.tokens !== undefined ? `${instance.budget.tokens.toLocaleString("en")} tokens` : null,
      instance.budget.cost !== undefined ? `cost ${instance.budget.cost}` : null].filter(Boolean).join(", ") : null;
    const eventName = el("input", { id: "event-name", placeholder: "event name" });
    const eventData = el("textarea", { id: "event-data", rows: 2, cols: 40, placeholder: '{"any": "json"}' });
    const raise = () => attempt(async () => {
      let data = null;
      if (eventData.value.trim()) {
        try { data = JSON.parse(eventData.value); } catch (e) { throw new Error(`The event data is not JSON: ${e.message}`); }
      }
      await api("POST", `${path}/events/${encodeURIComponent(eventName.value.trim())}`, data);
    });
    show(
      el("h1", {}, instance.id, " ", status(instance.runtimeStatus), " ",
        el("span", { id: "live", class: live ? "live" : "live off" }, live ? "● live" : "○ not live")),
      el("p", { class: "muted" }, `${instance.workflow} v${instance.version} · created ${when(instance.createdAt)} · updated ${when(instance.updatedAt)}`,
        instance.tenant ? ` · tenant ${instance.tenant}` : ""),
      instance.parent ? el("p", { id: "parent" }, "Child run of ",
        el("a", { href: `#/instances/${encodeURIComponent(instance.parent.id)}` }, instance.parent.id),
        ` · step ${instance.parent.step}`, instance.parent.item !== undefined ? ` item ${instance.parent.item}` : "",
        instance.parent.iteration !== undefined ? ` iteration ${instance.parent.iteration}` : "",
        ` · attempt ${instance.parent.attempt}`) : null,
      instance.error ? el("p", { id: "error" }, el("strong", {}, "Error: "), instance.error) : null,
      instance.usage || instance.budget ? el("p", { id: "usage", "data-tokens": instance.usage ? tokens(instance.usage) : 0 },
        el("strong", {}, "Spent: "), instance.usage ? spent(instance.usage) : "nothing yet",
        limits ? ` · budget ${limits}` : "",
        overBudget(instance) ? el("strong", { id: "over-budget" }, " · over budget: resume with a higher one, or terminate") : "") : null,
      ...waiting.map((step) => el("div", { class: "wait", "data-waiting": step.event },
        el("strong", {}, `Waiting for “${step.event}”`), " ",
        el("button", { class: "primary", id: "approve", onclick: () => signal(step.event, { approved: true, by: "dashboard" }) }, "Approve"), " ",
        reason, " ",
        el("button", { class: "danger", id: "reject", onclick: () => signal(step.event, { approved: false, reason: reason.value || "rejected in the dashboard" }) }, "Reject"))),
      ...asking.map((step) => {
        const box = answerBox(step);
        return el("div", { class: "wait", "data-question": step.question.name },
          el("strong", {}, `${step.id}${step.question.item !== undefined ? ` item ${step.question.item}` : ""} asks: `), step.question.question, " ",
          box, " ",
          el("button", { class: "primary", onclick: () => attempt(async () => {
            let data;
            try { data = JSON.parse(box.value || "null"); } catch (e) { throw new Error(`The answer is not JSON: ${e.message}`); }
            await api("POST", `${path}/events/${encodeURIComponent(step.question.name)}`, data);
          }) }, "Answer"));
      }),
      el("h2", {}, "Steps"),
      el("div", { class: "graph", id: "graph" }, levels(instance.steps.filter((s) => !s.parent)).map((column) => el("div", { class: "level" }, column.map((s) => stepCard(s, instance.steps))))),
      el("h2", {}, "Actions"),
      el("div", { class: "actions" },
        eventName, eventData, el("button", { id: "raise", onclick: raise }, "Raise event"),
        el("button", { id: "suspend", disabled: finished, onclick: () => operate("suspend") }, "Suspend"),
        budgetTokens, budgetCost,
        el("button", { id: "resume", disabled: finished, onclick: resume }, "Resume"),
        el("button", { id: "restart", onclick: () => operate("restart", `Restart ${instance.id} from the start?`) }, "Restart"),
        redriveVersion,
        el("button", { id: "redrive", disabled: !redrivable, onclick: () => operate("redrive", `Redrive ${instance.id} from what did not complete${redriveVersion.value ? `, on version ${redriveVersion.value}` : ""}?`, redriveVersion.value ? { version: Number(redriveVersion.value) } : {}) }, "Redrive"),
        el("button", { class: "danger", id: "terminate", disabled: finished, onclick: () => operate("terminate", `Terminate ${instance.id}? Running tasks are cancelled.`, { reason: "terminated in the dashboard" }) }, "Terminate"),
        el("button", { class: "danger", id: "purge", disabled: !finished, onclick: () => operate("purge", `Purge ${instance.id} and its history? This cannot be undone.`) }, "Purge")),
      el("div", { class: "grid" },
        el("div", {}, el("h2", {}, "Input"), json(instance.input)),
        el("div", {}, el("h2", {}, "Output"), json(instance.output))),
      instance.customStatus !== null && instance.customStatus !== undefined
        ? el("div", {}, el("h2", {}, "Custom status"), json(instance.customStatus)) : null,
      el("h2", {}, "History"),
      el("table", { id: "history" },
        el("thead", {}, el("tr", {}, ["seq", "at", "event", "details"].map((h) => el("th", {}, h)))),
        el("tbody", {}, (instance.history || []).map((row) => {
          const { type, at, ...details } = row.event;
          return el("tr", {}, el("td", {}, row.seq), el("td", {}, when(row.at)), el("td", {}, type),
            el("td", {}, el("code", {}, JSON.stringify(details).slice(0, 300))));
        }))),
    );
  };
  // Each progress event (or reconnect) reads the whole instance again, so
  // an event skipped on the way is covered by the next one. The last one
  // lost (Azure SignalR does not resend, and nothing follows it to show
  // the gap) is covered by reading again after IDLE_REFRESH_MS without
  // news while the run goes on and the tab is visible: one request per
  // quiet period, none once it has ended.
  let lastNews = Date.now();
  await render();
  // Leaving the page (closeLive) ends the checks, even one mid-read. They
  // start before the connection does, so a hub slow to answer (or one
  // that never does) delays nothing.
  let generation = pageGeneration;
  const idle = async () => {
    if (generation !== pageGeneration) return;
    if (!document.hidden && !ended && Date.now() - lastNews >= IDLE_REFRESH_MS) {
      lastNews = Date.now();
      await attempt(render);
    }
    if (generation === pageGeneration) idleTimer = setTimeout(idle, IDLE_REFRESH_MS);
  };
  const news = () => {
    lastNews = Date.now();
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => attempt(render), 150);
  };
  // A piece goes straight into its step's text; the first of a step draws
  // the page again to make room for it.
  const output = (piece) => {
    if (!appendOutput(piece)) news();
  };
  await follow(id, visit, news, output, () => {
    generation = pageGeneration;
    idleTimer = setTimeout(idle, IDLE_REFRESH_MS);
  });
}

// Live: the stock client negotiates at the gateway (redirected to the local
// hub or to Azure SignalR), then watches the instance: in Azure mode the
// gateway adds the connection to the instance's group; the local hub
// answers that with 409 and is asked directly.
async function follow(id, visit, onProgress, onOutput, onOpening) {
  closeLive();
  onOpening();
  const options = token() ? { accessTokenFactory: () => token() } : {};
  const connection = new signalR.HubConnectionBuilder()
    .withUrl(`${location.origin}/api/v1`, options)
    .withAutomaticReconnect()
    .configureLogging(signalR.LogLevel.Warning)
    .build();
  // The last progress position seen: after a reconnect the local hub sends
  // exactly what came after it.
  let seen = null;
  connection.on("progress", (event) => {
    if (event.instanceId !== id) return;
    if (event.position) seen = event.position;
    onProgress(event);
  });
  connection.on("output", (piece) => {
    if (piece.instanceId === id) onOutput(piece);
  });
  const subscribe = async () => {
    try {
      await api("POST", `/api/v1/instances/${encodeURIComponent(id)}/subscriptions`, { connectionId: connection.connectionId });
    } catch (error) {
      if (error.status !== 409) throw error;
      await connection.invoke("Subscribe", id, seen);
    }
    onProgress(null);
  };
  connection.onreconnected(subscribe);
  try {
    await connection.start();
    if (visit !== routeSeq) {
      // The page was left while the connection opened.
      connection.stop();
      return;
    }
    live = connection;
    await subscribe();
  } catch (error) {
    live = null;
    alert(`Live updates are off: ${error.message}`);
  }
  const indicator = document.getElementById("live");
  if (indicator) {
    indicator.className = live ? "live" : "live off";
    indicator.textContent = live ? "● live" : "○ not live";
  }
}

function closeLive() {
  pageGeneration += 1;
  clearTimeout(refreshTimer);
  clearTimeout(idleTimer);
  clearTimeout(listTimer);
  if (live) live.stop();
  live = null;
}

// ---- workflows ----

async function workflowsPage() {
  const list = await api("GET", "/api/v1/workflows");
  show(
    el("h1", {}, "Workflows"),
    el("table", { id: "workflows" },
      el("thead", {}, el("tr", {}, ["name", "latest version", "description", "registered"].map((h) => el("th", {}, h)))),
      el("tbody", {}, list.items.map((d) =>
        el("tr", { class: "row", "data-name": d.name, onclick: () => (location.hash = `#/workflows/${encodeURIComponent(d.name)}`) },
          el("td", {}, d.name), el("td", {}, d.version), el("td", {}, d.description || ""), el("td", {}, when(d.registeredAt)))))),
  );
}

async function workflowPage(name, version) {
  const query = version ? `?version=${encodeURIComponent(version)}` : "";
  const definition = await api("GET", `/api/v1/workflows/${encodeURIComponent(name)}${query}`);
  const { versions } = await api("GET", `/api/v1/workflows/${encodeURIComponent(name)}/versions`);
  show(
    el("h1", {}, definition.name, " ", el("span", { class: "muted" }, `v${definition.version}`)),
    el("p", { class: "muted" }, definition.description || "", ` · registered ${when(definition.registeredAt)} · sha256 ${definition.hash.slice(0, 12)}`),
    el("div", { class: "actions" }, "Versions: ",
      versions.map((v) => el("a", { href: `#/workflows/${encodeURIComponent(name)}/${v}`, "data-version": v }, `v${v}`))),
    el("h2", {}, "Source"),
    el("pre", { id: "source" }, JSON.stringify(definition.definition, null, 2)),
  );
}

// ---- schedules ----

const timetable = (spec) => spec.cron
  ? `cron ${spec.cron} (${spec.timeZone || "UTC"})`
  : `every ${spec.intervalSeconds} s`;

async function schedulesPage() {
  const list = await api("GET", "/api/v1/schedules");
  show(
    el("h1", {}, "Schedules"),
    el("table", { id: "schedules" },
      el("thead", {}, el("tr", {}, ["name", "workflow", "when", "overlap", "state", "next run"].map((h) => el("th", {}, h)))),
      el("tbody", {}, list.items.length ? list.items.map((s) =>
        el("tr", { class: "row", "data-name": s.name, onclick: () => (location.hash = `#/schedules/${encodeURIComponent(s.name)}`) },
          el("td", {}, s.name), el("td", {}, s.spec.workflow), el("td", {}, timetable(s.spec)), el("td", {}, s.spec.overlap),
          el("td", {}, s.spec.paused ? "paused" : "active"), el("td", {}, when(s.nextRuns[0]))))
        : el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No schedules. Create one with PUT /api/v1/schedules/{name} or `legato schedule put`."))),
    ),
  );
}

async function schedulePage(name) {
  const path = `/api/v1/schedules/${encodeURIComponent(name)}`;
  const render = async () => {
    const s = await api("GET", path);
    const note = el("input", { id: "note", placeholder: "note (why)" });
    const act = (operation, body = {}) => attempt(async () => {
      const answer = await api("POST", `${path}/${operation}`, body);
      if (operation === "trigger") alert(`Triggered ${answer.instanceIds.join(", ")}: it starts at the scheduler's next poll.`);
      await render();
    });
    const remove = () => attempt(async () => {
      if (!confirm(`Delete schedule ${s.name}? The runs it started stay.`)) return;
      await api("DELETE", path);
      location.hash = "#/schedules";
    });
    show(
      el("h1", {}, s.name, " ", el("span", { class: "muted", id: "schedule-state" }, s.spec.paused ? "paused" : "active")),
      el("p", { class: "muted" }, `${s.spec.workflow}${s.spec.version ? ` v${s.spec.version}` : ""} · ${timetable(s.spec)} · overlap ${s.spec.overlap}`,
        ` · catch-up ${s.spec.catchupWindowSeconds} s · jitter ${s.spec.jitterSeconds} s · missed ${s.missed}`),
      s.spec.note ? el("p", { id: "schedule-note" }, el("strong", {}, "Note: "), s.spec.note) : null,
      el("h2", {}, "Actions"),
      el("div", { class: "actions" }, note,
        el("button", { id: "pause", disabled: s.spec.paused, onclick: () => act("pause", { note: note.value || null }) }, "Pause"),
        el("button", { id: "resume", disabled: !s.spec.paused, onclick: () => act("resume", { note: note.value || null }) }, "Resume"),
        el("button", { class: "primary", id: "trigger", onclick: () => act("trigger") }, "Trigger now"),
        el("button", { class: "danger", id: "delete", onclick: remove }, "Delete")),
      el("div", { class: "grid" },
        el("div", {}, el("h2", {}, "Next runs"),
          el("ul", { id: "next-runs" }, s.nextRuns.length ? s.nextRuns.map((t) => el("li", {}, when(t))) : el("li", { class: "muted" }, "none while paused"))),
        el("div", {}, el("h2", {}, "Input"), json(s.spec.input))),
      el("h2", {}, "Recent runs"),
      el("table", { id: "recent-runs" },
        el("thead", {}, el("tr", {}, ["nominal time", "outcome", "instance", "at"].map((h) => el("th", {}, h)))),
        el("tbody", {}, s.recentRuns.map((run) => el("tr", {},
          el("td", {}, when(run.nominalTime)), el("td", {}, run.outcome),
          el("td", {}, run.instanceId ? el("a", { href: `#/instances/${encodeURIComponent(run.instanceId)}` }, run.instanceId) : ""),
          el("td", {}, when(run.at)))))),
    );
  };
  await render();
}

// ---- agents ----

async function agentsPage() {
  const list = await api("GET", "/api/v1/agents");
  show(
    el("h1", {}, "Agents"),
    el("p", { class: "muted" }, "Built-in agents run inside legato; pull agents are workers anywhere that poll for their tasks (docs/agents.md)."),
    el("table", { id: "agents" },
      el("thead", {}, el("tr", {}, ["name", "kind", ...FIGURES.map(([, label]) => label), "lease", "description"].map((h) => el("th", {}, h)))),
      el("tbody", {}, list.items.map((a) =>
        el("tr", { class: "row", "data-name": a.name, onclick: () => (location.hash = `#/agents/${encodeURIComponent(a.name)}`) },
          el("td", {}, a.name), el("td", {}, a.kind + (a.owned ? " (this tenant's)" : "")),
          ...FIGURES.map(([field]) => el("td", { "data-figure": field }, figure(a[field]))),
          el("td", {}, a.kind === "builtin" ? "—" : `${a.leaseMs / 1000} s`), el("td", {}, a.description || ""))))),
    el("p", { class: "muted" }, "Completed, failed and p50 are of the last five minutes, added up from every replica's report (every 5 s)."),
  );
}

// The registry's live figures: [field, column heading].
const FIGURES = [["waiting", "waiting"], ["running", "running"], ["completed", "completed"], ["failed", "failed"], ["p50Ms", "p50 ms"]];

function figure(value) {
  return value === undefined || value === null ? "—" : String(value);
}

async function agentPage(name) {
  const path = `/api/v1/agents/${encodeURIComponent(name)}`;
  const a = await api("GET", path);
  const remove = () => attempt(async () => {
    if (!confirm(`Remove agent ${a.name}? Tasks already queued for it stay.`)) return;
    await api("DELETE", path);
    location.hash = "#/agents";
  });
  show(
    el("h1", {}, a.name, " ", el("span", { class: "muted", id: "agent-kind" }, a.kind)),
    el("p", { class: "muted" }, a.description || "", ` · lease ${a.leaseMs / 1000} s · ${a.owned ? "this tenant's" : "shared by every tenant"} · updated ${when(a.updatedAt)}`),
    el("p", { id: "agent-figures" }, `now ${figure(a.waiting)} waiting, ${figure(a.running)} running · last 5 minutes: ${figure(a.completed)} completed, ${figure(a.failed)} failed, p50 ${figure(a.p50Ms)} ms`),
    a.workers
      ? el("table", { id: "agent-workers" },
        el("thead", {}, el("tr", {}, ["worker", "last poll"].map((h) => el("th", {}, h)))),
        el("tbody", {}, a.workers.length
          ? a.workers.map((w) => el("tr", { "data-worker": w.id }, el("td", {}, w.id), el("td", {}, when(w.lastPoll))))
          : [el("tr", {}, el("td", { colspan: 2, class: "muted" }, "no worker polled in the last five minutes"))]))
      : null,
    a.kind === "pull"
      ? el("div", { class: "actions" }, el("button", { class: "danger", id: "remove-agent", onclick: remove }, "Remove"))
      : null,
    el("h2", {}, "Serve it"),
    el("pre", { id: "agent-howto" }, a.kind === "builtin"
      ? "A built-in agent: it runs inside legato's services."
      : `from legato_agent import Task, Worker\n\nasync def ${a.name.replace(/-/g, "_")}(task: Task) -> dict:\n    return {"ok": True}\n\nasync with Worker(url="${location.origin}", agents={"${a.name}": ${a.name.replace(/-/g, "_")}}) as w:\n    await w.run()`),
  );
}

// ---- entities (entities.js) ----

const { entitiesPage, entityPage } = entityPages({ el, api, show, attempt, json, when });

// ---- routing ----

async function route() {
  routeSeq += 1;
  closeLive();
  alert("");
  document.getElementById("sign-out").hidden = !token();
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === (["workflows", "schedules", "agents", "entities"].includes(parts[0]) ? parts[0] : "instances"));
  }
  await attempt(async () => {
    if (parts[0] === "instances" && parts[1]) return instancePage(parts[1]);
    if (parts[0] === "workflows" && parts[1]) return workflowPage(parts[1], parts[2]);
    if (parts[0] === "workflows") return workflowsPage();
    if (parts[0] === "schedules" && parts[1]) return schedulePage(parts[1]);
    if (parts[0] === "schedules") return schedulesPage();
    if (parts[0] === "agents" && parts[1]) return agentPage(parts[1]);
    if (parts[0] === "agents") return agentsPage();
    if (parts[0] === "entities" && parts[2]) return entityPage(parts[1], parts[2]);
    if (parts[0] === "entities") return entitiesPage(new URLSearchParams(query));
    return instancesPage(new URLSearchParams(query));
  });
}

document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  route();
});
window.addEventListener("hashchange", route);
route();
