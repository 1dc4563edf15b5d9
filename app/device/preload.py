"""The fork server's preload: the worker's modules imported once, then frozen for the garbage collector.

Every worker process is forked from the fork server (app/serving/worker_client.py), so what it
imported (torch, OpenVINO, the engine: a few hundred thousand objects) is already there in a new
worker. ``gc.freeze()`` moves those objects to the collector's permanent generation: a worker's
collections no longer walk them, and so no longer write to their pages either (each write would
copy a page the fork shares with the fork server). Importing this module has that effect on
purpose: it is meant to be imported by the fork server only.
"""

from __future__ import annotations

import gc
import importlib

from app.protocol.calls import WORKER_MODULE

importlib.import_module(WORKER_MODULE)
gc.freeze()
