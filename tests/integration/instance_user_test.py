"""functions.user (issue 8, docs/security.md): function instances run as an account of their
own, not as the root agent without capabilities. Checked from /proc: every instance's real,
effective, saved and file-system uid and gid are that account's, it holds no capability, and
the store segment is 0660 and that account's group's, so that only the agent and the
instances map it. A FedAvg round through such instances is exact against numpy; an unknown
account stops `lifl up` with a clear error. Needs root and the `lifl-fn` account, which
scripts/setup.sh creates."""
import os
import pwd
import stat
import time
import unittest

from lifl_harness import Platform, exact_round


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


class InstanceUser(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("SKIPPED: functions.user needs the agent to run as root")
        try:
            self.account = pwd.getpwnam("lifl-fn")
        except KeyError:
            self.skipTest("SKIPPED: no lifl-fn account (scripts/setup.sh creates it)")

    def test_instances_run_as_their_account(self):
        for router in ("ebpf", "userspace"):
            with self.subTest(router=router):
                p = Platform(router=router, config="functions:\n  user: lifl-fn\n")
                try:
                    instances = p.instances()
                    self.assertGreater(len(instances), 0)
                    uid, gid = str(self.account.pw_uid), str(self.account.pw_gid)
                    for i in instances:
                        # A just-spawned instance is root until its first lines run (it
                        # switches before it reads any event): wait, bounded, for that.
                        deadline = time.monotonic() + 10
                        while proc_status(i["pid"])["Uid"].split()[0] == "0" \
                                and time.monotonic() < deadline:
                            time.sleep(0.01)
                        st = proc_status(i["pid"])
                        self.assertEqual(st["Uid"].split(), [uid] * 4, f"instance {i['id']}")
                        self.assertEqual(st["Gid"].split(), [gid] * 4, f"instance {i['id']}")
                        self.assertEqual(st["Groups"].split(), [], "no supplementary groups")
                        self.assertEqual(int(st["CapEff"], 16), 0)
                        self.assertEqual(int(st["CapPrm"], 16), 0)
                        self.assertEqual(st["NoNewPrivs"].strip(), "1")
                    store = [line.split()[-1] for line in open(f"/proc/{p.proc.pid}/maps")
                             if "/dev/shm/lifl-" in line][0]
                    s = os.stat(store)
                    self.assertEqual(stat.S_IMODE(s.st_mode), 0o660)
                    self.assertEqual((s.st_uid, s.st_gid), (0, self.account.pw_gid))
                    exact_round(self, p.client, "as-lifl-fn", clients=20, seed=4)
                finally:
                    p.stop()

    def test_an_unknown_account_stops_lifl_up(self):
        with self.assertRaises(RuntimeError) as failed:
            Platform(router="userspace", config="functions:\n  user: no-such-account-lifl\n")
        self.assertIn("no user named no-such-account-lifl", str(failed.exception))


if __name__ == "__main__":
    unittest.main()
