"""The deploy files: one replica on one SQLite volume, probes on the HTTP port, only settings that exist; PostgreSQL
beside it (a compose file, a Secret's URL, a migrate step) without making it the default; and three replicas on
PostgreSQL (a compose file with a proxy in front, a Kubernetes overlay that rolls them one at a time).

No Docker or cluster needed: the files are parsed and checked against the settings model.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel
from yarl import URL

from bot.config import CONFIG_ENV, ENV_ALIASES, Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_PG = DEPLOY / "compose.postgres.yaml"
DB_SECRET = K8S / "db-secret.example.yaml"
COPY_JOB = K8S / "db-copy-job.example.yaml"
UNIT = DEPLOY / "parley.service"
COMPOSE_REPLICAS = DEPLOY / "compose.replicas.yaml"
HAPROXY = DEPLOY / "haproxy.cfg"
K8S_REPLICAS = DEPLOY / "k8s-replicas"
REPLICAS_PATCH = K8S_REPLICAS / "replicas-patch.yaml"
REPLICAS = 3

PORT = 8080
# Names the deploy files may use before (or without) a settings field of that name: PARLEY_CONFIG names the
# TOML file itself; the export and scheduler sections are being added to the settings model.
PENDING_NAMES = {"PARLEY_EXPORT__DIR", "PARLEY_SCHEDULER__ENABLED", CONFIG_ENV}
# Read by the model client (litellm), not by the settings model.
PROVIDER_KEYS = {"OPENAI_API_KEY"}
ENV_NAME = re.compile(r"\bPARLEY_[A-Z0-9_]*[A-Z0-9]\b")


@pytest.fixture(autouse=True)
def no_deployment_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings see only what a test sets: no PARLEY_*, token or Sentry variables, no ./parley.toml."""
    for name in list(os.environ):
        if name.startswith(("PARLEY_", "SLACK_", "DISCORD_", "SENTRY_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# ---- helpers ----


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object the kustomization applies, by (kind, name)."""
    objects = {}
    for resource in yaml_docs(K8S / "kustomization.yaml")[0]["resources"]:
        for doc in yaml_docs(K8S / resource):
            objects[doc["kind"], doc["metadata"]["name"]] = doc
    return objects


def deployment() -> dict[str, Any]:
    return k8s_objects()["Deployment", "parley"]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def container_env() -> dict[str, str]:
    """The container's environment from its ConfigMaps (secrets hold no PARLEY_* paths) and `env` entries."""
    objects = k8s_objects()
    env: dict[str, str] = {}
    for source in container().get("envFrom", []):
        if "configMapRef" in source:
            env.update(objects["ConfigMap", source["configMapRef"]["name"]]["data"])
    for item in container().get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def container_port(port: int | str) -> int:
    """A probe's or Service's port (a number or the name of a container port) as a number."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container()["ports"] if "name" in p}
    assert port in named, f"no container port named {port!r}"
    return int(named[port])


def mounts() -> dict[str, dict[str, Any]]:
    """Mount path -> the pod volume mounted there."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container()["volumeMounts"]}


def is_inside(path: str, directory: str) -> bool:
    return PurePosixPath(directory) in PurePosixPath(path).parents


def shutdown_grace_s(env: dict[str, str]) -> float:
    default = Settings.model_fields["dispatch"].annotation
    assert isinstance(default, type) and issubclass(default, BaseModel)
    return float(env.get("PARLEY_DISPATCH__SHUTDOWN_GRACE_S", default.model_fields["shutdown_grace_s"].default))


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in dockerfile():
        if keyword == "ENV":
            for pair in shlex.split(args):
                name, sep, value = pair.partition("=")
                assert sep, f"use ENV NAME=value, not {pair!r}"
                env[name] = value
    return env


def compose_service() -> dict[str, Any]:
    services = yaml_docs(COMPOSE)[0]["services"]
    assert list(services) == ["parley"]
    service: dict[str, Any] = services["parley"]
    return service


def compose_pg() -> dict[str, Any]:
    document: dict[str, Any] = yaml_docs(COMPOSE_PG)[0]
    return document


def interpolate(text: str, **values: str) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}` with the given values."""
    return re.sub(r"\$\{(\w+)(?::?[-?][^}]*)?\}", lambda m: values[m.group(1)], text)


def db_url_ref(spec: dict[str, Any]) -> dict[str, Any]:
    """The secretKeyRef a container's PARLEY_DB__URL comes from."""
    (item,) = [e for e in spec.get("env", []) if e["name"] == "PARLEY_DB__URL"]
    assert "value" not in item, "the URL holds the password: from a Secret, never written in a manifest"
    ref: dict[str, Any] = item["valueFrom"]["secretKeyRef"]
    return ref


@dataclass(frozen=True)
class Replaced:
    """A value Compose's `!reset` or `!override` tag puts in place of what the earlier files set."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    """yaml.safe_load plus Compose's merge tags (Compose 2.24+), which plain YAML loaders refuse."""


def _replaced(loader: yaml.SafeLoader, node: yaml.Node) -> Replaced:
    if isinstance(node, yaml.SequenceNode):
        return Replaced(loader.construct_sequence(node, deep=True))
    if isinstance(node, yaml.MappingNode):
        return Replaced(loader.construct_mapping(node, deep=True))
    return Replaced(loader.construct_scalar(node))


ComposeLoader.add_constructor("!reset", _replaced)
ComposeLoader.add_constructor("!override", _replaced)


def compose_doc(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.load(path.read_text(), Loader=ComposeLoader)
    return document


def compose_merge(base: Any, override: Any) -> Any:
    """How `docker compose -f a -f b` combines two files: mappings key by key, sequences appended (ports, volumes),
    anything else (and a `!reset`/`!override`) replaced."""
    if isinstance(override, Replaced):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = compose_merge(base[key], value) if key in base else compose_merge(None, value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return override


def replicas_project() -> dict[str, Any]:
    """The services of compose.yaml + compose.postgres.yaml + compose.replicas.yaml, as Compose merges them."""
    merged: dict[str, Any] = {}
    for path in (COMPOSE, COMPOSE_PG, COMPOSE_REPLICAS):
        merged = compose_merge(merged, compose_doc(path))
    services: dict[str, Any] = merged["services"]
    return services


def published(service: dict[str, Any]) -> dict[int, int]:
    """A compose service's published ports: host port -> container port."""
    ports = {}
    for entry in service.get("ports", []):
        host, _, target = str(entry).rpartition(":")
        ports[int(host.rpartition(":")[2])] = int(target)
    return ports


def haproxy_sections() -> dict[str, list[list[str]]]:
    """HAProxy's configuration: each section's header line -> its lines as words, comments dropped."""
    sections: dict[str, list[list[str]]] = {}
    current = ""
    for raw in HAPROXY.read_text().splitlines():
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        if raw[0].isspace():
            sections[current].append(line.split())
        else:
            current = line
            sections[current] = []
    return sections


def haproxy_values(section: list[list[str]], *keyword: str) -> list[list[str]]:
    """The words after `keyword` on each line of `section` that starts with it."""
    return [words[len(keyword) :] for words in section if tuple(words[: len(keyword)]) == keyword]


def strategic_merge(base: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge patch, as far as the patch here uses it: mappings key by key (null deletes the
    key), lists of named items (containers, env, volumes) item by item by name, any other value replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(base[key], value) if key in base else value
        return merged
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(item, dict) and "name" in item for item in [*base, *patch]):
        items = list(base)
        where = {item["name"]: i for i, item in enumerate(base)}
        for item in patch:
            if item["name"] in where:
                items[where[item["name"]]] = strategic_merge(base[where[item["name"]]], item)
            else:
                items.append(item)
        return items
    return patch


def replicas_deployment() -> dict[str, Any]:
    """The base Deployment with the overlay's patch applied."""
    (patch,) = yaml_docs(REPLICAS_PATCH)
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", deployment()["metadata"]["name"])
    merged: dict[str, Any] = strategic_merge(deployment(), patch)
    return merged


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def unit_env() -> dict[str, str]:
    """Every Environment= assignment (the key repeats, so configparser alone would keep only the last)."""
    env: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            for pair in shlex.split(line.removeprefix("Environment=")):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def is_setting(name: str) -> bool:
    """Whether PARLEY_A__B (or deeper) names a field of the settings model."""
    model: Any = Settings
    for part in name.removeprefix("PARLEY_").lower().split("__"):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return False
        model = model.model_fields[part].annotation
    return True


def config_toml() -> str:
    text: str = k8s_objects()["ConfigMap", "parley-config"]["data"]["parley.toml"]
    return text


# ---- Kubernetes ----


def test_kustomization_applies_the_manifests_but_not_the_secret_example() -> None:
    resources = yaml_docs(K8S / "kustomization.yaml")[0]["resources"]
    assert set(resources) == {"configmap.yaml", "pvc.yaml", "deployment.yaml", "service.yaml"}
    assert all((K8S / name).is_file() for name in resources)
    kinds = {kind for kind, _ in k8s_objects()}
    assert "Secret" not in kinds
    assert {"Deployment", "Service", "PersistentVolumeClaim", "ConfigMap"} <= kinds


def test_exactly_one_pod_on_the_database_at_any_time() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    assert "rollingUpdate" not in spec["strategy"]
    claim = mounts()["/data"]["persistentVolumeClaim"]["claimName"]
    pvc = k8s_objects()["PersistentVolumeClaim", claim]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_probes_and_service_reach_the_http_port() -> None:
    env = container_env()
    assert env["PARLEY_HTTP__HOST"] == "0.0.0.0"
    port = int(env.get("PARLEY_HTTP__PORT", PORT))
    assert port == PORT
    assert [p["containerPort"] for p in container()["ports"]] == [port]
    probes = {name: container()[name]["httpGet"] for name in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    startup = container().get("startupProbe")
    if startup is not None:
        assert startup["httpGet"]["path"] == "/healthz"
        probes["startupProbe"] = startup["httpGet"]
    assert {container_port(probe["port"]) for probe in probes.values()} == {port}

    service = k8s_objects()["Service", "parley"]["spec"]
    assert service["type"] == "ClusterIP"
    assert [(p["port"], container_port(p["targetPort"])) for p in service["ports"]] == [(80, port)]
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert deployment()["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_pod_runs_as_a_non_root_user_on_a_read_only_root() -> None:
    pod = pod_spec()["securityContext"]
    own = container().get("securityContext", {})
    assert (own.get("runAsNonRoot") or pod.get("runAsNonRoot")) is True
    assert own.get("runAsUser", pod.get("runAsUser")) == 10001
    assert pod["fsGroup"] == 10001
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert "ALL" in own["capabilities"]["drop"]


def test_the_app_writes_only_to_mounted_volumes() -> None:
    env = container_env()
    volumes = mounts()
    assert "persistentVolumeClaim" in volumes["/data"]
    assert "emptyDir" in volumes["/tmp"]
    assert is_inside(env["PARLEY_DB__PATH"], "/data")
    assert is_inside(env["PARLEY_EXPORT__DIR"], "/data")
    config = PurePosixPath(env[CONFIG_ENV])
    volume = volumes[str(config.parent)]["configMap"]
    assert [item["path"] for item in volume["items"]] == [config.name]
    assert volume["items"][0]["key"] in k8s_objects()["ConfigMap", volume["name"]]["data"]


def test_shutdown_grace_fits_in_the_termination_grace_period() -> None:
    spec = pod_spec()
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["terminationGracePeriodSeconds"] > shutdown_grace_s(container_env())
    assert container().get("command") is None, "keep the image's exec-form start so SIGTERM reaches parley"
    assert container().get("args", ["parley", "run"]) == ["parley", "run"]
    assert pod_spec().get("enableServiceLinks") is False, "a Service named parley would inject PARLEY_* variables"


def test_env_comes_from_the_configmap_and_the_example_secret() -> None:
    sources = container()["envFrom"]
    config_maps = {s["configMapRef"]["name"] for s in sources if "configMapRef" in s}
    secrets = {s["secretRef"]["name"] for s in sources if "secretRef" in s}
    assert all(("ConfigMap", name) in k8s_objects() for name in config_maps)
    (secret,) = yaml_docs(K8S / "secret.example.yaml")
    assert secrets == {secret["metadata"]["name"]}
    assert "resources" in container() and "memory" in container()["resources"]["limits"]


def test_the_secret_example_holds_only_placeholders() -> None:
    (secret,) = yaml_docs(K8S / "secret.example.yaml")
    assert secret["kind"] == "Secret"
    assert "data" not in secret
    values = secret["stringData"]
    assert values and all("REPLACE-ME" in value for value in values.values())
    assert set(values) <= set(ENV_ALIASES) | PROVIDER_KEYS


def test_the_config_file_is_accepted_by_the_settings_model() -> None:
    data = tomllib.loads(config_toml())
    settings = Settings(**data)
    assert settings.approvals.approvers == data["approvals"]["approvers"]
    assert settings.tools.http_get.allow_hosts == data["tools"]["http_get"]["allow_hosts"]
    (standup,) = data["schedules"]
    assert standup["name"] == "standup"
    assert standup["platform"] == "slack"
    CronTrigger.from_crontab(standup["cron"])  # day names: APScheduler 3 numbers days from Monday = 0


def test_the_whole_production_environment_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The ConfigMap's env, the example Secret and the mounted TOML file, loaded as `parley run` loads them."""
    config = tmp_path / "parley.toml"
    config.write_text(config_toml())
    for name, value in container_env().items():
        monkeypatch.setenv(name, str(config) if name == CONFIG_ENV else value)
    (secret,) = yaml_docs(K8S / "secret.example.yaml")
    for name, value in secret["stringData"].items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.platforms == ["slack"]
    assert str(settings.db.path) == "/data/parley.db"
    assert (settings.http.host, settings.http.port) == ("0.0.0.0", PORT)
    assert settings.lm.model != "local"


def test_the_database_url_comes_from_an_optional_secret_so_sqlite_stays_the_default() -> None:
    ref = db_url_ref(container())
    (secret,) = yaml_docs(DB_SECRET)
    assert secret["kind"] == "Secret"
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "url")
    assert ref["optional"] is True, "without the Secret the pod must still start, on SQLite"
    assert set(secret["stringData"]) == {"url"}
    for (kind, _), manifest in k8s_objects().items():
        assert kind != "Secret"
        if kind == "ConfigMap":
            assert "PARLEY_DB__URL" not in manifest["data"]
    url = secret["stringData"]["url"]
    assert URL(url).password == "REPLACE-ME"
    assert Settings(db={"url": url}).db.url_value == url


def test_an_init_container_migrates_the_database_before_parley_starts() -> None:
    (init,) = pod_spec()["initContainers"]
    app = container()
    assert init["args"] == ["parley", "db", "migrate"] and "command" not in init
    assert (init["image"], init["imagePullPolicy"]) == (app["image"], app["imagePullPolicy"])
    assert init["envFrom"] == app["envFrom"]
    assert db_url_ref(init) == db_url_ref(app)
    assert init["volumeMounts"] == app["volumeMounts"]
    assert init["securityContext"] == app["securityContext"]


def test_the_copy_job_example_moves_the_volume_s_sqlite_file_into_the_secret_s_database() -> None:
    resources = yaml_docs(K8S / "kustomization.yaml")[0]["resources"]
    assert COPY_JOB.name not in resources and DB_SECRET.name not in resources
    (job,) = yaml_docs(COPY_JOB)
    assert job["kind"] == "Job" and job["spec"]["backoffLimit"] == 0, "a failed copy is looked at, not retried"
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (copy,) = spec["containers"]
    args = copy["args"]
    assert args[:3] == ["parley", "db", "copy"]
    assert args[args.index("--from") + 1] == container_env()["PARLEY_DB__PATH"]
    assert args[args.index("--to") + 1] == "$(PARLEY_DB__URL)"
    ref = db_url_ref(copy)
    assert (ref["name"], ref["key"]) == (db_url_ref(container())["name"], "url") and not ref.get("optional")
    volumes = {v["name"]: v for v in spec["volumes"]}
    (data,) = [m for m in copy["volumeMounts"] if m["mountPath"] == "/data"]
    claim = mounts()["/data"]["persistentVolumeClaim"]["claimName"]
    assert volumes[data["name"]]["persistentVolumeClaim"]["claimName"] == claim
    assert spec["securityContext"]["runAsNonRoot"] is True and copy["securityContext"]["readOnlyRootFilesystem"]


# ---- every PARLEY_* name in the deploy files is a setting ----


def test_every_parley_variable_in_the_deploy_files_is_a_setting() -> None:
    files = [DOCKERFILE, COMPOSE, COMPOSE_PG, COMPOSE_REPLICAS, HAPROXY, UNIT, *sorted(K8S.glob("*.yaml"))]
    files += [*sorted(K8S_REPLICAS.glob("*.yaml")), *sorted(DEPLOY.glob("*.yml"))]
    names = {name for path in files for name in ENV_NAME.findall(path.read_text())}
    names |= set(container_env()) | set(dockerfile_env()) | set(compose_service()["environment"]) | set(unit_env())
    names |= set(compose_pg()["services"]["parley"]["environment"]) | set(replicas_project()["parley"]["environment"])
    (patched,) = replicas_deployment()["spec"]["template"]["spec"]["containers"]
    names |= {item["name"] for item in patched["env"]}
    names = {name for name in names if name.startswith("PARLEY_")}
    assert {"PARLEY_DB__PATH", "PARLEY_DB__URL", "PARLEY_HTTP__HOST", "PARLEY_HTTP__PORT"} <= names
    unknown = {name for name in names if not is_setting(name)}
    assert unknown <= PENDING_NAMES, f"not settings: {sorted(unknown - PENDING_NAMES)}"


# ---- Dockerfile ----


def test_the_dockerfile_builds_in_two_stages() -> None:
    instructions = dockerfile()
    args = {}
    for keyword, value in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = value.partition("=")
            args[name] = default
    stages = [value for keyword, value in instructions if keyword == "FROM"]
    assert len(stages) >= 2
    assert stages[0].split()[-2:] == ["AS", "builder"]
    final = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stages[-1].split()[0])
    assert final == "python:3.11-slim"
    assert any(k == "COPY" and "--from=builder" in v and "/opt/venv" in v for k, v in instructions)
    assert any(k == "ARG" and v == "EMBEDDED_MODEL=false" for k, v in instructions)
    install = [v for k, v in instructions if k == "RUN" and "pip install" in v]
    assert len(install) == 1 and "-c constraints.txt" in install[0] and ".[local]" in install[0]


def test_the_image_runs_parley_as_a_non_root_user_with_state_on_a_volume() -> None:
    instructions = dockerfile()
    final_stage = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    users = [value for keyword, value in final_stage if keyword == "USER"]
    assert users, "the final stage needs a USER line"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert users[-1].split(":")[0] in {"10001", "parley"}
    assert ("VOLUME", "/data") in final_stage
    cmd = [value for keyword, value in final_stage if keyword == "CMD"]
    assert json.loads(cmd[-1]) == ["parley", "run"], "exec form, so SIGTERM reaches parley"
    assert not any(keyword == "ENTRYPOINT" for keyword, _ in final_stage)
    assert ("STOPSIGNAL", "SIGTERM") in final_stage
    env = dockerfile_env()
    assert env["PARLEY_HTTP__HOST"] == "0.0.0.0"
    assert is_inside(env["PARLEY_DB__PATH"], "/data")
    assert is_inside(env["PARLEY_EXPORT__DIR"], "/data")
    assert ("EXPOSE", str(env.get("PARLEY_HTTP__PORT", PORT))) in final_stage
    (healthcheck,) = [value for keyword, value in final_stage if keyword == "HEALTHCHECK"]
    assert "urllib" in healthcheck and "/healthz" in healthcheck and "curl" not in healthcheck


def test_the_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = {
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in "#"
    }
    assert {".git", ".venv", "data"} <= ignored
    for keyword, value in dockerfile():
        if keyword == "COPY" and "--from" not in value:
            for source in value.split()[:-1]:
                assert source not in ignored and (REPO / source).exists(), source


# ---- compose ----


def test_compose_runs_one_service_with_its_data_on_a_named_volume() -> None:
    document = yaml_docs(COMPOSE)[0]
    service = compose_service()
    build = service["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert "EMBEDDED_MODEL" in build["args"]
    assert {"path": ".env", "required": False} in service["env_file"]
    env = {name: str(value) for name, value in service["environment"].items()}
    assert env["PARLEY_HTTP__HOST"] == "0.0.0.0"
    port = int(env.get("PARLEY_HTTP__PORT", PORT))
    assert [str(p).rsplit(":", 1)[-1] for p in service["ports"]] == [str(port)]
    (volume,) = service["volumes"]
    name, target = volume.split(":")[:2]
    assert target == "/data" and name in document["volumes"]
    assert is_inside(env["PARLEY_DB__PATH"], "/data")
    assert is_inside(env["PARLEY_EXPORT__DIR"], "/data")
    assert "/healthz" in " ".join(service["healthcheck"]["test"])
    assert service["restart"] == "unless-stopped"
    assert "deploy" not in service or service["deploy"].get("replicas", 1) == 1
    grace = service["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > shutdown_grace_s(env)


def test_compose_alone_keeps_the_embedded_sqlite_file() -> None:
    assert "PARLEY_DB__URL" not in compose_service()["environment"]
    assert "postgres" not in COMPOSE.read_text().lower()


def test_the_postgres_compose_file_adds_a_server_on_a_named_volume_with_a_healthcheck() -> None:
    document = compose_pg()
    assert document["name"] == yaml_docs(COMPOSE)[0]["name"], "one project: the file extends compose.yaml's parley"
    services = document["services"]
    assert set(services) == {"postgres", "parley"}
    server = services["postgres"]
    assert server["image"] == "postgres:18"
    (volume,) = server["volumes"]
    name, target = volume.split(":")[:2]
    # From 18 on, the image's volume is /var/lib/postgresql; it refuses to start with data at .../data.
    assert name in document["volumes"] and target == "/var/lib/postgresql"
    assert "pg_isready" in " ".join(server["healthcheck"]["test"])
    assert server["restart"] == "unless-stopped"
    assert server["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?"), "no default password"


def test_parley_uses_the_postgres_service_once_it_is_healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose_pg()["services"]
    parley, server = services["parley"], services["postgres"]["environment"]
    assert set(parley) == {"environment", "depends_on"}, "only the database changes; the rest is compose.yaml's"
    assert parley["depends_on"]["postgres"]["condition"] == "service_healthy"
    url = interpolate(parley["environment"]["PARLEY_DB__URL"], POSTGRES_PASSWORD="s3cret")
    assert interpolate(server["POSTGRES_PASSWORD"], POSTGRES_PASSWORD="s3cret") == "s3cret"
    parsed = URL(url)
    assert (parsed.user, parsed.password, parsed.host, parsed.port) == (
        server["POSTGRES_USER"],
        "s3cret",
        "postgres",
        5432,
    )
    assert parsed.path == f"/{server['POSTGRES_DB']}"
    monkeypatch.setenv("PARLEY_DB__URL", url)
    assert load_settings().db.url_value == url


# ---- several replicas on PostgreSQL ----


def test_the_replicas_compose_file_runs_three_parley_replicas_on_the_postgres_service() -> None:
    assert compose_doc(COMPOSE_REPLICAS)["name"] == yaml_docs(COMPOSE)[0]["name"], "extends the same project"
    services = replicas_project()
    assert set(services) == {"parley", "postgres", "proxy"}
    parley = services["parley"]
    assert parley["deploy"]["replicas"] == REPLICAS
    assert not parley.get("ports"), "three containers cannot publish one host port: the proxy does"
    # Every replica is this one service definition: the same URL, to the postgres service, once it is healthy.
    url = URL(interpolate(parley["environment"]["PARLEY_DB__URL"], POSTGRES_PASSWORD="s3cret"))
    assert url.scheme == "postgresql" and url.host in services and "image" in services[url.host]
    assert services[url.host]["image"].startswith("postgres:")
    assert parley["depends_on"][url.host]["condition"] == "service_healthy"
    assert "PARLEY_DB__URL" not in compose_doc(COMPOSE_REPLICAS)["services"]["parley"].get("environment", {})
    # Each slot runs once whichever replica fires it, so the scheduler stays on in all three.
    assert str(parley["environment"]["PARLEY_SCHEDULER__ENABLED"]).lower() == "true"
    assert [service for service in services if published(services[service])] == ["proxy"]


def test_the_proxy_round_robins_over_three_replicas_on_parley_s_port_checked_on_healthz() -> None:
    services = replicas_project()
    proxy, parley = services["proxy"], services["parley"]
    assert proxy["image"].startswith("haproxy:")
    (mount,) = proxy["volumes"]
    source, target, mode = mount.split(":")
    assert (COMPOSE_REPLICAS.parent / source).resolve() == HAPROXY
    assert (target, mode) == ("/usr/local/etc/haproxy/haproxy.cfg", "ro")

    sections = haproxy_sections()
    (frontend,) = [lines for header, lines in sections.items() if header.startswith("frontend ")]
    ((bind,),) = haproxy_values(frontend, "bind")
    assert published(proxy) == {PORT: int(bind.rpartition(":")[2])}, "the one public port is the frontend's"
    ((backend_name,),) = haproxy_values(frontend, "default_backend")
    backend = sections[f"backend {backend_name}"]
    assert haproxy_values(backend, "balance") == [["roundrobin"]]
    assert ["meth", "GET", "uri", "/healthz"] in haproxy_values(backend, "http-check", "send")
    assert haproxy_values(backend, "http-check", "expect") == [["status", "200"]]
    ((_prefix, count, address, *options),) = haproxy_values(backend, "server-template")
    host, _, port = address.rpartition(":")
    # Three slots, filled from the addresses of the compose service, on the port each replica listens on.
    assert int(count) == parley["deploy"]["replicas"] == REPLICAS
    assert host == "parley" and int(port) == int(parley["environment"]["PARLEY_HTTP__PORT"]) == PORT
    ((*defaults,),) = haproxy_values(backend, "default-server")
    assert "check" in defaults + options
    resolvers = defaults[defaults.index("resolvers") + 1]
    assert f"resolvers {resolvers}" in sections, "names are looked up again as containers restart"


def test_the_replicas_overlay_rolls_three_pods_on_the_secret_s_database() -> None:
    (kustomization,) = yaml_docs(K8S_REPLICAS / "kustomization.yaml")
    assert [(K8S_REPLICAS / r).resolve() for r in kustomization["resources"]] == [K8S, K8S_REPLICAS / "pdb.yaml"]
    assert kustomization["patches"] == [{"path": REPLICAS_PATCH.name}]
    spec = replicas_deployment()["spec"]
    assert spec["replicas"] == REPLICAS
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "a rollout never drops below three"
    pod = spec["template"]["spec"]
    (app,), (init,) = pod["containers"], pod["initContainers"]
    (secret,) = yaml_docs(DB_SECRET)
    for each in (app, init):
        ref = db_url_ref(each)
        assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "url")
        assert ref["optional"] is False, "without the Secret, each pod would answer alone on a SQLite file of its own"
    volumes = {v["name"]: v for v in pod["volumes"]}
    (data,) = [m["name"] for m in app["volumeMounts"] if m["mountPath"] == "/data"]
    assert set(volumes[data]) == {"name", "emptyDir"}, "a ReadWriteOnce claim attaches to one node only"
    env = {item["name"]: item.get("value") for item in app["env"]}
    assert env["PARLEY_EXPORT__ENABLED"] == "false", "export files would go with the pod's emptyDir"
    assert Settings(export={"enabled": env["PARLEY_EXPORT__ENABLED"]}).export.enabled is False
    (budget,) = yaml_docs(K8S_REPLICAS / "pdb.yaml")
    assert budget["kind"] == "PodDisruptionBudget" and budget["spec"]["maxUnavailable"] == 1
    labels = spec["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders the overlay")
def test_kubectl_renders_the_overlay_as_the_patch_reads() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S_REPLICAS)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    objects = {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(rendered) if doc}
    assert set(objects) == set(k8s_objects()) | {("PodDisruptionBudget", "parley")}
    assert objects["Deployment", "parley"]["spec"] == replicas_deployment()["spec"]


# ---- systemd ----


def test_the_systemd_unit_runs_parley_as_its_own_user() -> None:
    service = unit()["Service"]
    command = shlex.split(service["ExecStart"])
    assert Path(command[0]).is_absolute() and Path(command[0]).name == "parley"
    assert command[1:] == ["run"]
    assert service["User"] not in {"root", "0"}
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > shutdown_grace_s(unit_env())
    assert "143" in service["SuccessExitStatus"].split(), "a graceful stop exits 143"
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"] == "-/etc/parley/parley.env"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "true"
    state = service["WorkingDirectory"]
    assert state == "/var/lib/parley" and service["StateDirectory"] == "parley"
    assert service["ReadWritePaths"].split() == [state]
    env = unit_env()
    assert is_inside(env["PARLEY_DB__PATH"], state)
    assert is_inside(env["PARLEY_EXPORT__DIR"], state)
    assert unit()["Install"]["WantedBy"] == "multi-user.target"
