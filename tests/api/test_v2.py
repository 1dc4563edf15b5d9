"""The Open Inference Protocol (/v2) through the real tritonclient[http] and KServe's SDK against a real uvicorn.

No code of ours sits between the test and the server: InferenceServerClient, InferInput and
InferRequestedOutput build the requests (binary tensors by default, JSON where asked) and read
the answers, so what passes here is what Triton and KServe users run.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import kserve
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi import FastAPI
from PIL import Image
from tritonclient.utils import InferenceServerException

from app.imaging.render import decode_raw
from app.models.preprocessing import Preprocessing
from app.version import VERSION
from tests.batch_log import batch_log

from .conftest import image_bytes, tiny_app, wait_until
from .live import uvicorn_thread
from .tinynet import INPUT_SIZE, NUM_CLASSES, Gate

KEY = "v2-tests-key-123"
T = TypeVar("T")


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return tiny_app(api_key=KEY)


@pytest.fixture(scope="module")
def url(app: FastAPI) -> Iterator[str]:
    with uvicorn_thread(app) as base:
        yield base


@pytest.fixture
def client(url: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60.0)
    yield client
    client.close()


def auth() -> dict[str, str]:
    """A fresh header dict per call: tritonclient adds its own headers to the dict it is given."""
    return {"X-API-Key": KEY}


def image_input(*files: bytes, binary: bool = True) -> triton.InferInput:
    """Encoded image files as a BYTES [N] input: raw bytes as binary data, base64 strings in JSON."""
    tensor = triton.InferInput("image", [len(files)], "BYTES")
    values = files if binary else tuple(base64.b64encode(f) for f in files)
    tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    return tensor


def v1_scores(url: str, png: bytes) -> np.ndarray:
    """Every class probability of /v1/predict, indexed by class."""
    body = httpx.post(
        f"{url}/v1/predict", files={"image": ("i.png", png)}, data={"top_k": str(NUM_CLASSES)}, headers=auth()
    ).json()
    scores = np.zeros(NUM_CLASSES, dtype=np.float32)
    for p in body["predictions"]:
        scores[p["class_index"]] = p["score"]
    return scores


def test_health_and_server_metadata(client: triton.InferenceServerClient, url: str) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}  # probes need no key
    metadata = client.get_server_metadata(headers=auth())
    assert metadata["version"] == VERSION
    assert {"binary_tensor_data", "classification"} <= set(metadata["extensions"])


def test_model_metadata_describes_inputs_and_outputs(client: triton.InferenceServerClient) -> None:
    classifier = client.get_model_metadata("tiny", headers=auth())
    assert classifier["versions"] == ["1"] and classifier["parameters"]["service_version"] == VERSION
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in classifier["inputs"]} == {
        ("image", "BYTES", (-1,)),
        ("input", "FP32", (-1, 3, INPUT_SIZE, INPUT_SIZE)),
    }
    assert classifier["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, NUM_CLASSES]}]
    explainer = client.get_model_metadata("tiny.scorecam", model_version="1", headers=auth())
    assert [t["name"] for t in explainer["outputs"]] == ["heatmap", "class_index", "score"]
    assert client.is_model_ready("tiny", headers=auth()) and client.is_model_ready("tiny.scorecam", headers=auth())


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-base64"])
def test_images_give_the_same_probabilities_as_v1(
    client: triton.InferenceServerClient, url: str, cat_png: bytes, binary: bool
) -> None:
    small = image_bytes(Image.open(io.BytesIO(cat_png)).resize((40, 30)))
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer("tiny", [image_input(cat_png, small, binary=binary)], outputs=outputs, headers=auth())
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, NUM_CLASSES) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities[0], v1_scores(url, cat_png), atol=1e-5)
    np.testing.assert_allclose(probabilities[1], v1_scores(url, small), atol=1e-5)
    assert result.get_response()["model_version"] == "1"


def test_a_preprocessed_tensor_matches_its_image(client: triton.InferenceServerClient, app: FastAPI, cat_png: bytes) -> None:
    views = app.state.service.catalog.get("tiny").preprocessing
    preprocessing = Preprocessing(**dataclasses.asdict(views))
    x = preprocessing.eval_tensor(Image.open(io.BytesIO(cat_png)).convert("RGB"))[None].numpy().astype(np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    from_tensor = client.infer("tiny", [tensor], headers=auth()).as_numpy("probabilities")
    from_image = client.infer("tiny", [image_input(cat_png)], headers=auth()).as_numpy("probabilities")
    np.testing.assert_allclose(from_tensor, from_image, atol=1e-5)


def test_classification_gives_the_top_k_as_labels(client: triton.InferenceServerClient, cat_png: bytes) -> None:
    outputs = [triton.InferRequestedOutput("probabilities", class_count=3)]
    result = client.infer("tiny", [image_input(cat_png)], outputs=outputs, headers=auth())
    top = result.as_numpy("probabilities")
    assert top.shape == (1, 3)
    parsed = [entry.decode().split(":", 2) for entry in top[0]]
    scores = [float(score) for score, _, _ in parsed]
    assert scores == sorted(scores, reverse=True)
    assert all(label == f"class {index}" for _, index, label in parsed)
    full = client.infer("tiny", [image_input(cat_png)], headers=auth()).as_numpy("probabilities")[0]
    assert [int(index) for _, index, _ in parsed] == list(np.argsort(-full, kind="stable")[:3])


def test_the_explainer_serves_v1s_heatmaps_as_tensors(client: triton.InferenceServerClient, url: str, cat_png: bytes) -> None:
    parameters = {"classes": "3,5", "max_channels": 8}
    result = client.infer("tiny.scorecam", [image_input(cat_png, cat_png)], parameters=parameters, headers=auth())
    heatmap = result.as_numpy("heatmap")
    width, height = Image.open(io.BytesIO(cat_png)).size
    assert heatmap.shape == (2, 2, height, width) and heatmap.dtype == np.float32
    assert result.as_numpy("class_index").tolist() == [[3, 5], [3, 5]]
    data = {"classes": "3,5", "max_channels": "8", "outputs": "raw"}
    body = httpx.post(f"{url}/v1/explain", files={"image": ("i.png", cat_png)}, data=data, headers=auth()).json()
    for k, explanation in enumerate(body["explanations"]):
        np.testing.assert_allclose(heatmap[0, k], decode_raw(explanation["raw"]), atol=1e-6)
        assert result.as_numpy("score")[0, k] == pytest.approx(explanation["score"], abs=1e-6)
    np.testing.assert_allclose(heatmap[0], heatmap[1], atol=1e-6)


def test_v2_and_v1_predictions_share_a_batch(
    client: triton.InferenceServerClient, app: FastAPI, url: str, cat_png: bytes, gate: Gate
) -> None:
    queue, recorded = app.state.service.queue, batch_log(app)
    predict = lambda: httpx.post(f"{url}/v1/predict", files={"image": ("i.png", cat_png)}, headers=auth(), timeout=60)
    with ThreadPoolExecutor(3) as pool:
        gate.close()
        held = pool.submit(predict)
        wait_until(gate.entered.is_set, what="the worker to hold a prediction")
        v2 = pool.submit(client.infer, "tiny", [image_input(cat_png, cat_png)], headers=auth())
        v1 = pool.submit(predict)
        wait_until(lambda: queue.depth() == 4, what="one /v1 and two /v2 predictions queued behind it")
        gate.open()
        assert held.result().status_code == 200 and v1.result().status_code == 200
        assert v2.result().as_numpy("probabilities").shape == (2, NUM_CLASSES)
    batches = [r for r in recorded.history() if r.kind == "predict"]
    assert max(r.size for r in batches) == 3, batches


def raw_infer(url: str, model: str, body: dict[str, object], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{model}/infer", json=body, headers=headers or auth(), timeout=30)


def png_input(png: bytes, name: str = "image", datatype: str = "BYTES") -> dict[str, object]:
    return {"name": name, "shape": [1], "datatype": datatype, "data": [base64.b64encode(png).decode()]}


@pytest.mark.parametrize(
    ("model", "body", "status", "hint"),
    [
        ("resnet", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, 404, "tiny.scorecam"),
        ("tiny", {"inputs": []}, 422, "inputs"),
        ("tiny", {"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, 422, "'image' or 'input'"),
        (
            "tiny",
            {"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [0.0] * 12}]},
            422,
            "[N, 3, 32, 32]",
        ),
        ("tiny", {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [0.0]}]}, 422, "needs 3 elements"),
        ("tiny", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["bm90IGFuIGltYWdl"]}]}, 422, "image"),
        ("tiny", {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]}, 422, "binary_data_size"),
        (
            "tiny.scorecam",
            {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}], "parameters": {"colour": "red"}},
            422,
            "unknown parameter",
        ),
    ],
    ids=[
        "unknown-model",
        "no-inputs",
        "wrong-input",
        "wrong-shape",
        "data-count",
        "not-an-image",
        "no-data",
        "unknown-parameter",
    ],
)
def test_errors_have_the_protocols_shape_and_v1s_status(
    url: str, model: str, body: dict[str, object], status: int, hint: str
) -> None:
    response = raw_infer(url, model, body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)
    assert hint in response.json()["error"]


@pytest.mark.parametrize(
    ("outputs", "hint"),
    [
        ([{"name": "logits"}], "unknown output"),
        ([{"name": "probabilities", "parameters": {"classification": 0}}], "classification"),
    ],
)
def test_bad_outputs_are_422(url: str, cat_png: bytes, outputs: list[dict[str, object]], hint: str) -> None:
    response = raw_infer(url, "tiny", {"inputs": [png_input(cat_png)], "outputs": outputs})
    assert response.status_code == 422 and hint in response.json()["error"]


def test_tritonclient_sees_the_status_and_message(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("tiny", [image_input(b"not an image")], headers=auth())
    assert info.value.status() == "422" and "image" in info.value.message()


def test_the_api_key_guards_all_but_the_probes(url: str) -> None:
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    for path in ("/v2", "/v2/models/tiny", "/v2/models/tiny/ready"):
        response = httpx.get(f"{url}{path}")
        assert response.status_code == 401 and set(response.json()) == {"error"}, path
    assert httpx.get(f"{url}/v2/models/tiny/versions/9.9", headers=auth()).status_code == 404


def test_a_tensor_with_nan_is_refused(client: triton.InferenceServerClient) -> None:
    x = np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    x[0, 1, 2, 3] = np.nan
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # binary: NaN cannot travel in JSON
    with pytest.raises(InferenceServerException) as info:
        client.infer("tiny", [tensor], headers=auth())
    assert info.value.status() == "422" and "NaN" in info.value.message()


def test_versioned_paths_take_tritons_version_1(client: triton.InferenceServerClient, cat_png: bytes) -> None:
    result = client.infer("tiny", [image_input(cat_png)], model_version="1", headers=auth())
    assert result.as_numpy("probabilities").shape == (1, NUM_CLASSES)
    assert client.is_model_ready("tiny", model_version="1", headers=auth())
    assert client.is_model_ready("tiny.scorecam", model_version="1", headers=auth())
    assert not client.is_model_ready("tiny", model_version=VERSION, headers=auth())  # the service's version is not a model's
    with pytest.raises(InferenceServerException) as info:
        client.infer("tiny", [image_input(cat_png)], model_version="2", headers=auth())
    assert info.value.status() == "404" and "tiny version 1" in info.value.message()


def test_when_one_image_is_refused_the_others_leave_the_queue(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app(max_queue_requests=1)
    queue = app.state.service.queue
    with uvicorn_thread(app) as base:
        gate.close()  # the first image's forward waits in the worker; the second finds the queue full
        encoded = base64.b64encode(cat_png).decode()
        two = {"name": "image", "shape": [2], "datatype": "BYTES", "data": [encoded, encoded]}
        response = raw_infer(base, "tiny", {"inputs": [two]})
        gate.open()
        wait_until(lambda: queue.depth() == 0, what="the first image's request to leave")
    assert response.status_code == 503 and "Retry-After" in response.headers, response.text
    assert set(response.json()) == {"error"} and "queue" in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v2/models/.scorecam"), ("GET", "/v2/models/.scorecam/ready"), ("POST", "/v2/models/.scorecam/infer")],
)
def test_an_explainer_without_a_base_name_is_unknown(url: str, cat_png: bytes, method: str, path: str) -> None:
    """As /v1/models/.scorecam: the empty name must not fall through to the default model."""
    body = {"inputs": [png_input(cat_png)]} if method == "POST" else None
    response = httpx.request(method, f"{url}{path}", json=body, headers=auth(), timeout=30)
    assert response.status_code == 404, response.text
    assert set(response.json()) == {"error"} and "unknown model '.scorecam'" in response.json()["error"]


@pytest.mark.parametrize("parameter", ["partial_maps", "partial_maps_every", "metrics", "model"])
def test_explainer_parameters_are_only_those_a_tensor_answer_honours(
    client: triton.InferenceServerClient, url: str, cat_png: bytes, parameter: str
) -> None:
    """Partial maps need /v1's event stream, metrics its JSON, and the model is in the path."""
    advertised = client.get_model_metadata("tiny.scorecam", headers=auth())["parameters"]["options"].split(",")
    assert parameter not in advertised
    assert set(advertised) == {"method", "classes", "top_k", "layer", "precision", "weighting", "max_channels", "crop"}
    value = {"partial_maps": True, "partial_maps_every": 0.5, "metrics": True, "model": "tiny"}[parameter]
    body = {"inputs": [png_input(cat_png)], "parameters": {"max_channels": 4, parameter: value}}
    response = raw_infer(url, "tiny.scorecam", body)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(f"unknown parameter '{parameter}'")


