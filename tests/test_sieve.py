"""The Sieve grammar, checker and interpreter (L{pymaild.sieve}) on their own.

What Pigeonhole also decides is covered by C{tests/test_sieve_differential.py}; these
tests cover errors and their lines, the limits against hostile scripts, and what
C{sieve-test} cannot show (ereject, the null sender, the CPU time limit).
"""

from __future__ import annotations

import time

from twisted.trial.unittest import TestCase

from pymaild.sieve.actions import Store
from pymaild.sieve.checker import Limits, SieveSyntaxError, compileScript, decodeEncoded
from pymaild.sieve.grammar import MAX_NESTING, parse
from pymaild.sieve.interpreter import SieveEnvelope, SieveRuntimeError, evaluate

MESSAGE = (b"From: Alice <alice@example.com>\r\nTo: me@example.org\r\n"
           b"Subject: Hello world\r\n\r\nbody text\r\n")
ENVELOPE = SieveEnvelope("alice@example.com", "me@example.org")


def run(script: bytes, message: bytes = MESSAGE, envelope: SieveEnvelope = ENVELOPE,
        **kw: object) -> object:
    """Compile and run C{script}; its result."""
    return evaluate(compileScript(script), message, envelope, **kw)


class GrammarTests(TestCase):
    """The parser: strings, numbers, comments, errors with their lines."""

    def test_multilineDotStuffing(self) -> None:
        """A multi-line string ends at a lone dot; a leading dot doubled is undone."""
        cmds = parse(b'reject text:\r\n..a\r\nb\r\n.\r\n;')
        self.assertEqual(cmds[0].args[0].values, [".a\r\nb\r\n"])  # type: ignore[union-attr]

    def test_quotedEscapes(self) -> None:
        """Backslash escapes: \\\\ and \\" and any other character standing for itself."""
        cmds = parse(b'keep "a\\\\b\\"c\\d";')
        self.assertEqual(cmds[0].args[0].values, ['a\\b"cd'])  # type: ignore[union-attr]

    def test_numberQuantifiers(self) -> None:
        """K, M and G multiply by powers of 1024."""
        cmds = parse(b"x 1K 2m 3G;")
        self.assertEqual([a.value for a in cmds[0].args],  # type: ignore[union-attr]
                         [1024, 2 << 20, 3 << 30])

    def test_errorLine(self) -> None:
        """A syntax error names its line."""
        with self.assertRaises(SieveSyntaxError) as e:
            compileScript(b'require "fileinto";\r\nkeep;\r\nif true {\r\n  fileinto "x"\r\n}\r\n')
        self.assertEqual(e.exception.line, 5)

    def test_unknownCommandLine(self) -> None:
        """An unknown command is refused at its line."""
        with self.assertRaises(SieveSyntaxError) as e:
            compileScript(b"keep;\n\n\nfrobnicate;\n")
        self.assertEqual(e.exception.line, 4)
        self.assertIn("frobnicate", e.exception.message)

    def test_deepNesting(self) -> None:
        """Blocks nested deeper than 32 levels are refused, not a RecursionError."""
        deep = b"if true {" * 5000 + b"keep;" + b"}" * 5000
        with self.assertRaises(SieveSyntaxError) as e:
            compileScript(deep)
        self.assertIn("nest", e.exception.message)
        ok = b"if true {" * MAX_NESTING + b"keep;" + b"}" * MAX_NESTING
        compileScript(ok)

    def test_deepTests(self) -> None:
        """Tests nested deeper than 32 levels are refused too."""
        deep = b"if " + b"not " * 10000 + b"true { keep; }"
        with self.assertRaises(SieveSyntaxError):
            compileScript(deep)
        deep = b"if " + b"anyof(" * 10000 + b"true" + b")" * 10000 + b" { keep; }"
        with self.assertRaises(SieveSyntaxError):
            compileScript(deep)

    def test_hugeString(self) -> None:
        """A script over sieve_max_script_size (1M) is refused before it is parsed."""
        script = b'require "fileinto"; fileinto "' + b"a" * (1 << 20) + b'";'
        with self.assertRaises(SieveSyntaxError) as e:
            compileScript(script)
        self.assertIn("larger than", e.exception.message)

    def test_encodedCharacter(self) -> None:
        """${hex:} and ${unicode:} decode; malformed ones stay as they are."""
        self.assertEqual(decodeEncoded("${hex:41 42}${unicode:fc}"), "ABü")
        self.assertEqual(decodeEncoded("${hex:zz}"), "${hex:zz}")
        with self.assertRaises(ValueError):
            decodeEncoded("${unicode:D800}")


