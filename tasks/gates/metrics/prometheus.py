"""The two read endpoints of Prometheus the metrics gate uses; an answer it cannot use is ``Inconclusive``."""

from __future__ import annotations

import httpx

from tasks.core.errors import Inconclusive


class Prometheus:
    """``/api/v1/query`` (now, or at a past instant for the baseline) and ``/api/v1/rules``."""

    def __init__(self, url: str, timeout_s: float = 10):
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s)

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict, float]]:
        params: dict[str, str] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        response = self.client.get("/api/v1/query", params=params)
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if body.get("status") != "success":
            error = f"{body.get('errorType', response.status_code)}: {body.get('error', response.text[:200])}"
            if response.status_code == 400:  # bad PromQL will not get better
                raise ValueError(f"Prometheus rejected the query: {error}")
            raise Inconclusive(f"Prometheus error {error}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r.get("metric", {}), float(r["value"][1])) for r in data["result"]]

    def alert_rules(self) -> set[str]:
        body = self.client.get("/api/v1/rules", params={"type": "alert"}).json()
        return {r["name"] for g in body.get("data", {}).get("groups", []) for r in g.get("rules", [])}

    def close(self) -> None:
        self.client.close()


def labels(metric: dict) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(metric.items()) if k != "__name__") + "}"
