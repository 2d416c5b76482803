"""missmod's web side: settings, database, REST API, live streams and pages.

Never imports torch: the API starts fast and without a GPU. Training happens in worker/.
"""
