"""``HeadQClient``: a small synchronous REST client of the HeadQ Lab API (httpx), answering with the
API's own pydantic models. The ``headq`` CLI and the dashboard use it.

    with HeadQClient("http://127.0.0.1:8000", token=None) as api:
        job = api.submit({"kind": "calibration", "model": {"id": "builtin:smollm2-135m"}})
        api.get(job.id).status
"""

from __future__ import annotations

import builtins
from typing import Any, Literal, overload

import httpx

from headq_spec.api import Job, JobItems, JobPage
from headq_spec.jobs import JobSpec

API_PREFIX = "/api/v1"
_JSON = {"Content-Type": "application/json"}  # a tokenless server takes writes that say it


class HeadQAPIError(RuntimeError):
    """The API answered with an error status; ``status_code`` and the API's ``detail`` message."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code, self.detail = status_code, detail


class HeadQClient:
    """Talks to one server. ``base_url`` is the server root or its ``/api/v1`` URL; ``token`` is sent
    as a bearer token when given."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        root = base_url.rstrip("/")
        root = root if root.endswith(API_PREFIX) else root + API_PREFIX
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=root, headers=headers, timeout=timeout)

    def __enter__(self) -> HeadQClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.is_error:
            try:
                detail = str(response.json().get("detail", response.text))
            except ValueError:
                detail = response.text
            raise HeadQAPIError(response.status_code, detail)
        return response

    def submit(self, spec: JobSpec | dict[str, Any], idempotency_key: str | None = None) -> Job:
        """Queue a job; the same ``idempotency_key`` and spec return the job created the first time."""
        body = spec.model_dump(mode="json") if isinstance(spec, JobSpec) else spec
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Job.model_validate(self._request("POST", "/jobs", json=body, headers=headers).json())

    def get(self, job_id: str) -> Job:
        """One job."""
        return Job.model_validate(self._request("GET", f"/jobs/{job_id}").json())

    def list(self, status: str | None = None, kind: str | None = None, model: str | None = None,
             limit: int = 50, offset: int = 0) -> JobPage:
        """One page of jobs, newest first, and the total number of matches."""
        params = {k: v for k, v in {"status": status, "kind": kind, "model": model}.items() if v is not None}
        response = self._request("GET", "/jobs", params={**params, "limit": limit, "offset": offset})
        return JobPage.model_validate(response.json())

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job, or ask a running one to stop."""
        response = self._request("POST", f"/jobs/{job_id}/cancel", headers=_JSON)  # see app.api.security
        return Job.model_validate(response.json())

    @overload
    def results(self, job_id: str, format: Literal["json"] = "json") -> dict[str, Any]: ...

    @overload
    def results(self, job_id: str, format: Literal["csv", "parquet"]) -> bytes: ...

    def results(self, job_id: str,
                format: Literal["json", "csv", "parquet"] = "json") -> dict[str, Any] | bytes:
        """The results document (``json``), or the head rows as CSV / Parquet bytes."""
        response = self._request("GET", f"/jobs/{job_id}/results", params={"format": format})
        return response.json() if format == "json" else response.content

    def calibrations(self, model: str | None = None) -> builtins.list[Job]:
        """Succeeded calibration jobs, optionally of one model."""
        params = {"model": model} if model else {}
        return JobItems.model_validate(self._request("GET", "/calibrations", params=params).json()).items

    def import_results(self, document: dict[str, Any]) -> builtins.list[Job]:
        """Store a finished results document (or a bundle ``{"jobs": [...]}``) as succeeded jobs."""
        return JobItems.model_validate(self._request("POST", "/results/import", json=document).json()).items

    def health(self) -> bool:
        """Whether the server answers ``/health``."""
        return self._request("GET", "/health").json()["status"] == "ok"

    def ready(self) -> tuple[bool, str | None]:
        """``(ready, detail)`` from ``/ready`` (a 503 answers False with the reason)."""
        response = self._http.get("/ready")
        body = response.json()
        return response.status_code == 200, body.get("detail")
