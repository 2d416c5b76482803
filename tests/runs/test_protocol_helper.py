"""One protocol for missmod's runs and a script's own: for a setting, the protocol helper (the
training library's `protocol_for`, the API's GET /api/protocol, the client's `protocol`) gives
exactly the train/val/test rows and missing mask that the worker trained on (the digest a worker
records from inside its data preparation), and the test order its stored predictions follow."""

from __future__ import annotations

import numpy as np

from missmod.client import Client
from training.protocol import ProtocolKey, protocol_for

from tests.datasets.test_features_files import video_features, write

SETTINGS = [
    {"dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.9, "seed": 1},
    {"dataset": "synthetic", "method": "zero_padding", "missing_modality": "y", "missing_rate": 0.5, "seed": 2},
    # Videos of 4 segments: split, lose a modality and are predicted by group.
    {"dataset": "grouped_av", "method": "mle", "missing_modality": "visual", "missing_rate": 0.5, "seed": 3,
     "other_missing_rate": 0.2},
]


def test_the_protocol_helper_gives_what_the_worker_trained_on(embedded_settings, start_server, start_worker):
    write(embedded_settings.data_dir / "features", "grouped_av", **video_features())
    url = start_server(embedded_settings)
    start_worker(embedded_settings)
    with Client(url) as client:
        runs = [client.submit(**setting, epochs=1) for setting in SETTINGS]
        for setting, run in zip(SETTINGS, runs):
            run = client.wait(run, progress=False, timeout=300)
            assert run.succeeded, run.error
            key = ProtocolKey(setting["dataset"], setting["seed"], setting["missing_rate"],
                              setting.get("other_missing_rate", 0.0))
            library = protocol_for(key, embedded_settings.data_dir)
            api = client.protocol(key.dataset, key.seed, key.missing_rate, key.other_missing_rate)
            # What the worker trained on, recorded from inside its data preparation.
            assert library.digest == api.digest == run.info["protocol_digest"], setting["dataset"]
            for part in ("train", "val", "test", "y_missing", "x_missing", "test_labels"):
                assert np.array_equal(getattr(library, part), getattr(api, part)), part
            assert run.info["n_train"] == len(api.train) and run.info["n_test"] == len(api.test)
            assert run.info["n_train_missing"] == sum(api.y_missing)
            assert run.info["n_train_missing_x"] == sum(api.x_missing)
            # The worker's stored test predictions are listed in the protocol's test order.
            stored = client.predictions(run)
            assert stored.labels == api.test_labels and len(stored.predicted) == len(api.test_groups)
        grouped = client.protocol("grouped_av", 3, 0.5, 0.2)
        assert len(grouped.test_groups) * 4 == len(grouped.test)  # one prediction per video
        # Disjoint parts covering the dataset; nested missing choices across rates.
        assert sorted(grouped.train + grouped.val + grouped.test) == list(range(240))
        lower = client.protocol("grouped_av", 3, 0.3, 0.2)
        assert lower.train == grouped.train
        assert all(g for low, g in zip(lower.y_missing, grouped.y_missing) if low)
