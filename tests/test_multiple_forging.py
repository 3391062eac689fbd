"""MultiPL-E verdicts against completions that forge them, per language whose toolchain is
here. The nonce a program prints after its last test is not in its source, binary, class file
or environment (it reads it from descriptor 3 at its end): a wrong completion that reads its
own source or binary for it and exits 0 fails. What still holds a forger's way is MultiPL-E's
own limit (the tests are code of the same program): a completion written for this scorer
reads descriptor 3 itself; these tests show that too, so docs/evaluation.md's table says it."""

from __future__ import annotations

import os

import pytest

from reflectioncoder.eval import multiple as ml
from reflectioncoder.eval.tasks import load_multiple

TASK = "HumanEval_53_add"

# A wrong `add` that looks for the nonce in its own source or binary, prints what it finds and
# exits 0 before the tests run. {close}: what ends the function where the tests do not.
READS_ITSELF = {
    "python": (
        "    import re, sys, os\n"
        "    for path in (sys.argv[0], __file__ if '__file__' in globals() else sys.argv[0]):\n"
        "        for n in re.findall(r'rc-done-[0-9a-f]{32}', open(path).read()):\n"
        "            print(n)\n"
        "    print(os.environ)\n"
        "    sys.stdout.flush(); os._exit(0)\n"
    ),
    "cpp": (
        '    std::ifstream f("/proc/self/exe", std::ios::binary);\n'
        "    std::string s((std::istreambuf_iterator<char>(f)),\n"
        "                  std::istreambuf_iterator<char>());\n"
        '    std::regex re("rc-done-[0-9a-f]{32}");\n'
        "    for (std::sregex_iterator i(s.begin(), s.end(), re), e; i != e; ++i)\n"
        "        std::cout << i->str() << std::endl;\n"
        "    exit(0);\n"
    ),
    "java": (
        "        try {\n"
        "            String s = new String(java.nio.file.Files.readAllBytes(\n"
        '                java.nio.file.Paths.get("Problem.class")), "ISO-8859-1");\n'
        "            java.util.regex.Matcher m = java.util.regex.Pattern\n"
        '                .compile("rc-done-[0-9a-f]{32}").matcher(s);\n'
        "            while (m.find()) System.out.println(m.group());\n"
        "        } catch (Exception e) { }\n"
        "        System.exit(0);\n"
        "        return 0;\n"
    ),
    "js": (
        "  const s = require('fs').readFileSync(__filename, 'utf8');\n"
        "  for (const m of s.match(/rc-done-[0-9a-f]{32}/g) || []) console.log(m);\n"
        "  process.exit(0);\n}\n"
    ),
    "php": (
        "    preg_match_all('/rc-done-[0-9a-f]{32}/', file_get_contents(__FILE__), $m);\n"
        '    foreach ($m[0] as $n) { echo $n, "\\n"; }\n'
        "    exit(0);\n}\n"
    ),
    "sh": (
        "    grep -o 'rc-done-[0-9a-f]\\{32\\}' \"$0\"; env | grep -o 'rc-done-[0-9a-f]*'\n"
        "    kill -9 $$\n"
    ),
    "rb": ("  File.read(__FILE__).scan(/rc-done-[0-9a-f]{32}/) { |n| puts n }\n  exit!(0)\nend\n"),
    "lua": (
        "    local f = io.open(arg[0]); local s = f:read('a')\n"
        "    for n in s:gmatch('rc%-done%-%x+') do print(n) end\n"
        "    os.exit(0)\nend\n"
    ),
    "rs": (
        '    let b = std::fs::read("/proc/self/exe").unwrap();\n'
        "    let s = String::from_utf8_lossy(&b).to_string();\n"
        '    for (i, _) in s.match_indices("rc-done-") { println!("{}", &s[i..i + 40]); }\n'
        "    std::process::exit(0);\n"
    ),
    "pl": (
        "    open(my $f, '<', $0); local $/; my $s = <$f>;\n"
        '    print "$1\\n" while $s =~ /(rc-done-[0-9a-f]{32})/g;\n'
        "    exit 0;\n}\n"
    ),
}

