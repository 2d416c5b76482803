// The same runs' comparison under every selection rule (GET …/selection-rules): a table of each
// rule's mean per row and column with its rank, and the columns whose ranking changes. Used by
// the sweep page (on demand) and the study page (once finished).
"use strict";

const missmodRules = (() => {
  async function show(section, url) {
    const { ok, body } = await missmod.api(url);
    if (!ok) return false;
    section.hidden = false;
    section.querySelector(".ranking-changes").replaceChildren(...(body.ranking_changes.length
      ? body.ranking_changes.map((line) => missmod.el("li", line))
      : [missmod.el("li", "No column's ranking changes with the rule.")]));
    const table = section.querySelector("table");
    table.querySelector("thead").replaceChildren(missmod.row(["Rule", "Row", ...body.columns.map((c) => c.label)]));
    const rows = [];
    for (const rule of body.rules) {
      for (const row of rule.rows) {
        const tr = missmod.row([rule.rule + (rule.recorded ? " (recorded)" : ""), row.label,
                                ...row.cells.map((c) => (c.n ? `${missmod.meanStd(c.mean, c.std)} (${c.rank})` : "–"))]);
        tr.dataset.rule = rule.rule;
        rows.push(tr);
      }
    }
    table.querySelector("tbody").replaceChildren(...rows);
    section.dataset.shown = "true";
    return true;
  }
  return { show };
})();
