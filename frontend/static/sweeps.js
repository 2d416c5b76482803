// Sweeps list: newest first, with a progress bar per sweep; refreshes while any is unfinished.
"use strict";

(() => {
  const PAGE = 50;
  const body = document.querySelector("#sweeps-table tbody");
  let offset = 0;
  let timer = null;

  function bar(progress) {
    const wrap = missmod.el("div", null, { class: "progress-bar small" });
    for (const state of ["succeeded", "failed", "cancelled", "running", "queued"]) {
      if (!progress[state]) continue;
      const segment = missmod.el("span", null, { class: "segment", "data-state": state, title: `${progress[state]} ${state}` });
      segment.style.flexGrow = String(progress[state]);
      wrap.append(segment);
    }
    return wrap;
  }

  function row(sweep) {
    const p = sweep.progress;
    const counts = `${p.succeeded}/${p.total} succeeded` + (p.failed ? `, ${p.failed} failed` : "") +
                   (p.running ? `, ${p.running} running` : "");
    const tr = missmod.row([sweep.id, missmod.el("a", sweep.name, { href: `/sweeps/${sweep.id}` }), sweep.preset || "–",
                            bar(p), counts, missmod.when(sweep.created_at)]);
    tr.dataset.sweepId = sweep.id;
    return tr;
  }

  async function load() {
    clearTimeout(timer);
    const { ok, body: page } = await missmod.api(`/api/sweeps?limit=${PAGE}&offset=${offset}`);
    if (!ok) return;
    body.replaceChildren(...page.items.map(row));
    document.getElementById("sweeps-empty").hidden = page.total > 0;
    document.getElementById("sweeps-list").hidden = page.total === 0;
    const last = Math.min(offset + page.items.length, page.total);
    document.getElementById("page-info").textContent = page.total ? `${offset + 1}–${last} of ${page.total}` : "";
    document.getElementById("prev-page").disabled = offset === 0;
    document.getElementById("next-page").disabled = last >= page.total;
    if (page.total === 0 || page.items.some((s) => !s.progress.done)) timer = setTimeout(load, 3000);
  }

  document.getElementById("prev-page").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); load(); });
  document.getElementById("next-page").addEventListener("click", () => { offset += PAGE; load(); });
  load();
})();