# A wrong `add` written for this scorer: it reads descriptor 3 like the test code does.
READS_DESCRIPTOR = {
    "python": "    import os, sys\n    print(os.read(3, 256).decode())\n"
    "    sys.stdout.flush(); os._exit(0)\n",
    "sh": "    echo; cat <&3; echo\n    kill -9 $$\n",
    "js": "  console.log(require('fs').readFileSync('/dev/fd/3', 'utf8'));\n"
    "  process.exit(0);\n}\n",
}


def _score(language: str, completion: str, shared_dir) -> ml.MultiplEResult:
    problem = ml.toolchain_problem(language)
    if problem:
        pytest.skip(problem)
    tasks = load_multiple(shared_dir / "evaldata", language)
    task_id = "Python/53" if language == "python" else TASK
    sample = {"task_id": task_id, "completion": completion}
    return ml.score_multiple_samples(tasks, [sample], parallel=1, timeout_s=10)[0]


@pytest.mark.parametrize("language", sorted(READS_ITSELF))
def test_nonce_is_not_in_the_program(language, shared_dir):
    """The nonce is in neither the source nor the binary nor the environment: the wrong
    completion that prints what it finds there fails."""
    assert not ml.nonce_in_source(language)
    res = _score(language, READS_ITSELF[language], shared_dir)
    assert res.status == "fail", (res.reason, res.stderr_tail)


# where that forgery works (False: bash runs the function in a $(...) subshell whose output the
# test captures, and the test's exit status stays the script's)
FORGES = {"python": True, "js": True, "sh": False}


@pytest.mark.parametrize("language", sorted(READS_DESCRIPTOR))
def test_reading_descriptor_three(language, shared_dir):
    """MultiPL-E's own limit, stated in the table: the tests are code of the same program, so
    a completion that knows this scorer can read the nonce as the test code does."""
    res = _score(language, READS_DESCRIPTOR[language], shared_dir)
    assert res.status == ("pass" if FORGES[language] else "fail"), (res.reason, res.stderr_tail)


def test_lua_exit_override_gains_nothing(shared_dir):
    """Lua prints the nonce only when luaunit reports no failure: a wrong completion that
    makes every os.exit exit 0 fails (it used to pass: the nonce came before os.exit)."""
    completion = "    os.exit = function() return end\n    return x * y\nend\n"
    res = _score("lua", completion, shared_dir)
    assert res.status == "fail", (res.reason, res.stderr_tail)


def test_the_nonce_reaches_no_compiler(shared_dir):
    """The build step never holds the descriptor (C++: a compile-time read of it fails)."""
    text = ml.command_line("cpp", 5, 9)
    build, _, run = text.partition("&& timeout")
    assert "9<&-" in build and "3<&9" not in build and "3<&9 9<&-" in run
    assert os.path.exists("/bin/bash")


# A wrong `add` that switches the tests' checks off: MultiPL-E's tests are code of the same
# program, so where the language lets a completion redefine them, a wrong one passes.
REDEFINES = {
    "cpp": "    return x * y;\n}\n#undef assert\n#define assert(x) ((void)0)\nvoid rc_unused() {\n",
    "rs": "    x * y\n}\nmacro_rules! assert_eq { ($($t:tt)*) => {}; }\nfn rc_unused() {\n",
    "js": "  return x * y;\n}\nrequire('node:assert').deepEqual = () => {};\n",
    "python": "    class Yes:\n        def __eq__(self, other):\n            return True\n"
    "    return Yes()\n",
    # the tests end a failed check with `exit 1`: an exit that returns lets them run on
    "pl": "    return $x * $y;\n}\nBEGIN { *CORE::GLOBAL::exit = sub { 1 }; }\n",
}


@pytest.mark.parametrize("language", sorted(REDEFINES))
def test_redefined_assertions_forge_a_pass(language, shared_dir):
    """MultiPL-E's own limit, stated per language in docs/evaluation.md."""
    res = _score(language, REDEFINES[language], shared_dir)
    assert res.status == "pass", (res.reason, res.stderr_tail)