def published_view(png: bytes, parameters: dict[str, object]) -> np.ndarray:
    """The FP32 input [1, 3, S, S] made from the model metadata alone, as a Triton user would."""
    size, resize = int(str(parameters["input_size"])), int(str(parameters["resize_size"]))
    image = Image.open(io.BytesIO(png)).convert("RGB")
    scale = resize / min(image.size)
    wide = (resize, int(image.height * scale)) if image.width <= image.height else (int(image.width * scale), resize)
    image = image.resize(
        wide, {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[str(parameters["interpolation"])]
    )
    left, top = round((wide[0] - size) / 2), round((wide[1] - size) / 2)
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    mean, std = (np.array([float(v) for v in str(parameters[k]).split(",")], dtype=np.float32) for k in ("mean", "std"))
    assert parameters["layout"] == "NCHW"
    return ((pixels - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)


def test_the_published_preprocessing_reproduces_the_image_answer(client: triton.InferenceServerClient, cat_png: bytes) -> None:
    parameters = client.get_model_metadata("tiny", headers=auth())["parameters"]
    assert (parameters["resize_size"], parameters["interpolation"], parameters["mean"]) == (36, "bilinear", "0.485,0.456,0.406")
    tensor = triton.InferInput("input", [1, 3, INPUT_SIZE, INPUT_SIZE], "FP32")
    tensor.set_data_from_numpy(published_view(cat_png, parameters))
    from_tensor = client.infer("tiny", [tensor], headers=auth()).as_numpy("probabilities")
    from_image = client.infer("tiny", [image_input(cat_png)], headers=auth()).as_numpy("probabilities")
    np.testing.assert_allclose(from_tensor, from_image, atol=1e-5)


def test_model_config_has_tritons_shape(client: triton.InferenceServerClient, app: FastAPI) -> None:
    config = client.get_model_config("tiny", headers=auth())
    assert config == client.get_model_config("tiny", model_version="1", headers=auth())
    assert config["max_batch_size"] == app.state.settings.max_batch_size and "dynamic_batching" in config
    assert [(t["name"], t["data_type"], t["dims"], t["format"], t["optional"]) for t in config["input"]] == [
        ("image", "TYPE_STRING", [1], "FORMAT_NONE", True),
        ("input", "TYPE_FP32", [3, INPUT_SIZE, INPUT_SIZE], "FORMAT_NCHW", True),
    ]
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [NUM_CLASSES]}]
    assert config["parameters"]["std"] == {"string_value": "0.229,0.224,0.225"}
    explainer = client.get_model_config("tiny.scorecam", headers=auth())
    assert [t["name"] for t in explainer["output"]] == ["heatmap", "class_index", "score"]
    assert [t["optional"] for t in explainer["input"]] == [False]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("tiny", model_version="2", headers=auth())
    assert info.value.status() == "404"


