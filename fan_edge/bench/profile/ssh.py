"""Latency of an artifact on a Linux edge box, measured there by fan-edge's own runtime over ssh.

::

    from fan_edge.bench.profile.ssh import SshOptions, profile_ssh

    row = profile_ssh("fan2-w64-i128-fp32.onnx", SshOptions(host="pi@raspberrypi", threads=4))

Steps: ``mktemp -d`` on the box, ``scp`` the artifact with its sidecar contract
(and an OpenVINO ``.bin``) into it, run ``PYTHON -m fan_edge.ondevice.bench
REMOTE_ARTIFACT --json ...`` there, read the JSON row it prints, remove the
folder. The box needs fan-edge's runtime and one backend
(``pip install 'fan-edge[onnxruntime]'``, or the ``openvino`` / ``litert`` extra: no torch); the
timing is :func:`fan_edge.ondevice.bench.time_artifact`'s, i.e. the same
measurement ``fan-bench`` makes locally, taken on the box.

The system OpenSSH client does the transport (``ssh``, ``scp``), so the user's
``~/.ssh/config``, agent, known hosts and jump hosts apply unchanged.
``BatchMode=yes`` makes a missing key or an unknown host key fail at once
instead of waiting at a password prompt.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ProfileError
from ...limits import MAX_THREADS, check_int
from ...ondevice.bench import artifact_files
from ...runtime.contract import sidecar_path
from ._run import find_tool, last_line, run_tool

SSH_HINT = "install the OpenSSH client (Debian/Ubuntu: apt-get install openssh-client)"
REMOTE_PREFIX = "fan-profile."
# mktemp's output must look like this before anything is copied into it or removed with it.
_REMOTE_DIR = re.compile(r"^/[^\s'\"\\]*" + re.escape(REMOTE_PREFIX) + r"[A-Za-z0-9]+$")


@dataclass(frozen=True)
class SshOptions:
    """Where and how to run; ``python`` is a shell fragment run on the box (e.g. ``~/venv/bin/python``)."""

    host: str
    port: int | None = None
    user: str | None = None
    identity: str | None = None
    ssh_config: str | None = None
    ssh_options: tuple[str, ...] = ()  # extra "-o KEY=VALUE" options for both ssh and scp
    python: str = "python3"
    backend: str = "auto"
    device: str = "auto"
    threads: int | None = None
    runs: int = 100
    warmup: int = 10
    connect_timeout_s: int = 10
    timeout_s: float = 600.0
    ssh: str = "ssh"
    scp: str = "scp"


def _common(options: SshOptions, port_flag: str) -> list[str]:
    """Options ssh and scp share (scp spells the port -P)."""
    args = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={options.connect_timeout_s}"]
    if options.ssh_config:
        args += ["-F", options.ssh_config]
    if options.port is not None:
        args += [port_flag, str(options.port)]
    if options.identity:
        args += ["-i", options.identity]
    if options.user:
        args += ["-o", f"User={options.user}"]
    for opt in options.ssh_options:
        args += ["-o", opt]
    return args


def ssh_command(options: SshOptions, remote_command: str) -> list[str]:
    """``ssh ... HOST -- COMMAND``; the remote sshd hands COMMAND to the user's shell, so it must be quoted already."""
    return [options.ssh, *_common(options, "-p"), "--", options.host, remote_command]


def scp_destination(host: str, remote_dir: str) -> str:
    """``host:dir/`` for scp; an IPv6 address needs brackets there (``[::1]:dir``)."""
    user, _, name = host.rpartition("@")
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    return f"{user + '@' if user else ''}{name}:{remote_dir}/"


def scp_command(options: SshOptions, files: list[Path], remote_dir: str) -> list[str]:
    recursive = ["-r"] if any(f.is_dir() for f in files) else []
    destination = scp_destination(options.host, remote_dir)
    return [options.scp, "-q", *recursive, *_common(options, "-P"), "--", *map(str, files), destination]


def bench_command(options: SshOptions, remote_artifact: str) -> str:
    """The remote shell line. ``python`` goes in unquoted (it may be ``~/venv/bin/python`` or ``env X=1 python3``)."""
    args = [remote_artifact, "--json", "--backend", options.backend, "--device", options.device,
            "--runs", str(options.runs), "--warmup", str(options.warmup)]
    if options.threads is not None:
        args += ["--threads", str(options.threads)]
    return f"{options.python} -m fan_edge.ondevice.bench " + shlex.join(args)


