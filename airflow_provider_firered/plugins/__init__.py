"""
The FireRed plugin: a batch's contact sheet served by Airflow's api-server, one click from its task.

:mod:`~airflow_provider_firered.plugins.firered` registers it (provider info ``plugins``), with the
app of :mod:`~airflow_provider_firered.plugins.app`, the extra link of
:mod:`~airflow_provider_firered.plugins.links` and an external view on the task instance.
"""