def test_the_repository_index_lists_each_model_and_explainer(client: triton.InferenceServerClient, url: str) -> None:
    index = client.get_model_repository_index(headers=auth())
    assert index == [
        {"name": "tiny", "version": "1", "state": "READY", "reason": ""},
        {"name": "tiny.scorecam", "version": "1", "state": "READY", "reason": ""},
    ]
    assert httpx.post(f"{url}/v2/repository/index", json={"ready": True}, headers=auth()).json() == index
    refused = httpx.post(f"{url}/v2/repository/index", json={"readdy": True}, headers=auth())
    assert refused.status_code == 422 and set(refused.json()) == {"error"}
    assert httpx.post(f"{url}/v2/repository/index").status_code == 401


def test_statistics_count_requests_images_and_batches(client: triton.InferenceServerClient, cat_png: bytes) -> None:
    def stats() -> Any:
        [entry] = client.get_inference_statistics("tiny", headers=auth())["model_stats"]
        return entry

    before = stats()
    client.infer("tiny", [image_input(cat_png, cat_png)], headers=auth())
    with pytest.raises(InferenceServerException):
        client.infer("tiny", [image_input(b"not an image")], headers=auth())
    after = stats()
    inference, previous = after["inference_stats"], before["inference_stats"]
    assert (after["name"], after["version"]) == ("tiny", "1")
    assert after["inference_count"] == before["inference_count"] + 2  # images, not requests
    assert inference["success"]["count"] == previous["success"]["count"] + 1
    assert inference["fail"]["count"] == previous["fail"]["count"] + 1
    assert inference["success"]["ns"] > previous["success"]["ns"]
    assert after["execution_count"] > before["execution_count"]
    assert inference["compute_infer"]["count"] == after["execution_count"]
    assert sum(b["compute_infer"]["count"] for b in after["batch_stats"]) == after["execution_count"]
    every = client.get_inference_statistics(headers=auth())["model_stats"]
    assert [s["name"] for s in every] == ["tiny", "tiny.scorecam"]
    assert client.get_inference_statistics("tiny", "1", headers=auth())["model_stats"][0]["name"] == "tiny"


