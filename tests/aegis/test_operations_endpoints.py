"""/healthz, /readyz and /metrics against real servers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.test import override_settings

from aegis.embedded import EmbeddedServices
from aegis.observability.metrics import HTTP_REQUESTS
from tests.factories import UserFactory


@pytest.mark.django_db
def test_healthz_answers_without_touching_dependencies(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_ok_when_every_dependency_answers(client):
    client.force_login(UserFactory(role="operator"))
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["down"] == []
    assert {name: check["status"] for name, check in body["checks"].items()} == {
        "postgresql": "ok",
        "nats": "ok",
        "redis": "ok",
    }
    assert body["checks"]["postgresql"]["detail"].startswith("PostgreSQL 16")


@pytest.mark.django_db
def test_readyz_tells_anonymous_callers_only_the_status(client):
    body = client.get("/readyz").json()
    assert body["checks"] == {
        "postgresql": {"status": "ok"},
        "nats": {"status": "ok"},
        "redis": {"status": "ok"},
    }
    assert "celery" not in body


@pytest.mark.django_db
@override_settings(METRICS_TOKEN="s3cret-scrape-token")
def test_readyz_gives_details_to_the_metrics_token(client):
    body = client.get("/readyz", HTTP_AUTHORIZATION="Bearer s3cret-scrape-token").json()
    assert body["checks"]["redis"]["detail"].startswith("Redis ")
    assert "celery" in body


@pytest.mark.slow
@pytest.mark.django_db
def test_readyz_answers_503_naming_nats_when_nats_is_stopped(client):
    data_dir = Path(tempfile.mkdtemp(prefix="aegis-readyz-"))
    own_nats = EmbeddedServices(data_dir)
    client.force_login(UserFactory(role="supervisor"))
    try:
        url = own_nats.acquire(["nats"])["nats"]
        with override_settings(NATS_URL=url):
            assert client.get("/readyz").status_code == 200
            own_nats.release()
            response = client.get("/readyz")
    finally:
        own_nats.stop_all()
        shutil.rmtree(data_dir, ignore_errors=True)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["down"] == ["nats"]
    assert body["checks"]["nats"]["status"] == "down"
    assert body["checks"]["nats"]["detail"]
    assert body["checks"]["postgresql"]["status"] == "ok"
    assert body["checks"]["redis"]["status"] == "ok"


@pytest.mark.django_db
def test_readyz_answers_503_naming_redis_when_redis_is_unreachable(client):
    from aegis.embedded.servers import free_port

    client.force_login(UserFactory(role="supervisor"))
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["down"] == ["redis"]
    assert "Connection refused" in response.json()["checks"]["redis"]["detail"]


@pytest.mark.django_db
def test_metrics_counts_requests_by_route(client):
    before = HTTP_REQUESTS.labels("healthz", "GET", "200")._value.get()
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'aegis_http_requests_total{method="GET",route="healthz",status="200"}' in text
    assert HTTP_REQUESTS.labels("healthz", "GET", "200")._value.get() == before + 1


def test_metrics_sums_samples_written_by_other_processes(client):
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from aegis.observability.metrics import CELERY_TASKS;"
            "CELERY_TASKS.labels('probe.other_process', 'success').inc(7)",
        ],
        check=True,
    )
    text = client.get("/metrics").content.decode()
    assert 'aegis_celery_tasks_total{outcome="success",task="probe.other_process"} 7.0' in text


@override_settings(METRICS_TOKEN="s3cret-scrape-token")
def test_metrics_requires_the_bearer_token_when_one_is_configured(client):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    authorised = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scrape-token")
    assert authorised.status_code == 200


def test_every_response_carries_a_request_id(client):
    response = client.get("/healthz")
    assert len(response["X-Request-ID"]) == 36
    echoed = client.get("/healthz", HTTP_X_REQUEST_ID="plc-gateway-42")
    assert echoed["X-Request-ID"] == "plc-gateway-42"


def test_operations_endpoints_refuse_writes(client):
    assert client.post("/readyz").status_code in (403, 405)
    assert client.post("/healthz").status_code in (403, 405)


def test_metrics_files_are_named_per_host_and_process(client, settings):
    import os
    import socket
    from pathlib import Path

    client.get("/healthz")
    host = socket.gethostname().replace("_", "-")
    names = {path.name for path in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).iterdir()}
    assert f"counter_{host}-{os.getpid()}.db" in names


def test_metrics_label_unknown_methods_as_other(client):
    client.generic("BREW", "/healthz")
    text = client.get("/metrics").content.decode()
    assert 'method="other",route="healthz"' in text
    assert "BREW" not in text
