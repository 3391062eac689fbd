"""MultiPL-E scoring per language whose toolchain is here: hand-written completions of three
tasks (add, greatest_common_divisor, sum_product: Java's returns a javatuples Pair), each
correct, wrong, non-compiling, timing out and exiting 0 before the tests, with the verdicts
MultiPL-E's rule plus our nonce give. One scoring call per language and test; the default
suite runs every kind on ``add`` (Scala in the slow set: scalac), the slow sweep the other
two tasks."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass

import pytest

from reflectioncoder.eval import multiple as ml
from reflectioncoder.eval.sandbox import ExecResult
from reflectioncoder.eval.tasks import load_multiple, multiple_languages

TASKS = ("HumanEval_53_add", "HumanEval_13_greatest_common_divisor", "HumanEval_8_sum_product")
PY_TASKS = ("Python/53", "Python/13", "Python/8")


@dataclass(frozen=True)
class Style:
    """How a completion of one language is written: ``head`` opens the body (D), ``close``
    ends the function where the tests do not, ``exit``/``spin`` are statements that leave with
    status 0 / never return, ``seq`` puts a statement before an expression body."""

    indent: str
    close: str
    exit: str
    spin: str
    head: str = ""
    seq: str = "{a}\n{indent}{b}"


STYLES = {
    "python": Style("    ", "", "import sys; sys.exit(0)", "while True: pass"),
    "cpp": Style("    ", "", "exit(0);", "while (time(nullptr) > 0) {}"),
    "cs": Style("        ", "", "Environment.Exit(0);", "while (DateTime.Now.Ticks > 0) {}"),
    "d": Style(
        "    ", "}\n", "import core.stdc.stdlib : exit; exit(0);",
        "import core.stdc.time : time; while (time(null) > 0) {}", head="{\n",
    ),
    "go": Style("    ", "}\n", "", "for fmt.Sprint(1) != \"\" {}"),  # no `os` import: no exit
    "java": Style("        ", "", "System.exit(0);", "while (System.nanoTime() > 0) {}"),
    "js": Style("  ", "}\n", "process.exit(0);", "while (Date.now() > 0) {}"),
    "lua": Style("    ", "end\n", "os.exit(0)", "while true do end"),
    "php": Style("    ", "}\n", "exit(0);", "while (true) {}"),
    "pl": Style("    ", "}\n", "exit 0;", "while (1) {}"),
    "r": Style("    ", "}\n", 'quit(save = "no", status = 0)', "while (TRUE) {}"),
    "rb": Style("  ", "end\n", "exit 0", "loop {}"),
    "rkt": Style("  ", ")\n", "(exit 0)", "(let loop () (loop))", seq="(begin {a} {b})"),
    "rs": Style("    ", "", "std::process::exit(0);", "loop {}"),
    "scala": Style("        ", "", "sys.exit(0)", "while (System.nanoTime() > 0) {}"),
    "sh": Style("    ", "", "exit 0", "while :; do :; done"),  # the tests close it
    "ts": Style("  ", "}\n", 'require("process").exit(0);', "while (Date.now() > 0) {}"),
}  # fmt: skip

# (add, greatest_common_divisor, sum_product) bodies per language: correct, then wrong.
CORRECT = {
    "python": (
        "return x + y",
        "while b:\n    a, b = b, a % b\nreturn a",
        "s, p = 0, 1\nfor n in numbers:\n    s, p = s + n, p * n\nreturn s, p",
    ),
    "cpp": (
        "return x + y;",
        "while (b != 0) { long t = b; b = a % b; a = t; }\nreturn a;",
        "long s = 0, p = 1;\nfor (long n : numbers) { s += n; p *= n; }\n"
        "return std::make_tuple(s, p);",
    ),
    "cs": (
        "return x + y;",
        "while (b != 0) { long t = b; b = a % b; a = t; }\nreturn a;",
        "long s = 0, p = 1;\nforeach (long n in numbers) { s += n; p *= n; }\n"
        "return Tuple.Create(s, p);",
    ),
    "d": (
        "return x + y;",
        "while (b != 0) { long t = b; b = a % b; a = t; }\nreturn a;",
        "long s = 0, p = 1;\nforeach (n; numbers) { s += n; p *= n; }\nreturn tuple(s, p);",
    ),
    "go": (
        "return x + y",
        "for b != 0 {\n    a, b = b, a%b\n}\nreturn a",
        "s, p := 0, 1\nfor _, n := range numbers {\n    s, p = s+n, p*n\n}\n"
        "return []interface{}{s, p}",
    ),
    "java": (
        "return x + y;",
        "while (b != 0) { long t = b; b = a % b; a = t; }\nreturn a;",
        "long s = 0, p = 1;\nfor (long n : numbers) { s += n; p *= n; }\nreturn Pair.with(s, p);",
    ),
    "js": (
        "return x + y;",
        "while (b !== 0) { [a, b] = [b, a % b]; }\nreturn a;",
        "let s = 0, p = 1;\nfor (const n of numbers) { s += n; p *= n; }\nreturn [s, p];",
    ),
    "lua": (
        "return x + y",
        "while b ~= 0 do a, b = b, a % b end\nreturn a",
        "local s, p = 0, 1\nfor _, n in ipairs(numbers) do s = s + n; p = p * n end\nreturn {s, p}",
    ),
    "php": (
        "return $x + $y;",
        "while ($b != 0) { $t = $b; $b = $a % $b; $a = $t; }\nreturn $a;",
        "$s = 0; $p = 1;\nforeach ($numbers as $n) { $s += $n; $p *= $n; }\nreturn array($s, $p);",
    ),
    "pl": (
        "return $x + $y;",
        "while ($b != 0) { ($a, $b) = ($b, $a % $b); }\nreturn $a;",
        "my ($s, $p) = (0, 1);\nfor my $n (@$numbers) { $s += $n; $p *= $n; }\nreturn [$s, $p];",
    ),
    "r": (
        "x + y",
        "while (b != 0) { t <- b; b <- a %% b; a <- t }\na",
        "c(sum(numbers), prod(numbers))",
    ),
    "rb": (
        "x + y",
        "a, b = b, a % b while b != 0\na",
        "[numbers.sum, numbers.inject(1, :*)]",
    ),
    "rkt": ("(+ x y)", "(gcd a b)", "(list (apply + numbers) (apply * numbers))"),
    "rs": (
        "x + y",
        "let (mut a, mut b) = (a, b);\nwhile b != 0 { let t = b; b = a % b; a = t; }\na",
        "(numbers.iter().sum(), numbers.iter().product())",
    ),
    "scala": (
        "x + y",
        "var (p, q) = (a, b)\nwhile (q != 0) { val t = q; q = p % q; p = t }\np",
        "(numbers.sum, numbers.product)",
    ),
    "sh": (
        "echo $(( $1 + $2 ))",
        "local a=$1 b=$2 t\nwhile (( b != 0 )); do t=$b; b=$(( a % b )); a=$t; done\necho $a",
        'local s=0 p=1 n\nfor n in $1; do s=$(( s + n )); p=$(( p * n )); done\necho "$s $p"',
    ),
}
CORRECT["ts"] = CORRECT["js"]
# Compiles and runs, gives a wrong answer: x * y, gcd returns a unchanged, the product starts at 0.
WRONG = {
    lang: (
        add.replace("x + y", "x * y").replace("$x + $y", "$x * $y"),
        gcd.split("\n")[-1],
        prod.replace("p = 1", "p = 0")
        .replace("p = 0, 1", "p = 0, 0")
        .replace("(0, 1)", "(0, 0)")
        .replace("p := 0, 1", "p := 0, 0"),
    )
    for lang, (add, gcd, prod) in CORRECT.items()
}
WRONG["r"] = ("x * y", "a", "c(sum(numbers), 0)")
WRONG["rb"] = ("x * y", "a", "[numbers.sum, 0]")
WRONG["rkt"] = ("(* x y)", "a", "(list (apply + numbers) 0)")
WRONG["rs"] = ("x * y", "a", "(numbers.iter().sum(), 0)")
WRONG["scala"] = ("x * y", "a", "(numbers.sum, 0L)")
WRONG["sh"] = ("echo $(( $1 * $2 ))", "echo $1", 'echo "0 0"')

# Run limit of the tests (the timing-out sample waits that long): runtimes that take seconds
# to start on a loaded 2-core machine get more (rackunit's load, the JVM).
RUN_S = {"rkt": 20, "scala": 15, "java": 10}
EXPECTED = {"correct": "pass", "wrong": "fail", "broken": "fail", "timeout": "timeout"}
EXPECTED["exit-early"] = "fail"
# Where exiting early does not exit 0 anyway: bash runs the function in a $(...) subshell,
# luaunit reports os.exit inside a test as a failure.
EXIT_NOT_ZERO = {"sh", "lua"}


def _indent(text: str, indent: str) -> str:
    return "\n".join(indent + line for line in text.split("\n"))


def completion(lang: str, kind: str, task: int) -> str:
    """The hand-written completion of one kind for task number ``task`` (0, 1, 2)."""
    s = STYLES[lang]
    body = (WRONG if kind == "wrong" else CORRECT)[lang][task]
    if kind == "broken":
        body = ")(\n" + body
    elif kind in ("timeout", "exit-early"):
        first = s.spin if kind == "timeout" else s.exit
        if "\n" in body or s.seq.startswith("{a}"):
            body = first + "\n" + body
        else:
            body = s.seq.format(a=first, b=body, indent=s.indent)
    return s.head + _indent(body, s.indent) + "\n" + s.close


def _kinds(lang: str) -> list[str]:
    # Go's prompt imports only testing and fmt: a completion has no way to exit the process.
    return [k for k in EXPECTED if not (k == "exit-early" and not STYLES[lang].exit)]


def _check(lang: str, shared_dir, cases: list[tuple[int, str]]) -> None:
    problem = ml.toolchain_problem(lang)
    if problem:
        pytest.skip(problem)
    tasks = load_multiple(shared_dir / "evaldata", lang)
    ids = PY_TASKS if lang == "python" else TASKS
    samples = [{"task_id": ids[t], "completion": completion(lang, k, t)} for t, k in cases]
    # the run limit only bounds the timing-out samples; compilation keeps its own budget
    res = ml.score_multiple_samples(tasks, samples, parallel=2, timeout_s=RUN_S.get(lang, 5))
    got = [r.status for r in res]
    want = [EXPECTED[k] for _, k in cases]
    details = [
        (k, r.status, r.reason, r.stderr_tail[-300:]) for (_, k), r in zip(cases, res, strict=True)
    ]
    assert got == want, details
    for (_, kind), r in zip(cases, res, strict=True):
        if kind == "exit-early" and lang not in EXIT_NOT_ZERO:
            # exit status 0: MultiPL-E's rule alone would pass it; the nonce fails it
            assert r.exit_code == 0 and r.reason == "exited before its last test", details


# scalac takes seconds a sample: Scala's default case runs with the slow sweep
DEFAULT_LANGS = [pytest.param(k, marks=pytest.mark.slow) if k == "scala" else k for k in STYLES]


@pytest.mark.parametrize("lang", DEFAULT_LANGS)
def test_language_verdicts(lang, shared_dir):
    """Every kind of completion of add, in one scoring call."""
    _check(lang, shared_dir, [(0, k) for k in _kinds(lang)])


@pytest.mark.slow
@pytest.mark.parametrize("lang", list(STYLES))
def test_language_verdicts_all_tasks(lang, shared_dir):
    """Every kind of completion of greatest_common_divisor and sum_product."""
    _check(lang, shared_dir, [(t, k) for t in (1, 2) for k in _kinds(lang)])


def test_evaluate_task_multiple_cli(tmp_path, shared_dir):
    """`evaluate --task multiple`: one table, a row per language that runs here, and a line
    for each that does not."""
    rows = [
        ("sh", "    echo ${#1}\n"),
        ("cs", "        return str.Length;\n"),
        ("jl", "    length(string)\nend\n"),
    ]
    samples = tmp_path / "s.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"language": lang, "task_id": "HumanEval_23_strlen", "completion": c}) + "\n"
            for lang, c in rows
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "reflectioncoder.cli", "evaluate", "--task", "multiple",
         "--samples", str(samples), "--limit", "1", "--k", "1", "--no-progress",
         "--data-dir", str(shared_dir / "evaldata"), "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    for lang, _ in rows:
        problem = ml.toolchain_problem(lang)
        if problem:
            assert result["unavailable"][lang] == problem and problem in out.stdout
        else:
            assert result["scores"][f"multiple-{lang}"]["pass@1"] == 1.0
            assert f"multiple-{lang}" in out.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "HumanEval_23_strlen", "completion": ""}) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "reflectioncoder.cli", "evaluate", "--task", "multiple",
         "--samples", str(bad), "--data-dir", str(shared_dir / "evaldata")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1 and f"{bad}:1: language: missing" in out.stderr
    bad.write_text(json.dumps({"language": "cobol", "task_id": "x", "completion": ""}) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "reflectioncoder.cli", "evaluate", "--task", "multiple",
         "--samples", str(bad), "--data-dir", str(shared_dir / "evaldata")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1 and "'cobol' is not a MultiPL-E language" in out.stderr


def test_wrong_completions_differ():
    for lang, bodies in CORRECT.items():
        for task, (right, wrong) in enumerate(zip(bodies, WRONG[lang], strict=True)):
            assert right != wrong, (lang, task)


def test_wrong_completion_is_exercised(shared_dir):
    """The wrong completions fail on the tests' own inputs (add(0, 1), gcd(3, 7), [] -> (0, 1))."""
    tasks = load_multiple(shared_dir / "evaldata", "cpp")
    assert "candidate((0), (1)) == (1)" in tasks[TASKS[0]].tests
    assert "candidate((3), (7)) == (1)" in tasks[TASKS[1]].tests
    assert "std::make_tuple(0, 1)" in tasks[TASKS[2]].tests


