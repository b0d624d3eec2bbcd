#!/usr/bin/env python3
"""Long-running protocol fuzzer for the POP3, IMAP and SMTP rooms (a script, not a test).

Feeds N generated inputs per protocol (default 1,000,000) to the real server protocols,
built by each room's factory over a real Maildir store, passwd file, portal and auth
gate (see C{tests/fuzzing.py}, which the hypothesis tests C{tests/test_fuzz_*.py} share).
Inputs come from the same protocol grammars as the tests, drawn with a seeded
C{random.Random} instead of hypothesis (much faster), and most are mutated: truncated,
bytes flipped, CR/LF/NUL injected, absurd numbers and literal sizes, deep parentheses,
lines around every length limit, STARTTLS/STLS spliced in; each is delivered in random
chunks of 1-512 octets. Every input is checked for the same properties as the tests
(no exception escapes, nothing logged as an error, every command answered in order or
the connection closed cleanly, no traceback text sent, no call keeps the reactor busy
for more than 100 ms).

A failing input is written as a JSON reproducer to C{--out} (default
C{./fuzz-crashes}); C{--replay FILE} runs one again and prints the dialogue. Progress
and inputs/s are printed every 10 seconds; the exit status is 1 when anything failed.

Usage::

    python bench/fuzz.py [--protocol pop3|imap|smtp|all] [--inputs N] [--time SECONDS]
                         [--seed S] [--out DIR] [--recycle N] [--max-crashes N]
    python bench/fuzz.py --replay fuzz-crashes/imap-....json

C{--time} is a budget per protocol: the run stops at N inputs or when it is used up.
The store is recreated every C{--recycle} inputs (default 20,000) so mailboxes, folders
and the outbound queue do not grow without bound.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import random
import shutil
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from twisted.logger import globalLogBeginner  # noqa: E402

from tests import fuzzing  # noqa: E402 - after the path set-up above

GC_EVERY = 500
"""Inputs between full garbage collections (which expose unhandled Deferred errors)."""


def fuzzProtocol(name: str, inputs: int, budget: float | None, seed: int, out: str,
                 recycle: int, maxCrashes: int) -> tuple[int, int, float]:
    """Run up to C{inputs} inputs against one protocol.

    @return: (inputs run, failures, seconds).
    """
    cls = fuzzing.FUZZERS[name]
    rng = random.Random(f"{seed}-{name}")
    work = tempfile.mkdtemp(prefix=f"pymaild-fuzz-{name}-")
    fuzzer: fuzzing.Fuzzer | None = None
    recent: collections.deque[fuzzing.FuzzInput] = collections.deque(maxlen=GC_EVERY)
    crashes = 0
    done = 0
    start = time.monotonic()
    lastReport = start
    lastDone = 0
    try:
        while done < inputs:
            now = time.monotonic()
            if budget is not None and now - start >= budget:
                break
            if now - lastReport >= 10:
                rate = (done - lastDone) / (now - lastReport)
                print(f"  {name}: {done:,} inputs, {crashes} failures, {rate:,.0f} inputs/s",
                      flush=True)
                lastReport, lastDone = now, done
            if fuzzer is None or done % recycle == 0:
                if fuzzer is not None:
                    shutil.rmtree(fuzzer.base, ignore_errors=True)
                fuzzer = cls(os.path.join(work, f"store-{done}"), collect=False)
            inp = cls.randomInput(rng)
            recent.append(inp)
            error = _runOne(fuzzer, inp)
            done += 1
            if error is None and done % GC_EVERY == 0:
                error = _collect(recent)
            if error is not None:
                crashes += 1
                rendered, _spans = fuzzer.render(inp)
                path = fuzzing.writeReproducer(out, inp, error, rendered)
                print(f"FAILURE {name} #{done}: {error.splitlines()[0][:300]}\n"
                      f"  reproducer: {path}", flush=True)
                if crashes >= maxCrashes:
                    print(f"  {name}: stopping after {crashes} failures", flush=True)
                    break
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return done, crashes, time.monotonic() - start


def _runOne(fuzzer: fuzzing.Fuzzer, inp: fuzzing.FuzzInput) -> str | None:
    """Run one input; the failure text, or None."""
    try:
        fuzzer.run(inp)
    except fuzzing.Violation as e:
        return str(e)
    except Exception:  # noqa: BLE001 - a harness crash is reported like a failure
        return "harness error:\n" + traceback.format_exc()
    return None


def _collect(recent: collections.deque[fuzzing.FuzzInput]) -> str | None:
    """Collect garbage and report errors logged meanwhile (unhandled Deferred errors)."""
    capture = fuzzing.LogCapture()
    fuzzing.globalLogPublisher.addObserver(capture)
    try:
        gc.collect()
    finally:
        fuzzing.globalLogPublisher.removeObserver(capture)
    if not capture.events:
        return None
    return (f"error logged at garbage collection (caused by one of the last {len(recent)} "
            "inputs; rerun them with --replay)\n" + "\n".join(capture.describe()))


def replay(path: str) -> int:
    """Run one reproducer again and print the dialogue; 1 if it still fails."""
    inp = fuzzing.readReproducer(path)
    fuzzer = fuzzing.FUZZERS[inp.protocol](tempfile.mkdtemp(prefix="pymaild-replay-"))
    try:
        try:
            record = fuzzer.run(inp)
        except fuzzing.Violation as e:
            print(f"FAILS:\n{e}")
            return 1
        print(record.describe(limit=20000))
        print("passes")
        return 0
    finally:
        shutil.rmtree(fuzzer.base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and fuzz; the exit status is 1 after any failure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=["pop3", "imap", "smtp", "all"], default="all")
    parser.add_argument("--inputs", type=int, default=1_000_000,
                        help="inputs per protocol (default 1,000,000)")
    parser.add_argument("--time", type=float, default=None,
                        help="time budget per protocol in seconds (default: none)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="fuzz-crashes", help="directory for reproducers")
    parser.add_argument("--recycle", type=int, default=20_000,
                        help="inputs between fresh stores (default 20,000)")
    parser.add_argument("--max-crashes", type=int, default=20,
                        help="stop a protocol after this many failures (default 20)")
    parser.add_argument("--replay", metavar="FILE", help="run one reproducer again")
    args = parser.parse_args(argv)
    # Start logging (to nowhere: failures are captured per input); until then
    # twisted.logger keeps every event in its start-up buffer.
    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)
    restore = fuzzing.cheapHashing()
    try:
        if args.replay:
            return replay(args.replay)
        names = ["pop3", "imap", "smtp"] if args.protocol == "all" else [args.protocol]
        total = 0
        for name in names:
            print(f"{name}: fuzzing (seed {args.seed})", flush=True)
            done, crashes, seconds = fuzzProtocol(
                name, args.inputs, args.time, args.seed, os.path.abspath(args.out),
                max(1, args.recycle), max(1, args.max_crashes))
            rate = done / seconds if seconds else 0.0
            print(f"{name}: {done:,} inputs in {seconds:,.0f} s ({rate:,.0f} inputs/s), "
                  f"{crashes} failures", flush=True)
            total += crashes
        return 1 if total else 0
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