def test_the_explainer_can_explain_predicts_exact_view(client: triton.InferenceServerClient, url: str, cat_png: bytes) -> None:
    """crop=center: the scores are /v1/predict's, each map covers its image's centre crop at the input size."""
    small = image_bytes(Image.open(io.BytesIO(cat_png)).resize((40, 30)))
    parameters = {"classes": "3", "max_channels": 4, "crop": "center"}
    result = client.infer("tiny.scorecam", [image_input(cat_png, small)], parameters=parameters, headers=auth())
    assert result.as_numpy("heatmap").shape == (2, 1, INPUT_SIZE, INPUT_SIZE)  # two sizes are fine: the maps share one
    scores = result.as_numpy("score")[:, 0]
    assert scores.tolist() == pytest.approx([v1_scores(url, cat_png)[3], v1_scores(url, small)[3]], abs=1e-5)


# ---- KServe's Python SDK (kserve.InferenceRESTClient), against the same live server ----------------------------


def kserve_call(work: Callable[[kserve.InferenceRESTClient], Awaitable[T]]) -> T:
    """Run ``work`` with the SDK's async REST client for the Open Inference Protocol (v2)."""

    async def run() -> T:
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=60))
        try:
            return await work(client)
        finally:
            await client.close()

    return asyncio.run(run())