def test_java_uses_javatuples(shared_dir):
    tasks = load_multiple(shared_dir / "evaldata", "java")
    assert "Pair.with(" in tasks[TASKS[2]].tests
    assert "import org.javatuples.*;" in tasks[TASKS[2]].prompt


def test_python_canonical_solutions(shared_dir, seed):
    rng = random.Random(seed)
    path = shared_dir / "evaldata" / "multipl_e" / "humaneval-python.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    picked = rng.sample(rows, 4)
    tasks = load_multiple(shared_dir / "evaldata", "python")
    samples = [{"task_id": r["task_id"], "completion": r["canonical_solution"]} for r in picked]
    samples += [{"task_id": r["task_id"], "completion": "    return None\n"} for r in picked[:2]]
    res = ml.score_multiple_samples(tasks, samples, parallel=2)
    assert [r.status for r in res] == ["pass"] * 4 + ["fail"] * 2, [r.stderr_tail for r in res]


def test_nonce_follows_the_last_test_in_every_task(shared_dir):
    """Each language's nonce lands after the last assertion of all its tasks, once."""
    for lang in multiple_languages(shared_dir / "evaldata"):
        if lang not in ml.LANGUAGES:
            continue
        for task in load_multiple(shared_dir / "evaldata", lang).values():
            text = ml.program_text(task, "", "NONCE123")
            statement = ml.LANGUAGES[lang].nonce.replace("{nonce}", "NONCE123")
            assert text.count(statement) == 1, (lang, task.task_id)
            assert ("NONCE123" in text) == ml.nonce_in_source(lang), (lang, task.task_id)
            after = text[text.index(statement) :]
            for probe in ("assert", "candidate(", "check("):
                assert probe not in after, (lang, task.task_id, after[:200])


