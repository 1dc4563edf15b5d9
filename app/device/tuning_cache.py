"""What warm-up measured, kept on disk so that the next start on the same hardware measures nothing.

Batch-size tuning is most of a cold start on a CPU (47-91 s in the container, issue 25): four
candidate sizes timed in Score-CAM batches until two rounds agree. Its answer depends only on the
model, the runtime and precision that serve it, the device, the thread count and the libraries'
versions, so it is kept beside the OpenVINO cache (``<cache_dir>/tuning/<digest>.json``) with the
warm-up's measured pace, and a later start (a restarted worker, a new container on a persistent
cache volume) whose conditions match reuses both. The file's name is a digest of those
conditions, and the file repeats them: a file that does not parse, holds values that cannot be
right, or was measured under other conditions is ignored with a log line, and replaced after
tuning again. ``SCORECAM_STARTUP_CACHE=false`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from app.cam.runtimes import openvino_version
from app.device.models import ServedModel
from app.version import VERSION

log = logging.getLogger(__name__)
FORMAT = "1"  # bumped when what a record holds, or how it is measured, changes
FOLDER = "tuning"
TuningKey = dict[str, str]


@dataclass(frozen=True)
class Tuned:
    """A model's batch size as tuning chose it, and the masked forwards/s warm-up measured at it."""

    batch_size: int
    forwards_per_s: float | None


def cpu_description() -> str:
    """The CPU's model name, a digest of its instruction-set flags, and how many cores this process may use."""
    name, flags = "", ""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else ():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not name:
            name = value
        elif key in ("flags", "Features") and not flags:  # x86, arm
            flags = " ".join(sorted(value.split()))
    name = name or platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return f"{name}; flags {hashlib.sha256(flags.encode()).hexdigest()[:16]}; {cores} usable cores"


def device_description(device: torch.device) -> str:
    """What the measurement ran on: the GPU's name, compute capability and memory, or the CPU."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}; sm_{props.major}{props.minor}; {props.total_memory} bytes"
    return f"{device.type}: {cpu_description()}"


def tuning_key(model: ServedModel, warmup_max_channels: int) -> TuningKey:
    """Everything the tuned size and the warm-up pace depend on, as named strings."""
    inference = model.inference
    runtime = inference.runtime_name
    side = model.input_size
    return {
        "format": FORMAT,
        "model": model.name,
        "weights": inference.network.key((3, side, side)),  # structure and every weight (and torch's version)
        "runtime": runtime,
        "precision": inference.precision,
        "device": device_description(inference.device),
        "threads": str(torch.get_num_threads()),  # torch's, and OpenVINO's (it takes torch's count)
        "libraries": f"torch {torch.__version__}; openvino {openvino_version() if runtime == 'openvino' else '-'}",
        "service": VERSION,  # how tuning measures may change between releases
        "warmup_max_channels": str(warmup_max_channels),  # the pace is measured on that explanation
    }


class TuningCache:
    """Records under ``folder`` (None: no cache, nothing read or written)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def path(self, key: TuningKey) -> Path | None:
        if self.folder is None:
            return None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.folder / f"{digest}.json"

    def load(self, key: TuningKey) -> Tuned | None:
        """The record measured under ``key``'s conditions, or None (a bad one is logged and ignored)."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            return parse_record(json.loads(path.read_text()), key)
        except (OSError, ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("ignoring the cached tuning %s (%s): measuring again", path, exc)
            return None

    def save(self, key: TuningKey, tuned: Tuned) -> None:
        """Write the record atomically (a reader sees the old file or the new one, never half of one)."""
        path = self.path(key)
        if path is None:
            return
        record = {"key": key, "batch_size": tuned.batch_size, "forwards_per_s": tuned.forwards_per_s}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".tuning-", suffix=".tmp", delete=False) as tmp:
                json.dump(record, tmp, indent=1, sort_keys=True)
            os.replace(tmp.name, path)
        except OSError as exc:
            log.warning("could not keep the tuned batch size under %s (%s); it is measured again next start", path.parent, exc)


def parse_record(record: object, key: TuningKey) -> Tuned:
    """A record's values, checked: ValueError or TypeError says what is wrong with it."""
    if not isinstance(record, dict):
        raise TypeError(f"a JSON object was expected, not {type(record).__name__}")
    if record.get("key") != key:
        stored = record.get("key")
        differing = sorted(k for k in key if not isinstance(stored, dict) or stored.get(k) != key[k])
        raise ValueError(f"measured under other conditions: {', '.join(differing) or 'its key'} differ")
    size, pace = record.get("batch_size"), record.get("forwards_per_s")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"batch_size {size!r} is not a positive integer")
    number = isinstance(pace, (int, float)) and not isinstance(pace, bool)
    if pace is not None and not (number and math.isfinite(pace) and pace > 0):
        raise ValueError(f"forwards_per_s {pace!r} is not a positive number")
    return Tuned(size, None if pace is None else float(pace))
