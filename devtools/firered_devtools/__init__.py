"""
Run throwaway Airflow deployments on loopback for this project's end-to-end tests and benchmarks.

The rig (:mod:`~firered_devtools.deployment`, the PostgreSQL cluster and the Linux process bookkeeping
they need) is a development-only distribution beside the provider: the provider never imports it and
its wheel does not contain it.
"""
