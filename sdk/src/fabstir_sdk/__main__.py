"""``python -m fabstir_sdk`` is ``fabstir``."""

from fabstir_sdk.cli import main

main(prog_name="fabstir")
