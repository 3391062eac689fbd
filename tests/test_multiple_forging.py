"""MultiPL-E verdicts against completions that forge them, per language whose toolchain is
here. The nonce a program prints after its last test is not in its source, binary, class file
or environment (it reads it from descriptor 3 at its end): a wrong completion that reads its
own source or binary for it and exits 0 fails. What still holds a forger's way is MultiPL-E's
own limit (the tests are code of the same program): a completion written for this scorer
reads descriptor 3 itself; these tests show that too, so docs/evaluation.md's table says it."""

from __future__ import annotations

import dataclasses
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
    # the compiled assembly and the source (C# keeps literals in UTF-16: the NULs go first)
    "cs": (
        '        var files = new List<string>(System.IO.Directory.GetFiles("."));\n'
        '        files.AddRange(System.IO.Directory.GetFiles("../src"));\n'
        "        files.Add(System.Reflection.Assembly.GetExecutingAssembly().Location);\n"
        "        foreach (var p in files) {\n"
        "            var s = Encoding.UTF8.GetString(System.IO.File.ReadAllBytes(p))\n"
        '                .Replace("\\0", "");\n'
        "            foreach (System.Text.RegularExpressions.Match m in\n"
        "                     System.Text.RegularExpressions.Regex.Matches(\n"
        '                         s, "rc-done-[0-9a-f]{32}"))\n'
        "                Console.WriteLine(m.Value);\n"
        "        }\n"
        "        foreach (System.Collections.DictionaryEntry e in\n"
        "                 Environment.GetEnvironmentVariables())\n"
        "            Console.WriteLine(e.Value);\n"
        "        Environment.Exit(0);\n"
        "        return 0;\n"
    ),
    "d": (
        "{\n"
        "    import std.file : dirEntries, SpanMode, read, isFile;\n"
        "    import std.algorithm.searching : find;\n"
        "    import std.stdio : writeln;\n"
        "    import std.process : environment;\n"
        "    import core.stdc.stdlib : exit;\n"
        '    string[] paths = [__FILE_FULL_PATH__, "/proc/self/exe"];\n'
        '    foreach (dir; [".", "../src"])\n'
        "        foreach (e; dirEntries(dir, SpanMode.shallow)) if (e.isFile) paths ~= e.name;\n"
        "    foreach (p; paths) {\n"
        "        auto b = cast(const(ubyte)[]) read(p);\n"
        '        while ((b = find(b, cast(const(ubyte)[]) "rc-done-")).length >= 40) {\n'
        "            writeln(cast(string) b[0 .. 40]);\n"
        "            b = b[1 .. $];\n"
        "        }\n"
        "    }\n"
        "    writeln(environment.toAA());\n"
        "    exit(0);\n"
        "    return 0;\n"
        "}\n"
    ),
    "r": (
        "    args <- commandArgs()\n"
        '    files <- c(sub("^--file=", "", args[grepl("^--file=", args)]),\n'
        '               list.files(".", full.names = TRUE),\n'
        '               list.files("../src", full.names = TRUE))\n'
        "    for (p in files) {\n"
        '        s <- paste(readLines(p, warn = FALSE), collapse = "\\n")\n'
        '        for (n in regmatches(s, gregexpr("rc-done-[0-9a-f]{32}", s))[[1]]) cat(n, "\\n")\n'
        "    }\n"
        "    print(Sys.getenv())\n"
        '    quit(save = "no", status = 0)\n'
        "}\n"
    ),
    "rkt": (
        "  (define me (variable-reference->module-source (#%variable-reference)))\n"
        '  (for ([p (append (list me) (directory-list "." #:build? #t)\n'
        '                   (directory-list "../src" #:build? #t))]\n'
        "        #:when (file-exists? p))\n"
        '    (for ([n (regexp-match* #rx"rc-done-[0-9a-f]+" (file->bytes p))]) (displayln n)))\n'
        "  (define env (current-environment-variables))\n"
        "  (for ([n (environment-variables-names env)])\n"
        "    (displayln (environment-variables-ref env n)))\n"
        "  (exit 0))\n"
    ),
    "scala": (
        '        val files = new java.io.File(".").listFiles.toList ++\n'
        '            new java.io.File("../src").listFiles.toList\n'
        "        for (f <- files if f.isFile) {\n"
        '            val s = new String(java.nio.file.Files.readAllBytes(f.toPath), "ISO-8859-1")\n'
        '            for (m <- "rc-done-[0-9a-f]{32}".r.findAllIn(s)) println(m)\n'
        "        }\n"
        "        println(System.getenv())\n"
        "        sys.exit(0)\n"
    ),
}

