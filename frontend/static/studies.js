// Studies list: newest first, with their trials spent; refreshes while any is not ended.
"use strict";

(() => {
  const body = document.querySelector("#studies-table tbody");
  let timer = null;

  function row(study) {
    const t = study.trials;
    const tr = missmod.row([study.id, missmod.el("a", study.name, { href: `/studies/${study.id}` }),
                            missmod.el("span", study.state, { class: "state", "data-state": study.state }),
                            `${t.total - t.running}/${t.budget}` + (t.running ? ` (${t.running} running)` : ""),
                            t.pruned, t.failed, missmod.when(study.created_at)]);
    tr.dataset.studyId = study.id;
    return tr;
  }

  async function load() {
    clearTimeout(timer);
    const { ok, body: page } = await missmod.api("/api/studies?limit=100");
    if (!ok) return;
    body.replaceChildren(...page.items.map(row));
    document.getElementById("studies-empty").hidden = page.total > 0;
    if (page.items.some((s) => s.state === "searching" || s.state === "final")) timer = setTimeout(load, 3000);
  }
  load();
})();