def kserve_image(*files: bytes, binary: bool) -> kserve.InferInput:
    tensor = kserve.InferInput("image", [len(files)], "BYTES")
    values = files if binary else tuple(base64.b64encode(f).decode() for f in files)
    tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-base64"])
def test_kserves_sdk_infers_as_tritonclient_does(url: str, cat_png: bytes, binary: bool) -> None:
    """The SDK sends ``model_name`` (and an ``id``) in the body: taken, and the path names the model."""
    request = kserve.InferRequest(model_name="tiny", infer_inputs=[kserve_image(cat_png, binary=binary)], request_id="r-1")

    async def work(client: kserve.InferenceRESTClient) -> tuple[bool, bool, kserve.InferResponse]:
        ready = await client.is_server_ready(url, headers=auth()) and await client.is_model_ready(url, "tiny", headers=auth())
        explainer = await client.is_model_ready(url, "tiny.scorecam", headers=auth())
        return ready, explainer, await client.infer(url, request, model_name="tiny", headers=auth())

    ready, explainer, response = kserve_call(work)
    assert ready and explainer
    assert (response.model_name, response.id) == ("tiny", "r-1")  # the SDK does not read model_version back
    probabilities = response.outputs[0].as_numpy()
    assert probabilities.shape == (1, NUM_CLASSES)
    np.testing.assert_allclose(probabilities[0], v1_scores(url, cat_png), atol=1e-5)


