"""What the HTTP process and the worker process say to each other: typed, torch-free messages.

The only module both sides import (import-linter keeps it so): the HTTP side (app.serving) never
imports the worker side (app.device), and neither reaches into the other's objects.
"""
