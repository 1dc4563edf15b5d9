"""A model kept warm on its device, with the fast path for masked forwards.

Two views of one network: the original module (for hooks and gradients, fp32, so captured
activations are exact) and a folded, channels_last copy for the hundreds of masked forwards
Score-CAM needs, run in the chosen precision, in batches that halve on out-of-memory (a cap per
precision and kind of forward, regrown after clean batches: ``batch_caps.py``). The masked
forwards go through a runtime (app/cam/runtimes): torch eager on that copy, or OpenVINO on a
conversion of it where it is installed, converts and agrees with torch.

int8 is explicit only (``precision="int8"``): OpenVINO quantises its conversion on ``calibration``
(Score-CAM masked inputs of real photos) and serves it once it agrees with torch on held-out real
inputs; where it cannot, fp32 serves int8 requests (a warning says why). The torch runtime
refuses int8, and so does a model on any device but the CPU (OpenVINO computes on the CPU only).

A CUDA device is made the current one and gets cuDNN autotuning (``app/cam/cuda.py``) before
anything is put on it.

An exported model (``ExportedNetwork``: ONNX or OpenVINO IR, no torch module) is served the same
way through the same two operations (``network.py``): its capture adds the layer as an output,
and its masked forwards run on OpenVINO (``runtimes/openvino_exported.py``), on the CPU, in fp32
and, where the CPU computes it natively, bf16.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import torch
from torch import nn

from app.cam.batch_caps import MASKED_FORWARDS, PREDICTIONS, BatchCaps, CapKey
from app.cam.batch_size import default_batch_size, measure_best_batch_size
from app.cam.capture import Capture
from app.cam.cuda import prepare_cuda
from app.cam.exported import ExportedNetwork
from app.cam.folding import fold_batchnorm as folded_copy
from app.cam.network import Network, TorchNetwork
from app.cam.precision import native_precisions, resolve_precision
from app.cam.runtimes import Runtime, TorchRuntime, check_runtime_name, choose_runtime, default_cache_dir
from app.cam.runtimes.calibration import Calibration
from app.cam.runtimes.choice import INT8_ON_TORCH
from app.cam.runtimes.openvino_exported import ExportedRuntime
from app.cam.runtimes.shapes import ANY_SIZE, BatchShapes, pad_rows, padded_rows
from app.cam.runtimes.threads import torch_threads
from app.errors import InvalidOption

log = logging.getLogger(__name__)


class InferenceModel:
    """An eval-mode network on one device, ready for predictions and masked forwards.

    Args:
        module: the classifier (logits out): a torch module, or an ``ExportedNetwork``.
        device: "cpu", "cuda", "cuda:1", ...
        precision: default precision of masked forwards: "auto", "fp32", "bf16", "fp16", or "int8"
            (explicit only; the OpenVINO runtime only: quantised at start, or read from the cache).
        batch_size: masked inputs per forward, or "auto" (measured by ``tune_batch_size``).
        fold_batchnorm: fold conv→BN pairs in the fast copy (checked against the original).
        channels_last: NHWC memory format for the fast copy (faster convolutions on CPU and GPU).
        input_size: the square input side used to probe the model when folding (and the one a
            converted runtime is compiled for; other sizes run on torch).
        runtime: who runs the masked forwards: "torch" (eager, the reference), "openvino" (CPU) or
            "auto" (OpenVINO where it converts and agrees with torch, else torch). The library
            defaults to "torch": converting, and writing the cache, happen only when asked.
        cache_dir: where converted models are kept between starts (default: ``default_cache_dir()``).
        label: the model's name in log lines.
        calibration: what int8 is calibrated on (precision "int8" only; default
            ``Calibration.default(input_size)``: scikit-image's photos, ImageNet normalisation, the
            last spatial layer; pass ``Calibration.from_photos(preprocessing.eval_tensor, layer)``
            for the model's own preprocessing and target layer).
        runtime_threads: threads of a runtime with its own pool (OpenVINO); default: torch's
            thread count when the model is built.
    """

    def __init__(
        self,
        module: nn.Module | Network,
        device: torch.device | str = "cpu",
        precision: str = "auto",
        batch_size: int | str = "auto",
        fold_batchnorm: bool = True,
        channels_last: bool = True,
        input_size: int = 224,
        runtime: str = "torch",
        cache_dir: Path | str | None = None,
        label: str | None = None,
        calibration: Calibration | None = None,
        runtime_threads: int | None = None,
    ) -> None:
        check_runtime_name(runtime)
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise InvalidOption(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        self.device = prepare_cuda(device)  # cuda:N current, cudnn.benchmark; other devices as given
        self.precision = resolve_precision(precision, self.device)
        self.int8_requested = self.precision == "int8"
        self.network: Network
        if not isinstance(module, nn.Module):
            if not isinstance(module, ExportedNetwork):
                raise InvalidOption(f"no runtime runs a {type(module).__name__}: give a torch module or an ExportedNetwork")
            self.runtime: Runtime = self._exported(module, label, runtime_threads)
            self.fallback: Runtime = self.runtime  # no torch copy: the exported graph is the reference
            self._finish(batch_size)
            return
        if self.int8_requested and runtime == "torch":
            raise InvalidOption(INT8_ON_TORCH)
        if self.int8_requested and self.device.type != "cpu":
            raise InvalidOption(
                f"precision 'int8' runs on the OpenVINO runtime, on the CPU only; on {self.device} use auto, fp32, bf16 "
                f"or fp16 (native here: {', '.join(native_precisions(self.device))})"
            )
        self.module = module.eval().to(self.device)
        self.network = TorchNetwork(self.module)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.channels_last = channels_last
        self.input_size = input_size
        probe = torch.randn(2, 3, input_size, input_size, device=self.device)
        fast = folded_copy(self.module, probe) if fold_batchnorm else copy.deepcopy(self.module)
        self.fast = fast.to(memory_format=torch.channels_last) if channels_last else fast
        self.torch_runtime = TorchRuntime(self.fast, self.device, channels_last)
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        name = label or type(module).__name__
        int8 = (calibration or Calibration.default(input_size)) if self.int8_requested else None
        self.runtime = choose_runtime(runtime, self.torch_runtime, input_size, cache, name, int8=int8, threads=runtime_threads)
        self.fallback = self.torch_runtime
        if self.int8_requested and not self.runtime.accepts(self._probe(), "int8"):
            log.warning(
                "precision int8 for %s is not served (the log above says why): fp32 serves it on %s", name, self.runtime.name
            )
            self.precision = "fp32"
        self._finish(batch_size)

    def _finish(self, batch_size: int | str) -> None:
        """Batch size, the runtime prepared for it, caps: the same for every kind of network."""
        self.auto_batch = batch_size == "auto"
        self.batch_size: int = default_batch_size(self.device) if batch_size == "auto" else int(batch_size)
        self.runtime.prepare(self.batch_size)
        self.oom_splits = 0
        self.on_oom: Callable[[int], None] | None = None  # the new cap, after each out-of-memory halving
        self.caps = BatchCaps()  # halved caps by (precision, kind of forward); ``batch_size`` stays the tuned size
        self._whole = False  # ``whole_batches``: forwards of exactly ``batch_size``, out-of-memory raised
        self._lock = threading.Lock()

    def _exported(self, network: ExportedNetwork, label: str | None, threads: int | None) -> ExportedRuntime:
        """The runtime of an exported network: OpenVINO on the CPU, in fp32 and native bf16."""
        name = label or network.label
        self.network = network
        self.channels_last = network.layout == "NHWC"
        self.input_size = network.input_size
        if self.device.type != "cpu":
            raise InvalidOption(
                f"model {name!r} is an exported {network.kind} graph: it runs on OpenVINO, on the CPU only, not {self.device}"
            )
        if self.int8_requested:
            raise InvalidOption(f"precision 'int8' is not offered for exported models ({name!r}); use auto or fp32")
        exported = ExportedRuntime(network, tuple(p for p in native_precisions(self.device) if p in ("fp32", "bf16")), threads)
        if self.precision not in exported.precisions:
            log.warning(
                "model %s (exported) computes %s, not %s: fp32 serves it", name, "/".join(exported.precisions), self.precision
            )
            self.precision = "fp32"
        how = "one input at a time (a fixed batch of 1)" if network.one_by_one else "dynamic batch"
        log.info("runtime openvino for exported %s model %s: %s, %s", network.kind, name, ", ".join(exported.precisions), how)
        return exported

    def layer_names(self) -> list[str]:
        return self.network.layer_names()

    def check_layer(self, layer: str) -> object:
        """What the network taps for ``layer`` (UnknownLayer with close names when there is none)."""
        return self.network.check_layer(layer)

    def capture(self, layer: str, x: torch.Tensor, gradients: bool = False) -> Capture:
        """(a) of ``network.py``: one forward of ``x`` [1, 3, H, W] keeping ``layer``'s activations."""
        return self.network.capture(layer, x.to(self.device), gradients)

    def tune_batch_size(self, input_size: int | None = None, precision: str | None = None) -> int:
        """Measure the per-image cost of a few batch sizes and keep the cheapest (when "auto")."""
        if self.auto_batch:
            side = input_size or self.input_size
            resolved = resolve_precision(precision or self.precision, self.device)
            prepared: list[int] = []

            def forward(batch: torch.Tensor) -> torch.Tensor:
                # Each candidate is measured as it would run once chosen (OpenVINO compiles a
                # static shape for the chosen size): measuring the sizes against one prepared
                # size favoured that size, and a choice then confirmed itself round after round.
                if not prepared or prepared[-1] != batch.shape[0]:
                    self.runtime.prepare(batch.shape[0])
                    prepared.append(batch.shape[0])
                return self._forward(batch, resolved)

            chosen = measure_best_batch_size(forward, self.device, side)
            if not prepared or prepared[-1] != chosen:
                self.runtime.prepare(chosen)
            self.batch_size = chosen
            log.info("batch size %d chosen for %s", self.batch_size, self.device)
        return self.batch_size

    def use_batch_size(self, size: int) -> None:
        """Run full batches of ``size`` from now on (the runtime prepares for that shape)."""
        self.runtime.prepare(size)
        self.batch_size = size

    def batch_limit(self, precision: str, kind: str = MASKED_FORWARDS) -> int:
        """Inputs per forward of ``kind`` in ``precision``: the tuned ``batch_size``, or its cap
        after running out of memory (``batch_caps.py``)."""
        return self.caps.limit((precision, kind), self.batch_size)

    @contextmanager
    def whole_batches(self) -> Iterator[None]:
        """Forwards of exactly ``batch_size`` inputs, caps ignored and out-of-memory raised, not
        halved: what batch-size tuning needs to see whether a candidate fits (not thread-safe:
        start-up only)."""
        self._whole = True
        try:
            yield
        finally:
            self._whole = False

    def _probe(self) -> torch.Tensor:
        return torch.empty(0, 3, self.input_size, self.input_size, device=self.device)

    @property
    def runtime_name(self) -> str:
        """The runtime of the default precision's masked forwards ("torch" or "openvino")."""
        return self.serving().name

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions masked forwards may ask for: torch's three, and int8 when built with it
        (served in int8 where it agreed with torch, else in fp32)."""
        if isinstance(self.runtime, ExportedRuntime):  # an exported network: what its runtime compiled
            return self.runtime.precisions
        return ("fp32", "bf16", "fp16") + (("int8",) if self.int8_requested else ())

    def serving(self, precision: str | None = None) -> Runtime:
        """The runtime that serves masked forwards in ``precision`` at the model's input size."""
        resolved = resolve_precision(precision or self.precision, self.device)
        if resolved == "int8" and not self.runtime.accepts(self._probe(), "int8"):
            resolved = "fp32"  # int8 fell back at start: fp32 serves it (as in ``_forward``)
        return self.runtime if self.runtime.accepts(self._probe(), resolved) else self.fallback

    def input_format(self, precision: str | None = None) -> torch.memory_format:
        """The memory layout masked inputs should be built in: the one the serving runtime takes
        without a copy."""
        return self.serving(precision).memory_format

    def batch_loop(self, precision: str | None = None) -> AbstractContextManager[None]:
        """Wrap the building and forwarding of masked batches in ``precision``: torch's threads
        stand aside while a runtime with its own pool serves them (``runtimes/threads.py``)."""
        return torch_threads(self.serving(precision).torch_threads)

    def _forward(self, batch: torch.Tensor, precision: str) -> torch.Tensor:
        runtime, computed = self._serve(batch, precision)
        return runtime.forward(batch, computed)

    def _serve(self, batch: torch.Tensor, precision: str) -> tuple[Runtime, str]:
        """The runtime that runs ``batch`` in ``precision``, and the precision it computes (its
        choice depends on the inputs' shape and device, never on their count)."""
        if precision == "int8" and not self.runtime.accepts(batch, "int8"):
            precision = "fp32"  # int8 fell back at start, or another input size: fp32 serves it
        return (self.runtime if self.runtime.accepts(batch, precision) else self.fallback), precision

    def forward_masked(self, batch: torch.Tensor, precision: str | None = None, kind: str = MASKED_FORWARDS) -> torch.Tensor:
        """fp32 logits of ``batch`` (already on the device), in slices of at most ``batch_limit``.

        On out-of-memory the slice is halved and retried; the smaller cap is kept for later
        forwards of the same precision and ``kind`` (``forward_in_slices``). Per-sample results do
        not depend on how the batch was cut.
        """
        precision = resolve_precision(precision or self.precision, self.device)
        if precision == "int8" and not self.int8_requested:
            raise InvalidOption(
                f"precision 'int8' was not prepared for this model: build it with precision='int8' "
                f"(runtime 'openvino' or 'auto'); valid here: {', '.join(self.precisions)}"
            )
        if precision not in self.precisions:
            raise InvalidOption(
                f"precision {precision!r} is not computed for this exported model; valid here: {', '.join(self.precisions)}"
            )
        resolved = precision
        shapes = self._serve(batch, resolved)[0].batch_shapes
        return self.forward_in_slices(lambda part: self._forward(part, resolved), batch, resolved, kind, shapes)

    def forward_in_slices(
        self,
        run: Callable[[torch.Tensor], torch.Tensor],
        batch: torch.Tensor,
        precision: str,
        kind: str,
        shapes: BatchShapes = ANY_SIZE,
    ) -> torch.Tensor:
        """``run`` over ``batch`` in slices of at most ``batch_limit(precision, kind)``.

        A tail slice is padded with zero rows where the runtime's ``shapes`` ask for it (outputs
        dropped). On out-of-memory the slice is halved and retried (down to one input, which
        re-raises) and the cap of (precision, kind) is kept for later calls (``oom_splits`` counts
        it, ``on_oom`` reports it); a call that ran clean at a halved cap counts towards its
        regrowth. The retry runs after the ``except`` block: the failed forward's tensors are freed
        before the smaller one allocates.
        """
        key = (precision, kind)
        outputs: list[torch.Tensor] = []
        start, n = 0, batch.shape[0]
        largest, halved = 0, False
        while start < n:
            limit = self.batch_size if self._whole else self.caps.limit(key, self.batch_size)
            size = min(limit, n - start)
            rows = padded_rows(size, limit, shapes)
            failed = False
            try:
                out = run(pad_rows(batch[start : start + size], rows))
            except torch.OutOfMemoryError:
                if rows == 1 or self._whole:
                    raise
                failed = True
            if failed:
                self._halve(key, rows)
                halved = True
                continue
            outputs.append(out[:size] if rows > size else out)
            start += size
            largest = max(largest, rows)
        if not halved and largest and not self._whole:
            self._clean(key, largest)
        if not outputs:
            return torch.empty(0, 0, device=self.device)
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def _halve(self, key: CapKey, failed_rows: int) -> None:
        cap = self.caps.halve(key, failed_rows)
        with self._lock:
            self.oom_splits += 1
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        log.warning("out of memory at %d %s %s inputs; retrying at %d", failed_rows, key[0], key[1], cap)
        if self.on_oom is not None:
            self.on_oom(cap)

    def _clean(self, key: CapKey, largest: int) -> None:
        grown = self.caps.clean(key, largest, self.batch_size)
        if grown is not None:
            log.info("%s %s forwards ran clean at their halved cap: trying %d inputs again", key[0], key[1], grown)

    def predict_logits(self, x: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        """fp32 logits for a batch of preprocessed images (moved to the device here)."""
        return self.forward_masked(x.to(self.device), precision or "fp32", PREDICTIONS)
