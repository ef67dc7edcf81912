"""A private Redis Cluster for tests: three masters on free localhost ports, persistence
off, in a directory of its own; never the machine's Redis on 6379.

    cluster = start_cluster(workdir)    # cluster_state:ok on every node when it returns
    cluster.url                         # a node that does not own the gateway's slot
    cluster.add_replica(master)         # a fourth node replicating `master` (failover tests)
    cluster.stop()
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ingress.dev import free_port, redis_answers

MASTERS = 3
READY_S = 20.0
NODE_TIMEOUT_MS = 5000  # how long a master may be silent before the others fail it
_CLI = shutil.which("redis-cli") or "redis-cli"


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    port: int

    def command(self, *words: str) -> str:
        """One command to this node through redis-cli; its raw output (set-up and checks)."""
        done = subprocess.run([_CLI, "-h", "127.0.0.1", "-p", str(self.port), *words],
                              capture_output=True, check=True, timeout=10)
        return done.stdout.decode()

    def cluster_info(self) -> dict[str, str]:
        lines = self.command("CLUSTER", "INFO").splitlines()
        return dict(line.strip().split(":", 1) for line in lines if ":" in line)


@dataclass
class Cluster:
    nodes: list[Node]
    workdir: Path
    node_timeout_ms: int = NODE_TIMEOUT_MS

    def owner(self, slot: int) -> Node:
        """The master serving `slot` (CLUSTER SHARDS would say the same; NODES is 7.0's)."""
        for line in self.nodes[0].command("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if len(fields) < 9 or "master" not in fields[2]:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def slot(self, key: str) -> int:
        return int(self.nodes[0].command("CLUSTER", "KEYSLOT", key))

    @property
    def url(self) -> str:
        """A node that does not own the slot of the gateway's names: a plain client on it
        would be answered MOVED, so only a real cluster client gets anywhere."""
        owner = self.owner(self.slot("{sb}"))
        other = next(node for node in self.nodes if node is not owner)
        return f"redis://127.0.0.1:{other.port}/0"

    def node_id(self, node: Node) -> str:
        return node.command("CLUSTER", "MYID").strip()

    def add_replica(self, master: Node) -> Node:
        """Start one more node and make it `master`'s replica; returns once it has synced."""
        replica = _start_node(self.workdir / f"node{len(self.nodes)}", self.node_timeout_ms)
        self.nodes.append(replica)
        _wait_answering([replica], time.monotonic() + READY_S)
        subprocess.run([_CLI, "--cluster", "add-node", f"127.0.0.1:{replica.port}",
                        f"127.0.0.1:{master.port}", "--cluster-slave",
                        "--cluster-master-id", self.node_id(master)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=READY_S)
        deadline = time.monotonic() + READY_S
        while "master_link_status:up" not in replica.command("INFO", "replication") \
                or replica.cluster_info().get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync with its master")
            time.sleep(0.1)
        return replica

    def flush(self) -> None:
        for node in self.nodes:
            assert node.command("FLUSHALL").strip() == "OK"

    def stop(self) -> None:
        for node in self.nodes:
            node.process.terminate()
        for node in self.nodes:
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=5)


def start_cluster(workdir: Path, masters: int = MASTERS,
                  node_timeout_ms: int = NODE_TIMEOUT_MS) -> Cluster:
    """Start `masters` cluster-mode redis-servers and join them; ready on return."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise RuntimeError("redis-server and redis-cli are needed (apt-get install redis-server)")
    nodes: list[Node] = []
    try:
        for index in range(masters):
            nodes.append(_start_node(workdir / f"node{index}", node_timeout_ms))
        deadline = time.monotonic() + READY_S
        _wait_answering(nodes, deadline)
        subprocess.run([_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=READY_S)
        while not all(node.cluster_info().get("cluster_state") == "ok"
                      and node.cluster_info().get("cluster_known_nodes") == str(masters)
                      for node in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)
    except BaseException:
        Cluster(nodes, workdir).stop()
        raise
    return Cluster(nodes, workdir, node_timeout_ms)


def _start_node(home: Path, node_timeout_ms: int) -> Node:
    port, bus = free_port(), free_port()  # the bus port too: not port + 10000
    home.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port),
         "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-port", str(bus),
         "--cluster-config-file", str(home / "nodes.conf"),
         "--cluster-node-timeout", str(node_timeout_ms), "--save", "", "--appendonly", "no",
         "--dir", str(home), "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Node(process, port)


def _wait_answering(nodes: list[Node], deadline: float) -> None:
    for node in nodes:
        while not redis_answers("127.0.0.1", node.port):
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cluster node on port {node.port} did not start")
            time.sleep(0.05)


def move_slot(cluster: Cluster, slot: int, target: Node, batch: int = 100) -> int:
    """Move one slot and its keys to `target`, as `redis-cli --cluster reshard` does for
    each slot it moves (IMPORTING/MIGRATING, MIGRATE in batches, then SETSLOT NODE on
    every master); returns how many keys moved."""
    source = cluster.owner(slot)
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)
    target.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
    source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
    moved = 0
    while keys := source.command("CLUSTER", "GETKEYSINSLOT", str(slot), str(batch)).split():
        answer = source.command("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000",
                                "REPLACE", "KEYS", *keys)
        if answer.strip() not in ("OK", "NOKEY"):
            raise RuntimeError(f"MIGRATE answered {answer!r}")
        moved += len(keys)
    for node in (target, source, *(n for n in cluster.nodes if n not in (source, target))):
        node.command("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
    return moved