# A wrong `add` written for this scorer: it reads descriptor 3 like the test code does.
READS_DESCRIPTOR = {
    "python": "    import os, sys\n    print(os.read(3, 256).decode())\n"
    "    sys.stdout.flush(); os._exit(0)\n",
    "sh": "    echo; cat <&3; echo\n    kill -9 $$\n",
    "js": "  console.log(require('fs').readFileSync('/dev/fd/3', 'utf8'));\n"
    "  process.exit(0);\n}\n",
    "cs": '        Console.WriteLine(System.IO.File.ReadAllText("/dev/fd/3"));\n'
    "        Environment.Exit(0);\n        return 0;\n",
    "d": "{\n    import std.file : readText;\n    import std.stdio : writeln;\n"
    "    import core.stdc.stdlib : exit;\n"
    '    writeln(readText("/dev/fd/3"));\n    exit(0);\n    return 0;\n}\n',
    "r": '    cat("\\n", readLines("/dev/fd/3", warn = FALSE), "\\n", sep = "")\n'
    '    quit(save = "no", status = 0)\n}\n',
    "rkt": '  (displayln (file->string "/dev/fd/3"))\n  (exit 0))\n',
    "scala": "        println(new String(java.nio.file.Files.readAllBytes(\n"
    '            java.nio.file.Paths.get("/dev/fd/3"))))\n        sys.exit(0)\n',
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
FORGES = {lang: lang != "sh" for lang in READS_DESCRIPTOR}


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
    "r": "    x * y\n}\nstopifnot <- function(...) invisible(TRUE)\n",
    # a member of the object shadows Predef.assert
    "scala": "        x * y\n    }\n    def assert(ok: Boolean): Unit = ()\n"
    "    def rcUnused(): Long = {\n        0L\n",
    # Debug.Assert reports to the trace listeners (stderr here): with none, a failure is silent
    "cs": "        Debug.Listeners.Clear();\n        return x * y;\n",
    # D's assert is a keyword, but druntime calls a set assertHandler instead of throwing
    "d": "{\n    import core.exception : assertHandler;\n"
    "    assertHandler = function(string file, size_t line, string msg) nothrow {};\n"
    "    return x * y;\n}\n",
    # rackunit reports a failed check on stderr and goes on: silence it
    "rkt:stderr": "  (current-error-port (open-output-nowhere))\n  (* x y))\n",
    # or shadow the check with a module-level definition (definitions shadow a require)
    "rkt:define": "  (* x y))\n(define-syntax-rule (check-within a b c) (void))\n",
}


# where that forgery does not work (D: LDC compiles a failed assert as a call that never
# returns, so a handler that returns runs on into undefined code: a segmentation fault; round
# 9: the tests' checks are the scorer's own in C++, C#, JS, Rust and Scala, ``Language.checks``)
REDEFINE_FAILS = {"d", "cs", "cpp", "js", "rs", "scala"}


@pytest.mark.parametrize("attack", sorted(REDEFINES))
def test_redefined_assertions(attack, shared_dir):
    """Where they pass, MultiPL-E's own limit, stated per language in docs/evaluation.md."""
    res = _score(attack.partition(":")[0], REDEFINES[attack], shared_dir)
    want = "fail" if attack in REDEFINE_FAILS else "pass"
    assert res.status == want, (res.reason, res.stderr_tail)


# The nonce statement as it was before descriptor 3 (the nonce in the source), per language
# whose completion above reads files: with it, each of those completions forges a pass, so
# their failing above is the descriptor's doing, not a broken attack.
IN_SOURCE = {
    "cs": 'Console.WriteLine("{nonce}");',
    "d": 'unittest { import core.stdc.stdio : puts; puts("{nonce}"); }',
    "r": 'cat("{nonce}\\n")',
    "rkt": '(displayln "{nonce}")',
    "scala": 'println("{nonce}")',
}


@pytest.mark.slow
@pytest.mark.parametrize("language", sorted(IN_SOURCE))
def test_reading_itself_forges_a_nonce_in_the_source(language, shared_dir, monkeypatch):
    lang = dataclasses.replace(ml.LANGUAGES[language], nonce=IN_SOURCE[language])
    monkeypatch.setitem(ml.LANGUAGES, language, lang)
    assert ml.nonce_in_source(language)
    res = _score(language, READS_ITSELF[language], shared_dir)
    assert res.status == "pass", (res.reason, res.stderr_tail)


def test_scala_nonce_helper_is_built_once_and_read_only():
    """Scala's test code calls RcNonce.print(), compiled once into the cache (so each sample's
    scalac types no java.io); the folder is bound read-only and the program holds no nonce."""
    if ml.toolchain_problem("scala"):
        pytest.skip(ml.toolchain_problem("scala"))
    from reflectioncoder.eval.multiple_languages import scala_helper_dir, toolchain_env

    folder = scala_helper_dir()
    assert os.path.isfile(os.path.join(folder, "RcNonce.class"))
    assert folder in toolchain_env("scala")[1]
    assert folder in ml.command_line("scala", 5, 9)
    assert scala_helper_dir() == folder  # built once
