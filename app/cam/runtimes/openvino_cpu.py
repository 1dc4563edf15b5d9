"""OpenVINO on the CPU: the masked forwards of a converted copy of the (folded) torch module.

Measured on the embedded EfficientNet-Lite0, 2 cores (../shared/PERFORMANCE-NOTES.md): 1.5× the
eager copy's throughput in fp32 and 1.76× in bf16. The module is converted once
(``openvino.convert_model``, traced at a dynamic batch dimension, so the out-of-memory halving and
the last partial batch need no recompilation) and saved as IR under the cache folder, keyed by a
digest of its weights and structure; OpenVINO's own ``CACHE_DIR`` keeps the compiled blobs, so a
second start converts nothing (and torch's logits for the agreement check are kept beside the IR:
``kept_reference``). One compiled model per precision (``INFERENCE_PRECISION_HINT``
f32 / bf16), and only one: OpenVINO keeps the memory it planned for the largest batch a compiled
model ran, per compiled model (EfficientNet-Lite0, fp32: 124 MB after batch 8, 374 MB after batch
32, and a new infer request keeps it), so a static-shape copy at the engine's batch size (2-7 %
faster at batch 8 on 2 cores) doubled that memory, and batch-size tuning's largest candidate stayed
planned whatever size it chose. ``prepare`` compiles the models again when they ran larger batches
than the size chosen. fp16 is never served here (a CPU computes it no faster than fp32), torch
serves it.

int8 (only when asked, ``int8=Calibration(...)``): NNCF post-training quantisation of the
converted model (``nncf.quantize``), calibrated on the masked inputs Score-CAM forwards
(``calibration.py``); the quantised IR is cached next to the fp32 one, keyed by the module's key,
the calibration's digest and NNCF's version, so a second start quantises nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.cam.runtimes.cache import module_key, writable_dir
from app.cam.runtimes.calibration import Calibration, CheckSet
from app.cam.runtimes.shapes import ANY_SIZE, BatchShapes

# OpenVINO ships no type information: its objects are named here for what they are.
OVModel = Any  # openvino.Model: a converted (or quantised) network
OVRequest = Any  # openvino.InferRequest of a compiled model
OVConfig = dict[str, Any]  # compile properties (hints, threads, precision)
log = logging.getLogger(__name__)
HINTS: dict[str, str] = {"fp32": "f32", "bf16": "bf16"}
# int8 layers run in int8 whatever the hint; the hint sets the rest (f32: no bf16 on top of int8)
INT8_HINT = "f32"
QUANTISATION = "ptq1"  # names how _quantize quantises (NNCF defaults: CPU, performance preset); part of the key
_conversions = 0  # conversions done by this process: a restart with a warm cache adds none
_quantisations = 0  # likewise for nncf.quantize


def quantisation_count() -> int:
    """How many models this process quantised with ``nncf.quantize`` (not from cache)."""
    return _quantisations


def nncf_version() -> str | None:
    """The installed NNCF version, or None when it is not installed (int8 then falls back)."""
    try:
        import nncf
    except ImportError:
        return None
    return str(nncf.__version__)


def conversion_count() -> int:
    """How many modules this process converted with ``openvino.convert_model`` (not from cache)."""
    return _conversions


def openvino_version() -> str | None:
    """The installed OpenVINO version, or None when it is not installed."""
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__)


def _convert(module: nn.Module, example: torch.Tensor) -> OVModel:
    """Trace ``module`` into an OpenVINO model with a dynamic batch dimension."""
    global _conversions
    import openvino as ov

    shape = [-1, *example.shape[1:]]
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)
        model = ov.convert_model(module, example_input=example, input=[shape])
    _conversions += 1
    return model


def _quantize(model: OVModel, inputs: torch.Tensor) -> OVModel:
    """NNCF post-training quantisation of ``model`` calibrated on ``inputs`` (one sample each)."""
    global _quantisations
    import nncf

    logging.getLogger("nncf").setLevel(logging.WARNING)
    dataset = nncf.Dataset([x[None].numpy() for x in inputs.float().contiguous()])
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars: no bars in the core
        quantised = nncf.quantize(model, dataset, subset_size=int(inputs.shape[0]), target_device=nncf.TargetDevice.CPU)
    _quantisations += 1
    return quantised


class OpenVINORuntime:
    """Compiled OpenVINO models of one module, one per precision, CPU only.

    Args:
        module: the eval-mode torch module to convert (the engine's folded copy).
        input_size: the square input side (fixed; the batch dimension is dynamic).
        precisions: the precisions to compile ("fp32", "bf16").
        cache_dir: the cache folder (OpenVINO uses ``<cache_dir>/openvino``), or None for none.
        threads: CPU threads per forward (the torch thread count by default).
        use_cached_ir: read a previously converted (or quantised) model from the cache when there is one.
        int8: also serve int8, quantised on this calibration (needs nncf); None: no int8.
    """

    name = "openvino"
    memory_format = torch.contiguous_format  # OpenVINO's inputs are dense NCHW arrays
    torch_threads: int | None = 1  # OpenVINO's own threads run the forwards (threads.py)
    # the compiled models take any batch size: padding a tail would cost CPU time for rows that are dropped
    batch_shapes: BatchShapes = ANY_SIZE

    def __init__(
        self,
        module: nn.Module,
        input_size: int,
        precisions: tuple[str, ...] = ("fp32",),
        cache_dir: Path | None = None,
        threads: int | None = None,
        use_cached_ir: bool = True,
        int8: Calibration | None = None,
    ) -> None:
        import openvino as ov

        self.input_shape = (3, input_size, input_size)
        self.threads = threads or torch.get_num_threads()
        folder = cache_dir / "openvino" if cache_dir is not None else None
        self.cache_dir = folder if folder is not None and writable_dir(folder) else None
        started = time.perf_counter()
        self.from_cache = False
        self._key = module_key(module, self.input_shape, ov.__version__)
        source = self._load_or_convert(module, folder, use_cached_ir)
        self.convert_s = time.perf_counter() - started
        self._core = ov.Core()
        self._sources: dict[str, OVModel] = {p: source for p in precisions}
        self.int8_from_cache = False
        self.int8_check: CheckSet | None = None  # held-out real inputs for int8's agreement check
        self.quantize_s = 0.0
        if int8 is not None:
            try:
                self._sources["int8"] = self._load_or_quantize(module, source, int8, folder, use_cached_ir)
            except Exception as exc:  # noqa: BLE001 - fp32 still serves (int8 requests too)
                log.warning("OpenVINO could not quantise the model to int8 (%s: %s): fp32 serves int8", type(exc).__name__, exc)
        self._requests: dict[str, OVRequest] = {}  # dynamic batch, one per precision
        self.largest_batch = 0  # the largest batch they ran since compiled: OpenVINO keeps memory planned for it
        for precision in self._sources:
            try:
                request = self._compile(precision)
            except Exception as exc:
                if precision == "fp32":
                    raise
                log.warning(
                    "OpenVINO could not compile %s (%s): %s serves %s",
                    precision,
                    exc,
                    "fp32" if precision == "int8" else "torch",
                    precision,
                )
                continue
            self._requests[precision] = request
        self.setup_s = time.perf_counter() - started
        self._lock = threading.Lock()  # an infer request serves one call at a time

    def _compile(self, precision: str) -> OVRequest:
        return self._core.compile_model(self._sources[precision], "CPU", self._config(precision)).create_infer_request()

    def _config(self, precision: str) -> OVConfig:
        config: OVConfig = {
            "INFERENCE_PRECISION_HINT": INT8_HINT if precision == "int8" else HINTS[precision],
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",  # one stream: the engine runs one batch at a time
        }
        if self.cache_dir is not None:
            config["CACHE_DIR"] = str(self.cache_dir / "compiled")
        return config

    def _load_or_convert(self, module: nn.Module, folder: Path | None, use_cached_ir: bool) -> OVModel:
        """The cached IR's path when present, else a fresh conversion (saved when writable)."""

        if folder is None:
            return _convert(module, self._example())
        ir = folder / f"{self._key}.xml"
        if use_cached_ir and ir.is_file() and ir.with_suffix(".bin").is_file():
            self.from_cache = True
            return str(ir)
        model = _convert(module, self._example())
        if self.cache_dir is not None:
            self._save(model, ir)
        return model

    def _load_or_quantize(
        self, module: nn.Module, source: OVModel, calibration: Calibration, folder: Path | None, use_cached_ir: bool
    ) -> OVModel:
        """The cached int8 IR's path when present, else ``nncf.quantize`` of ``source`` (saved when writable).

        Its key: the module's key, how it is quantised, the calibration's digest and NNCF's version.
        """
        started = time.perf_counter()
        version = nncf_version()
        if version is None:
            raise ImportError("int8 needs nncf: pip install 'scorecam-service[int8]'")
        name = f"{self._key}-int8-{QUANTISATION}-{calibration.key()}-nncf{version}.xml"
        ir = folder / name if folder is not None else None
        cached = use_cached_ir and ir is not None and ir.is_file() and ir.with_suffix(".bin").is_file()
        calibrate, self.int8_check = calibration.inputs(module, calibrate=not cached)
        if cached:
            self.int8_from_cache = True
            return str(ir)
        model = self._core_read(source)
        quantised = _quantize(model, calibrate)
        if ir is not None and self.cache_dir is not None:
            self._save(quantised, ir)
        self.quantize_s = time.perf_counter() - started
        return quantised

    @staticmethod
    def _core_read(source: OVModel) -> OVModel:
        import openvino as ov

        return ov.Core().read_model(source) if isinstance(source, str) else source.clone()

    def _example(self) -> torch.Tensor:
        return torch.randn(2, *self.input_shape, generator=torch.Generator().manual_seed(0))

    @staticmethod
    def _save(model: OVModel, ir: Path) -> None:
        """Write the IR under a temporary name, then rename (.xml last: it marks a complete pair)."""
        import openvino as ov

        tmp = ir.with_name(f".{ir.stem}.{os.getpid()}.{threading.get_ident()}.xml")
        try:
            ov.save_model(model, str(tmp), compress_to_fp16=False)  # keep fp32 weights exact
            os.replace(tmp.with_suffix(".bin"), ir.with_suffix(".bin"))
            os.replace(tmp, ir)
        except OSError as exc:
            log.warning("could not save the converted model under %s (%s); it is converted again next start", ir.parent, exc)
            for leftover in (tmp, tmp.with_suffix(".bin")):
                leftover.unlink(missing_ok=True)

    def kept_reference(self, batch: torch.Tensor) -> torch.Tensor | None:
        """torch's fp32 logits of the agreement check's ``batch`` as an earlier start kept them, or None.

        They depend on the module and torch's version (the IR's key) and on the batch (its digest
        names the file), not on the CPU, so a later start (a restarted worker, a new container on
        the same cache volume) compares its compiled models against them without running torch.
        A file that cannot be read or does not fit is ignored, with a log line.
        """
        path = self.reference_path(batch)
        if path is None or not path.is_file():
            return None
        try:
            logits = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            log.warning("ignoring the kept agreement reference %s (%s)", path, exc)
            return None
        if logits.dtype != np.float32 or logits.ndim != 2 or logits.shape[0] != batch.shape[0] or not np.isfinite(logits).all():
            log.warning("ignoring the kept agreement reference %s: %s %s logits", path, logits.dtype, logits.shape)
            return None
        return torch.from_numpy(logits).to(batch.device)

    def keep_reference(self, batch: torch.Tensor, logits: torch.Tensor) -> None:
        """Keep torch's logits of ``batch`` for later starts (written under a temporary name, then renamed)."""
        path = self.reference_path(batch)
        if path is None:
            return
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.npy")
        try:
            np.save(tmp, logits.detach().float().cpu().numpy(), allow_pickle=False)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not keep the agreement reference under %s (%s)", path.parent, exc)
            tmp.unlink(missing_ok=True)

    def reference_path(self, batch: torch.Tensor) -> Path | None:
        """Beside the IR: ``<key>.check-<digest of the batch>.npy`` (None without a cache folder)."""
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(batch.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
        return self.cache_dir / f"{self._key}.check-{digest}.npy"

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self._requests)

    def drop(self, precision: str) -> None:
        """Stop serving ``precision`` here (its check failed): torch serves it instead."""
        self._requests.pop(precision, None)

    def prepare(self, batch_size: int) -> None:
        """Get ready for full batches of ``batch_size`` (the engine's chosen size; any size still works).

        Models that ran larger batches (tuning's candidates) are compiled again, so they hold the
        memory of this size, not of the largest one they saw; then one batch plans this size.
        """
        batch = torch.randn(batch_size, *self.input_shape, generator=torch.Generator().manual_seed(0)).numpy()
        with self._lock:  # rare (start, batch-size tuning): forwards wait for it
            if self.largest_batch > batch_size:
                self._requests = {precision: self._compile(precision) for precision in self._requests}
                self.largest_batch = 0
            for request in self._requests.values():
                request.infer([batch], share_inputs=True)
            self.largest_batch = max(self.largest_batch, batch_size)

    def accepts(self, batch: torch.Tensor, precision: str) -> bool:
        return precision in self._requests and batch.device.type == "cpu" and tuple(batch.shape[1:]) == self.input_shape

    def forward(self, batch: torch.Tensor, precision: str) -> torch.Tensor:
        """fp32 logits; the input is shared with OpenVINO, not copied (it is contiguous fp32)."""
        array = batch.detach().float().contiguous().numpy()
        with self._lock:
            result = self._requests[precision].infer([array], share_inputs=True)
            self.largest_batch = max(self.largest_batch, array.shape[0])
            return torch.from_numpy(result[0])  # a copy (share_outputs=False): the next call reuses buffers
