"""The LIFL OCI image (deploy/image, docs/kubernetes.md "Image"), built here without a
registry by deploy/image/build_image.sh (a debootstrap root, buildah) and run with podman:
`lifl --help` answers; `lifl up` runs inside as the image's non-root user 10001, answers
/readyz, and serves a round whose model equals numpy's FedAvg. podman runs with runc, cgroupfs
and lowered ulimits, which the sandboxes we run in need (no CAP_SYS_RESOURCE, hybrid cgroups)."""
import os
import shutil
import subprocess
import tempfile
import unittest

from lifl_harness import Client, exact_round, free_port, wait_readyz

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOOLS = ("debootstrap", "buildah", "podman", "runc")


@unittest.skipUnless(os.geteuid() == 0 and all(shutil.which(t) for t in TOOLS),
                     "SKIPPED: needs root and " + ", ".join(TOOLS) + " (scripts/setup.sh)")
class Image(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.archive = os.path.join(cls.tmp.name, "lifl-image.tar")
        r = subprocess.run([os.path.join(ROOT, "deploy", "image", "build_image.sh"), cls.archive],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise AssertionError(f"build_image.sh: {r.stdout}{r.stderr}")
        conf = os.path.join(cls.tmp.name, "containers.conf")
        with open(conf, "w") as f:
            f.write('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n')
        cls.env = dict(os.environ, CONTAINERS_CONF=conf, STORAGE_DRIVER="vfs")
        cls.podman = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
        r = subprocess.run([*cls.podman, "load", "-q", "-i", cls.archive], capture_output=True,
                           text=True, env=cls.env, timeout=300)
        if r.returncode != 0:
            raise AssertionError(f"podman load: {r.stderr}")

    @classmethod
    def tearDownClass(cls):
        subprocess.run([*cls.podman, "rmi", "-f", "localhost/lifl:dev"], capture_output=True,
                       env=cls.env, timeout=120)
        cls.tmp.cleanup()

    def podman_run(self, *args, timeout=120):
        return subprocess.run([*self.podman, "run", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def test_help_answers(self):
        r = self.podman_run("--rm", "--network", "none", "localhost/lifl:dev")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("usage: lifl <command>", r.stdout)

    def test_lifl_up_serves_a_round_as_a_non_root_user(self):
        port, name = free_port(), f"lifl-image-test-{os.getpid()}"
        r = self.podman_run("-d", "--name", name, "--network", "host", "--shm-size", "256m",
                            "localhost/lifl:dev", "up", "--router", "userspace", "--port",
                            str(port), "--store-bytes", str(64 << 20))
        self.assertEqual(r.returncode, 0, r.stderr)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_readyz(url, 60, "lifl up in the image")
            user = subprocess.run([*self.podman, "exec", name, "id", "-u"], capture_output=True,
                                  text=True, env=self.env, timeout=60)
            self.assertEqual(user.stdout.strip(), "10001", user.stderr)
            exact_round(self, Client(url), "image", clients=6, seed=9)
        finally:
            subprocess.run([*self.podman, "rm", "-f", name], capture_output=True, env=self.env,
                           timeout=120)


if __name__ == "__main__":
    unittest.main()
