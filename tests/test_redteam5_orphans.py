"""Red team, round 5: a run outliving its main process to escape its time limit. MultiPL-E
runs a program as ``timeout -s KILL RUN_S PROGRAM``; a completion that forks and lets the
parent return 0 ends ``timeout`` and the shell at once, with status 0, while its child goes on
with the tests past the limit, holding the run's stdout and the nonce's descriptor. Under
bubblewrap the box's PID namespace dies with its main process, so the child goes too. The
fallback kept reading the pipes until the child closed them: a C++ solution three times too
slow printed the nonce and passed (a timeout scored as a pass). Now the fallback ends a run
when its main process ends, as a box does: what it left is killed, its pipes read to their
end. Also the Python scorer's own runs (no fork there) and build-data's keep their verdicts.
"""

from __future__ import annotations

import os
import uuid

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple, sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

SLOW_CHILD = {
    "cpp": r"""
#include <cstdio>
#include <ctime>
#include <unistd.h>
int main() {
    if (fork() > 0) return 0;  // the main process ends at once: timeout and the shell exit 0
    volatile long x = 0;
    std::clock_t t = std::clock();
    while (std::clock() - t < 3 * CLOCKS_PER_SEC) x++;  // 3 s of CPU, past the 1 s limit
    char b[128];
    ssize_t n = read(3, b, sizeof b);
    std::printf("%.*s\n", (int)(n > 0 ? n : 0), b);
}
""",
    "sh": r"""
( end=$(( $(date +%s) + 3 )); while [ "$(date +%s)" -lt "$end" ]; do :; done; cat <&3 ) &
exit 0
""",
}


@pytest.mark.parametrize("language", sorted(SLOW_CHILD))
def test_a_child_left_behind_does_not_outlive_the_time_limit(level, language):
    if multiple.toolchain_problem(language):
        pytest.skip(multiple.toolchain_problem(language))
    nonce = f"rc-done-{uuid.uuid4().hex}"
    res = multiple.run_program(language, SLOW_CHILD[language], run_s=1, nonce=nonce)
    status, _ = multiple.verdict(multiple.LANGUAGES[language], res, nonce)
    assert status != "pass", f"{language} at {level}: {res}"
    assert nonce not in res.stdout, res  # the child was killed with its main process


def test_output_written_before_the_end_is_kept(level):
    """Ending with the main process loses nothing it wrote: a child's last words before the
    main process ends are read to the pipe's end."""
    program = "(echo child; sleep 60) & sleep 0.3; echo main"
    res = sandbox.run_sandboxed(["/bin/sh", "-c", program], timeout_s=20)
    # ok: it ended with the main process, not at the 20 s limit the child's 60 s would reach
    # (no wall-time bound here that a loaded machine's slow start could break)
    assert res.stdout.split() == ["child", "main"] and res.ok, res


STOPS_TIMEOUT = r"""
#include <csignal>
#include <cstdio>
#include <ctime>
#include <unistd.h>
int main() {
    kill(getppid(), SIGSTOP);  // timeout, stopped: its timer's signal waits
    volatile long x = 0;
    std::clock_t t = std::clock();
    while (std::clock() - t < 3 * CLOCKS_PER_SEC) x++;  // past the 1 s limit
    char b[128];
    ssize_t n = read(3, b, sizeof b);
    std::printf("%.*s\n", (int)(n > 0 ? n : 0), b);
    std::fflush(stdout);
    kill(getppid(), SIGCONT);
}
"""


def test_stopping_timeout_gains_nothing(level):
    """``timeout`` stopped, the program ran on past its limit, printed the nonce and resumed
    it: when the stop came before ``timeout`` armed its timer (1 run in 3 here, on a loaded
    machine) it exited 0, a pass. Stop signals are now refused to every program (seccomp)."""
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    nonce = f"rc-done-{uuid.uuid4().hex}"
    res = multiple.run_program("cpp", STOPS_TIMEOUT, run_s=1, nonce=nonce)
    assert multiple.verdict(multiple.LANGUAGES["cpp"], res, nonce)[0] == "timeout", (level, res)


SIGNALS = r"""
#include <csignal>
#include <cstdio>
#include <sys/syscall.h>
#include <unistd.h>
static volatile sig_atomic_t got = 0;
static void attempt(const char* name, long r) {
    std::printf("%s %s\n", name, r == 0 ? "sent" : "refused");
}
int main() {
    signal(SIGUSR1, [](int) { got = 1; });
    attempt("SIGSTOP parent", kill(getppid(), SIGSTOP));
    attempt("SIGTSTP self", raise(SIGTSTP));
    attempt("SIGTTIN group", kill(0, SIGTTIN));
    attempt("SIGTTOU tgkill", syscall(SYS_tgkill, getpid(), gettid(), SIGTTOU));
    attempt("SIGSTOP sigqueue", sigqueue(getpid(), SIGSTOP, sigval{0}));
    attempt("SIGUSR1 self", raise(SIGUSR1));  // allowed: runtimes signal themselves
    attempt("SIGCONT parent", kill(getppid(), SIGCONT));
    std::printf("handled %d\n", (int)got);
}
"""


def test_stop_signals_are_refused_others_are_not(level):
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    res = multiple.run_program("cpp", SIGNALS)
    got = dict(line.rsplit(" ", 1) for line in res.stdout.splitlines())
    stops = {k: v for k, v in got.items() if k.startswith(("SIGSTOP", "SIGTSTP", "SIGTT"))}
    assert len(stops) == 5 and set(stops.values()) == {"refused"}, (level, got)
    assert got["SIGUSR1 self"] == "sent" and got["handled"] == "1", got
    assert got["SIGCONT parent"] == "sent", got
