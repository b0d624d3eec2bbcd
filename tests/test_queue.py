"""Tests for pymaild.smtp.queue, queuespool and queueadmin: the spool, the scheduler,
bounces and the admin command.

The integration tests run under both Runners (inline and a real thread pool) against a
loopback DNS server and a scripted ESMTP server (L{tests.test_relay_support}); the
queue's schedule runs on a L{task.Clock}, so back-off and expiry take no real time.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pymaild.config import Config, RelayConfig, ServerConfig
from pymaild.errors import AddressError, NoSuchUser, StoreFull
from pymaild.smtp import queuespool as spoolModule
from pymaild.smtp.queue import Queue, backoff
from pymaild.smtp.queueadmin import queueCommand
from pymaild.smtp.queuespool import (
    DELIVERED,
    FAILED,
    HELD,
    PENDING,
    Envelope,
    RecipientState,
    Spool,
    checkAddress,
    newQueueId,
)
from pymaild.store import MaildirStore
from pymaild.threads import InlineRunner, Runner, ThreadRunner
from tests.test_relay_support import LoopbackCA, ScriptedSMTPFactory, a, mx, startDNS

SIMPLE = (b"From: Alice <alice@local.test>\r\nTo: bob@remote.test\r\nSubject: hello\r\n"
          b"\r\nHello Bob.\r\n")

RECORDS = {
    "remote.test": [mx(10, "mx.remote.test")],
    "other.test": [mx(10, "mx.remote.test")],
    "third.test": [mx(10, "mx.remote.test")],
    "mx.remote.test": [a()],
    "nullmx.test": [mx(0, "")],
}


def envelope(qid: str = "0123456789ABCDEF01", **kw: Any) -> Envelope:
    """A small envelope for spool tests."""
    kw.setdefault("recipients", [RecipientState("bob@remote.test")])
    return Envelope(id=qid, sender=kw.pop("sender", "alice@local.test"),
                    arrival=kw.pop("arrival", 1000.0), **kw)


class EnvelopeTests(SynchronousTestCase):
    """Envelopes are JSON, checked field by field."""

    def test_roundTrip(self) -> None:
        """toJSON and fromJSON give the same envelope back."""
        env = envelope(recipients=[RecipientState("bob@remote.test", attempts=2, nextTry=5.5,
                                                  reply="451 later", delayWarned=True)])
        self.assertEqual(Envelope.fromJSON(env.toJSON()), env)

    def test_unknownFieldsKept(self) -> None:
        """Fields a newer version added survive a round trip."""
        raw = json.loads(envelope().toJSON())
        raw["dsnEnvid"] = "abc"
        env = Envelope.fromJSON(json.dumps(raw).encode())
        self.assertEqual(json.loads(env.toJSON())["dsnEnvid"], "abc")

    def test_rejected(self) -> None:
        """Wrong types, unknown states, bad ids and pickles are refused."""
        good = json.loads(envelope().toJSON())
        bad = []
        for change in (
            lambda d: d.update(sender=5),
            lambda d: d.update(id="../../etc/passwd"),
            lambda d: d.update(recipients=[]),
            lambda d: d["recipients"][0].update(state="bounced"),
            lambda d: d["recipients"][0].update(attempts=True),
            lambda d: d.pop("arrival"),
        ):
            d = json.loads(json.dumps(good))
            change(d)
            bad.append(json.dumps(d).encode())
        bad.append(pickle.dumps({"id": "0123456789ABCDEF01"}))
        bad.append(b"[]")
        for data in bad:
            self.assertRaises((ValueError, UnicodeError), Envelope.fromJSON, data)

    def test_finished(self) -> None:
        """Done when every recipient is delivered, or failed and notified."""
        env = envelope(recipients=[RecipientState("a@x.test", state=DELIVERED),
                                   RecipientState("b@x.test", state=FAILED)])
        self.assertFalse(env.finished())
        env.recipients[1].notified = True
        self.assertTrue(env.finished())
        env.recipients[0].state = HELD
        self.assertFalse(env.finished())


class AddressTests(SynchronousTestCase):
    """Addresses that could break an SMTP command line are refused at enqueue."""

    def test_accepted(self) -> None:
        """Plain, quoted and UTF-8 addresses pass; the null sender only as sender."""
        for address in ("bob@remote.test", '"bob smith"@remote.test', "jörg@exämple.test"):
            self.assertEqual(checkAddress(address), address)
        self.assertEqual(checkAddress("", nullAllowed=True), "")
        self.assertEqual(checkAddress("<>", nullAllowed=True), "")

    def test_refused(self) -> None:
        """CR/LF, spaces, angle brackets, no domain, empty recipient."""
        for address in ("bob@remote.test\r\nRCPT TO:<x@y>", "bob smith@remote.test",
                        "bob>@remote.test", "bob", "bob@", "", "x" * 600 + "@remote.test"):
            self.assertRaises(AddressError, checkAddress, address)


class BackoffTests(SynchronousTestCase):
    """Retry delays double from backoff_min up to backoff_max."""

    def test_schedule(self) -> None:
        """300, 600, 1200, 2400, then 4000 for ever."""
        config = RelayConfig()
        self.assertEqual([backoff(config, n) for n in range(1, 8)],
                         [300, 600, 1200, 2400, 4000, 4000, 4000])
        self.assertEqual(backoff(config, 10**6), 4000)


class SpoolTests(SynchronousTestCase):
    """The on-disk spool: durable writes, orphans, the lock, the flush trigger."""

    def setUp(self) -> None:
        """A fresh spool."""
        self.spool = Spool(self.mktemp())

    def test_storeOrder(self) -> None:
        """File data is fsynced before the renames, the directories after them."""
        events: list[tuple[str, str]] = []
        realFsync, realRename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
            realFsync(fd)

        def rename(src: str, dst: str) -> None:
            events.append(("rename", os.path.relpath(dst, self.spool.path)))
            realRename(src, dst)

        self.patch(spoolModule.os, "fsync", fsync)
        self.patch(spoolModule.os, "rename", rename)
        self.patch(spoolModule, "fsyncDir",
                   lambda p: events.append(("fsyncdir", os.path.basename(p))))
        env = self.spool.store(envelope(), io.BytesIO(SIMPLE))
        qid = env.id
        self.assertEqual(events, [
            ("fsync", f"{qid}.msg"), ("fsync", f"{qid}.env"),
            ("rename", f"msg/{qid}"), ("rename", f"env/{qid}"),
            ("fsyncdir", "msg"), ("fsyncdir", "env"),
        ])
        self.assertEqual((env.size, env.eightBit), (len(SIMPLE), False))
        self.assertEqual(self.spool.readMessage(qid), SIMPLE)
        self.assertEqual(os.listdir(self.spool.tmpDir), [])

    def test_eightBit(self) -> None:
        """The 8-bit flag is found while copying."""
        env = self.spool.store(envelope(), "Grüße\r\n".encode())
        self.assertTrue(env.eightBit)

    def test_diskFull(self) -> None:
        """ENOSPC becomes StoreFull and leaves nothing behind."""

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(spoolModule.os, "fsync", full)
        self.assertRaises(StoreFull, self.spool.store, envelope(), SIMPLE)
        for d in (self.spool.tmpDir, self.spool.msgDir, self.spool.envDir):
            self.assertEqual(os.listdir(d), [])

    def test_orphansQuarantined(self) -> None:
        """Messages without envelopes, envelopes without messages, unreadable envelopes
        and stray names are moved to quarantine/ and reported."""
        good = self.spool.store(envelope("0123456789ABCDEF01"), SIMPLE)
        self.spool.store(envelope("0123456789ABCDEF02"), SIMPLE)
        self.spool.store(envelope("0123456789ABCDEF03"), SIMPLE)
        os.unlink(os.path.join(self.spool.envDir, "0123456789ABCDEF02"))
        os.unlink(os.path.join(self.spool.msgDir, "0123456789ABCDEF03"))
        self.spool.store(envelope("0123456789ABCDEF04"), SIMPLE)
        with open(os.path.join(self.spool.envDir, "0123456789ABCDEF04"), "wb") as f:
            f.write(pickle.dumps("evil"))
        with open(os.path.join(self.spool.envDir, "junk"), "wb") as f:
            f.write(b"x")
        envelopes, problems = self.spool.loadAll(startup=True)
        self.assertEqual([e.id for e in envelopes], [good.id])
        self.assertEqual(len(problems), 4)
        self.assertEqual(sorted(os.listdir(self.spool.quarantineDir)), [
            "0123456789ABCDEF02.msg", "0123456789ABCDEF03.env", "0123456789ABCDEF04.env",
            "0123456789ABCDEF04.msg", "junk.stray"])

    def test_staleTmpRemoved(self) -> None:
        """At start-up old files in tmp/ go; recent ones (an enqueue in flight) stay."""
        self.spool.ensure()
        old, new = (os.path.join(self.spool.tmpDir, n) for n in ("old.msg", "new.msg"))
        for p in (old, new):
            with open(p, "wb") as f:
                f.write(b"x")
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        self.spool.loadAll(startup=True)
        self.assertEqual(os.listdir(self.spool.tmpDir), ["new.msg"])

    def test_updateAndRemove(self) -> None:
        """update changes the envelope on disk; a removed message updates to None."""
        qid = self.spool.store(envelope(), SIMPLE).id
        env = self.spool.update(qid, lambda e: setattr(e.recipients[0], "attempts", 3))
        self.assertEqual(env.recipients[0].attempts, 3)  # type: ignore[union-attr]
        self.assertEqual(self.spool.read(qid).recipients[0].attempts, 3)  # type: ignore[union-attr]
        self.assertTrue(self.spool.remove(qid))
        self.assertFalse(self.spool.remove(qid))
        self.assertIsNone(self.spool.update(qid, lambda e: None))

    def test_flushTrigger(self) -> None:
        """requestFlush is seen once by takeFlush."""
        self.spool.ensure()
        self.assertFalse(self.spool.takeFlush())
        self.spool.requestFlush()
        self.assertTrue(self.spool.takeFlush())
        self.assertFalse(self.spool.takeFlush())


class AdminTests(SynchronousTestCase):
    """pymaild-admin queue list|flush|delete|hold|release on the spool."""

    def setUp(self) -> None:
        """A spool with one message whose recipient waits for a retry."""
        self.path = self.mktemp()
        self.spool = Spool(self.path)
        env = envelope(recipients=[RecipientState("bob@remote.test", attempts=1,
                                                  nextTry=time.time() + 3600,
                                                  reply="451 4.7.1 greylisted")])
        self.qid = self.spool.store(env, SIMPLE).id

    def admin(self, *argv: str) -> tuple[int, str, str]:
        """Run the command; returns status, stdout, stderr."""
        out, err = io.StringIO(), io.StringIO()
        status = queueCommand(self.path, list(argv), out, err)
        return status, out.getvalue(), err.getvalue()

    def test_list(self) -> None:
        """list shows the message, sender, recipient, state and last reply."""
        status, out, _ = self.admin("list")
        self.assertEqual(status, 0)
        self.assertIn(self.qid, out)
        self.assertIn("<alice@local.test>", out)
        self.assertIn("<bob@remote.test>  pending  attempts 1", out)
        self.assertIn("451 4.7.1 greylisted", out)
        self.assertIn("1 message(s) in queue", out)

    def test_listEmpty(self) -> None:
        """A missing queue directory lists as empty."""
        out = io.StringIO()
        self.assertEqual(queueCommand(self.mktemp(), ["list"], out, io.StringIO()), 0)
        self.assertIn("queue is empty", out.getvalue())

    def test_flush(self) -> None:
        """flush makes pending recipients due and touches the trigger file."""
        self.assertEqual(self.admin("flush")[0], 0)
        self.assertEqual(self.spool.read(self.qid).recipients[0].nextTry, 0.0)  # type: ignore[union-attr]
        self.assertTrue(os.path.exists(self.spool.flushPath))

    def test_holdRelease(self) -> None:
        """hold parks pending recipients; release makes them pending and due."""
        self.assertEqual(self.admin("hold", self.qid)[0], 0)
        self.assertEqual(self.spool.read(self.qid).recipients[0].state, HELD)  # type: ignore[union-attr]
        self.assertIn("[held]", self.admin("list")[1])
        self.assertEqual(self.admin("release", self.qid.lower())[0], 0)
        r = self.spool.read(self.qid).recipients[0]  # type: ignore[union-attr]
        self.assertEqual((r.state, r.nextTry), (PENDING, 0.0))

    def test_delete(self) -> None:
        """delete removes envelope and message."""
        status, out, _ = self.admin("delete", self.qid)
        self.assertEqual(status, 0)
        self.assertIn("deleted", out)
        self.assertEqual(os.listdir(self.spool.envDir), [])
        self.assertEqual(os.listdir(self.spool.msgDir), [])
        status, _, err = self.admin("delete", self.qid)
        self.assertEqual(status, 1)
        self.assertIn("no such message", err)

    def test_show(self) -> None:
        """show prints the envelope and the message's header section, not its body."""
        status, out, _ = self.admin("show", self.qid.lower())
        self.assertEqual(status, 0)
        self.assertIn("<bob@remote.test>  pending  attempts 1", out)
        headers = SIMPLE.split(b"\r\n\r\n")[0].decode().replace("\r\n", "\n")
        self.assertIn(headers, out)
        self.assertNotIn(SIMPLE.split(b"\r\n\r\n", 1)[1].decode().strip(), out)
        status, _, err = self.admin("show", "0" * 22)
        self.assertEqual(status, 1)
        self.assertIn("no such message", err)

    def test_retry(self) -> None:
        """retry ID makes that message's pending recipients due now."""
        status, out, _ = self.admin("retry", self.qid)
        self.assertEqual(status, 0)
        self.assertIn("flushed", out)
        self.assertEqual(self.spool.read(self.qid).recipients[0].nextTry, 0.0)  # type: ignore[union-attr]

    def test_badUsage(self) -> None:
        """Unknown commands, missing ids and ids that are not queue ids are refused."""
        for argv in ([], ["frobnicate"], ["hold"], ["delete", "../env/x"], ["list", "x"],
                     ["retry"], ["show"]):
            status, _, err = self.admin(*argv)
            self.assertEqual(status, 2, argv)
            self.assertTrue(err)


