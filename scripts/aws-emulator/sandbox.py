"""Linux instances that really run their commands (the emulator's ``execute_scripts`` mode).

Each Linux instance gets a sandbox directory, its "disk", kept across its commands: ``usr/bin`` (first on
PATH; the fake installer puts the fake ``azcmagent`` there), ``tmp`` (TMPDIR), ``root`` (HOME),
``run/systemd/system``, ``var/log/arc-onboard``, ``var/lib/arc-onboard`` (arc-onboard's state and key
directories), ``var/opt/azcmagent`` (the fake agent's state and recordings) and SSM's own
``var/lib/amazon/ssm/<instance>/document/orchestration/<command>/awsrunShellScript/0.awsrunShellScript``,
where the command's text is saved as ``_script.sh`` and run as SSM's agent runs it (``sh -c PATH``, umask
022), and where its ``stdout`` and ``stderr`` are kept afterwards, as SSM's agent keeps them. bash, curl,
openssl and coreutils are the host's; arc-onboard's test hooks (``ARC_ONBOARD_IMDS`` and the directory
variables) point the script at the sandbox and at this emulator's per-instance IMDSv2
(``/_imds/<instance>/latest/...``). The fake installer is served at ``/_agent/azcmagent-linux``; the fakes
are ``fakes/azcmagent.sh`` and ``fakes/azcmagent-installer.sh``, shared with tests/install_script.rs.

Nothing here holds the emulator's lock while a script runs: the script calls back into this emulator.
"""

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAKES = Path(__file__).resolve().parent / "fakes"
IMDS_PREFIX = "/_imds/"
INSTALLER_PATH = "/_agent/azcmagent-linux"
# What SSM's agent runs with on Amazon Linux (root's PATH), after the sandbox's own bin directory.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LAYOUT = ("usr/bin", "tmp", "root", "run/systemd/system", "var/log", "var/lib",
          "var/opt/azcmagent")

Response = tuple[int, list[tuple[str, str]], bytes]


def fake_installer() -> str:
    """The fake installer with the fake agent inlined (as tests/install_script.rs serves it)."""
    agent = (FAKES / "azcmagent.sh").read_text(encoding="utf-8")
    installer = (FAKES / "azcmagent-installer.sh").read_text(encoding="utf-8")
    return installer.replace("@FAKE_AGENT@\n", agent)


@dataclass
class RunResult:
    """How one command ended on its instance."""

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool


class Sandboxes:
    """The sandboxes of every instance that ran a command, their IMDSv2 and the fake installer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # This emulator's own address (set by main once bound): the instances' IMDS and installer host.
        self.base_url = "http://127.0.0.1"
        self.root: Path | None = None
        self.owned_root: Path | None = None
        self.dirs: dict[str, Path] = {}
        self.imds_tokens: dict[str, str] = {}  # IMDSv2 session token -> instance id
        self.processes: dict[tuple[str, str], subprocess.Popen] = {}

    def set_root(self, root: str | None) -> None:
        """Where new sandboxes go (None: a temporary directory of the emulator's, removed at exit)."""
        with self.lock:
            self.root = Path(root) if root else None

    def _root(self) -> Path:
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            return self.root
        if self.owned_root is None:
            self.owned_root = Path(tempfile.mkdtemp(prefix="arc-onboard-instances-"))
        return self.owned_root

    def sandbox(self, instance_id: str) -> Path:
        """The instance's sandbox, made on its first command."""
        with self.lock:
            path = self.dirs.get(instance_id)
            if path is None:
                path = self._root() / instance_id
                for sub in LAYOUT:
                    (path / sub).mkdir(parents=True, exist_ok=True)
                os.chmod(path / "tmp", 0o1777)
                self.dirs[instance_id] = path
            return path

    def view(self) -> dict[str, Any]:
        with self.lock:
            root = self.root or self.owned_root
            return {"root": str(root) if root else None,
                    "instances": {iid: str(path) for iid, path in self.dirs.items()}}

    def environment(self, instance_id: str, connect_url: str | None) -> dict[str, str]:
        """The script's environment: root's PATH behind the sandbox's bin, and the test hooks."""
        box = self.sandbox(instance_id)
        env = {
            "PATH": f"{box / 'usr/bin'}:{SYSTEM_PATH}",
            "HOME": str(box / "root"),
            "TMPDIR": str(box / "tmp"),
            "LANG": "C.UTF-8",
            "ARC_ONBOARD_IMDS": f"{self.base_url}{IMDS_PREFIX}{instance_id}",
            "ARC_ONBOARD_SYSTEMD_DIR": str(box / "run/systemd/system"),
            "ARC_ONBOARD_LOG_DIR": str(box / "var/log/arc-onboard"),
            "ARC_ONBOARD_STATE_DIR": str(box / "var/lib/arc-onboard"),
            "ARC_ONBOARD_KEY_DIR": str(box / "var/lib/arc-onboard/keys"),
            "ARC_ONBOARD_INSTALLER_TMP_ROOT": str(box / "tmp"),
            "FAKE_BIN": str(box / "usr/bin"),
            "FAKE_STATE": str(box / "var/opt/azcmagent"),
            "FAKE_INSTALLER_TMP_ROOT": str(box / "tmp"),
            "FAKE_INSTANCE_ID": instance_id,
        }
        if connect_url:
            env["FAKE_AZURE_CONNECT_URL"] = connect_url
        return env

    def run(self, instance_id: str, command_id: str, commands: list[str],
            working_directory: str | None, timeout_seconds: float,
            connect_url: str | None) -> RunResult:
        """Runs one command on the instance as SSM's agent would; blocks until it ends."""
        box = self.sandbox(instance_id)
        orchestration = (box / "var/lib/amazon/ssm" / instance_id / "document/orchestration"
                         / command_id / "awsrunShellScript/0.awsrunShellScript")
        orchestration.mkdir(parents=True, exist_ok=True)
        script = orchestration / "_script.sh"
        script.write_text("\n".join(commands), encoding="utf-8")
        script.chmod(0o700)
        cwd = box / working_directory.lstrip("/") if working_directory else orchestration
        process = subprocess.Popen(
            ["sh", "-c", str(script)], cwd=cwd if cwd.is_dir() else orchestration,
            env=self.environment(instance_id, connect_url), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, umask=0o022,
            start_new_session=True)
        with self.lock:
            self.processes[(instance_id, command_id)] = process
        timed_out = False
        try:
            out, err = process.communicate(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process)
            out, err = process.communicate()
        finally:
            with self.lock:
                self.processes.pop((instance_id, command_id), None)
        stdout = out.decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
        (orchestration / "stdout").write_text(stdout, encoding="utf-8")
        (orchestration / "stderr").write_text(stderr, encoding="utf-8")
        return RunResult(process.returncode, stdout, stderr, timed_out)

    def cancel(self, instance_id: str, command_id: str) -> None:
        """Stops a running command (CancelCommand)."""
        with self.lock:
            process = self.processes.get((instance_id, command_id))
        if process is not None:
            _kill_group(process)

    def cleanup(self) -> None:
        """Removes the emulator's own temporary root (a configured root is the caller's)."""
        for process in list(self.processes.values()):
            _kill_group(process)
        if self.owned_root is not None:
            shutil.rmtree(self.owned_root, ignore_errors=True)

    # ----- the instances' IMDSv2 and the fake installer ----------------------------------------

    def serve(self, environ: dict[str, Any], path: str) -> Response | None:
        """``/_imds/<instance>/latest/...`` and ``/_agent/azcmagent-linux``; None for other paths."""
        method = environ.get("REQUEST_METHOD", "GET")
        if path == INSTALLER_PATH:
            if method != "GET":
                return _text(405, "GET only")
            return _text(200, fake_installer())
        if not path.startswith(IMDS_PREFIX):
            return None
        instance_id, _, rest = path[len(IMDS_PREFIX):].partition("/")
        with self.lock:
            known = instance_id in self.dirs
        if not known:
            return _text(404, "no such instance sandbox")
        if rest == "latest/api/token":
            ttl = environ.get("HTTP_X_AWS_EC2_METADATA_TOKEN_TTL_SECONDS", "")
            if method != "PUT":
                return _text(405, "PUT only")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return _text(400, "missing or invalid X-aws-ec2-metadata-token-ttl-seconds")
            token = secrets.token_urlsafe(24)
            with self.lock:
                self.imds_tokens[token] = instance_id
            return _text(200, token)
        with self.lock:
            owner = self.imds_tokens.get(environ.get("HTTP_X_AWS_EC2_METADATA_TOKEN", ""))
        if owner != instance_id:
            return _text(401, "")
        if rest == "latest/meta-data/instance-id" and method == "GET":
            return _text(200, instance_id)
        return _text(404, "not found")


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _text(status: int, body: str) -> Response:
    return status, [("Content-Type", "text/plain")], body.encode()