def test_csharp_reads_the_fixed_file(shared_dir):
    """C# is scored on the copy whose list results compare with SequenceEqual: with the other
    (List.Equals, reference equality) a correct all_prefixes fails."""
    tasks = load_multiple(shared_dir / "evaldata", "cs")
    assert len(tasks) == 158 and "cs-bu" not in multiple_languages(shared_dir / "evaldata")
    assert not any(").Equals((new List<" in t.tests for t in tasks.values())
    if ml.toolchain_problem("cs"):
        return
    body = (
        "        var r = new List<string>();\n"
        "        for (int i = 1; i <= str.Length; i++) r.Add(str.Substring(0, i));\n"
        "        return r;\n"
    )
    sample = {"task_id": "HumanEval_14_all_prefixes", "completion": body}
    assert ml.score_multiple_samples(tasks, [sample])[0].status == "pass"


def test_missing_toolchains_are_named(shared_dir):
    for lang in multiple_languages(shared_dir / "evaldata"):
        problem = ml.toolchain_problem(lang)
        assert problem is None or f"multiple-{lang}: unavailable" in problem
    assert "no runner" in (ml.toolchain_problem("cobol") or "")
    assert set(ml.available_languages()) <= set(ml.LANGUAGES)
    for lang in ("jl", "swift"):
        assert ml.LANGUAGES[lang].unavailable  # not packaged: the reason is stated
        if ml.toolchain_problem(lang):
            assert "Debian 12 does not package" in ml.toolchain_problem(lang)


