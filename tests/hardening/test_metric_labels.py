"""Label values of /metrics never come from the request verbatim: invented HTTP methods (the
request line is the client's text) all count as ``other`` instead of adding series."""

from __future__ import annotations

import pytest

from tests.api.conftest import serving, tiny_app

pytestmark = pytest.mark.anyio
INVENTED = 60


async def test_invented_methods_share_one_label_value() -> None:
    async with serving(tiny_app()) as client:
        before = await client.get("/metrics")
        for i in range(INVENTED):
            await client.request(f"BREW{i}", "/v1/models")
        await client.request("GET", "/v1/models")
        after = await client.get("/metrics")
    series = lambda text: {l for l in text.splitlines() if l.startswith("scorecam_requests_total{")}
    added = series(after.text) - series(before.text)
    assert not any("BREW" in line for line in after.text.splitlines())
    assert 'scorecam_requests_total{endpoint="/v1/models",method="other",model="none",status="405"} 60.0' in after.text
    assert len(added) <= 3  # other/405, GET/200 on /v1/models, GET/200 on /metrics
