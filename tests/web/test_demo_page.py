"""The demo page end to end: a real headless Chromium against the real app on a loopback port.

The page is plain HTML/JS served by the app at ``/``; these tests use it as a person would
(pick a file, press Explain) and wait on what appears on the page, never on a timer.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED_SAMPLES, skimage_photo

# Seconds a person would wait at most; Playwright polls the page until then (no sleeps).
EXPLAIN_TIMEOUT_MS = 90_000
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """A photo to upload and the labels accepted as its top prediction.

    The shared ImageNet tench when ../shared is present (the embedded model is sure of it),
    else scikit-image's cat, so a fresh clone still runs the test.
    """
    tench = SHARED_SAMPLES / "n01440764_tench.JPEG"
    if tench.is_file():
        return tench, {"tench"}
    path = tmp_path_factory.mktemp("photos") / "chelsea.png"
    skimage_photo("chelsea.png").save(path)
    return path, CAT_CLASSES


def unexpected_failures(page: Any) -> list[tuple[str, int]]:
    """Failed requests other than the optional labels endpoint (404 until the API has one)."""
    return [(path, status) for path, status in page.failed_requests if not path.endswith("/labels")]


def open_page(page: Any, url: str) -> None:
    page.goto(url)
    # The model list arrives from GET /v1/models; the page is usable once it is filled.
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")


def test_explain_shows_predictions_progress_and_overlays(
    page: Any, demo_url: str, photo: tuple[Path, set[str]], artifact_dir: Path
) -> None:
    path, expected = photo
    open_page(page, demo_url)
    assert page.locator("#model").input_value() == "efficientnet_lite0"
    page.set_input_files("#file", str(path))
    page.locator("#top-k").fill("1")
    page.locator("#compare").check()
    page.locator("details summary").click()
    page.locator("#max-channels").fill("16")  # a few seconds on a shared CPU; the page passes it on
    page.locator("#explain").click()

    for method in ("scorecam", "gradcam"):
        page.wait_for_selector(f'figure.overlay[data-method="{method}"][data-ready="true"]', timeout=EXPLAIN_TIMEOUT_MS)
    assert page.console_errors == []
    assert unexpected_failures(page) == []
    assert page.locator("#error").is_hidden()

    predictions = page.locator("#predictions li")
    assert predictions.count() == 5
    top = predictions.first.locator(".label").inner_text()
    assert top in expected, f"top prediction {top!r}, expected one of {sorted(expected)}"
    assert predictions.first.locator(".score").inner_text().endswith("%")

    # The progress bar was fed by the event stream and ended full: 16 masks for Score-CAM.
    assert page.locator("#progress-bar").evaluate("bar => [bar.value, bar.max]") == [16, 16]
    assert page.locator("#progress-text").inner_text() == "done"

    # Each heatmap canvas has the uploaded image's size and holds colour, not an empty canvas.
    width, height = page.locator("#preview").evaluate("img => [img.naturalWidth, img.naturalHeight]")
    for canvas in page.locator("figure.overlay canvas").all():
        assert canvas.evaluate("c => [c.width, c.height]") == [width, height]
        assert canvas.evaluate(
            "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 === 0 && v > 128)"
        ), "the heatmap has no red anywhere: it was not drawn"

    # The opacity slider changes the overlay without a new request.
    slider = page.locator("#opacity")
    slider.fill("80")
    assert page.locator("figure.overlay canvas").first.evaluate("c => getComputedStyle(c).opacity") == "0.8"
    slider.fill("60")

    screenshot = artifact_dir / "demo-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"demo page screenshot: {screenshot}")


def test_api_errors_are_shown_in_plain_words(page: Any, demo_url: str, tmp_path: Path) -> None:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are not pixels")
    open_page(page, demo_url)
    assert page.locator("#progress").is_hidden()  # no bar before a run starts
    page.set_input_files("#file", str(not_an_image))
    page.locator("#explain").click()
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=EXPLAIN_TIMEOUT_MS)
    assert "does not look like an image" in error.inner_text()
    assert page.locator("#results").is_hidden()
    assert page.locator("#progress").is_hidden()  # cleared, not left at "starting…"
    assert page.locator("#progress-bar").evaluate("bar => bar.value") == 0


@pytest.fixture(scope="module")
def portrait(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A portrait photo (300 x 451): scikit-image's cat on its side."""
    path = tmp_path_factory.mktemp("photos") / "portrait.png"
    skimage_photo("chelsea.png").rotate(90, expand=True).save(path)
    return path


def box(locator: Any) -> dict[str, float]:
    return locator.evaluate("e => e.getBoundingClientRect().toJSON()")  # type: ignore[no-any-return]


def test_a_portrait_fits_the_column_and_a_new_photo_clears_the_results(
    page: Any, demo_url: str, portrait: Path, photo: tuple[Path, set[str]], artifact_dir: Path
) -> None:
    open_page(page, demo_url)
    page.set_input_files("#file", str(portrait))
    page.locator("#method").select_option("gradcam")  # the layout is the point here, not the method
    page.locator("#explain").click()
    page.locator('figure.overlay[data-ready="true"]').wait_for(timeout=EXPLAIN_TIMEOUT_MS)
    page.screenshot(path=str(artifact_dir / "demo-page-portrait.png"))

    # In the photo's own shape, within the results column and 75% of the window's height.
    stack, canvas, column = (
        box(page.locator("figure.overlay .stack")),
        box(page.locator("figure.overlay canvas")),
        box(page.locator("#results")),
    )
    assert stack == box(page.locator("figure.overlay img")) == canvas  # the heatmap covers the photo exactly
    assert stack["height"] <= 0.75 * page.viewport_size["height"] + 0.5
    assert column["left"] <= stack["left"] and stack["right"] <= column["right"]
    assert stack["width"] / stack["height"] == pytest.approx(300 / 451, abs=0.01)

    # A new photo: the last photo's predictions and heatmaps go, and so does the finished bar.
    page.set_input_files("#file", str(photo[0]))
    page.locator("#results").wait_for(state="hidden")
    assert page.locator("#explanations figure").count() == 0 and page.locator("#predictions li").count() == 0
    assert page.locator("#progress").is_hidden()
    assert page.console_errors == [] and unexpected_failures(page) == []


def drop_file(page: Any, path: Path) -> None:
    """Drag and drop ``path`` onto the drop zone, as a person dragging it from a file manager."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    transfer = page.evaluate_handle(
        """([name, data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            return transfer;
        }""",
        [path.name, data],
    )
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def test_a_dropped_image_and_a_picked_class_are_explained(page: Any, demo_url: str, photo: tuple[Path, set[str]]) -> None:
    path, _ = photo
    open_page(page, demo_url)
    drop_file(page, path)
    page.locator("#preview").wait_for(state="visible")
    page.locator("#method").select_option("gradcam")  # the class choice is the point here, not speed
    page.locator("#class").fill("1")  # goldfish, or whatever class 1 is: the page sends the index
    page.locator("#explain").click()
    figure = page.locator('figure.overlay[data-ready="true"]')
    figure.wait_for(timeout=EXPLAIN_TIMEOUT_MS)
    assert figure.get_attribute("data-class-index") == "1"
    assert page.locator("figure.overlay").count() == 1
