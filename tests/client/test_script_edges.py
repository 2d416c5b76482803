"""The rough edges a script user met, each checked end to end against a live server and a real
worker: options whose value starts with `-`, the paired statistics in the client's table and
DataFrame, the stored test predictions (McNemar checked by hand), `runs show`'s info, and error
reasons that stay readable in a CLI table."""

from __future__ import annotations

import json
import re

import pytest
from scipy import stats

from missmod.client import Client, NotFound

from tests.client.test_client import cli

SWEEP = {"dataset": "digits", "method": ["mle", "zero_padding"], "fusion": "add", "missing_modality": "bottom",
         "missing_rate": 0.9, "seed": [0, 1], "epochs": 1}
BROKEN_REASON = "not a readable .npz file: File is not a zip file"


def words(text: str) -> str:
    return " ".join(text.split())


def test_a_script_users_rough_edges(embedded_settings, start_server, start_worker):
    features = embedded_settings.data_dir / "features"
    features.mkdir(parents=True, exist_ok=True)
    (features / "a_rather_long_upload_name.npz").write_bytes(b"not a zip")
    base = start_server(embedded_settings)
    start_worker(embedded_settings)
    client = Client(base)
    sweep = client.wait(client.sweep(SWEEP), progress=False, timeout=240)
    assert sweep.progress["succeeded"] == 4, sweep.progress
    runs = client.runs(sweep=sweep.id, sort="id")

    # `--sort -test_accuracy` (the value starts with '-') as the README writes it
    listed = cli(base, "--json", "runs", "list", "--where", "accuracy>0", "--sort", "-test_accuracy")
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == [r.id for r in client.runs(sort="-test_accuracy")]
    assert cli(base, "--json", "runs", "list", "--q", "-no-such-name").stdout.strip() == "[]"

    # `runs show` prints what the run recorded about its data
    run = runs[0]
    shown = cli(base, "runs", "show", str(run.id)).stdout
    assert re.search(rf"complete training samples\s*│\s*{run.info['n_train_complete']}\b", shown), shown
    assert f"{100 * run.info['realised_missing_rate']:.2f}%" in shown and "realised missing rate" in shown

    # the stored test predictions: downloadable, and enough to check McNemar by hand
    kept = {r.id: client.predictions(r) for r in runs}
    assert len(kept[run.id].labels) == run.info["n_test"]
    assert kept[run.id].accuracy == run.test_accuracy and kept[run.id].counted == "samples"
    rows = cli(base, "runs", "predictions", str(run.id), "--csv").stdout.splitlines()
    assert rows[0] == "index,label,predicted,label_name,predicted_name,correct" and len(rows) == run.info["n_test"] + 1
    table = client.table(sweep, reference="zero_padding", test="samples")
    mle_cell = next(row for row in table.rows if row["method"] == "mle")["cells"][0]
    reference_cell = next(row for row in table.rows if row["method"] == "zero_padding")["cells"][0]
    by_seed = dict(zip(reference_cell["seeds"], reference_cell["run_ids"]))
    b = c = 0
    for seed, run_id in zip(mle_cell["seeds"], mle_cell["run_ids"]):
        seed_b, seed_c = kept[run_id].discordant(kept[by_seed[seed]])
        b, c = b + seed_b, c + seed_c
    paired = mle_cell["paired"]
    assert paired["test"] == "samples" and paired["discordant"] == [b, c]
    assert paired["p_value"] == pytest.approx(stats.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0)
    missing = client.log_run({"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom",
                              "missing_rate": 0.9, "seed": 0}, {"test_accuracy": [0.5]})
    with pytest.raises(NotFound, match="no stored test predictions"):
        client.predictions(missing)

    # the client's table takes reference= and test=, and its DataFrame keeps the paired columns
    frame = table.to_pandas()
    mle = frame[frame["method"] == "mle"].iloc[0]
    for name in ("diff", "ci_low", "ci_high", "p_value", "p_adjusted", "wins", "ties", "losses"):
        assert mle[name] == paired[name] or (mle[name] != mle[name] and paired[name] is None), name
    assert bool(mle["significant"]) is paired["significant"] and mle["reference"] == "zero_padding (add)"
    assert frame[frame["method"] == "zero_padding"]["is_reference"].tolist() == [True]
    printed = cli(base, "sweeps", "table", str(sweep.id), "--reference", "zero_padding", "--test", "samples").stdout
    assert "†" in printed and "reference" in words(printed)

    # runs trained elsewhere, logged into the sweep: outside its progress and Holm's family by
    # default, not the default reference though better, and not paired by seed (split unverified)
    before = client.table(sweep)
    for seed in (0, 1):
        client.log_run({"dataset": "digits", "method": "their_method", "fusion": "add", "missing_modality": "bottom",
                        "missing_rate": 0.9, "seed": seed}, {"test_accuracy": [0.999]}, sweep=sweep)
    assert client.get_sweep(sweep).progress["succeeded"] == 4 and client.get_sweep(sweep).progress["external"] == 2
    assert client.get_sweep(sweep, include_external=True).progress["succeeded"] == 6
    shown = cli(base, "--json", "sweeps", "show", str(sweep.id), "--include-external")
    assert json.loads(shown.stdout)["progress"]["total"] == 6
    for include in (False, True):
        after = client.table(sweep, include_external=include)
        assert after["comparison"]["tests"] == before["comparison"]["tests"]
        assert after["comparison"]["references"] == before["comparison"]["references"]
        assert after["comparison"]["include_external"] is include and after["comparison"]["not_verified"] == 1
        theirs = next(row for row in after.rows if row["external"])["cells"][0]
        assert theirs["paired"] is None and theirs["pairing_verified"] is False
        ours = next(row for row in after.rows if row["method"] == "mle" and not row["external"])["cells"][0]
        assert ours["paired"] == next(row for row in before.rows if row["method"] == "mle")["cells"][0]["paired"]
    frame = client.table(sweep).to_pandas()
    assert frame[frame["external"]]["pairing_verified"].tolist() == [False]
    printed = cli(base, "sweeps", "table", str(sweep.id)).stdout
    assert "(pairing not verified)" in printed and "declared no split" in words(printed)

    # LaTeX ready for a paper: a label, the setting in the caption, the marks it uses explained
    latex = cli(base, "sweeps", "table", str(sweep.id), "--latex").stdout
    caption = next(line for line in latex.splitlines() if line.startswith(r"\caption"))
    assert rf"\label{{tab:missmod-sweep-{sweep.id}}}" in latex
    assert "on digits" in caption and "bottom missing from 90\\%" in caption and "2 seeds (0, 1)" in caption
    assert sweep.name not in caption and "[external]: trained outside missmod" in caption
    assert (r"$^{\dagger}$" in latex) == (r"$\dagger$" in caption)

    # an error reason stays whole in a narrow terminal: below the table, wrapped between words
    datasets = cli(base, "datasets", "list", env={"COLUMNS": "80"}).stdout
    assert f"[1] a_rather_long_upload_name: {BROKEN_REASON}" in words(datasets), datasets
    assert "no [1]" in datasets
