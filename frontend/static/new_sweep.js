// New-sweep page: a grid form and a paper-preset form. Each change asks the server for a
// preview (how many runs, which combinations it would refuse and why) before anything is
// created; the server's validation is the only one, so the count is always the truth.
"use strict";

(() => {
  const gridForm = document.getElementById("new-sweep");
  const presetForm = document.getElementById("preset-form");
  let datasets = [];
  let methods = [];
  let presets = [];

  // "0.8, 0.9" → [0.8, 0.9]; "0-4" → [0, 1, 2, 3, 4] for integers; one value → the value.
  function parseList(text, kind) {
    const values = [];
    for (const token of text.split(/[,\s]+/).filter(Boolean)) {
      const range = kind === "integer" && token.match(/^(\d+)-(\d+)$/);
      if (range) {
        const [from, to] = [Number(range[1]), Number(range[2])];
        for (let v = from; v <= to && values.length < 10000; v++) values.push(v);
      } else if (kind !== "text" && token.trim() !== "" && !Number.isNaN(Number(token))) {
        values.push(Number(token));
      } else {
        values.push(token);
      }
    }
    return values.length === 1 ? values[0] : values;
  }

  function checkboxes(container, name, values, checked) {
    container.replaceChildren(...values.map(([value, label]) => {
      const input = missmod.el("input", null, { type: "checkbox", name, value });
      input.checked = checked(value);
      const wrap = missmod.el("label", null, { class: "check" });
      wrap.append(input, document.createTextNode(" " + label));
      return wrap;
    }));
  }

  // The options of each chosen method that has some (docs/methods.md): one field per option, a
  // value or a list of values ("0.3, 0.5"); only that method's runs multiply by them.
  const optionPrefix = (method) => `option.${method}.`;

  function showMethodOptions() {
    const slot = document.getElementById("s-method-options");
    const chosen = new Set([...gridForm.querySelectorAll('input[name="method"]:checked')].map((i) => i.value));
    const kept = new Map([...slot.querySelectorAll("[data-kind]")].map((input) => [input.name, input.value]));
    const groups = methods.filter((m) => chosen.has(m.name) && m.options && m.options.properties).map((method) => {
      const group = missmod.el("fieldset", null, { class: "method-options", "data-method": method.name });
      group.append(missmod.el("legend", `Options of ${method.name} (a value, or several: 0.3, 0.5)`),
                   ...missmod.optionFields(method, optionPrefix(method.name)));
      for (const input of group.querySelectorAll("[data-kind]")) {
        if (kept.has(input.name)) input.value = kept.get(input.name);
        if (input.tagName === "INPUT") input.type = "text";  // several values may be given
      }
      return group;
    });
    slot.replaceChildren(...groups);
  }

  function gridPayload() {
    const body = {};
    if (gridForm.name.value.trim()) body.name = gridForm.name.value.trim();
    body.dataset = gridForm.dataset.value;
    for (const name of ["method", "fusion", "missing_modality"]) {
      const chosen = [...gridForm.querySelectorAll(`input[name="${name}"]:checked`)].map((i) => i.value);
      body[name] = chosen.length === 1 ? chosen[0] : chosen;
    }
    for (const input of gridForm.querySelectorAll("input[data-list]")) {
      if (input.value.trim() !== "") body[input.name] = parseList(input.value, input.dataset.list);
    }
    const options = {};
    for (const group of document.querySelectorAll("#s-method-options fieldset[data-method]")) {
      const method = group.dataset.method;
      options[method] = {};
      for (const input of group.querySelectorAll("[data-kind]")) {
        const kind = input.dataset.kind;
        const name = input.name.slice(optionPrefix(method).length);
        options[method][name] = kind === "boolean"
          ? input.value === "true"
          : parseList(input.value, kind === "number" || kind === "integer" ? kind : "text");
      }
    }
    if (Object.keys(options).length) body.method_options = options;
    body.skip_invalid = gridForm.skip_invalid.checked;
    return body;
  }

  function plural(n, word) { return `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`; }

  function showInvalid(list, invalid) {
    list.replaceChildren(...invalid.map((group) => {
      const field = group.loc.filter((p) => p !== "body").join(".");
      const example = Object.entries(group.example).map(([k, v]) => `${k}=${v}`).join(", ");
      return missmod.el("li", `${field}: ${group.msg} — ${plural(group.combinations, "combination")}` +
                              (example ? ` (e.g. ${example})` : ""));
    }));
  }

  const previewGrid = missmod.debounce(async () => {
    const count = document.getElementById("sweep-count");
    const list = document.getElementById("sweep-invalid");
    const button = document.getElementById("submit-sweep");
    const loose = document.getElementById("sweep-form-error");
    missmod.clearErrors(gridForm, loose);
    const { ok, body } = await missmod.api("/api/sweeps/preview", { method: "POST", body: JSON.stringify(gridPayload()) });
    if (!ok) {
      missmod.showErrors(gridForm, loose, body ? body.detail : "preview failed");
      count.textContent = "The grid has errors.";
      count.dataset.count = "0";
      list.replaceChildren();
      button.disabled = true;
      return;
    }
    count.dataset.count = String(body.would_refuse ? 0 : body.runs);
    if (!body.invalid.length) {
      count.textContent = `${plural(body.runs, "run")} will be created.`;
    } else if (body.would_refuse && body.runs) {
      count.textContent = `${plural(body.combinations, "combination")}: ${body.runs} valid, ` +
        `${body.combinations - body.runs} invalid. Fix them, or leave them out to create ${plural(body.runs, "run")}.`;
    } else if (body.would_refuse) {
      count.textContent = `None of the ${plural(body.combinations, "combination")} is valid.`;
    } else {
      count.textContent = `${plural(body.runs, "run")} will be created; ` +
        `${plural(body.combinations - body.runs, "invalid combination")} left out.`;
    }
    showInvalid(list, body.invalid);
    button.disabled = body.would_refuse;
    button.textContent = body.would_refuse ? "Create sweep" : `Create ${plural(body.runs, "run")}`;
  }, 200);

  function onDatasetChange(form, modalitySlot) {
    const dataset = datasets.find((d) => d.name === form.dataset.value);
    if (!dataset) return;
    if (modalitySlot) {
      checkboxes(modalitySlot, "missing_modality", dataset.modalities.map((m) => [m, m]),
                 (m) => m === dataset.modalities[dataset.modalities.length - 1]);
    }
  }

  gridForm.addEventListener("input", previewGrid);
  gridForm.addEventListener("change", previewGrid);
  gridForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = document.getElementById("submit-sweep");
    const loose = document.getElementById("sweep-form-error");
    button.disabled = true;
    missmod.clearErrors(gridForm, loose);
    const { ok, status, body } = await missmod.api("/api/sweeps", { method: "POST", body: JSON.stringify(gridPayload()) });
    if (ok) { window.location.assign(`/sweeps/${body.id}`); return; }
    missmod.showErrors(gridForm, loose, body && body.detail !== undefined ? body.detail : `request failed (${status})`);
    button.disabled = false;
  });

  // --- presets ---------------------------------------------------------------------------

  function presetPayload() {
    return {
      dataset: presetForm.dataset.value, visual: presetForm.visual.value, audio: presetForm.audio.value,
      seeds: Number(presetForm.seeds.value), epochs: Number(presetForm.epochs.value),
      only_available: presetForm.only_available.checked,
    };
  }

  function onPresetDatasetChange() {
    const dataset = datasets.find((d) => d.name === presetForm.dataset.value);
    if (!dataset) return;
    const options = dataset.modalities.map((m) => missmod.el("option", m, { value: m }));
    presetForm.visual.replaceChildren(...options);
    presetForm.audio.replaceChildren(...options.map((o) => o.cloneNode(true)));
    presetForm.visual.value = dataset.modalities.includes("visual") ? "visual" : dataset.modalities[0];
    presetForm.audio.value = dataset.modalities.includes("audio") ? "audio" : dataset.modalities[1];
  }

  function describePreset() {
    const preset = presets.find((p) => p.name === presetForm.preset.value);
    const info = document.getElementById("p-preset-info");
    if (!preset) return;
    const lacking = preset.missing_methods;
    info.textContent = `${preset.description} Paper: ${preset.paper_dataset}; ${preset.runs_per_seed} runs per seed.` +
      (lacking.length ? ` Not available yet: ${lacking.join(", ")}.` : "") +
      (preset.features.length ? ` Uses the features of ${preset.features.join(", ")} extracted from the dataset.` : "") +
      (preset.assumptions.length ? ` ${preset.assumptions.join(" ")}` : "");
  }

  const previewPreset = missmod.debounce(async () => {
    const count = document.getElementById("preset-count");
    const notes = document.getElementById("preset-notes");
    const button = document.getElementById("submit-preset");
    const loose = document.getElementById("preset-form-error");
    missmod.clearErrors(presetForm, loose);
    const name = presetForm.preset.value;
    const { ok, body } = await missmod.api(`/api/presets/${encodeURIComponent(name)}/preview`,
                                           { method: "POST", body: JSON.stringify(presetPayload()) });
    if (!ok) {
      missmod.showErrors(presetForm, loose, body ? body.detail : "preview failed");
      count.textContent = "The settings have errors.";
      count.dataset.count = "0";
      notes.replaceChildren();
      button.disabled = true;
      return;
    }
    count.dataset.count = String(body.would_refuse ? 0 : body.runs);
    const message = body.message ? body.message[0].toUpperCase() + body.message.slice(1) + "." : "";
    count.textContent = body.would_refuse ? message : `${plural(body.runs, "run")} will be created.`;
    notes.replaceChildren(...body.left_out.map((note) => missmod.el("li", `Left out: ${note}`)));
    // Whether something is missing depends on the dataset (extracted features), so the preview says.
    document.getElementById("p-only-available-label").hidden =
      body.missing_methods.length + body.missing_features.length === 0;
    button.disabled = body.would_refuse;
    button.textContent = body.would_refuse ? "Create sweep" : `Create ${plural(body.runs, "run")}`;
  }, 200);

  presetForm.addEventListener("input", previewPreset);
  presetForm.addEventListener("change", (event) => {
    if (event.target === presetForm.preset) describePreset();
    if (event.target === presetForm.dataset) onPresetDatasetChange();
    previewPreset();
  });
  presetForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = document.getElementById("submit-preset");
    const loose = document.getElementById("preset-form-error");
    button.disabled = true;
    missmod.clearErrors(presetForm, loose);
    const name = presetForm.preset.value;
    const { ok, status, body } = await missmod.api(`/api/presets/${encodeURIComponent(name)}/sweeps`,
                                                   { method: "POST", body: JSON.stringify(presetPayload()) });
    if (ok) { window.location.assign(`/sweeps/${body.id}`); return; }
    missmod.showErrors(presetForm, loose, body && body.detail !== undefined ? body.detail : `request failed (${status})`);
    button.disabled = false;
  });

  (async () => {
    const [d, m, p, c] = await Promise.all([missmod.api("/api/datasets"), missmod.api("/api/methods"),
                                            missmod.api("/api/presets"), missmod.api("/api/choices")]);
    datasets = d.body || [];
    methods = m.body || [];
    presets = p.body || [];
    const datasetOptions = datasets.map((x) => missmod.el("option", x.title ? `${x.name} — ${x.title}` : x.name, { value: x.name }));
    gridForm.dataset.replaceChildren(...datasetOptions);
    presetForm.dataset.replaceChildren(...datasetOptions.map((o) => o.cloneNode(true)));
    checkboxes(document.getElementById("s-methods"), "method", methods.map((x) => [x.name, x.name]), (v) => v === "mle");
    document.getElementById("s-methods").addEventListener("change", showMethodOptions);
    showMethodOptions();
    const fusions = (c.body && c.body.fusions) || [...new Set(methods.flatMap((x) => x.fusions))];
    checkboxes(document.getElementById("s-fusions"), "fusion", fusions.map((f) => [f, f]), (v) => v === "add");
    presetForm.preset.replaceChildren(...presets.map((x) => missmod.el("option", `${x.figure} — ${x.title}`, { value: x.name })));
    gridForm.dataset.addEventListener("change", () => onDatasetChange(gridForm, document.getElementById("s-modalities")));
    onDatasetChange(gridForm, document.getElementById("s-modalities"));
    onPresetDatasetChange();
    describePreset();
    gridForm.setAttribute("data-ready", "true");
    presetForm.setAttribute("data-ready", "true");
    previewGrid();
    previewPreset();
  })();
})();
