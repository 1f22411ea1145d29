"""A real supervisord of the test's own (PyPI ``supervisor``), for the verified
restart: programs are config files in ``conf.d`` that a test writes, so
``supervisorctl reread`` and ``update`` see real changes.

    with Supervisord(tmp_path / "sv") as sv:
        sv.program("web", "python3 -m http.server 0")
        sv.ctl("update")
        deploy with the last command sv.restart_command("web")

``ctl_path`` is the venv's ``supervisorctl`` by full path: the tests' servers put
a stand-in ``supervisorctl`` first on their PATH, and the deploy command must
reach this one (``-c`` names this supervisord's config).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from tests.helpers.processes import stop_process

BIN = Path(sys.executable).parent


def supervisor_installed() -> bool:
    return (BIN / "supervisord").exists() and (BIN / "supervisorctl").exists()


class Supervisord:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.conf = directory / "supervisord.conf"
        self.programs = directory / "conf.d"
        self.ctl_path = BIN / "supervisorctl"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Supervisord:
        self.programs.mkdir(parents=True, exist_ok=True)
        sock = self.dir / "supervisor.sock"
        self.conf.write_text(f"""\
[unix_http_server]
file={sock}

[supervisord]
logfile={self.dir}/supervisord.log
pidfile={self.dir}/supervisord.pid
childlogdir={self.dir}
directory={self.dir}
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sock}

[include]
files = {self.programs}/*.conf
""")
        self.process = subprocess.Popen(
            [str(BIN / "supervisord"), "-c", str(self.conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while self.ctl("pid").returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"supervisord did not start: {self.log()}")
            time.sleep(0.05)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.ctl("stop", "all")
            stop_process(self.process, grace=15)

    def log(self) -> str:
        path = self.dir / "supervisord.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def program(self, name: str, command: str, *, startsecs: int = 1, group: str | None = None,
                **options: str) -> None:
        """Write (or rewrite) a program's config file; not loaded until an update."""
        extra = "".join(f"{k}={v}\n" for k, v in options.items())
        section = f"program:{name}"
        text = (f"[{section}]\ncommand={command}\nstartsecs={startsecs}\nstartretries=0\n"
                f"autorestart=false\nautostart=true\nstopwaitsecs=2\n"
                f"directory={self.dir}\n{extra}")
        if group is not None:
            text += f"\n[group:{group}]\nprograms={name}\n"
        (self.programs / f"{group or name}.conf").write_text(text)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.ctl_path), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=30)

    def restart_command(self, *programs: str, action: str = "restart") -> str:
        """The deploy's last command for this supervisord."""
        return f"{self.ctl_path} -c {self.conf} {action} {' '.join(programs)}"

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
