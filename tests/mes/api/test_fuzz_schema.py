"""Schemathesis fuzzes every operation of the live schema on a real daphne: no 5xx, ever."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mes.api.authentication import api_token_issue
from mes.demo import seed_demo_plant
from tests.factories import UserFactory
from tests.support import daphne

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

# Cases per operation in the fuzzing phase (the coverage phase adds its own boundary cases),
# sized to stay well under 90 s on two cores. Dig deeper locally with
# AEGIS_FUZZ_EXAMPLES=500 AEGIS_FUZZ_SEED=<n>; a failure prints the curl command reproducing it.
MAX_EXAMPLES = os.environ.get("AEGIS_FUZZ_EXAMPLES", "8")
SEED = os.environ.get("AEGIS_FUZZ_SEED", "20250304")
# Revoking the fuzzer's own token would turn every later case into a 401.
SPARED_OPERATIONS = ("api_token_revoke", "api_token_revoke_by_id")


def test_fuzzing_the_live_schema_finds_no_server_error(tmp_path):
    seed_demo_plant(today=dt.date(2025, 3, 4))
    _, secret = api_token_issue(user=UserFactory(role="admin"), name="schemathesis")
    excluded = [arg for op in SPARED_OPERATIONS for arg in ("--exclude-operation-id", op)]
    with daphne(
        AEGIS_API_THROTTLE_USER="1000000/min", AEGIS_API_THROTTLE_TOKEN="1000000/min"
    ) as base_url:
        started = time.monotonic()
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"),
                "run",
                f"{base_url}/api/v1/schema/",
                "--url",
                base_url,
                "--header",
                f"Authorization: Bearer {secret}",
                "--checks",
                "not_a_server_error",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                MAX_EXAMPLES,
                "--seed",
                SEED,
                "--workers",
                "2",
                "--generation-database",
                "none",
                "--request-timeout",
                "10",
                "--no-color",
                *excluded,
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        elapsed = time.monotonic() - started
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert re.search(r"\d+ generated, \d+ passed", run.stdout), report
    print(f"schemathesis: {elapsed:.1f} s\n{run.stdout[-1500:]}")
