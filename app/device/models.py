"""The models the worker process serves: loaded once, kept warm on the device.

Only the worker process's main thread runs their code; the HTTP process sees them as
``ModelInfo`` descriptions (app/serving/catalog.py).
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from app.cam import CamOptions, InferenceModel, build_cam
from app.cam.base import BaseCAM
from app.cam.precision import native_precisions
from app.cam.runtimes import Calibration
from app.cam.runtimes.threads import torch_threads
from app.errors import DeviceUnavailable, ModelLoadFailed, ScoreCamError, UnknownModel
from app.methods import method_spec
from app.models.loaded import LoadedModel
from app.models.sources import ModelSource
from app.models.weights import DOWNLOAD_HINT
from app.protocol.messages import JobSpec, WorkerConfig

log = logging.getLogger(__name__)
CAM_CACHE_SIZE = 32
START_THREADS = 1  # torch's threads while a model loads (ModelStore.load_all)
CamKey = tuple[str, str, str, str, int | None]  # method, layer, precision, weighting, max_channels


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(device: torch.device) -> None:
    """Raise ``DeviceUnavailable`` when ``device`` does not exist on this machine, before any model
    loads: a missing GPU is a configuration error that no restart fixes, so it must fail the start
    (the HTTP process then exits non-zero) with a message that says what to set."""
    setting = f"SCORECAM_DEVICE={device}"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
            raise DeviceUnavailable(
                f"{setting}, but CUDA is not available here (torch {torch.__version__}, {built}; no GPU or driver "
                "visible): set SCORECAM_DEVICE=cpu, or auto to use a GPU only when there is one"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            valid = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise DeviceUnavailable(f"{setting}, but this machine has {count} CUDA device(s): use {valid}, or cuda")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"{setting}, but Apple's MPS is not available here: set SCORECAM_DEVICE=cpu or auto")


@dataclass
class ServedModel:
    """One loaded model on its device, with its explainers cached by options."""

    name: str
    loaded: LoadedModel
    inference: InferenceModel
    is_default: bool
    layers: list[str]
    layer_channels: dict[str, int] = field(default_factory=dict)
    layer_locations: dict[str, int] = field(default_factory=dict)  # h·w of each Recipro-CAM layer
    _cams: OrderedDict[CamKey, BaseCAM] = field(default_factory=OrderedDict)

    @property
    def input_size(self) -> int:
        return self.loaded.preprocessing.input_size

    def cam(self, spec: JobSpec) -> BaseCAM:
        """The explainer a job spec asks for, built once per options and kept (LRU)."""
        key: CamKey = (spec.method, spec.layer, spec.precision, spec.weighting, spec.max_channels)
        cam = self._cams.get(key)
        if cam is None:
            head = self.loaded.head(spec.layer) if method_spec(spec.method).needs_head else None
            options = CamOptions(head, spec.precision, spec.weighting, spec.max_channels)
            cam = build_cam(spec.method, self.inference, spec.layer, options)
            self._cams[key] = cam
            if len(self._cams) > CAM_CACHE_SIZE:
                self._cams.popitem(last=False)
        else:
            self._cams.move_to_end(key)
        return cam


def measure_locations(inference: InferenceModel, layers: list[str], input_size: int) -> dict[str, int]:
    """h·w of each layer's feature map at the model's input size (one forward, when there are layers)."""
    if not layers:
        return {}
    found: dict[str, int] = {}
    module = inference.module
    handles = [
        module.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: found.__setitem__(name, int(out.shape[-2] * out.shape[-1]))
        )
        for name in layers
    ]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, input_size, input_size, device=inference.device))
    finally:
        for handle in handles:
            handle.remove()
    return found


def calibration_for(loaded: LoadedModel) -> Calibration:
    """What int8 is calibrated on: scikit-image's photos through the model's own preprocessing,
    masked by its default layer's maps (the inputs Score-CAM will forward)."""
    return Calibration.from_photos(loaded.preprocessing.eval_tensor, loaded.default_layer)


