// Sweep page: its table under every selection rule, on demand (selection_rules.js draws it).
"use strict";

document.getElementById("show-rules").addEventListener("click", async (event) => {
  const sweepId = document.getElementById("sweep-page").dataset.sweepId;
  event.target.disabled = true;
  const shown = await missmodRules.show(document.getElementById("rules-result"), `/api/sweeps/${sweepId}/selection-rules`);
  event.target.disabled = false;
  if (shown) event.target.textContent = "Again";
});
