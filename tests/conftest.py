import os

import cluster.local  # noqa: F401  (first: a local Ray head must stay on loopback; see cluster/local.py)

# No machine here reaches a model hub; nothing in the suite may try.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
