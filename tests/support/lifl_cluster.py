"""Multi-node harness: a real `lifl controller` and real `lifl agent` processes, each agent in
its own network namespace, the namespaces joined by veth pairs to a bridge in the test's
namespace (where the controller and the test's clients are). Created and removed by the test;
every wait is bounded.

  test namespace: bridge lbr<id> 10.<a>.<b>.1/24, controller on it
  namespace lifl<id>-<node>: veth 10.<a>.<b>.<10+k>/24, loopback up, one agent
"""
from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request

from lifl_certs import issue, make_ca
from lifl_client import Client
from lifl_harness import LIFL_BIN, wait_ready


def sh(*args, check=True):
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def http_json(url, timeout=5, token=None, context=None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout, context=context) as r:
        return json.loads(r.read())


class Process:
    """A lifl process writing its port to a file; ready once GET /readyz answers 200."""

    def __init__(self, name, args, host, tmp, netns=None, tls=None):
        """tls: the ssl.SSLContext to reach it with, where it speaks https."""
        self.name, self.host, self.tmp, self.netns, self.tls = name, host, tmp, netns, tls
        self.port_file = os.path.join(tmp, f"{name}.port")
        self.log_path = os.path.join(tmp, f"{name}.log")
        self.args = args
        self.start()

    def start(self, port=0):
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        args = prefix + self.args + ["--port", str(port), "--port-file", self.port_file]
        if getattr(self, "log", None):
            self.log.close()
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = wait_ready(self.proc, self.port_file, self.host, self.name, self.log_tail, 30,
                              scheme="https" if self.tls else "http", context=self.tls)
        self.port = int(self.url.rsplit(":", 1)[1])

    def kill(self):
        """kill -9, as a crash."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()

    def log_tail(self, lines=40):
        self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-lines:])


class Cluster:
    """A controller and `nodes` agents in their own network namespaces."""
    created = 0  # per process: each cluster's interfaces get names of their own

    def __init__(self, nodes=("a", "b", "c"), heartbeat=0.3, node_timeout=1.5, warm_pool=4,
                 store_bytes=256 << 20, auth=False, tls=False, agent_args=None, agent_admin=False,
                 agent_functions=None):
        """auth: security.auth on the controller and the agents (docs/security.md); the
        agents share the controller's cluster credential file, and self.admin_token holds the
        admin credential. tls: every node speaks HTTPS only and asks for a certificate of the
        cluster's CA (mTLS), its own issued for its address; self.tls is the SSLContext of a
        client with such a certificate (self.certs holds the files). agent_args: {node: [more
        `lifl agent` arguments]}. agent_admin: with auth, the agents hold the admin credential
        too (security.admin_token_file: the controller's). agent_functions: {node: {key:
        value}} more `functions:` keys of that node's config (docs/config.md)."""
        ident = os.getpid() % 10000
        Cluster.created += 1
        self.tag = f"{ident}x{Cluster.created}"
        self.subnet = f"10.{100 + ident % 100}.{(ident // 100 + 7 * Cluster.created) % 250}"
        self.bridge = f"lbr{ident}"
        self.tmpdir = tempfile.TemporaryDirectory(prefix="lifl-cluster-")
        self.tmp = self.tmpdir.name
        self.namespaces, self.links, self.agents, self.controller = [], [], {}, None
        self.admin_token = None
        self.store_paths = []
        self.tls = self._certificates(nodes) if tls else None
        try:
            self._network(nodes)
            cfg = os.path.join(self.tmp, "controller.yaml")
            with open(cfg, "w") as f:
                f.write(f"heartbeat_seconds: {heartbeat}\nnode_timeout_seconds: {node_timeout}\n"
                        f"command_timeout_seconds: 10\n" + ("security:\n  auth: true\n" if auth else ""))
                if tls:
                    cert, key = self.certs["controller"]
                    f.write(f"tls:\n  cert_file: {cert}\n  key_file: {key}\n"
                            f"  client_ca_file: {self.certs['ca']}\n  ca_file: {self.certs['ca']}\n")
            self.controller_args = [LIFL_BIN, "controller", "--bind", f"{self.subnet}.1", "--config", cfg,
                                    "--data-dir", os.path.join(self.tmp, "controller")]
            self.controller = Process("controller", self.controller_args, f"{self.subnet}.1", self.tmp,
                                      tls=self.tls)
            controller_auth = os.path.join(self.tmp, "controller", "auth")
            if auth:
                with open(os.path.join(controller_auth, "admin.token")) as f:
                    self.admin_token = f.read().strip()
            for k, node in enumerate(nodes):
                ip = f"{self.subnet}.{10 + k}"
                store = f"/dev/shm/lifl-test-{self.tag}-{node}"
                self.store_paths.append(store)
                acfg = os.path.join(self.tmp, f"agent-{node}.yaml")
                with open(acfg, "w") as f:
                    f.write(f"store:\n  path: {store}\n  bytes: {store_bytes}\n"
                            f"functions:\n  warm_pool: {warm_pool}\n")
                    for key, value in (agent_functions or {}).get(node, {}).items():
                        f.write(f"  {key}: {value}\n")
                    if auth:
                        f.write("security:\n  auth: true\n"
                                f"  cluster_token_file: {controller_auth}/cluster.token\n")
                        if agent_admin:
                            f.write(f"  admin_token_file: {controller_auth}/admin.token\n")
                    if tls:
                        f.write(self.agent_tls_config(*self.certs[node]))
                args = [LIFL_BIN, "agent", "--controller", self.controller.url, "--name", node,
                        "--bind", ip, "--config", acfg, "--data-dir", os.path.join(self.tmp, f"data-{node}"),
                        *map(str, (agent_args or {}).get(node, []))]
                self.agents[node] = Process(f"agent-{node}", args, ip, self.tmp, netns=self.ns(node),
                                            tls=self.tls)
            self.wait_nodes(len(nodes))
        except BaseException:
            self.close()
            raise
        self.client = Client(self.controller.url, token=self.admin_token, tls=self.tls)

    def _certificates(self, nodes):
        """The cluster's CA and every node's certificate (for its address), a client's, and a
        foreign CA's client certificate; the client's SSLContext."""
        folder = os.path.join(self.tmp, "certs")
        os.mkdir(folder)
        ca_key, ca_cert, ca = make_ca(folder, "cluster-ca")
        self.certs = {"ca": ca, "controller": issue(folder, "controller", ca_key, ca_cert, [f"{self.subnet}.1"]),
                      "client": issue(folder, "client", ca_key, ca_cert)}
        for k, node in enumerate(nodes):
            self.certs[node] = issue(folder, f"node-{node}", ca_key, ca_cert, [f"{self.subnet}.{10 + k}"])
        other_key, other_cert, self.certs["foreign_ca"] = make_ca(folder, "foreign-ca")
        self.certs["foreign"] = issue(folder, "foreign", other_key, other_cert, [f"{self.subnet}.1"])
        return self.tls_context()

    def tls_context(self, cert="client", trust=None):
        """A client's SSLContext: trusting `trust` (default the cluster's CA), presenting
        self.certs[cert] (None: no certificate)."""
        ctx = ssl.create_default_context(cafile=trust or self.certs["ca"])
        if cert:
            ctx.load_cert_chain(*self.certs[cert])
        return ctx

    def agent_tls_config(self, cert, key, ca=None):
        """An agent's YAML for mTLS everywhere: its gateway's certificate, the CA its clients'
        (and the controller's) certificates must chain to, and the cluster section's trust and
        own certificate for its calls to the controller and to other agents."""
        ca = ca or self.certs["ca"]
        return (f"gateway:\n  tls_cert_file: {cert}\n  tls_key_file: {key}\n"
                f"  tls_client_ca_file: {self.certs['ca']}\n"
                f"cluster:\n  ca_file: {ca}\n  cert_file: {cert}\n  key_file: {key}\n")

    def ns(self, node):
        return f"lifl{self.tag}-{node}"

    def _network(self, nodes):
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for k, node in enumerate(nodes):
            ns = self.ns(node)
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            host_end, ns_end = f"lv{self.tag}{node}", f"lp{self.tag}{node}"
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            self.links.append(host_end)
            sh("ip", "link", "set", ns_end, "netns", ns)
            sh("ip", "link", "set", host_end, "master", self.bridge)
            sh("ip", "link", "set", host_end, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.subnet}.{10 + k}/24", "dev", ns_end)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_end, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def wait_nodes(self, live, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nodes = http_json(self.controller.url + "/v1/nodes", token=self.admin_token, context=self.tls)
            if sum(n["state"] == "live" for n in nodes) == live and len(nodes) >= live:
                return nodes
            time.sleep(0.05)
        raise TimeoutError(f"{live} live nodes expected: {nodes}")

    def gateway(self, node) -> Client:
        return Client(self.agents[node].url, tls=self.tls)

    def local_status(self, node, job):
        return http_json(f"{self.agents[node].url}/v1/cluster/jobs/{job}", context=self.tls)

    def logs(self):
        out = [f"---- controller ----\n{self.controller.log_tail()}"] if self.controller else []
        out += [f"---- agent {n} ----\n{a.log_tail()}" for n, a in self.agents.items()]
        return "\n".join(out)

    def close(self):
        if getattr(self, "client", None):
            self.client.close()
        for a in self.agents.values():
            a.stop()
        if self.controller:
            self.controller.stop()
        for link in self.links:
            sh("ip", "link", "del", link, check=False)  # both ends of the pair, at once
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
        for p in self.store_paths:
            if os.path.exists(p):
                os.unlink(p)
        self.tmpdir.cleanup()