class AdminCommandLineTests(SynchronousTestCase):
    """The C{queue} subcommand of C{pymaild-admin} reaches L{queueCommand}."""

    def main(self, *argv: str) -> tuple[int, str, str]:
        """Run pymaild-admin; returns status, stdout, stderr."""
        from pymaild.admin import main

        out, err = io.StringIO(), io.StringIO()
        return main(list(argv), io.StringIO(), out, err), out.getvalue(), err.getvalue()

    def test_queueSubcommand(self) -> None:
        """list, hold and the errors go through pymaild-admin with --data."""
        data = self.mktemp()
        qid = Spool(os.path.join(data, "queue")).store(envelope(), SIMPLE).id
        status, out, _ = self.main("--data", data, "queue", "list")
        self.assertEqual(status, 0)
        self.assertIn(qid, out)
        self.assertEqual(self.main("--data", data, "queue", "hold", qid)[0], 0)
        self.assertIn("[held]", self.main("--data", data, "queue", "list")[1])
        status, _, err = self.main("--data", data, "queue", "delete")
        self.assertEqual(status, 2)
        self.assertIn("needs one queue id", err)
        status, _, err = self.main("--data", data, "queue", "release", "FFFFFFFFFFFFFFFFFF")
        self.assertEqual(status, 1)
        self.assertIn("no such message", err)


