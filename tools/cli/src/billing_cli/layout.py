"""Where a local stack lives on disk and which ports it uses.

The dev stack (``billing up``) and the test stack (integration fixtures) are two layouts of
the same launcher: separate data dirs and a port offset, so tests never touch a running
dev stack. Downloads (Kafka jars, stripe-mock) are cached once for both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "3.9.1"
STRIPE_MOCK_VERSION = "v0.203.0"

SERVICES: dict[str, tuple[str, int]] = {
    # name -> (python package, dev port)
    "checkout": ("checkout", 8101),
    "webhook-ingest": ("webhook_ingest", 8102),
    "ledger": ("ledger", 8103),
    "metering": ("metering", 8104),
    "reconciler": ("reconciler", 8105),
}


def repo_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "services").is_dir():
            return parent
    return Path.cwd()


@dataclass(frozen=True)
class Layout:
    name: str
    root: Path
    port_offset: int = 0

    @classmethod
    def dev(cls) -> Layout:
        return cls("stack", repo_root())

    @classmethod
    def selected(cls) -> Layout:
        """The dev stack, or the one ``BILLING_LOCAL_STACK`` names (test, chaos, drill)."""
        named = {"test": cls.test, "chaos": cls.chaos, "drill": cls.drill}
        return named.get(os.environ.get("BILLING_LOCAL_STACK", ""), cls.dev)()

    @classmethod
    def test(cls) -> Layout:
        return cls("test-stack", repo_root(), 10000)

    @classmethod
    def chaos(cls) -> Layout:
        """The chaos harness's own stack (``billing chaos``): wiped and rebuilt every run.

        +5000 keeps every port below 32768, where Linux never hands out an ephemeral port:
        a restart must be able to bind its port again at once.
        """
        return cls("chaos", repo_root(), 5000)

    @classmethod
    def drill(cls) -> Layout:
        """The restore drill's own stack (``tests/drill``): WAL archived, rebuilt every run."""
        return cls("drill", repo_root(), 7000)

    @property
    def archives_wal(self) -> bool:
        """The stacks whose every commit can be restored (``billing backup``/``restore``)."""
        return self.name in ("stack", "drill")

    @property
    def acknowledged_commits_durable(self) -> bool:
        """False for the test cluster, which acknowledges a commit before its WAL is written.

        The chaos stack SIGKILLs PostgreSQL and counts every acknowledged write, so an
        asynchronous commit lost in the crash would be reported as lost money.
        """
        return self.name != "test-stack"

    @property
    def local(self) -> Path:
        return self.root / ".local"

    @property
    def cache(self) -> Path:
        return self.local / "cache"

    @property
    def bin(self) -> Path:
        return self.local / "bin"

    @property
    def state(self) -> Path:
        return self.local / self.name

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def keys(self) -> Path:
        return self.state / "keys"

    def port(self, dev_port: int) -> int:
        return dev_port + self.port_offset

    @property
    def postgres_port(self) -> int:
        return self.port(15432)

    @property
    def kafka_port(self) -> int:
        return self.port(19092)

    @property
    def kafka_controller_port(self) -> int:
        return self.port(19093)

    @property
    def stripe_mock_port(self) -> int:
        return self.port(12111)

    @property
    def devllm_port(self) -> int:
        return self.port(8110)

    @property
    def web_port(self) -> int:
        return self.port(5173)

    @property
    def prometheus_port(self) -> int:
        return self.port(19090)

    def service_port(self, service: str) -> int:
        return self.port(SERVICES[service][1])