class ModelStore:
    """Loads the configured models in the worker process and looks them up by name (one thread uses it)."""

    def __init__(self, source: ModelSource, config: WorkerConfig, on_oom: Callable[[str, int], None] | None = None) -> None:
        self.source = source
        self.on_oom = on_oom  # (model name, new batch size) after each out-of-memory halving
        self.names = list(config.models)
        self.default = config.default
        self.device = resolve_device(config.device)
        self.precision = config.precision
        self.batch_size = config.explain_batch_size
        self.allow_download = config.allow_download
        self.runtime = config.runtime  # of the masked forwards (app/cam/runtimes): auto, torch, openvino
        self.cache_dir = config.cache_dir
        self.known_sizes = config.batch_sizes  # measured by an earlier worker (a restart)
        self._models: dict[str, ServedModel] = {}

    def load_all(self) -> None:
        """Build every configured model on the device (idempotent: a restart reuses them).

        On one torch thread (``START_THREADS``), the runtime's pool keeping the serving count:
        loading runs a few small forwards (batch-norm folding and its check, the runtime's
        agreement check, layer sizes), and on a busy machine each of their few hundred parallel
        ops waits for a thread the scheduler gave away. Measured on the 2-core machine under other
        work (load 2-5), a restarted worker's folding took 2.2-5.1 s on two threads and 0.45 s on
        one, and its whole load 5.4-7.4 s and 1.8 s. On an idle machine (not measured: this one
        never is) two threads could save at most half of those forwards' 0.7 s on one. Serving
        threads are torch's as this process was started with.
        """
        check_device(self.device)
        serving_threads = torch.get_num_threads()
        for name in self.names:
            if name in self._models:
                continue
            log.info("loading model %s on %s", name, self.device)
            with torch_threads(START_THREADS):
                self._models[name] = self._build(name, serving_threads)

    def _build(self, name: str, serving_threads: int) -> ServedModel:
        """One model, its runtime and its layers' sizes, at the batch size an earlier worker chose
        for it (a restart: the runtime prepares that size only), else the explicit or default one."""
        loaded = self._load(name)
        known = self.known_sizes.get(name) if self.batch_size is None else None
        size = self.batch_size or known
        inference = InferenceModel(
            loaded.module,
            device=self.device,
            precision=self.precision,
            batch_size=size if size is not None else "auto",
            input_size=loaded.preprocessing.input_size,
            runtime=self.runtime,
            cache_dir=self.cache_dir,
            label=name,
            calibration=calibration_for(loaded) if self.precision == "int8" else None,
            runtime_threads=serving_threads,
        )
        if self.on_oom is not None:
            inference.on_oom = functools.partial(self.on_oom, name)
        if inference.precision not in (*native_precisions(self.device), "int8"):
            log.warning(
                "model %s computes its masked forwards in %s, which %s only emulates (many times slower); "
                "requests may not ask for it, and SCORECAM_PRECISION=auto picks a native one",
                name,
                inference.precision,
                self.device,
            )
        layers = loaded.layer_names()
        locations = measure_locations(inference, loaded.recipro_layers(), loaded.preprocessing.input_size)
        return ServedModel(
            name=name,
            loaded=loaded,
            inference=inference,
            is_default=name == self.default,
            layers=layers,
            layer_locations=locations,
        )

    def _load(self, name: str) -> LoadedModel:
        """The model's module and metadata; a failure names the model and the setting that fixes it."""
        try:
            return self.source.load(name, weights="default", allow_download=self.allow_download)
        except Exception as exc:
            message = str(exc).replace(DOWNLOAD_HINT, "set SCORECAM_ALLOW_DOWNLOAD=true")
            if not isinstance(exc, ScoreCamError):
                message = f"{type(exc).__name__}: {message}"
            raise ModelLoadFailed(f"model {name!r} (SCORECAM_MODELS) failed to load: {message}") from exc

    def get(self, name: str | None) -> ServedModel:
        """The named model (or the default); UnknownModel lists the served names."""
        key = name or self.default
        model = self._models.get(key)
        if model is None:
            raise UnknownModel(key, self.names)
        return model

    def all(self) -> list[ServedModel]:
        return [self._models[n] for n in self.names if n in self._models]
