"""RAVDESS and eNTERFACE'05 from their raw videos (paper §3.1–3.2).

    discovery.py   the clips in each dataset's folder layout, with label, subject, video id
    config.py      the preprocessing settings and the cache key they give
    decode.py      one clip → 30 segments: central frames (PyAV) and spectrograms
    logmel.py      log-Mel spectrograms (librosa)
    preprocess.py  a whole dataset → a resumable cache under DATA_DIR, in parallel
    catalog.py     the datasets `ravdess` and `enterface05` in the training library's catalogue
    extract.py     frozen backbones → a features .npz (paper §3.4, Table 2)

`python -m training.audiovisual --help` preprocesses and extracts from the command line.
Importing this package imports neither PyAV, librosa nor torch.
"""
