"""The worker process: the one process that owns the device and runs every torch operation.

It loads and warms the models (``models``, ``warmup``), hosts the running requests' jobs
(``hosted_job``) and answers the HTTP process's calls over a pipe (``host``, ``process``).
"""
