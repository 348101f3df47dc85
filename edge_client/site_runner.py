"""The site's ClientApp runner: a site runs only code it pinned.

``fedfleet site join`` starts its SuperNode with ``--isolation process``: the SuperNode
then starts no app process itself (with the default ``subprocess`` isolation it would
spawn ``flower-superexec``, which runs ``flwr-clientapp`` on whatever FAB the run
brought — the code of anyone who can submit a run). Instead, :func:`serve` — a thread
of ``site join`` — takes each task from the SuperNode's Runtime API exactly as Flower's
SuperExec does (``AcquireTask``, then with the task's token ``PullTaskInput`` /
``PullMessages`` / ``PushMessages`` / ``PushTaskOutput``, the calls of
``flwr.supernode.runtime.run_clientapp``) and decides, before any code of the run is
loaded, what runs (:func:`decide`):

* **fedfleet's own ClientApp** (``[code] fedfleet-app = true``, the default): the FAB's
  ``pyproject.toml`` names the component ``edge_client.app:app``. The site then calls
  the ``edge_client.app.app`` *installed with this fedfleet* — the FAB's files are never
  extracted, imported or put on ``sys.path``, so a FAB that names this component (with
  its own ``edge_client/app.py`` inside) still gets the installed code. What the run can
  choose is its run config, and the installed app's ``site_mod`` enforces the site
  policy on that.
* **a Flower app pinned by hash** (``[code] fab-sha256``): the task's FAB hash is one of
  them. The SuperNode stores a FAB under the SHA-256 it computes of the FAB's bytes
  (Flower's FAB hash, ``flwr build``), and the task is handed to Flower's own
  ``flwr-clientapp`` with its token, which loads that FAB — as Flower would.
* **anything else** is refused: an error reply (code
  :data:`~edge_client.protocol.keys.ERR_SITE_CODE_NOT_PINNED`, reason prefixed as every
  site-policy refusal and naming the site, the component and the FAB hash) is pushed to
  the coordinator, and a ``refusal`` entry is appended to the site's audit log. Nothing
  of the FAB was executed.

Flower 1.42's own hook, ``--trusted-entities`` (FAB signatures), needs a SuperLink that
verifies licences (``Fab.verifications``); the open-source SuperLink sends none, so every
FAB would be refused, and a signature says who built a FAB, not that the site agreed to
run it. The process isolation mode is Flower's supported way to run app processes that
the SuperNode did not start; this runner is such a process.

Each task runs in its own thread of this process (as Flower runs each in its own process):
a task whose input never arrives, because its run was stopped while the SuperNode held
it, does not hold up the next run's tasks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import tomllib
from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    SendTaskHeartbeatRequest,
)
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from edge_client.audit import AuditLog
from edge_client.protocol import keys as k
from edge_client.site_config import FEDFLEET_CLIENTAPP, SiteConfig
from edge_client.site_policy import REFUSAL_PREFIX, payload_digest

log = logging.getLogger(__name__)

Verdict = Literal["fedfleet-app", "pinned-fab", "refused"]


@dataclass(frozen=True)
class Decision:
    """What the site does with a run's FAB: run the installed fedfleet ClientApp, hand a
    hash-pinned FAB to Flower's runner, or refuse (``reason``)."""

    verdict: Verdict
    fab_sha256: str
    component: str
    reason: str = ""


def fab_clientapp(content: bytes) -> str:
    """The ``clientapp`` component a FAB's ``pyproject.toml`` declares ("" if none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            doc = tomllib.loads(archive.read("pyproject.toml").decode())
    except (KeyError, zipfile.BadZipFile, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""
    components = doc.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    value = components.get("clientapp", "") if isinstance(components, dict) else ""
    return value if isinstance(value, str) else ""


def decide(config: SiteConfig, content: bytes) -> Decision:
    """What this site runs for a FAB of bytes ``content`` (see the module doc)."""
    sha = hashlib.sha256(content).hexdigest()
    component = fab_clientapp(content)
    if sha in config.code.fab_sha256:
        return Decision("pinned-fab", sha, component)
    if config.code.fedfleet_app and component == FEDFLEET_CLIENTAPP:
        return Decision("fedfleet-app", sha, component)
    what = (
        f"is neither fedfleet's own {FEDFLEET_CLIENTAPP} nor"
        if config.code.fedfleet_app
        else "is not"
    )
    reason = (
        f"site {config.name} runs only code it pinned: this run's ClientApp "
        f"{component or '(none declared)'!r} (FAB sha256 {sha}) {what} a FAB pinned in "
        "site.toml [code] fab-sha256"
    )
    return Decision("refused", sha, component, reason)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def refuse(config: SiteConfig, message: Message, decision: Decision) -> Message:
    """The error reply to an unpinned run's instruction; its refusal is audited."""
    reply = Message(
        Error(code=k.ERR_SITE_CODE_NOT_PINNED, reason=REFUSAL_PREFIX + decision.reason),
        reply_to=message,
    )
    size, sha = payload_digest(reply)
    AuditLog.for_site(config).append(
        {
            "time": _now(),
            "site": config.name,
            "run": message.metadata.run_id,
            "round": None,
            "type": message.metadata.message_type,
            "kind": "refusal",
            "size": size,
            "sha256": sha,
            "fab-sha256": decision.fab_sha256,
            "clientapp": decision.component,
            "dp": {},
            "epsilon": None,
            "reason": reply.error.reason,
        }
    )
    log.warning(
        "site %s: refused run %s: %s", config.name, message.metadata.run_id, decision.reason
    )
    return reply


