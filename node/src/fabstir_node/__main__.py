"""``python -m fabstir_node`` is ``fabstir-node``."""

from fabstir_node.cli import main

main(prog_name="fabstir-node")
