"""The Open Inference Protocol (/v2) through the real tritonclient[http] against a real uvicorn.

No code of ours sits between the test and the server: InferenceServerClient, InferInput and
InferRequestedOutput build the requests (binary tensors by default, JSON where asked) and read
the answers, so what passes here is what Triton and KServe users run.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi import FastAPI
from PIL import Image
from tritonclient.utils import InferenceServerException

from app.imaging.render import decode_raw
from app.version import VERSION
from tests.batch_log import batch_log

from .conftest import image_bytes, tiny_app, wait_until
from .live import uvicorn_thread
from .tinynet import INPUT_SIZE, NUM_CLASSES, Gate

KEY = "v2-tests-key-123"


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
    assert classifier["versions"] == [VERSION]
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in classifier["inputs"]} == {
        ("image", "BYTES", (-1,)),
        ("input", "FP32", (-1, 3, INPUT_SIZE, INPUT_SIZE)),
    }
    assert classifier["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, NUM_CLASSES]}]
    explainer = client.get_model_metadata("tiny.scorecam", model_version=VERSION, headers=auth())
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
    assert result.get_response()["model_version"] == VERSION


def test_a_preprocessed_tensor_matches_its_image(client: triton.InferenceServerClient, app: FastAPI, cat_png: bytes) -> None:
    preprocessing = app.state.service.catalog.get("tiny").preprocessing
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


def test_versioned_paths_take_the_services_version(client: triton.InferenceServerClient, cat_png: bytes) -> None:
    result = client.infer("tiny", [image_input(cat_png)], model_version=VERSION, headers=auth())
    assert result.as_numpy("probabilities").shape == (1, NUM_CLASSES)
    assert client.is_model_ready("tiny", model_version=VERSION, headers=auth())
    with pytest.raises(InferenceServerException) as info:
        client.infer("tiny", [image_input(cat_png)], model_version="0.0.1", headers=auth())
    assert info.value.status() == "404" and VERSION in info.value.message()


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
    assert set(advertised) == {"method", "classes", "top_k", "layer", "precision", "weighting", "max_channels"}
    value = {"partial_maps": True, "partial_maps_every": 0.5, "metrics": True, "model": "tiny"}[parameter]
    body = {"inputs": [png_input(cat_png)], "parameters": {"max_channels": 4, parameter: value}}
    response = raw_infer(url, "tiny.scorecam", body)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(f"unknown parameter '{parameter}'")
