"""The plant deployment files hold together: docker-compose.yml, .env.example, the Dockerfile,
deploy/nats/nats.conf and deploy/healthcheck.py.

`docker-compose config` proves the file is valid for Debian's docker-compose 1.29.2; the other
tests check what it cannot: that variables are documented, that every Aegis process runs the same
production image against healthy servers, that NATS fsyncs explicitly, that commands exist.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands

from aegis.embedded.servers import NatsServer, free_port
from tests.debian import require_packages
from tests.support import REPO, environment_without_aegis

COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
NATS_CONF = REPO / "deploy" / "nats" / "nats.conf"
HEALTHCHECK_SCRIPT = REPO / "deploy" / "healthcheck.py"
PROCFILE = REPO / "Procfile"

SERVERS = {"timescaledb", "nats", "redis"}
# Procfile processes for demo stacks only (they write simulated facts into the MES): in the
# `demo` profile, never started by a plain `up` in a plant.
DEMO_ONLY = {"simulator"}
DEMO_PROFILE = "demo"
PRODUCTION_SETTINGS = "aegis.settings.production"
METRICS_DIR = "/run/aegis-metrics"

# $$ is Compose's escaped dollar; ${NAME...} and $NAME are interpolated.
_DOLLAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<argument>.*))?")


# -- helpers --------------------------------------------------------------------------------


def interpolated_variables(text: str) -> set[str]:
    names = set()
    for match in _DOLLAR.finditer(text):
        if match["braced"] is not None:
            names.add(_BRACED.fullmatch(match["braced"])["name"])
        elif match["named"]:
            names.add(match["named"])
    return names


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's interpolation rules, enough to compute what a container's environment holds."""

    def replace(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return values.get(match["named"], "")
        expression = _BRACED.fullmatch(match["braced"])
        name, operator, argument = (
            expression["name"],
            expression["operator"],
            expression["argument"],
        )
        value = values.get(name)
        missing = value is None or (value == "" and operator and operator.startswith(":"))
        if operator in (":-", "-") and missing:
            return argument
        if operator in (":?", "?") and missing:
            raise ValueError(f"{name}: {argument}")
        return value or ""

    return _DOLLAR.sub(replace, text)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as docker-compose reads them (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        assert separator, f"{path.name}: not a KEY=value line: {line!r}"
        values[key.strip()] = value.strip()
    return values


def command_text(service: dict) -> str:
    command = service.get("command") or ""
    return command if isinstance(command, str) else " ".join(str(part) for part in command)


def environment_of(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {key: str(value) for key, value in environment.items()}


def volume_mounts(service: dict) -> dict[str, tuple[str, str]]:
    """Container path -> (source, mode) for the short volume syntax this file uses."""
    mounts = {}
    for entry in service.get("volumes") or []:
        source, target, *mode = entry.split(":")
        mounts[target] = (source, mode[0] if mode else "rw")
    return mounts


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue  # Docker drops comment lines, even inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def dockerfile_instruction(keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_instructions() if name == keyword]


def compose_environment() -> dict[str, str]:
    """No Aegis or Compose settings from this session: only .env may fill the file in."""
    return {
        key: value
        for key, value in environment_without_aegis().items()
        if not key.startswith(("COMPOSE_", "DOCKER_"))
    }


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def app_services(services) -> dict[str, dict]:
    """The Aegis processes: every service built from the repository's Dockerfile."""
    return {name: service for name, service in services.items() if "build" in service}


@pytest.fixture(scope="module")
def servers(services) -> dict[str, dict]:
    """PostgreSQL/TimescaleDB, NATS, Redis: every service run from a published image."""
    found = {name: service for name, service in services.items() if "build" not in service}
    assert found.keys() >= SERVERS
    return found


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


# -- docker-compose itself ------------------------------------------------------------------


def test_docker_compose_accepts_the_file_with_the_example_env(tmp_path):
    require_packages("docker-compose")  # Debian's: `config` validates without an engine
    binary = shutil.which("docker-compose")
    # env_file: .env must exist next to the compose file; copy rather than touch the checkout.
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(DOCKERFILE, tmp_path / "Dockerfile")
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")

    result = subprocess.run(
        [binary, "--env-file", ".env", "-f", "docker-compose.yml", "config", "-q"],
        cwd=tmp_path,
        env=compose_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    # Compose only warns about a variable that is neither in the environment nor in .env.
    assert "is not set" not in result.stderr, result.stderr


def test_compose_file_has_no_version_key(compose):
    # Compose v2 warns that it is obsolete; 1.29 reads the file as the Compose Specification.
    assert "version" not in compose


# -- .env.example ---------------------------------------------------------------------------


def test_every_interpolated_variable_is_set_in_env_example(example_env):
    used = interpolated_variables(COMPOSE_FILE.read_text())

    assert used, "no ${VARIABLE} found: the parser is broken"
    assert sorted(used - example_env.keys()) == []


def test_env_example_documents_the_settings_operators_must_choose(example_env):
    expected = {
        "AEGIS_SECRET_KEY",
        "AEGIS_ALLOWED_HOSTS",
        "AEGIS_CSRF_TRUSTED_ORIGINS",
        "AEGIS_POSTGRES_PASSWORD",
        "AEGIS_NATS_PASSWORD",
        "AEGIS_REDIS_PASSWORD",
        "AEGIS_NATS_REPLICAS",
        "AEGIS_TELEMETRY_RETENTION_HOURS",
        "AEGIS_LOG_LEVEL",
        "AEGIS_LOG_FORMAT",
        "AEGIS_METRICS_TOKEN",
        "AEGIS_PORT",
    }

    assert sorted(expected - example_env.keys()) == []


def test_env_example_holds_placeholders_not_secrets(example_env):
    secret_names = [
        name
        for name in example_env
        if any(word in name for word in ("PASSWORD", "SECRET", "TOKEN", "KEY"))
    ]

    assert "AEGIS_SECRET_KEY" in secret_names
    for name in secret_names:
        assert example_env[name].startswith("change-me"), f"{name} must be a change-me placeholder"


def _app_environment(service: dict, example_env: dict[str, str]) -> dict[str, str]:
    """What the container sees: .env (env_file), overridden by the interpolated environment."""
    environment = dict(example_env)
    for key, value in environment_of(service).items():
        environment[key] = interpolate(value, example_env)
    return environment


def _django_setup(environment: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('configured')"],
        cwd=REPO,
        env=environment_without_aegis(**environment),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_refuse_the_example_secret_key_and_accept_a_real_one(
    app_services, example_env
):
    environment = _app_environment(app_services["web"], example_env)
    # The metrics directory only exists inside the containers.
    environment.pop("PROMETHEUS_MULTIPROC_DIR")

    refused = _django_setup(environment)
    # Every change-me placeholder replaced, as the deployment guide asks.
    filled = {
        key: re.sub(r"change-me[\w-]*", lambda _: secrets.token_hex(16), value)
        for key, value in environment.items()
    }
    accepted = _django_setup({**filled, "AEGIS_SECRET_KEY": secrets.token_urlsafe(50)})

    assert refused.returncode != 0
    assert "change-me placeholder" in refused.stderr, refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip() == "configured"


# -- Aegis services -------------------------------------------------------------------------


def test_app_services_are_the_procfile_processes_plus_migrate(app_services):
    procfile_processes = {
        line.partition(":")[0].strip()
        for line in PROCFILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }

    assert procfile_processes <= app_services.keys()
    assert {"migrate", "web", "worker", "beat", "relay", "ingest", "scorer"} <= app_services.keys()


def test_app_services_share_one_image_and_production_settings(app_services):
    for name, service in app_services.items():
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context")
        assert context in (".", "./"), f"{name} is not built from the repository's Dockerfile"
        assert service["image"] == "aegis:latest", name
        env_files = service["env_file"]
        assert ".env" in ([env_files] if isinstance(env_files, str) else env_files), name
        assert environment_of(service)["DJANGO_SETTINGS_MODULE"] == PRODUCTION_SETTINGS, name


def test_app_services_reach_the_compose_servers_with_their_passwords(app_services, services):
    timescaledb = environment_of(services["timescaledb"])
    redis_command = command_text(services["redis"])
    nats_environment = environment_of(services["nats"])
    for name, service in app_services.items():
        environment = environment_of(service)
        database_url = environment["AEGIS_DATABASE_URL"]
        assert database_url.startswith("postgresql://"), name
        assert "@timescaledb:5432/" in database_url, name
        for variable in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
            server_side = interpolated_variables(timescaledb[variable])
            assert server_side <= interpolated_variables(database_url), (name, variable)
        nats_url = environment["AEGIS_NATS_URL"]
        assert nats_url.startswith("nats://aegis:"), name
        assert nats_url.endswith("@nats:4222"), name
        assert interpolated_variables(nats_environment["AEGIS_NATS_PASSWORD"]) <= (
            interpolated_variables(nats_url)
        ), name
        redis_url = environment["AEGIS_REDIS_URL"]
        assert redis_url.startswith("redis://:"), name
        assert "@redis:6379/" in redis_url, name
        assert interpolated_variables(redis_url) <= interpolated_variables(redis_command), name


def test_app_services_wait_for_healthy_servers_and_completed_migrations(app_services, servers):
    for name, service in app_services.items():
        depends_on = service.get("depends_on")
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions (long form)"
        for server in servers:
            assert depends_on.get(server, {}).get("condition") == "service_healthy", (name, server)
        if name != "migrate":
            assert depends_on["migrate"]["condition"] == "service_completed_successfully", name


def test_migrate_runs_once_and_provisions_the_database_and_jetstream(services):
    migrate = services["migrate"]
    command = command_text(migrate)

    assert migrate["restart"] == "no"
    assert "profiles" not in migrate
    assert re.search(r"manage\.py migrate --noinput\b", command)
    assert re.search(r"manage\.py nats_setup\b", command)
    # `&&`: a failed migration must not go on to start the other services.
    assert command.index("migrate --noinput") < command.index("&&") < command.index("nats_setup")


def test_long_running_services_restart_unless_stopped(services):
    for name, service in services.items():
        if name != "migrate":
            assert service.get("restart") == "unless-stopped", name


def _seconds(duration: str) -> float:
    """A Compose duration such as 90s, 2m or 1m30s."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def test_workers_get_time_to_finish_on_stop(services):
    # Docker's default is 10 s before SIGKILL; Celery's warm shutdown and a batch commit need more.
    for name in ("worker", "ingest", "relay"):
        grace = services[name].get("stop_grace_period", "10s")
        assert _seconds(grace) >= 30, f"{name} stop_grace_period {grace} is too short to drain"


def test_app_services_share_the_tmpfs_metrics_volume(compose, app_services):
    volume = compose["volumes"]
    sources = set()
    for name, service in app_services.items():
        assert environment_of(service)["PROMETHEUS_MULTIPROC_DIR"] == METRICS_DIR, name
        source, _mode = volume_mounts(service).get(METRICS_DIR, (None, None))
        assert source in volume, f"{name} does not mount a named volume at {METRICS_DIR}"
        sources.add(source)
    assert len(sources) == 1, f"app services mount different metrics volumes: {sources}"
    options = volume[sources.pop()]["driver_opts"]
    assert options["type"] == "tmpfs"
    assert "uid=10001" in options["o"]


def test_beat_keeps_its_schedule_on_a_named_volume(compose, services):
    command = command_text(services["beat"])
    schedule = re.search(r"--schedule[ =](\S+)", command)
    assert schedule, "beat must name its schedule file"
    mounts = volume_mounts(services["beat"])
    directory = str(Path(schedule[1]).parent)

    assert directory in mounts
    assert mounts[directory][0] in compose["volumes"]


def _procfile_processes() -> set[str]:
    return {
        line.partition(":")[0].strip()
        for line in PROCFILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


def test_every_procfile_process_starts_with_a_plain_docker_compose_up(services):
    # Only services whose command waits for a later issue may sit in an opt-in profile, and the
    # demo-only processes, which sit in the demo profile (the next test).
    procfile_processes = _procfile_processes()

    assert "ingest" in procfile_processes
    for name in procfile_processes - DEMO_ONLY:
        assert not services[name].get("profiles"), f"{name} is in a profile"


def test_demo_only_processes_are_in_the_demo_profile_alone(services):
    from aegis.management.commands.run import DEMO_ONLY as LEFT_OUT_BY_MAKE_RUN

    assert DEMO_ONLY == LEFT_OUT_BY_MAKE_RUN
    assert _procfile_processes() >= DEMO_ONLY
    for name in DEMO_ONLY:
        assert services[name].get("profiles") == [DEMO_PROFILE], name
    in_demo = {name for name, service in services.items() if service.get("profiles")}
    assert {n for n in in_demo if DEMO_PROFILE in services[n]["profiles"]} == DEMO_ONLY


def test_the_simulator_service_runs_the_procfile_command_until_stopped(services, example_env):
    simulator = services["simulator"]
    procfile = next(
        line.partition(":")[2].strip()
        for line in PROCFILE.read_text().splitlines()
        if line.startswith("simulator:")
    )
    # Compose turns `$$` into `$`; the container's shell then reads the rate from the env_file,
    # so .env sets it for the container as the environment does for `make run`.
    in_container = interpolate(command_text(simulator), example_env)

    assert in_container.startswith("sh -c exec python manage.py simulate ")
    assert in_container.removeprefix("sh -c exec ").replace('"', "") == procfile
    assert "${AEGIS_SIMULATOR_RATE_HZ:-50}" in procfile
    assert "--duration" not in procfile  # runs until stopped
    assert _seconds(simulator["stop_grace_period"]) >= 30


def test_default_services_run_only_existing_management_commands(services):
    available = get_commands()
    used = {}
    for name, service in services.items():
        if service.get("profiles"):
            continue  # opt-in services may wait for commands from a later issue
        for command in re.findall(r"manage\.py\s+([\w-]+)", command_text(service)):
            used[command] = name

    assert used, "no `manage.py <command>` found in the default services: the parser is broken"
    missing = {command: name for command, name in used.items() if command not in available}
    assert missing == {}, f"commands missing in services that `docker-compose up` starts: {missing}"


# -- servers --------------------------------------------------------------------------------


def test_every_server_has_a_healthcheck(servers):
    for name, server in servers.items():
        healthcheck = server.get("healthcheck") or {}
        assert not healthcheck.get("disable"), name
        assert healthcheck.get("test"), f"{name} has no healthcheck test"
        assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name


def test_servers_keep_their_data_on_named_volumes(compose, services):
    data_dirs = {
        "timescaledb": "/var/lib/postgresql/data",
        "nats": "/data",
        "redis": "/data",
    }
    for name, path in data_dirs.items():
        source, _mode = volume_mounts(services[name]).get(path, (None, None))
        assert source in compose["volumes"], f"{name} data at {path} is not on a named volume"


def test_redis_appends_every_write_and_requires_a_password(services):
    command = command_text(services["redis"])

    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert re.search(r"--requirepass \$\{AEGIS_REDIS_PASSWORD", command)


def _jetstream_setting(name: str) -> str | None:
    block = re.search(r"^jetstream\s*\{(.*?)^\}", NATS_CONF.read_text(), re.M | re.S)
    assert block, "nats.conf has no jetstream block"
    setting = re.search(rf"^\s*{name}\s*[:=]\s*\"?([^\"\s#]+)", block[1], re.M)
    return setting[1] if setting else None


def test_nats_config_fsyncs_before_every_ack():
    # Unset, nats-server fsyncs every 2 minutes and acknowledged writes can be lost.
    assert _jetstream_setting("sync_interval") == "always"


def test_nats_jetstream_store_is_on_a_named_volume(compose, services):
    store_dir = _jetstream_setting("store_dir")
    assert store_dir, "JetStream store_dir must be explicit"
    on_volumes = [
        Path(target)
        for target, (source, _mode) in volume_mounts(services["nats"]).items()
        if source in compose["volumes"]
    ]

    assert any(target in [Path(store_dir), *Path(store_dir).parents] for target in on_volumes), (
        f"store_dir {store_dir} is not on a named volume"
    )


def test_nats_config_is_mounted_read_only_and_takes_the_password_from_the_environment(services):
    nats = services["nats"]
    config_mounts = {
        target: mode
        for target, (source, mode) in volume_mounts(nats).items()
        if source.endswith("/nats.conf")
    }
    settings_lines = [line.split("#")[0].strip() for line in NATS_CONF.read_text().splitlines()]

    assert list(config_mounts.values()) == ["ro"], "nats.conf must be mounted once, read-only"
    assert next(iter(config_mounts)) in command_text(nats)
    assert "password: $AEGIS_NATS_PASSWORD" in settings_lines
    assert "AEGIS_NATS_PASSWORD" in environment_of(nats)


def test_nats_healthcheck_uses_the_monitoring_port_of_the_config(services):
    monitoring = re.search(r"^http\s*[:=]\s*\S*?(\d+)\s*$", NATS_CONF.read_text(), re.M)
    healthcheck = " ".join(services["nats"]["healthcheck"]["test"])

    assert monitoring, "nats.conf must enable the monitoring port"
    assert f":{monitoring[1]}/healthz" in healthcheck


@pytest.mark.parametrize(
    "password_source", ["the .env.example placeholder", "a secrets.token_hex(32) password"]
)
def test_nats_server_accepts_the_config(password_source, example_env):
    password = (
        example_env["AEGIS_NATS_PASSWORD"]
        if password_source.startswith("the")
        else secrets.token_hex(32)
    )
    result = subprocess.run(
        [str(NatsServer.binary()), "-c", str(NATS_CONF), "-t"],
        env=environment_without_aegis(AEGIS_NATS_PASSWORD=password),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout + result.stderr


# -- the image ------------------------------------------------------------------------------


def test_dockerfile_serves_daphne_as_a_non_root_user(services):
    (base,) = dockerfile_instruction("FROM")
    (cmd,) = dockerfile_instruction("CMD")
    command = json.loads(cmd)
    users = dockerfile_instruction("USER")

    assert base == "python:3.11-slim-bookworm"
    assert command[0] == "daphne"
    assert command[-1] == "aegis.asgi:application"
    assert " ".join(command[1:-1]) == "--bind 0.0.0.0 --port 8000 --proxy-headers --verbosity 0"
    assert dockerfile_instruction("EXPOSE") == ["8000"]
    assert users, "the image must not run as root"
    assert users[-1] not in ("root", "0")
    # web runs the image's CMD and publishes its port.
    assert "command" not in services["web"] or "daphne" in command_text(services["web"])
    assert any(port.endswith(":8000") for port in services["web"]["ports"])


def test_dockerfile_collects_static_files_with_production_settings():
    environment = " ".join(dockerfile_instruction("ENV"))
    collectstatic = [run for run in dockerfile_instruction("RUN") if "collectstatic" in run]

    assert f"DJANGO_SETTINGS_MODULE={PRODUCTION_SETTINGS}" in environment
    assert len(collectstatic) == 1
    assert "--noinput" in collectstatic[0]
    assert any(
        "pip install --no-cache-dir -r requirements.txt" in run
        for run in dockerfile_instruction("RUN")
    )


def test_dockerfile_build_only_values_satisfy_production_collectstatic(tmp_path):
    """The collectstatic step of the build succeeds with exactly the values the Dockerfile gives."""
    environment = {}
    for arguments in dockerfile_instruction("ENV"):
        environment.update(re.findall(r"(\w+)=(\S+)", arguments))
    (collectstatic,) = [run for run in dockerfile_instruction("RUN") if "collectstatic" in run]
    environment.update(re.findall(r"(AEGIS_\w+)=(\S+)", collectstatic))
    environment["AEGIS_STATIC_ROOT"] = str(tmp_path / "static")

    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=REPO,
        env=environment_without_aegis(**environment),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "static" / "staticfiles.json").exists()


def test_web_healthcheck_probes_healthz_like_the_image(services):
    (healthcheck,) = dockerfile_instruction("HEALTHCHECK")
    image_probe = json.loads(healthcheck.partition(" CMD ")[2])
    web_probe = services["web"]["healthcheck"]["test"]

    assert image_probe[-1].endswith("/healthz")
    assert web_probe == ["CMD", *image_probe]
    for name, service in services.items():
        if "build" in service and name != "web":
            # The image's probe would call a daphne that only web runs.
            assert service["healthcheck"] == {"disable": True}, name


class _Healthz(BaseHTTPRequestHandler):
    """/healthz that, like Django, answers 400 unless the Host header is allowed."""

    allowed_host = "aegis.plant.example"
    status = 200

    def do_GET(self) -> None:
        allowed = self.headers["Host"] == self.allowed_host and self.path == "/healthz"
        self.send_response(self.status if allowed else 400)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@contextmanager
def _healthz_server(status: int) -> Iterator[str]:
    handler = type("Handler", (_Healthz,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/healthz"
    finally:
        server.shutdown()
        server.server_close()


def _run_probe(url: str, allowed_hosts: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT), url],
        env=environment_without_aegis(AEGIS_ALLOWED_HOSTS=allowed_hosts),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_container_probe_sends_an_allowed_host_and_fails_on_errors():
    with _healthz_server(200) as url:
        assert _run_probe(url, "aegis.plant.example,localhost").returncode == 0
        assert _run_probe(url, ".aegis.plant.example").returncode == 0
        assert _run_probe(url, "other.plant.example").returncode == 1
    with _healthz_server(503) as url:
        assert _run_probe(url, "aegis.plant.example").returncode == 1
    assert (
        _run_probe(f"http://127.0.0.1:{free_port()}/healthz", "aegis.plant.example").returncode == 1
    )
