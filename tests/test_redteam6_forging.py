"""Red team, round 6: the MultiPL-E nonce against completions written for this scorer, in the
languages whose "reads descriptor 3" cell said "not tested", and bash's "holds".

bash runs the candidate in a ``$(...)`` subshell whose output the test captures, so a read of
descriptor 3 inside the function prints nowhere that counts (``test_multiple_forging.py``).
But a completion is free text: one that closes the function on its own line (``echo 0; }``:
no ``\\n}``, the stop string, so post-processing keeps what follows), reads descriptor 3 at
the top level, prints it and exits 0, then opens a dummy function for the tests' ``}``,
passed: MultiPL-E's own limit (the tests are code of the same program), as in every other
language here. The table in docs/evaluation.md now says so for each of these.
"""

from __future__ import annotations

import pytest
import test_multiple_forging
import test_redteam4_ipc

_score = test_multiple_forging._score
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

# A wrong `add` that reads descriptor 3 as the test code does, prints it and exits 0
READS_DESCRIPTOR = {
    "sh": "    echo 0; }\necho; cat <&3; echo; exit 0\nrc_dummy() {\n    :\n",
    "cpp": '    std::ifstream f("/dev/fd/3");\n    std::string n;\n    std::getline(f, n);\n'
    "    std::cout << std::endl << n << std::endl;\n    exit(0);\n",
    "rs": '    let n = std::fs::read_to_string("/dev/fd/3").unwrap();\n'
    '    println!("\\n{}", n);\n    std::process::exit(0);\n',
    "java": "        try {\n            System.out.println();\n"
    "            System.out.println(new String(java.nio.file.Files.readAllBytes(\n"
    '                java.nio.file.Paths.get("/dev/fd/3"))));\n'
    "        } catch (IOException e) { }\n        System.exit(0);\n        return 0;\n",
    "php": '    echo "\\n", file_get_contents("php://fd/3"), "\\n";\n    exit(0);\n}\n',
    "rb": "  puts\n  puts IO.new(3).read\n  $stdout.flush\n  exit!(0)\nend\n",
    "ts": "  const fs = (globalThis as any).process.mainModule.require('fs');\n"
    "  console.log('\\n' + fs.readFileSync('/dev/fd/3', 'utf8'));\n"
    "  (globalThis as any).process.exit(0);\n  return 0;\n}\n",
    # (round 9, first run here: the tests open with a statement, so nothing is left open for
    # them to close; the dummy function this had was never closed, a syntax error)
    "lua": "    return 0\nend\nprint('')\nprint(io.open('/dev/fd/3'):read('a'))\nos.exit(0)\n",
    "pl": '    open(my $fd, "<&=", 3);\n    print "\\n", <$fd>, "\\n";\n    exit 0;\n}\n',
}


@pytest.mark.parametrize("language", sorted(READS_DESCRIPTOR))
def test_reading_descriptor_three_forges_a_pass(language, shared_dir):
    """MultiPL-E's own limit, stated per language in docs/evaluation.md's table."""
    res = _score(language, READS_DESCRIPTOR[language], shared_dir)
    assert res.status == "pass", (language, res.reason, res.stderr_tail)


def test_post_processing_keeps_the_top_level_shell_code(shared_dir):
    """A model's raw output is cut at the last ``\\n}`` (the stop string); this one has none."""
    from reflectioncoder.eval.prompts import postprocess_multiple
    from reflectioncoder.eval.tasks import load_multiple

    task = load_multiple(shared_dir / "evaldata", "sh")[test_multiple_forging.TASK]
    assert postprocess_multiple(task, READS_DESCRIPTOR["sh"]) == READS_DESCRIPTOR["sh"]


# A right but too slow `add` that first kills MultiPL-E's `timeout` (its parent), then takes
# 30 s: the run ends with its main process (the box's PID namespace, or the fallback's end of
# the run with it), so the answer never comes and the sample fails at once.
KILLS_ITS_TIMER = {
    "cpp": "    kill(getppid(), SIGKILL);\n    sleep(30);\n    return x + y;\n",
    "sh": "    kill -9 $PPID 2>/dev/null; kill -9 $(ps -o ppid= $$) 2>/dev/null\n"
    "    sleep 30; echo $(( $1 + $2 ))\n",
}


@pytest.mark.parametrize("language", sorted(KILLS_ITS_TIMER))
def test_killing_the_timer_gains_nothing(language, level, shared_dir):
    res = _score(language, KILLS_ITS_TIMER[language], shared_dir)
    assert res.status != "pass" and res.duration_s < 10, (language, level, res)