class LimitTests(TestCase):
    """Hostile scripts are stopped by a limit, and nothing is lost."""

    def test_tenThousandActions(self) -> None:
        """10,000 fileinto commands exceed sieve_max_actions (32): a runtime error."""
        script = b'require "fileinto";\n' + b"".join(
            b'fileinto "f%d";\n' % i for i in range(10000))
        with self.assertRaises(SieveRuntimeError) as e:
            run(script)
        self.assertIn("32 actions", str(e.exception))

    def test_backtrackingRegex(self) -> None:
        """A regex that backtracks catastrophically in Python's engine runs in linear
        time in RE2: 30,000 a's against (a+)+b answer at once."""
        script = b'require ["regex", "fileinto"];\nif header :regex "subject" "^(a+)+b$" ' \
                 b'{ fileinto "x"; }'
        message = b"Subject: " + b"a" * 30000 + b"c\r\n\r\nbody\r\n"
        start = time.process_time()
        result = run(script, message)
        self.assertEqual(result.stores(), [Store()])  # type: ignore[attr-defined]
        self.assertLess(time.process_time() - start, 5.0)

    def test_backtrackingMatches(self) -> None:
        """:matches with many stars is linear too (RE2, not a backtracking glob)."""
        script = b'require "fileinto";\nif header :matches "subject" "' + b"*a" * 50 + \
                 b'b" { fileinto "x"; }'
        message = b"Subject: " + b"a" * 20000 + b"\r\n\r\n"
        start = time.process_time()
        run(script, message)
        self.assertLess(time.process_time() - start, 5.0)

    def test_includeLoop(self) -> None:
        """A script that includes itself through another is refused at compile time."""
        scripts = {"a": b'require "include"; include "b";',
                   "b": b'require "include"; include "a";'}
        with self.assertRaises(SieveSyntaxError) as e:
            compileScript(b'require "include"; include "a";', name="main",
                          loader=lambda where, name: scripts.get(name))
        self.assertIn("circular", e.exception.message)
        with self.assertRaises(SieveSyntaxError):
            compileScript(scripts["a"], name="a", loader=lambda w, n: scripts.get(n))

    def test_includeDepth(self) -> None:
        """A chain of includes deeper than sieve_include_max_nesting_depth is refused."""
        scripts = {f"s{i}": b'require "include"; include "s%d";' % (i + 1)
                   for i in range(20)}
        with self.assertRaises(SieveSyntaxError) as e:
            compileScript(b'require "include"; include "s0";',
                          loader=lambda w, n: scripts.get(n))
        self.assertIn("deeper", e.exception.message)

    def test_cpuTime(self) -> None:
        """A script past sieve_max_cpu_time fails with a runtime error (the caller keeps
        the message)."""
        ticks = iter(range(0, 10**9, 1000))
        script = b"if true { keep; }\n" * 200
        with self.assertRaises(SieveRuntimeError) as e:
            run(script, clock=lambda: float(next(ticks)), limits=Limits(maxCpuTime=100))
        self.assertIn("CPU time", str(e.exception))

    def test_variableSize(self) -> None:
        """A variable holds at most sieve_variables_max_variable_size characters."""
        script = (b'require ["variables", "fileinto"];\nset "a" "' + b"x" * 3000 + b'";\n'
                  b'set "b" "${a}${a}${a}";\nset :length "n" "${b}";\nfileinto "${n}";')
        result = run(script)
        self.assertEqual(result.stores()[0].folder, "4096")  # type: ignore[attr-defined]


class InterpreterTests(TestCase):
    """What C{sieve-test} cannot show."""

    def test_ereject(self) -> None:
        """ereject rejects with its reason, marked extended."""
        result = run(b'require "ereject"; ereject "no thanks";')
        reject = result.reject()  # type: ignore[attr-defined]
        self.assertEqual((reject.reason, reject.extended), ("no thanks", True))
        self.assertEqual(result.stores(), [])  # type: ignore[attr-defined]

    def test_nullSender(self) -> None:
        """The null sender's envelope from is the empty string."""
        result = run(b'require ["envelope", "fileinto"];\n'
                     b'if envelope :is "from" "" { fileinto "Bounces"; }',
                     envelope=SieveEnvelope("", "me@example.org"))
        self.assertEqual(result.stores()[0].folder, "Bounces")  # type: ignore[attr-defined]

    def test_mailboxExists(self) -> None:
        """mailboxexists asks the account."""
        script = b'require ["mailbox", "fileinto"];\nif mailboxexists "Work" { fileinto "Work"; }'
        result = run(script, mailboxExists=lambda name: name == "Work")
        self.assertEqual(result.stores()[0].folder, "Work")  # type: ignore[attr-defined]
        result = run(script, mailboxExists=lambda name: False)
        self.assertEqual(result.stores()[0].folder, "INBOX")  # type: ignore[attr-defined]