class QueueTestsMixin:
    """Integration tests, run once per Runner (see the subclasses)."""

    def makeRunner(self) -> Runner:
        """The runner under test."""
        raise NotImplementedError

    def setUp(self) -> None:
        """A clock near now, a runner, a spool path, and a recording local delivery."""
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.runner = self.makeRunner()
        self.path = self.mktemp()  # type: ignore[attr-defined]
        self.local: list[tuple[str, bytes]] = []
        self.localFailures: dict[str, list[Exception]] = {}
        self.server = ScriptedSMTPFactory()
        self._network: tuple[int, int] | None = None

    def recordLocal(self, rcpt: str, data: bytes) -> defer.Deferred[None]:
        """The fake localDelivery: fails as scripted, else records the message."""
        failures = self.localFailures.get(rcpt)
        if failures:
            return defer.fail(failures.pop(0))
        self.local.append((rcpt, data))
        return defer.succeed(None)

    def network(self) -> tuple[int, int]:
        """Start the DNS server and the MX server once; returns their ports."""
        if self._network is None:
            self._network = (self.server.listen(self), startDNS(self, RECORDS))  # type: ignore[arg-type]
        return self._network

    def makeQueue(self, localDelivery: Any = None, **relay: Any) -> Queue:
        """A Queue over the spool path, the loopback network and the clock."""
        mxPort, dnsPort = self.network()
        relay.setdefault("command_timeout", 10)
        relay.setdefault("connect_timeout", 5)
        config = Config(
            server=ServerConfig(hostname="mail.local.test", domains=("local.test",)),
            relay=RelayConfig(mx_port=mxPort, dns_servers=(f"127.0.0.1:{dnsPort}",), **relay),
        )
        return Queue(self.path, self.runner, self.clock, config, "mail.local.test",
                     localDelivery or self.recordLocal)

    async def start(self, q: Queue) -> None:
        """Start the queue's service; stop it when the test ends."""
        q.service.startService()
        self.addCleanup(q.service.stopService)  # type: ignore[attr-defined]
        self.clock.advance(0)
        await q.service.whenStarted()

    async def settle(self, q: Queue) -> None:
        """Let every due attempt, bounce and follow-up run to the end."""
        for _ in range(50):
            self.clock.advance(0)
            await q.whenIdle()
            if not q.busy:
                return
        raise AssertionError("the queue did not settle")

    async def later(self, q: Queue, seconds: float) -> None:
        """Move the clock on (the ticker runs what became due), then settle."""
        self.clock.advance(seconds)
        await self.settle(q)

    def envelopes(self) -> list[Envelope]:
        """Every envelope on disk."""
        return Spool(self.path).loadAll()[0]

    async def test_deliveredViaMX(self) -> None:
        """A queued message reaches the domain's MX; the spool is empty afterwards."""
        q = self.makeQueue()
        await self.start(q)
        qid = await q.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        self.assertTrue(qid)
        await self.settle(q)
        self.assertEqual([(m.rcpts, m.data) for m in self.server.messages],
                         [(["bob@remote.test"], SIMPLE)])
        self.assertEqual(self.server.messages[0].mail,
                         f"MAIL FROM:<alice@local.test> SIZE={len(SIMPLE)}")
        self.assertEqual(self.envelopes(), [])
        self.assertEqual(q.queued(), {})
        self.assertEqual(self.local, [])

    async def test_handOffToOwner(self) -> None:
        """A queue in a worker (C{handOff}) only stores: the message is handed on by
        id, not kept or delivered; the master's queue takes it up by that id and
        delivers it at once."""
        master = self.makeQueue()
        await self.start(master)
        worker = self.makeQueue()
        handed: list[str] = []
        worker.handOff = handed.append
        qid = await worker.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        self.assertEqual(handed, [qid])
        self.assertEqual(worker.queued(), {})
        self.assertEqual([e.id for e in self.envelopes()], [qid])
        self.assertTrue(await master.takeUp(qid))
        await self.settle(master)
        self.assertEqual([m.rcpts for m in self.server.messages], [["bob@remote.test"]])
        self.assertEqual(self.envelopes(), [])
        self.assertFalse(await master.takeUp("0" * 20))

    async def test_scanFindsLostNotice(self) -> None:
        """A message a worker queued whose notice never came is found by the master's
        next tick when it scans the spool (C{scanSpool}), and only then."""
        master = self.makeQueue()
        await self.start(master)
        worker = self.makeQueue()
        worker.handOff = lambda qid: None  # the notice is lost
        await worker.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        await self.later(master, master.config.queue_tick)
        self.assertEqual(self.server.messages, [])
        master.scanSpool = True
        await self.later(master, master.config.queue_tick)
        # The tick that found it runs it on the next turn.
        await self.later(master, 0)
        self.assertEqual([m.rcpts for m in self.server.messages], [["bob@remote.test"]])
        self.assertEqual(self.envelopes(), [])

    async def test_greylistedThenDelivered(self) -> None:
        """451, 451, 250: delivered on the third try after the back-off, no bounce."""
        self.server.rcptReplies["bob@remote.test"] = ["451 4.7.1 greylisted"] * 2
        q = self.makeQueue()
        await self.start(q)
        await q.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        await self.settle(q)
        [env] = self.envelopes()
        r = env.recipients[0]
        self.assertEqual((r.state, r.attempts, r.status), (PENDING, 1, "4.7.1"))
        self.assertIn("greylisted", r.reply)
        self.assertAlmostEqual(r.nextTry - r.lastAttempt, 300)
        await self.later(q, 299)
        self.assertEqual(self.envelopes()[0].recipients[0].attempts, 1)
        await self.later(q, 1)
        self.assertEqual(self.envelopes()[0].recipients[0].attempts, 2)
        self.assertEqual(self.server.messages, [])
        await self.later(q, 600)
        self.assertEqual(len(self.server.messages), 1)
        self.assertEqual(self.envelopes(), [])
        self.assertEqual(self.local, [])

    async def test_rejectedBouncesToLocalSender(self) -> None:
        """550: an RFC 3464 bounce from <> reaches the local sender."""
        self.server.rcptReplies["bob@remote.test"] = ["550 5.1.1 no such user here"]
        q = self.makeQueue()
        await self.start(q)
        qid = await q.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        await self.settle(q)
        self.assertEqual(len(self.local), 1)
        rcpt, dsn = self.local[0]
        self.assertEqual(rcpt, "alice@local.test")
        self.assertIn(b"report-type=delivery-status", dsn)
        for field in (b"Final-Recipient: rfc822; bob@remote.test", b"Action: failed",
                      b"Status: 5.1.1", b"Remote-MTA: dns; mx.remote.test",
                      b"Diagnostic-Code: smtp; 550 5.1.1 no such user here",
                      b"Reporting-MTA: dns; mail.local.test",
                      f"X-Pymaild-Queue-ID: {qid}".encode(),
                      b"Content-Type: text/rfc822-headers", b"Subject: hello"):
            self.assertIn(field, dsn)
        self.assertNotIn(b"Hello Bob.", dsn)
        self.assertEqual(self.envelopes(), [])
        self.assertEqual(len(self.server.messages), 0)

    async def test_bounceQueuedFromNullSender(self) -> None:
        """The bounce is itself queued, from <>, and retried if local delivery fails."""
        self.server.rcptReplies["bob@remote.test"] = ["550 5.1.1 no such user here"]
        self.localFailures["alice@local.test"] = [OSError("disk hiccup")]
        q = self.makeQueue()
        await self.start(q)
        await q.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        await self.settle(q)
        [env] = self.envelopes()
        self.assertEqual((env.sender, [r.address for r in env.recipients]),
                         ("", ["alice@local.test"]))
        self.assertEqual(env.recipients[0].status, "4.3.0")
        await self.later(q, 300)
        self.assertEqual([r for r, _ in self.local], ["alice@local.test"])
        self.assertEqual(self.envelopes(), [])

    async def test_bounceIntoRealStore(self) -> None:
        """With the real store, the bounce lands in the sender's INBOX."""
        store = MaildirStore(root=os.path.join(self.mktemp(), "mail"),  # type: ignore[attr-defined]
                             hostname="mail.local.test")

        def deliver(rcpt: str, data: bytes) -> defer.Deferred[Any]:
            return self.runner.run(store.deliver, [rcpt], data)

        self.server.rcptReplies["bob@remote.test"] = ["550 5.1.1 no such user here"]
        q = self.makeQueue(localDelivery=deliver)
        await self.start(q)
        await q.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        await self.settle(q)
        folder = store.account("alice@local.test").folder("INBOX")
        state = folder.scan()
        self.assertEqual(len(state.messages), 1)
        with folder.open(state.messages[0]) as f:
            data = f.read()
        self.assertIn(b"Subject: Undelivered Mail Returned to Sender", data)
        self.assertIn(b"Status: 5.1.1", data)

    async def test_nullSenderNeverBounced(self) -> None:
        """A message from <> that fails permanently is dropped without a bounce."""
        self.server.rcptReplies["bob@remote.test"] = ["550 5.1.1 no such user here"]
        q = self.makeQueue()
        await self.start(q)
        await q.enqueue("", ["bob@remote.test"], SIMPLE)
        await self.settle(q)
        self.assertEqual(self.local, [])
        self.assertEqual(self.envelopes(), [])
        self.assertEqual(self.server.commands.count(f"MAIL FROM:<> SIZE={len(SIMPLE)}"), 1)
        self.assertEqual(self.server.messages, [])

    async def test_bounceToRemoteSender(self) -> None:
        """A remote sender's bounce goes back out through the queue, from <>."""
        self.server.rcptReplies["bob@remote.test"] = ["550 5.1.1 no such user here"]
        q = self.makeQueue()
        await self.start(q)
        await q.enqueue("carol@other.test", ["bob@remote.test"], SIMPLE)
        await self.settle(q)
        [bounce] = self.server.messages
        self.assertTrue(bounce.mail.startswith("MAIL FROM:<> "))
        self.assertEqual(bounce.rcpts, ["carol@other.test"])
        self.assertIn(b"Action: failed", bounce.data)
        self.assertEqual(self.envelopes(), [])

    async def test_smarthost(self) -> None:
        """With a smarthost every domain goes there, over required (verified) TLS with
        AUTH."""
        ca = LoopbackCA(self)  # type: ignore[arg-type]
        self.server.tls = ca.serverContext(["127.0.0.1"])
        self.server.auth = ("relay", "pw")
        secret = self.mktemp()  # type: ignore[attr-defined]
        with open(secret, "w") as f:
            f.write("pw\n")
        mxPort, _ = self.network()
        q = self.makeQueue(smarthost=f"127.0.0.1:{mxPort}", smarthost_user="relay",
                           smarthost_password_file=secret, smarthost_ca_file=ca.path)
        await self.start(q)
        await q.enqueue("alice@local.test", ["bob@remote.test", "eve@nowhere.test"], SIMPLE)
        await self.settle(q)
        self.assertEqual(sorted(r for m in self.server.messages for r in m.rcpts),
                         ["bob@remote.test", "eve@nowhere.test"])
        self.assertTrue(all(m.tls and m.auth == ("relay", "pw") for m in self.server.messages))
        self.assertEqual(self.envelopes(), [])

    async def test_groupedByDomain(self) -> None:
        """One connection per domain, carrying all of that domain's recipients."""
        q = self.makeQueue()
        await self.start(q)
        await q.enqueue("alice@local.test",
                        ["bob@remote.test", "eve@other.test", "dan@remote.test"], SIMPLE)
        await self.settle(q)
        self.assertEqual(sorted(sorted(m.rcpts) for m in self.server.messages),
                         [["bob@remote.test", "dan@remote.test"], ["eve@other.test"]])
        self.assertEqual(self.server.connections, 2)

    async def test_concurrencyLimit(self) -> None:
        """No more than relay.concurrency deliveries run at once."""
        q = self.makeQueue(concurrency=1)
        running, peak = [0], [0]
        deliver = q.relay.deliver

        async def counted(*args: Any) -> Any:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            try:
                return await deliver(*args)
            finally:
                running[0] -= 1

        q.relay.deliver = lambda *args: defer.Deferred.fromCoroutine(counted(*args))
        for domain in ("remote.test", "other.test", "third.test"):
            await q.enqueue("alice@local.test", [f"bob@{domain}"], SIMPLE)
        await self.start(q)
        await self.settle(q)
        self.assertEqual(len(self.server.messages), 3)
        self.assertEqual(peak[0], 1)

    async def test_localRecipient(self) -> None:
        """Recipients in our own domains go to localDelivery, not over SMTP."""
        q = self.makeQueue()
        await self.start(q)
        await q.enqueue("carol@other.test", ["Frank@LOCAL.test"], SIMPLE)
        await self.settle(q)
        self.assertEqual(self.local, [("Frank@LOCAL.test", SIMPLE)])
        self.assertEqual(self.server.connections, 0)

    async def test_localUnknownUserBounces(self) -> None:
        """NoSuchUser from local delivery is permanent: the sender gets a bounce."""
        self.localFailures["ghost@local.test"] = [NoSuchUser("ghost@local.test")]
        q = self.makeQueue()
        await self.start(q)
        await q.enqueue("alice@local.test", ["ghost@local.test"], SIMPLE)
        await self.settle(q)
        self.assertEqual([r for r, _ in self.local], ["alice@local.test"])
        self.assertIn(b"Status: 5.1.1", self.local[0][1])

    async def test_localBadAddressBounces(self) -> None:
        """An address the store refuses is a permanent failure (5.1.3), not a retry."""
        self.localFailures["../x@local.test"] = [AddressError("unsafe local part")]
        q = self.makeQueue()
        await self.start(q)
        await q.enqueue("alice@local.test", ["../x@local.test"], SIMPLE)
        await self.settle(q)
        self.assertEqual([r for r, _ in self.local], ["alice@local.test"])
        self.assertIn(b"Status: 5.1.3", self.local[0][1])
        self.assertEqual(self.envelopes(), [])

    async def test_nullMXBouncesAtOnce(self) -> None:
        """A null MX domain bounces on the first attempt with 5.1.10."""
        q = self.makeQueue()
        await self.start(q)
        await q.enqueue("alice@local.test", ["bob@nullmx.test"], SIMPLE)
        await self.settle(q)
        self.assertEqual(len(self.local), 1)
        self.assertIn(b"Status: 5.1.10", self.local[0][1])

    async def test_expiry(self) -> None:
        """Past max_queue_life a temporary failure becomes a bounce (4.4.7)."""
        self.server.rcptReplies["bob@remote.test"] = ["451 4.7.1 greylisted"] * 10
        q = self.makeQueue(max_queue_life=1000, delay_warning=0)
        await self.start(q)
        await q.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        await self.settle(q)
        await self.later(q, 300)
        await self.later(q, 600)
        self.assertEqual(self.local, [])
        await self.later(q, 1200)
        self.assertEqual(len(self.local), 1)
        dsn = self.local[0][1]
        self.assertIn(b"Action: failed", dsn)
        self.assertIn(b"Status: 4.4.7", dsn)
        self.assertIn(b"451 4.7.1 greylisted", dsn)
        self.assertEqual(self.envelopes(), [])

    async def test_delayWarningOnce(self) -> None:
        """One delay warning (Action: delayed) after delay_warning, never a second."""
        self.server.rcptReplies["bob@remote.test"] = ["451 4.7.1 greylisted"] * 4
        q = self.makeQueue(delay_warning=500)
        await self.start(q)
        await q.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        await self.settle(q)
        await self.later(q, 300)
        self.assertEqual(self.local, [])
        await self.later(q, 600)
        self.assertEqual(len(self.local), 1)
        self.assertIn(b"Action: delayed", self.local[0][1])
        self.assertIn(b"Will-Retry-Until:", self.local[0][1])
        await self.later(q, 1200)
        await self.later(q, 2400)
        self.assertEqual(len(self.local), 1)
        self.assertEqual(len(self.server.messages), 1)
        self.assertEqual(self.envelopes(), [])

    async def test_survivesRestart(self) -> None:
        """A new Queue over the same directory delivers what the old one had."""
        old = self.makeQueue()
        qid = await old.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        self.assertEqual(self.server.connections, 0)
        new = self.makeQueue()
        await self.start(new)
        self.assertIn(qid, new.queued())
        await self.settle(new)
        self.assertEqual([m.data for m in self.server.messages], [SIMPLE])
        self.assertEqual(self.envelopes(), [])

    async def test_restartKeepsRetryState(self) -> None:
        """Attempts and next-try time survive a restart."""
        self.server.rcptReplies["bob@remote.test"] = ["451 4.7.1 greylisted"]
        old = self.makeQueue()
        await self.start(old)
        await old.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        await self.settle(old)
        await old.service.stopService()
        new = self.makeQueue()
        await self.start(new)
        await self.settle(new)
        self.assertEqual(self.server.messages, [])
        self.assertEqual(self.envelopes()[0].recipients[0].attempts, 1)
        await self.later(new, 300)
        self.assertEqual(len(self.server.messages), 1)

    async def test_interruptedBounceResumed(self) -> None:
        """A failure recorded before a crash, but not yet bounced, is bounced at start."""
        spool = Spool(self.path)
        spool.store(envelope(recipients=[RecipientState(
            "bob@remote.test", state=FAILED, status="5.1.1", reply="550 5.1.1 nope",
            diagnosticType="smtp", attempts=1)]), SIMPLE)
        q = self.makeQueue()
        await self.start(q)
        await self.settle(q)
        self.assertEqual([r for r, _ in self.local], ["alice@local.test"])
        self.assertEqual(self.envelopes(), [])
        self.assertEqual(self.server.connections, 0)

    async def test_orphansQuarantinedAtStart(self) -> None:
        """Orphans found at start are quarantined, the rest is delivered."""
        spool = Spool(self.path)
        spool.store(envelope("0123456789ABCDEF01"), SIMPLE)
        spool.store(envelope("0123456789ABCDEF02"), SIMPLE)
        os.unlink(os.path.join(spool.envDir, "0123456789ABCDEF02"))
        q = self.makeQueue()
        await self.start(q)
        await self.settle(q)
        self.assertEqual(len(self.server.messages), 1)
        self.assertEqual(os.listdir(spool.quarantineDir), ["0123456789ABCDEF02.msg"])

    async def test_holdAndReleaseWhileRunning(self) -> None:
        """A held message is never attempted; release + the flush trigger delivers it."""
        q = self.makeQueue()
        qid = await q.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        self.assertEqual(queueCommand(self.path, ["hold", qid], io.StringIO()), 0)
        await self.start(q)
        await self.settle(q)
        await self.later(q, 10000)
        self.assertEqual(self.server.connections, 0)
        self.assertEqual(self.envelopes()[0].recipients[0].state, HELD)
        self.assertEqual(queueCommand(self.path, ["release", qid], io.StringIO()), 0)
        await self.later(q, 5)
        self.assertEqual(len(self.server.messages), 1)
        self.assertEqual(self.envelopes(), [])

    async def test_flushWhileRunning(self) -> None:
        """flush makes a deferred message due; the scheduler notices on its next tick."""
        self.server.rcptReplies["bob@remote.test"] = ["451 4.7.1 greylisted"]
        q = self.makeQueue()
        await self.start(q)
        await q.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        await self.settle(q)
        await self.later(q, 10)
        self.assertEqual(self.server.messages, [])
        self.assertEqual(queueCommand(self.path, ["flush"], io.StringIO()), 0)
        await self.later(q, 5)
        self.assertEqual(len(self.server.messages), 1)
        self.assertFalse(os.path.exists(Spool(self.path).flushPath))

    async def test_deleteWhileQueued(self) -> None:
        """A message deleted with the admin command is never delivered."""
        self.server.rcptReplies["bob@remote.test"] = ["451 4.7.1 greylisted"]
        q = self.makeQueue()
        await self.start(q)
        qid = await q.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        await self.settle(q)
        self.assertEqual(queueCommand(self.path, ["delete", qid], io.StringIO()), 0)
        await self.later(q, 300)
        self.assertEqual(self.server.connections, 1)
        self.assertEqual(q.queued(), {})
        self.assertEqual(self.local, [])

    async def test_stopDuringDelivery(self) -> None:
        """Stopping the service interrupts a delivery; it is recorded for a retry."""
        self.server.dataReplies.append("silent")
        q = self.makeQueue(command_timeout=60)
        await self.start(q)
        await q.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE)
        self.clock.advance(0)
        for _ in range(200):
            if "DATA" in self.server.commands:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        await q.service.stopService()
        [env] = self.envelopes()
        r = env.recipients[0]
        self.assertEqual((r.state, r.attempts, r.status), (PENDING, 1, "4.3.2"))

    async def test_enqueueRefusesBadAddress(self) -> None:
        """An address that would break the SMTP command line is refused, nothing stored."""
        q = self.makeQueue()
        with self.assertRaises(AddressError):  # type: ignore[attr-defined]
            await q.enqueue("alice@local.test", ["bob@remote.test>\r\nDATA"], SIMPLE)
        self.assertEqual(self.envelopes(), [])

    async def test_enqueueUnderGivenId(self) -> None:
        """The SMTP transaction's id names the queue files; a malformed or taken id is
        refused and nothing (else) is stored."""
        q = self.makeQueue()
        qid = newQueueId(self.clock.seconds())
        self.assertEqual(await q.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE,
                                         qid=qid), qid)
        self.assertEqual([e.id for e in self.envelopes()], [qid])
        self.assertTrue(os.path.exists(q.spool.messagePath(qid)))
        with self.assertRaises(FileExistsError):  # type: ignore[attr-defined]
            await q.enqueue("alice@local.test", ["eve@remote.test"], b"other\r\n", qid=qid)
        with self.assertRaises(ValueError):  # type: ignore[attr-defined]
            await q.enqueue("alice@local.test", ["bob@remote.test"], SIMPLE, qid="../x")
        [env] = self.envelopes()
        self.assertEqual([r.address for r in env.recipients], ["bob@remote.test"])
        self.assertEqual(q.spool.readMessage(qid), SIMPLE)
        self.assertEqual(os.listdir(q.spool.tmpDir), [])


class QueueInlineTests(QueueTestsMixin, TestCase):
    """The queue with the InlineRunner."""

    def makeRunner(self) -> Runner:
        """Run disk work at once in the reactor thread."""
        return InlineRunner()


class QueueThreadTests(QueueTestsMixin, TestCase):
    """The queue with a real ThreadRunner."""

    def makeRunner(self) -> Runner:
        """Run disk work in a thread pool that stops with the test."""
        pool = ThreadPool(minthreads=1, maxthreads=4, name="test-queue-disk")
        pool.start()
        self.addCleanup(pool.stop)
        return ThreadRunner(reactor, pool)
