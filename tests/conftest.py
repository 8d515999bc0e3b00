import os

from cluster.local import configure_loopback

configure_loopback()  # before any test module imports ray: a local head must stay on loopback

# No machine here reaches a model hub; nothing in the suite may try.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
