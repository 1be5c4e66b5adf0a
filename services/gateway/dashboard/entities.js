// The dashboard's entities pages: durable entities of the signed-in
// tenant by type, one with its state and latest operations, an operation
// sent to it, and its deletion (docs/entities.md). The page helpers come
// from app.js, so these pages look and fail like the others.

export function entityPages({ el, api, show, attempt, json, when }) {
  const pathOf = (type, id) => `/api/v1/entities/${encodeURIComponent(type)}/${encodeURIComponent(id)}`;

  async function entitiesPage(query) {
    const type = query.get("type") || "";
    const list = await api("GET", `/api/v1/entities${type ? `?type=${encodeURIComponent(type)}` : ""}`);
    const filter = el("input", { id: "entity-type", placeholder: "type (customer, repo, ...)", value: type });
    show(
      el("h1", {}, "Entities"),
      el("p", { class: "muted" }, "State shared across runs, keyed by type and id: read by workflows' entity steps and agents, held by lock steps (docs/entities.md)."),
      el("form", { class: "actions", onsubmit: (e) => { e.preventDefault(); location.hash = `#/entities?type=${encodeURIComponent(filter.value.trim())}`; } },
        filter, el("button", { type: "submit" }, "Filter")),
      el("table", { id: "entities" },
        el("thead", {}, el("tr", {}, ["type", "id", "operations", "updated"].map((h) => el("th", {}, h)))),
        el("tbody", {}, list.items.length ? list.items.map((e) =>
          el("tr", { class: "row", "data-entity": `${e.type}/${e.id}`, onclick: () => (location.hash = `#/entities/${encodeURIComponent(e.type)}/${encodeURIComponent(e.id)}`) },
            el("td", {}, e.type), el("td", {}, e.id), el("td", {}, String(e.operations)), el("td", {}, when(e.updatedAt))))
          : el("tr", {}, el("td", { colspan: 4, class: "muted" }, "No entities yet: a workflow's entity step or `legato entities signal` makes one.")))),
      list.continuationToken ? el("p", { class: "muted" }, "More entities: filter by type.") : null,
    );
  }

  async function entityPage(type, id) {
    const path = pathOf(type, id);
    const render = async () => {
      const e = await api("GET", `${path}?operations=50`);
      const operation = el("textarea", { id: "entity-operation", rows: 3, style: "min-width: 28rem", placeholder: '{"op": "increment", "path": "/visits"}' });
      const send = () => attempt(async () => {
        let body;
        try {
          body = JSON.parse(operation.value);
        } catch (error) {
          throw new Error(`the operation is not JSON: ${error.message}`);
        }
        await api("POST", `${path}/operations`, body);
        operation.value = "";
        // Applied once the orchestrator takes it: read until it shows.
        for (let i = 0; i < 25; i++) {
          await new Promise((resolve) => setTimeout(resolve, 120));
          if ((await api("GET", `${path}?operations=0`)).operations > e.operations) break;
        }
        await render();
      });
      const remove = () => attempt(async () => {
        if (!confirm(`Delete entity ${type}/${id} with its operations?`)) return;
        await api("DELETE", path);
        location.hash = `#/entities?type=${encodeURIComponent(type)}`;
      });
      show(
        el("h1", {}, `${e.type}/${e.id} `, el("span", { class: "muted", id: "entity-count" }, `${e.operations} operations`)),
        el("p", { class: "muted" }, `updated ${when(e.updatedAt)}`),
        e.busy
          ? el("p", { id: "entity-busy" }, `Busy with custom operation ${e.busy.operation}, applied by run `,
              el("a", { href: `#/instances/${encodeURIComponent(e.busy.instance)}` }, e.busy.instance),
              `; ${e.queued || 0} operations wait behind it.`)
          : null,
        el("h2", {}, "State"),
        el("div", { id: "entity-state" }, json(e.state)),
        el("h2", {}, "Send an operation"),
        el("div", { class: "actions" }, operation,
          el("button", { class: "primary", id: "send-operation", onclick: send }, "Send"),
          el("button", { class: "danger", id: "delete-entity", onclick: remove }, "Delete")),
        el("h2", {}, "Latest operations"),
        el("table", { id: "entity-operations" },
          el("thead", {}, el("tr", {}, ["#", "at", "sender", "operation", "answer"].map((h) => el("th", {}, h)))),
          el("tbody", {}, e.recent.map((op) => el("tr", { "data-seq": op.seq },
            el("td", {}, String(op.seq)), el("td", {}, when(op.at)), el("td", {}, op.sender || ""),
            el("td", {}, el("code", {}, JSON.stringify(op.operation))),
            el("td", {}, op.error ? `refused: ${op.error}` : el("code", {}, JSON.stringify(op.answer))))))),
      );
    };
    await render();
  }

  return { entitiesPage, entityPage };
}
