"""`python -m tuning nightly|resume|abandon|settings`."""

from tuning.cli import tune

tune(prog_name="python -m tuning")