def files_to_copy(artifact: Path) -> list[Path]:
    """The artifact's own files and its sidecar contract (the remote runtime reads the contract from it)."""
    files = artifact_files(artifact)
    side = sidecar_path(artifact)
    return files + ([side] if side.is_file() else [])


def parse_row(stdout: str) -> dict[str, Any] | None:
    """The JSON object ``python -m fan_edge.ondevice.bench --json`` printed (one line, the last of its output)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


class _Remote:
    def __init__(self, options: SshOptions) -> None:
        self.options = options

    def run(self, remote_command: str, step: str, timeout: float | None = None):
        return run_tool(ssh_command(self.options, remote_command), f"ssh {step} on {self.options.host}",
                        timeout or self.options.timeout_s)

    def fail(self, step: str, result) -> ProfileError:
        reason = last_line(result.stderr) or last_line(result.stdout) or f"exit {result.returncode}"
        if result.returncode == 255:  # ssh's own failure: connection, authentication, host key
            return ProfileError(f"ssh to {self.options.host} failed: {reason}")
        return ProfileError(f"{step} on {self.options.host} failed: {reason}")


def profile_ssh(artifact: str | Path, options: SshOptions) -> dict[str, Any]:
    """One fan-bench row for ``artifact`` timed on ``options.host`` by fan-edge's runtime installed there.

    A row whose ``status`` is not "passed" (the remote runtime could not load
    or run the artifact, or lacks the device) is returned as the remote
    printed it; a ProfileError means no row could be had (ssh or scp failing,
    no Python or no fan-edge there, output that is not a row).
    """
    artifact = Path(artifact)
    if not artifact.exists():
        raise ProfileError(f"{artifact}: no such file")
    if options.runs < 1 or options.warmup < 0:
        raise ProfileError("runs must be positive and warmup zero or more")
    if options.threads is not None:
        check_int("threads", options.threads, 1, MAX_THREADS, ProfileError)
    options = dataclasses.replace(options, ssh=find_tool(options.ssh, SSH_HINT), scp=find_tool(options.scp, SSH_HINT))
    remote = _Remote(options)

    made = remote.run(f'mktemp -d "${{TMPDIR:-/tmp}}/{REMOTE_PREFIX}XXXXXXXX"', "mktemp", 60.0)
    if made.returncode != 0:
        raise remote.fail("mktemp", made)
    remote_dir = made.stdout.strip().splitlines()[-1].strip() if made.stdout.strip() else ""
    if not _REMOTE_DIR.match(remote_dir):
        raise ProfileError(f"mktemp on {options.host} gave an unexpected folder name: {remote_dir[:100]!r}")
    try:
        copied = run_tool(scp_command(options, files_to_copy(artifact), remote_dir), f"scp to {options.host}", options.timeout_s)
        if copied.returncode != 0:
            raise remote.fail("scp", copied)
        ran = remote.run(bench_command(options, f"{remote_dir}/{artifact.name}"), "fan_edge.ondevice.bench")
    finally:
        try:
            remote.run(f"rm -rf -- {shlex.quote(remote_dir)}", "rm", 60.0)
        except ProfileError:
            pass  # best effort: a leftover temp folder is not worth hiding the measurement or the real error

    row = parse_row(ran.stdout)
    if row is None:
        text = ran.stderr + ran.stdout
        if ran.returncode == 255:
            raise remote.fail("fan_edge.ondevice.bench", ran)
        if "No module named" in text and "fan_edge" in text:
            raise ProfileError(f"{options.python} on {options.host} cannot import fan_edge; install it there: "
                               "pip install 'fan-edge[onnxruntime]' (or the openvino / litert extra)")
        if ran.returncode == 127:
            raise ProfileError(f"{options.python} not found on {options.host} (set --python to the remote interpreter)")
        raise ProfileError(f"fan_edge.ondevice.bench on {options.host} printed no row (exit {ran.returncode}): "
                           f"{last_line(ran.stderr) or last_line(ran.stdout) or 'no output'}")
    row["path"] = str(artifact)
    row["remote"] = options.host + (f":{options.port}" if options.port else "")
    row["timed_by"] = "fan_edge.ondevice.bench"
    return row