def test_kserves_sdk_sends_tensors_and_explainer_parameters(url: str, cat_png: bytes) -> None:
    x = np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    tensor = kserve.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    classify = kserve.InferRequest(model_name="tiny", infer_inputs=[tensor])
    explain = kserve.InferRequest(
        model_name="tiny.scorecam",
        infer_inputs=[kserve_image(cat_png, binary=True)],
        parameters={"classes": "3", "max_channels": 4, "crop": "center"},
    )

    async def work(client: kserve.InferenceRESTClient) -> list[kserve.InferResponse]:
        return [
            await client.infer(url, classify, model_name="tiny", headers=auth()),
            await client.infer(url, explain, model_name="tiny.scorecam", headers=auth()),
        ]

    classified, explained = kserve_call(work)
    assert classified.outputs[0].as_numpy().shape == (1, NUM_CLASSES)
    outputs = {o.name: o.as_numpy() for o in explained.outputs}
    assert outputs["heatmap"].shape == (1, 1, INPUT_SIZE, INPUT_SIZE) and outputs["class_index"].tolist() == [[3]]
    assert outputs["score"][0, 0] == pytest.approx(v1_scores(url, cat_png)[3], abs=1e-5)


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"model_name": "tiny", "model_version": "1", "id": "a"}, 200),
        ({"model_name": None}, 200),  # the SDK's InferRequest(model_name=None)
        ({"model_name": "another", "model_version": "7"}, 200),  # the path decides, as on KServe's and Triton's servers
        ({"modelname": "tiny"}, 422),
        ({"input": []}, 422),
        ({"model_name": 3}, 422),
    ],
    ids=["sdk-keys", "null-name", "path-decides", "typo", "input-not-inputs", "name-not-a-string"],
)
def test_keys_the_protocols_clients_send_are_taken_and_others_refused(
    url: str, cat_png: bytes, extra: dict[str, object], status: int
) -> None:
    response = raw_infer(url, "tiny", {"inputs": [png_input(cat_png)], **extra})
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["model_name"] == "tiny"
    else:
        assert set(response.json()) == {"error"} and next(iter(k for k in extra)) in response.json()["error"]
