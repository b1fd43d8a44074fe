"""Fabstir host node: serve GGUF models over libp2p and get paid per delivered token."""

import os

# Read once, when llama.cpp's OpenMP runtime loads, so set before anything imports llama_cpp:
# workers spin briefly between the kernels of one batch, then sleep, so an idle engine leaves
# the cores to the network (DESIGN §11; bench/throughput.py measures both).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

__version__ = "0.1.0"
