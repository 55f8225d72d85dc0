"""
Development tools for this project's end-to-end tests and benchmarks: a throwaway Airflow
deployment on loopback (:mod:`~airflow_provider_firered.testing.deployment`) and the Linux process
bookkeeping it needs. The provider never imports them at run time; they need the ``emulator``
extra (Pillow).
"""
