// Workers page: the live workers, what each slot trains, and the queue, from the live stream
// GET /api/workers/stream (a new snapshot whenever anything changes).
"use strict";

(() => {
  const workersBody = document.querySelector("#workers-table tbody");
  const waitingBody = document.querySelector("#waiting-table tbody");

  function cells(tr, values) {
    for (const value of values) {
      const td = document.createElement("td");
      if (value instanceof Node) td.append(value); else td.textContent = value;
      tr.append(td);
    }
    return tr;
  }

  function slotList(worker) {
    const list = missmod.el("div", null, { class: "slots" });
    for (const slot of worker.slots) {
      const line = missmod.el("span", null, { class: "slot", "data-state": slot.state, "data-slot": slot.index });
      line.append(document.createTextNode(`${slot.index}: ${slot.state}`));
      if (slot.run_id !== null) {
        line.append(document.createTextNode(" "));
        line.append(missmod.el("a", slot.run_name || `run ${slot.run_id}`, { href: `/runs/${slot.run_id}` }));
      }
      list.append(line);
    }
    return list;
  }

  function show(snapshot) {
    workersBody.replaceChildren(...snapshot.workers.map((w) => {
      const tr = document.createElement("tr");
      tr.dataset.worker = w.name;
      tr.dataset.busy = String(w.busy);
      return cells(tr, [w.name, w.host, w.gpu_name ? `${w.gpu_name} (${w.gpu})` : "none (CPU)",
                        slotList(w), String(w.threads_per_run), missmod.when(w.heartbeat_at)]);
    }));
    document.getElementById("workers-empty").hidden = snapshot.workers.length > 0;
    document.getElementById("workers-table").hidden = snapshot.workers.length === 0;
    const q = snapshot.queue;
    const busy = snapshot.workers.reduce((n, w) => n + w.busy, 0);
    const slots = snapshot.workers.reduce((n, w) => n + w.slots.length, 0);
    const depth = document.getElementById("queue-depth");
    depth.textContent = `${busy} of ${slots} slot(s) training · ${q.depth} run(s) queued`;
    depth.dataset.depth = String(q.depth);
    waitingBody.replaceChildren(...q.waiting.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.runId = r.id;
      return cells(tr, [String(r.id), missmod.el("a", r.name, { href: `/runs/${r.id}` }), missmod.when(r.created_at),
                        r.needs_own_slot ? "a GPU to itself (ran out of memory beside other runs)" : "any slot"]);
    }));
    document.getElementById("waiting-empty").hidden = q.waiting.length > 0;
  }

  // Reopened with backoff when the API goes away, "reconnecting…" shown meanwhile (common.js).
  missmod.liveStream("/api/workers/stream", { workers: show },
                     { beforeReopen: () => missmod.api("/api/workers") });  // a signed-out browser: to sign in
})();
