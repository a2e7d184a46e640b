"""Nightly tuning runs for admins: the run records and each run's static report."""
