"""Job state survives a restart of the platform: after kill -9 of `lifl up` mid-round, a new
`lifl up` on the same data dir serves every job at the round it was in, with that round's
model, and the updates the interrupted round had accepted are recovered from the node's
object store (adopted from the dead agent): none is lost, retries stay idempotent, and the
round completes exactly."""
import os
import signal
import tempfile
import unittest

import numpy as np

from lifl_harness import Platform, assert_model_equal, fedavg, job_spec, random_update


class Restart(unittest.TestCase):
    def test_kill_and_restart_resumes_at_the_same_round(self):
        # batch 0: the accepted updates wait in a leaf (re-routed after the restart);
        # batch 1: each was already summed into a sealed partial held by the top (its sum
        # goes to the new top, its client key says which update it was).
        for batch in (0, 1):
            with self.subTest(batch=batch):
                self.run_restart(batch)

    def run_restart(self, batch):
        with tempfile.TemporaryDirectory(prefix="lifl-restart-") as data:
            rng = np.random.default_rng(6)
            first = Platform(data_dir=data)
            try:
                first.client.create_job(job_spec("durable", clients=6, rounds=3,
                                                 hierarchy={"fan_in": 4, "batch": batch}))
                first.client.create_job(job_spec("finished", clients=2, rounds=1))
                round0 = []
                for c in range(6):
                    tensors, exact = random_update(rng)
                    first.client.push("durable", tensors, client=f"c{c}", num_examples=c + 1, round_=0)
                    round0.append((c + 1, exact))
                for c in range(2):
                    first.client.push("finished", random_update(rng)[0], client=f"f{c}", round_=0)
                first.client.wait_round("durable", 1)
                first.client.wait_round("finished", 1)
                model1, _ = first.client.pull("durable")
                finished_model, _ = first.client.pull("finished")  # from its checkpoint already
                # Two updates of round 1 are accepted, then the platform dies.
                pending = [random_update(rng) for _ in range(2)]
                first_ids = ["r1-c0", "r1-c1"]
                for c in range(2):
                    first.client.push("durable", pending[c][0], client=f"c{c}", num_examples=3, round_=1,
                                      ce_id=first_ids[c])
                if batch:  # let the leaf seal and send its partials before the kill
                    import time
                    time.sleep(0.3)
                os.kill(first.proc.pid, signal.SIGKILL)
                first.proc.wait(timeout=10)
            finally:
                first.stop()

            second = Platform(data_dir=data)
            try:
                status = second.client.job("durable")
                self.assertEqual(status["round"], 1)
                self.assertEqual(status["lost"]["on_restart"], 0, "accepted updates survive the restart")
                self.assertEqual(status["received"], 2)
                self.assertEqual(len(status["history"]), 1)
                restored, r = second.client.pull("durable")
                self.assertEqual(r, 1)
                assert_model_equal(self, restored, {k: v.astype(np.float64) for k, v in model1.items()}, rtol=0)
                assert_model_equal(self, model1, fedavg(round0))
                self.assertEqual(second.client.job("finished")["state"], "done")
                # A finished job's model is served from its checkpoint, not loaded into the store.
                restored_finished, rf = second.client.pull("finished")
                self.assertEqual(rf, 1)
                assert_model_equal(self, restored_finished,
                                   {k: v.astype(np.float64) for k, v in finished_model.items()}, rtol=0)
                # A client retrying its accepted update is answered 202 and counted once.
                reply = second.client.push("durable", pending[0][0], client="c0", num_examples=3, round_=1,
                                           ce_id=first_ids[0])
                self.assertTrue(reply.get("duplicate"))
                round1 = [(3, pending[0][1]), (3, pending[1][1])]
                for c in range(2, 6):
                    tensors, exact = random_update(rng)
                    second.client.push("durable", tensors, client=f"c{c}", num_examples=3 + c, round_=1)
                    round1.append((3 + c, exact))
                second.client.wait_round("durable", 2)
                model2, _ = second.client.pull("durable")
                assert_model_equal(self, model2, fedavg(round1))
            finally:
                second.stop()


if __name__ == "__main__":
    unittest.main()
