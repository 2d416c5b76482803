"""The training library: datasets, missing-modality simulation, encoders, fusion, the
maximum-likelihood objective (paper eq. 2, 4, 5), baselines, training loop and evaluation.

It knows nothing of HTTP, SQL or Celery: `train(spec, callback)` is the whole interface, and
`python -m training --help` runs it from the command line. Importing this package
imports nothing heavy; torch is loaded by the modules that need it.
"""
