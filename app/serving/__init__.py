"""The HTTP process's serving core: admission, the request queue, the dispatcher thread and the
supervisor that keeps one worker process (app.device) alive, behind ``ScoreCamService``.

Nothing here runs model code; the worker process is reached through ``worker_client`` and the
typed messages of app.protocol only.
"""
