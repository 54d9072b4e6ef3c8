"""The Python module against the binary the wheel installed, on the file store and (when
PIPELINE_LOCK_TEST_DYNAMODB names a DynamoDB Local with the table PIPELINE_LOCK_TEST_TABLE)
on DynamoDB. Run by scripts/test-wheel in a fresh venv: python -m unittest discover."""

import os
import sys
import tempfile
import threading
import time
import unittest
import uuid

import pipeline_lock
from pipeline_lock import Lock, LockError, LockHeld, LockTimeout, LeaseLost, UsageError


class Cases:
    """Mixed into one TestCase per store; `lock(name, owner)` makes a Lock in that store."""

    def name(self):
        return f"py/{self.id().rsplit('.', 1)[-1]}/{uuid.uuid4().hex[:8]}"

    def test_acquire_renew_status_release(self):
        n = self.name()
        a = self.lock(n, "owner-a")
        grant = a.acquire(force_after=3600)
        self.assertEqual(grant["lock"], n)
        self.assertIsInstance(a.fence, int)
        self.assertTrue(a.token)
        self.assertEqual(a.status()["state"], "held")
        self.assertEqual(a.status()["record"]["Owner"], "owner-a")
        renewed = a.renew()
        self.assertEqual(renewed["fence"], grant["fence"])
        a.release()
        self.assertEqual(a.status()["state"], "free")

    def test_a_held_lock_refuses_another_owner_with_its_exit_code(self):
        n = self.name()
        a, b = self.lock(n, "owner-a"), self.lock(n, "owner-b")
        a.acquire()
        with self.assertRaises(LockHeld) as held:
            b.acquire(wait=False)
        self.assertEqual(held.exception.exit_code, 73)
        self.assertIn("owner-a", held.exception.message)
        self.assertIsInstance(held.exception, LockError)
        with self.assertRaises(LockTimeout) as timed_out:
            b.acquire(wait=1, args=["--retry-interval", "200ms"])
        self.assertEqual(timed_out.exception.exit_code, 75)
        a.release()
        b.acquire(wait=False)
        self.assertGreater(b.fence, a.fence)
        b.release()

    def test_the_context_manager_renews_while_the_block_runs_and_releases_after(self):
        n = self.name()
        with self.lock(n, "owner-a", ttl=4, renew_every=0.5) as a:
            acquired = a.grant["acquired_at"]
            time.sleep(2.5)
            rec = a.status()["record"]
            self.assertEqual(rec["Owner"], "owner-a")
            self.assertGreater(rec["RenewedAt"], acquired)
            self.assertIn("renewed", [h["Event"] for h in rec["History"]])
        self.assertEqual(self.lock(n, "owner-b").status()["state"], "free")

    def test_the_context_manager_releases_when_the_block_raises(self):
        n = self.name()
        with self.assertRaises(RuntimeError):
            with self.lock(n, "owner-a"):
                raise RuntimeError("deploy failed")
        self.assertEqual(self.lock(n, "owner-b").status()["state"], "free")

    def test_release_after_a_takeover_is_lease_lost(self):
        n = self.name()
        a, b = self.lock(n, "owner-a"), self.lock(n, "owner-b")
        a.acquire()
        b.acquire(args=["--force", "--reason", "python test"])
        with self.assertRaises(LeaseLost) as lost:
            a.release()
        self.assertEqual(lost.exception.exit_code, 76)
        b.release()

    def test_a_bad_duration_is_a_usage_error(self):
        with self.assertRaises(UsageError) as bad:
            self.lock(self.name(), "owner-a").acquire(force_after="soon")
        self.assertEqual(bad.exception.exit_code, 2)


class FileStore(Cases, unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="pipeline-lock-py-")

    def lock(self, name, owner, **kw):
        return Lock(name, store=f"file://{self.dir}", owner=owner, **kw)


@unittest.skipUnless(os.environ.get("PIPELINE_LOCK_TEST_DYNAMODB"), "no DynamoDB Local (PIPELINE_LOCK_TEST_DYNAMODB)")
class DynamoDbLocal(Cases, unittest.TestCase):
    def lock(self, name, owner, **kw):
        return Lock(
            name,
            table=os.environ.get("PIPELINE_LOCK_TEST_TABLE", "pipeline-locks"),
            endpoint_url=os.environ["PIPELINE_LOCK_TEST_DYNAMODB"],
            region="eu-central-1",
            owner=owner,
            **kw,
        )


class Installed(unittest.TestCase):
    def test_the_binary_is_the_one_the_wheel_put_beside_this_interpreter(self):
        path = pipeline_lock.binary()
        self.assertTrue(os.path.realpath(path).startswith(os.path.realpath(sys.prefix)), f"{path} is not under {sys.prefix}")
        module = os.path.realpath(pipeline_lock.__file__)
        self.assertTrue(module.startswith(os.path.realpath(sys.prefix)), f"imported {module}, not the installed module")

    def test_without_an_owner_outside_ci_the_process_is_the_owner(self):
        env = {k: v for k, v in os.environ.items() if k not in ("GITLAB_CI", "GITHUB_ACTIONS", "PIPELINE_LOCK_OWNER")}
        d = tempfile.mkdtemp(prefix="pipeline-lock-py-")
        lock = Lock("py/default-owner", store=f"file://{d}", env=env)
        lock.acquire()
        self.assertEqual(lock.status()["record"]["Owner"], f"python:{os.uname().nodename}/pid/{os.getpid()}")
        lock.release()

    def test_renewals_from_another_thread_do_not_race_the_block(self):
        # The renew thread and the block both call the binary: each call is its own process.
        d = tempfile.mkdtemp(prefix="pipeline-lock-py-")
        with Lock("py/threads", store=f"file://{d}", owner="t", ttl=3, renew_every=0.2) as lock:
            threads = [threading.Thread(target=lock.status) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(0.5)


if __name__ == "__main__":
    unittest.main()