def run_installed_app(message: Message, context: Context) -> Message:
    """fedfleet's ClientApp as installed here (with its site policy and audit mods)."""
    from edge_client.app import app

    try:
        return app(message=message, context=context)
    except Exception as exc:  # an error reply the coordinator records, not a dead runner
        log.exception("fedfleet's ClientApp failed")
        reason = f"{type(exc).__name__}: {exc}"
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)


class SiteRunner:
    """Takes the SuperNode's tasks and runs or refuses each in its own thread (module doc).

    ``address``: the SuperNode's Runtime API (``127.0.0.1:<supernode.port>``).
    """

    def __init__(self, config: SiteConfig, *, address: str, poll_s: float = 0.5) -> None:
        self.config = config
        self.address = address
        self.poll_s = poll_s
        self.stopped = threading.Event()
        self.children: list[subprocess.Popen[bytes]] = []

    def _client(self, *interceptors: object, component: str) -> RuntimeHttpClient:
        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=True,
            root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name=component), *interceptors],  # type: ignore[list-item]
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def serve(self) -> None:
        """Run until :meth:`stop`; a SuperNode that is down or restarting is waited for."""
        client = self._client(component="SuperExec")
        try:
            while not self.stopped.is_set():
                self.children = [c for c in self.children if c.poll() is None]
                try:
                    res = client.AcquireTask(
                        AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
                    )
                except httpx.HTTPError:
                    self.stopped.wait(self.poll_s)
                    continue
                if res.HasField("task") and res.token:
                    # Each task in its own thread, as Flower runs each in its own process:
                    # a task whose input never arrives (its run was stopped while the
                    # SuperNode held it) must not hold up the tasks behind it.
                    threading.Thread(
                        target=self.run_task,
                        args=(res.task, res.token),
                        name=f"site-task-{res.task.task_id}",
                        daemon=True,
                    ).start()
                else:
                    self.stopped.wait(self.poll_s)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop taking tasks, and end the pinned apps' processes it started (their trees)."""
        from fedfleet.stopping import stop_tree

        self.stopped.set()
        for child in self.children:
            stop_tree(child, timeout=5.0)

    def run_task(self, task: Task, token: str) -> None:
        """Run or refuse one task (its token authenticates the Runtime API calls)."""
        if task.fab_hash in self.config.code.fab_sha256:
            self._launch_pinned(task, token)
            return
        client = self._client(RuntimeTokenHttpInterceptor(token), component="flwr-clientapp")

        def beat() -> bool:  # Flower's own heartbeat fn raises SIGINT on a refused beat
            try:
                client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
            except httpx.HTTPError:
                return False
            return True

        heartbeat = HeartbeatSender(beat)
        heartbeat.start()
        context: Context | None = None
        status, details = SubStatus.FAILED, "the site's runner failed"
        try:
            message, context, _run, fab = pull_task_input(client)
            decision = decide(self.config, fab.content)
            if decision.verdict == "pinned-fab":  # pinned bytes, but the task named others
                decision = Decision(
                    "refused",
                    decision.fab_sha256,
                    decision.component,
                    f"site {self.config.name}: the task names FAB {task.fab_hash}, its "
                    f"content hashes to {decision.fab_sha256}",
                )
            if decision.verdict == "fedfleet-app":
                reply = run_installed_app(message, context)
                status, details = SubStatus.COMPLETED, ""
            else:
                reply = refuse(self.config, message, decision)
                details = decision.reason
            push_message(client, reply, context)
        except Exception:
            log.exception(
                "site %s: task %s of run %s failed", self.config.name, task.task_id, task.run_id
            )
        finally:
            push_task_output(client=client, context=context, sub_status=status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()

    def _launch_pinned(self, task: Task, token: str) -> None:
        """Hand a task of a hash-pinned FAB to Flower's ``flwr-clientapp``."""
        AuditLog.for_site(self.config).append(
            {
                "time": _now(),
                "site": self.config.name,
                "run": task.run_id,
                "kind": "pinned-app",
                "fab-sha256": task.fab_hash,
                "reason": None,
            }
        )
        command = [
            str(Path(sys.executable).parent / "flwr-clientapp"),
            "--insecure",
            "--runtime-api-address",
            self.address,
            "--token",
            token,
            "--parent-pid",
            str(os.getpid()),
        ]
        self.children.append(subprocess.Popen(command))


def start_runner(config: SiteConfig) -> SiteRunner:
    """A :class:`SiteRunner` for ``config``'s SuperNode, serving in a daemon thread."""
    runner = SiteRunner(config, address=f"127.0.0.1:{config.runtime_port}")
    threading.Thread(target=runner.serve, name="site-runner", daemon=True).start()
    return runner
