// New-run form: every choice comes from the server (datasets with their modalities, methods
// with the fusions each allows, the spec's other choices from /api/choices); the server
// validates, and its 422 errors are shown by the field.
"use strict";

(() => {
  const form = document.getElementById("new-run");
  const formError = document.getElementById("form-error");
  const NUMBER_FIELDS = new Set(["missing_rate", "epochs", "seed", "lr", "batch_size", "feature_dim",
                                 "hidden_dim", "weight_decay"]);
  const OPTION_PREFIX = "option.";
  let datasets = [];
  let methods = [];
  let imageEncoders = new Set();
  // Friendlier words for some values; the values themselves come from the server.
  const LABELS = { mlp: "mlp (feature vectors)", small_cnn: "small_cnn (images, CPU-sized)",
                   all_complete: "all complete samples", batch: "complete samples of the batch",
                   val_accuracy_earliest: "best validation accuracy, earliest of ties",
                   val_accuracy_latest: "best validation accuracy, latest of ties",
                   val_loss: "lowest validation loss", last_epoch: "last epoch" };
  const labelled = (values) => values.map((v) => [v, LABELS[v] || v]);

  function setOptions(select, values, keep) {
    const previous = keep ? select.value : null;
    select.replaceChildren(...values.map(([value, label]) => missmod.el("option", label, { value })));
    if (previous && values.some(([v]) => v === previous)) select.value = previous;
  }

  function isImageDataset(dataset) {
    return Object.values(dataset.shapes || {}).every((shape) => shape.length === 3);
  }

  function onDatasetChange() {
    const dataset = datasets.find((d) => d.name === form.dataset.value);
    if (!dataset) return;
    setOptions(form.missing_modality, dataset.modalities.map((m) => [m, m]), true);
    if (!dataset.modalities.includes(form.missing_modality.value)) form.missing_modality.value = dataset.modalities[1];
    // Raw video needs an image encoder; vectors need the MLP.
    if (dataset.source === "video" && !imageEncoders.has(form.encoder.value)) form.encoder.value = "small_cnn";
    if (!isImageDataset(dataset) && imageEncoders.has(form.encoder.value)) form.encoder.value = "mlp";
    const samples = dataset.source === "video" ? `${dataset.n_groups} videos (${dataset.n_samples} segments)` : `${dataset.n_samples} samples`;
    document.getElementById("dataset-hint").textContent = dataset.error
      ? `Cannot be used: ${dataset.error}`
      : `${samples}, ${dataset.classes.length} classes; modalities ${dataset.modalities.join(" and ")}. ${dataset.description}`;
    document.getElementById("preprocess-box").hidden = !(dataset.source === "video" && dataset.preprocessed === false);
  }

  async function followJob(job) {
    const status = document.getElementById("preprocess-status");
    const button = document.getElementById("preprocess-now");
    button.disabled = true;
    // Followed live (GET /api/jobs/{id}/stream) until it ends; while the API is away the page
    // says "reconnecting…" and the stream is reopened with backoff (common.js: missmod.liveStream).
    const shown = () => { status.textContent = job.state === "queued" ? "queued…" : `${job.done} of ${job.total} clips`; };
    if (job && !missmod.terminal(job.state)) {
      shown();
      await new Promise((resolve) => {
        missmod.liveStream(`/api/jobs/${job.id}/stream`, {
          job(data) { job = data; shown(); },
          end: resolve,
          gone() { job = null; resolve(); },
        }, { beforeReopen: () => missmod.api(`/api/jobs/${job.id}`) });  // a signed-out browser: to sign in
      });
    }
    button.disabled = false;
    if (!job) return;
    if (job.state === "succeeded") {
      const failed = job.result.failed_clips.length;
      status.textContent = `done: ${job.result.videos} videos` + (failed ? `, ${failed} clip(s) skipped` : "");
      const { body } = await missmod.api("/api/datasets");
      datasets = body || datasets;
      onDatasetChange();
    } else {
      status.textContent = `${job.state}${job.error ? ": " + job.error : ""}`;
    }
  }

  function onMethodChange() {
    const method = methods.find((m) => m.name === form.method.value);
    if (!method) return;
    setOptions(form.fusion, method.fusions.map((f) => [f, f]), true);
    document.getElementById("method-hint").textContent = method.description;
    // A plugin's own options (docs/methods.md); the built-in methods have none here.
    const fields = missmod.optionFields(method, OPTION_PREFIX);
    document.getElementById("method-options-fields").replaceChildren(...fields);
    document.getElementById("method-options").hidden = fields.length === 0;
  }

  function payload() {
    const data = {};
    for (const [name, value] of new FormData(form).entries()) {
      if (name === "name" && value.trim() === "") continue;
      if (name.startsWith(OPTION_PREFIX)) continue;
      data[name] = NUMBER_FIELDS.has(name) && value.trim() !== "" ? Number(value) : value;
    }
    data.pretrained = form.pretrained.value === "true";
    const options = missmod.optionValues(document.getElementById("method-options-fields"), OPTION_PREFIX);
    if (Object.keys(options).length) data.method_options = options;
    return data;
  }

  document.getElementById("preprocess-now").addEventListener("click", async () => {
    const { ok, body } = await missmod.api(`/api/datasets/${encodeURIComponent(form.dataset.value)}/preprocess`,
                                           { method: "POST" });
    if (ok) followJob(body);
    else document.getElementById("preprocess-status").textContent = body?.detail || "could not start";
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    missmod.clearErrors(form, formError);
    const button = document.getElementById("submit-run");
    button.disabled = true;
    try {
      const { ok, status, body } = await missmod.api("/api/runs", { method: "POST", body: JSON.stringify(payload()) });
      if (ok) { window.location.assign(`/runs/${body.id}`); return; }
      missmod.showErrors(form, formError, body && body.detail !== undefined ? body.detail : `request failed (${status})`);
    } catch (error) {
      missmod.showErrors(form, formError, `could not reach the server: ${error}`);
    } finally {
      button.disabled = false;
    }
  });

  (async () => {
    const [d, m, c] = await Promise.all([missmod.api("/api/datasets"), missmod.api("/api/methods"),
                                         missmod.api("/api/choices")]);
    datasets = d.body || [];
    methods = m.body || [];
    const choices = c.body || { encoders: ["mlp"], image_encoders: [], pretrainable_encoders: [], reference_sets: ["auto"] };
    imageEncoders = new Set(choices.image_encoders);
    setOptions(form.encoder, labelled(choices.encoders));
    setOptions(form.pretrained, [["false", "random"],
                                 ["true", `ImageNet (${choices.pretrainable_encoders.join(", ")})`]]);
    setOptions(form.reference_set, labelled(choices.reference_sets));
    setOptions(form.selection_rule, labelled(choices.selection_rules || ["val_accuracy_earliest"]));
    setOptions(form.dataset, datasets.map((x) => [x.name, x.title ? `${x.name} — ${x.title}` : x.name]));
    setOptions(form.method, methods.map((x) => [x.name, `${x.name} — ${x.title}`]));
    form.dataset.addEventListener("change", onDatasetChange);
    form.method.addEventListener("change", onMethodChange);
    onDatasetChange();
    onMethodChange();
    form.setAttribute("data-ready", "true");
  })();
})();
