"""The Kubernetes manifests (deploy/kustomize, docs/kubernetes.md), checked offline: every
overlay renders with `kubectl kustomize`; every rendered object is valid against its
Kubernetes (or Prometheus operator) schema, by deploy/validate/validate.mjs with the npm
package kubernetes-models (installed by scripts/setup.sh); the security and sizing promises
of the DaemonSet hold in every overlay; yamllint passes on every YAML file of the repository. A
manifest broken on purpose fails the validation, so that the validation is seen to work."""
import glob
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
OVERLAYS = sorted(glob.glob(os.path.join(DEPLOY, "kustomize", "overlays", "*")))
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def render(directory):
    r = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory}: {r.stderr}")
    return r.stdout


def validate(text):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        return subprocess.run(["node", os.path.join(DEPLOY, "validate", "validate.mjs"), f.name],
                              capture_output=True, text=True, timeout=120)


def quantity(text):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(text))
    return int(m.group(1)) * UNITS.get(m.group(2), 1)


class Manifests(unittest.TestCase):
    def test_every_overlay_renders_and_validates(self):
        self.assertEqual([os.path.basename(o) for o in OVERLAYS],
                         ["dpdk", "kind", "monitoring", "production"])
        for overlay in OVERLAYS:
            with self.subTest(overlay=os.path.basename(overlay)):
                text = render(overlay)
                r = validate(text)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                objects = [d for d in yaml.safe_load_all(text) if d]
                self.assertEqual(r.stdout.count("\nvalid ") + r.stdout.startswith("valid "),
                                 len(objects), r.stdout)
                self.check_promises(objects, os.path.basename(overlay))

    def check_promises(self, objects, overlay):
        by = {(o["kind"], o["metadata"]["name"].rsplit("-", 1)[0]
               if o["kind"] == "ConfigMap" else o["metadata"]["name"]): o for o in objects}
        for o in objects:
            if o["kind"] != "Namespace":
                self.assertEqual(o["metadata"].get("namespace"), "lifl", o["metadata"])
        agent = by[("DaemonSet", "lifl-agent")]["spec"]["template"]["spec"]
        container = agent["containers"][0]
        security = container["securityContext"]
        self.assertFalse(security["privileged"])
        self.assertFalse(security["allowPrivilegeEscalation"])
        self.assertEqual(security["capabilities"]["drop"], ["ALL"])
        self.assertEqual(sorted(security["capabilities"]["add"]), ["BPF", "NET_ADMIN"])
        self.assertTrue(agent["automountServiceAccountToken"] is False)
        # Only the init step that mounts bpffs is privileged.
        self.assertEqual([c["name"] for c in agent["initContainers"]
                          if c.get("securityContext", {}).get("privileged")], ["mount-bpffs"])
        probes = (container["livenessProbe"]["httpGet"]["path"],
                  container["readinessProbe"]["httpGet"]["path"])
        self.assertEqual(probes, ("/livez", "/readyz"))
        # The store (store.bytes of the ConfigMap) fits the memory volume on /dev/shm.
        config = yaml.safe_load(by[("ConfigMap", "lifl-agent-config")]["data"]["config.yaml"])
        volumes = {v["name"]: v for v in agent["volumes"]}
        store = volumes["store"]["emptyDir"]
        self.assertEqual(store["medium"], "Memory")
        self.assertLess(config["store"]["bytes"], quantity(store["sizeLimit"]), overlay)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        self.assertEqual(mounts["store"], "/dev/shm")
        self.assertEqual(volumes["bpffs"]["hostPath"]["path"], "/sys/fs/bpf")
        controller = by[("Deployment", "lifl-controller")]["spec"]["template"]["spec"]
        self.assertTrue(controller["securityContext"]["runAsNonRoot"])
        self.assertEqual(controller["containers"][0]["securityContext"]["capabilities"]["drop"],
                         ["ALL"])
        self.assertIn(("NetworkPolicy", "lifl-controller-ingress"), by)
        self.assertIn(("PodDisruptionBudget", "lifl-agent"), by)
        self.assertEqual(("ServiceMonitor", "lifl-agent") in by, overlay == "monitoring")
        # router: dpdk gets hugepages where DPDK looks, requested as much as limited (the
        # rule for hugepages), and keeps the base's CPU and memory requests.
        self.assertEqual(config["router"], "dpdk" if overlay == "dpdk" else "ebpf")
        if overlay == "dpdk":
            self.assertEqual(volumes["hugepages"]["emptyDir"]["medium"], "HugePages-2Mi")
            self.assertEqual(mounts["hugepages"], "/dev/hugepages")
            resources = container["resources"]
            self.assertEqual(resources["requests"]["hugepages-2Mi"],
                             resources["limits"]["hugepages-2Mi"])
            self.assertIn("cpu", resources["requests"])
            self.assertIn("memory", resources["limits"])
        else:
            self.assertNotIn("hugepages", volumes)

    def test_a_broken_manifest_fails_validation(self):
        # The kind overlay copied with a port given as a name where a number belongs, and a
        # DaemonSet without its selector: both must be refused, naming the fields.
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(os.path.join(DEPLOY, "kustomize"), os.path.join(tmp, "kustomize"))
            agent = os.path.join(tmp, "kustomize", "base", "agent.yaml")
            with open(agent) as f:
                text = f.read()
            text = text.replace("containerPort: 8080", 'containerPort: "gateway"', 1)
            text = text.replace("  selector:\n    matchLabels:\n      app.kubernetes.io/name: lifl-agent\n  updateStrategy",
                                "  updateStrategy", 1)
            with open(agent, "w") as f:
                f.write(text)
            r = validate(render(os.path.join(tmp, "kustomize", "overlays", "kind")))
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("containerPort must be integer", r.stdout)
            self.assertIn("must have required property selector", r.stdout)

    def test_yamllint(self):
        # Every YAML file of the repository: the manifests, the example configs and jobs.
        files = sorted(f for pattern in ("*.yaml", "*.yml")
                       for f in glob.glob(os.path.join(ROOT, "**", pattern), recursive=True)
                       if not re.search(r"/(build[^/]*|node_modules|\.git)/", f))
        self.assertGreater(len(files), 15)
        self.assertTrue(any("/examples/" in f for f in files))
        r = subprocess.run(["yamllint", "-s", "-c", os.path.join(DEPLOY, ".yamllint"), *files],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