def test_eval_setup_prints_the_command(tmp_path):
    """`eval-setup --print` names the Debian packages of the languages that are missing."""
    out = subprocess.run(
        [sys.executable, "-m", "reflectioncoder.cli", "eval-setup", "--languages", "cs", "jl",
         "--print"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "internal error" not in out.stderr
    if ml.toolchain_problem("jl"):
        assert out.returncode == 1, out.stderr  # asked for by name, and not here
    text = out.stdout + out.stderr
    assert "jl" in text and "Debian 12 does not package Julia" in text
    if ml.toolchain_problem("cs"):
        assert "apt-get install" in out.stdout and "mono-mcs" in out.stdout
    else:
        assert "cs" in text and "available" in text


@pytest.mark.skipif(os.geteuid() != 0, reason="eval-setup installs only as root")
def test_eval_setup_installs_with_apt_get(tmp_path):
    """As root, eval-setup runs apt-get update and install with the missing languages'
    packages (a stand-in apt-get on an otherwise empty PATH: every toolchain looks missing)."""
    log = tmp_path / "apt.log"
    fake = tmp_path / "bin" / "apt-get"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    out = subprocess.run(
        [sys.executable, "-m", "reflectioncoder.cli", "eval-setup", "--languages", "cs", "ts"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": str(fake.parent)},
    )  # fmt: skip
    calls = log.read_text().splitlines()
    assert calls[0].startswith("update"), calls
    assert calls[1].split()[-5:] == [
        "bubblewrap", "mono-mcs", "mono-runtime", "node-typescript", "nodejs"
    ], calls  # fmt: skip
    assert out.returncode == 1 and "multiple-cs: unavailable, mcs, mono not installed" in out.stdout


def test_nonce_rule_edge_cases(shared_dir):
    """Output left without a newline before the nonce still passes (a real run); a program
    that prints its own source, the nonce's print statement with it, and exits 0 does not."""
    tasks = load_multiple(shared_dir / "evaldata", "python")
    unfinished = '    import sys; sys.stdout.write("partial")\n    return x + y\n'
    res = ml.score_multiple_samples(tasks, [{"task_id": "Python/53", "completion": unfinished}])
    assert (res[0].status, res[0].reason) == ("pass", ""), res[0].stderr_tail
    nonce = "rc-done-0123456789abcdef"
    for lang in ("js", "java", "rb", "sh"):
        spec = ml.LANGUAGES[lang]
        echoed = ml.program_text(load_multiple(shared_dir / "evaldata", lang)[TASKS[0]], "", nonce)
        run = ExecResult(echoed, "", 0, False, False, 0.1, "bwrap")
        assert ml.verdict(spec, run, nonce) == ("fail", "exited before its last test"), lang
        run = ExecResult(f"ok!ok!{nonce}\n", "", 0, False, False, 0.1, "bwrap")
        assert ml.verdict(spec, run, nonce) == ("pass", ""), lang
