// Runs list: filters and pages map to GET /api/runs query parameters; the table refreshes
// itself while any run on the page is queued or running.
"use strict";

(() => {
  const PAGE = 50;
  const form = document.getElementById("run-filters");
  const body = document.querySelector("#runs-table tbody");
  let offset = 0;
  let timer = null;

  async function fillFilterChoices() {
    const [methods, datasets] = await Promise.all([missmod.api("/api/methods"), missmod.api("/api/datasets")]);
    for (const m of methods.body || []) form.method.append(missmod.el("option", m.name));
    for (const d of datasets.body || []) form.dataset.append(missmod.el("option", d.name));
  }

  function row(run) {
    const tr = document.createElement("tr");
    tr.dataset.runId = run.id;
    const link = missmod.el("a", run.name, { href: `/runs/${run.id}` });
    const state = missmod.el("span", run.state, { class: "state", "data-state": run.state });
    const cells = [
      run.id, link, state, run.dataset, run.method, run.fusion,
      `${run.missing_modality} ${(100 * run.missing_rate).toFixed(0)}%`, run.seed,
      `${run.epochs_completed}/${run.spec.epochs}`, missmod.percent(run.test_accuracy), missmod.when(run.created_at),
    ];
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.append(cell); else td.textContent = cell;
      tr.append(td);
    }
    return tr;
  }

  async function load() {
    clearTimeout(timer);
    const params = new URLSearchParams({ limit: PAGE, offset });
    for (const name of ["state", "method", "dataset"]) if (form[name].value) params.set(name, form[name].value);
    const { ok, body: page } = await missmod.api(`/api/runs?${params}`);
    if (!ok) return;
    body.replaceChildren(...page.items.map(row));
    document.getElementById("runs-empty").hidden = page.total > 0;
    const last = Math.min(offset + page.items.length, page.total);
    document.getElementById("page-info").textContent = page.total ? `${offset + 1}–${last} of ${page.total}` : "";
    document.getElementById("prev-page").disabled = offset === 0;
    document.getElementById("next-page").disabled = last >= page.total;
    if (page.items.some((r) => !missmod.terminal(r.state))) timer = setTimeout(load, 2000);
  }

  form.addEventListener("change", () => { offset = 0; load(); });
  document.getElementById("prev-page").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); load(); });
  document.getElementById("next-page").addEventListener("click", () => { offset += PAGE; load(); });
  fillFilterChoices().then(load);
})();
