# ruff: noqa: E501  (the programs are written as each language writes them)
"""Red team, round 8: issue 24's kernel doors, from every installed MultiPL-E language.

Each language's own API, through MultiPL-E's build-and-run (``multiple.run_program``), as
root, at each level: open a sysctl (``kernel.core_pattern``, ``fs.lease-break-time``) and
``/proc/sysrq-trigger`` for writing (never written: harmless if the open went through),
chmod ``/dev/null`` to the mode it has, and make a socket (inet, and unix where the language
has one). Each success prints ``WORKED ...``; the test wants none, and ``probed`` at the end.
Before round 8 these were tried from Python and shell only (``test_sandbox_kernel.py``).
"""

from __future__ import annotations

import os

import pytest

from reflectioncoder.eval import multiple, sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the doors are root's: run as root")

PATHS = ("/proc/sys/kernel/core_pattern", "/proc/sys/fs/lease-break-time", "/proc/sysrq-trigger")
_LIST = ", ".join(f'"{p}"' for p in PATHS)

PROBES = {
    "python": f"""
import os, socket
for p in [{_LIST}]:
    try:
        open(p, "ab").close()
        print("WORKED open", p)
    except OSError:
        pass
try:
    os.chmod("/dev/null", 0o666)
    print("WORKED chmod /dev/null")
except OSError:
    pass
for family in (socket.AF_INET, socket.AF_UNIX):
    try:
        socket.socket(family, socket.SOCK_STREAM).close()
        print("WORKED socket", family)
    except OSError:
        pass
print("probed")
""",
    "cpp": f"""
#include <cstdio>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
int main() {{
    const char* paths[] = {{{_LIST}}};
    for (const char* p : paths) {{
        int fd = open(p, O_WRONLY | O_APPEND);
        if (fd >= 0) {{ std::printf("WORKED open %s\\n", p); close(fd); }}
    }}
    if (chmod("/dev/null", 0666) == 0) std::puts("WORKED chmod /dev/null");
    if (socket(AF_INET, SOCK_STREAM, 0) >= 0) std::puts("WORKED socket inet");
    if (socket(AF_UNIX, SOCK_STREAM, 0) >= 0) std::puts("WORKED socket unix");
    std::puts("probed");
}}
""",
    "rs": f"""
use std::os::unix::fs::PermissionsExt;
fn main() {{
    for p in [{_LIST}] {{
        if std::fs::OpenOptions::new().append(true).open(p).is_ok() {{
            println!("WORKED open {{}}", p);
        }}
    }}
    let mode = std::fs::Permissions::from_mode(0o666);
    if std::fs::set_permissions("/dev/null", mode).is_ok() {{
        println!("WORKED chmod /dev/null");
    }}
    if std::net::UdpSocket::bind("0.0.0.0:0").is_ok() {{ println!("WORKED socket inet"); }}
    if std::os::unix::net::UnixDatagram::unbound().is_ok() {{ println!("WORKED socket unix"); }}
    println!("probed");
}}
""",
    "go": f"""
package main

import (
\t"fmt"
\t"net"
\t"os"
\t"testing"
)

func TestProbe(t *testing.T) {{
\tfor _, p := range []string{{{_LIST}}} {{
\t\tif f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0); err == nil {{
\t\t\tfmt.Println("WORKED open", p)
\t\t\tf.Close()
\t\t}}
\t}}
\tif os.Chmod("/dev/null", 0666) == nil {{
\t\tfmt.Println("WORKED chmod /dev/null")
\t}}
\tif c, err := net.ListenPacket("udp", "0.0.0.0:0"); err == nil {{
\t\tfmt.Println("WORKED socket inet")
\t\tc.Close()
\t}}
\tif c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{{Name: "@rc-probe", Net: "unixgram"}}); err == nil {{
\t\tfmt.Println("WORKED socket unix")
\t\tc.Close()
\t}}
\tfmt.Println("probed")
}}
""",
    "java": f"""
public class Problem {{
    public static void main(String[] args) {{
        for (String p : new String[] {{{_LIST}}}) {{
            try {{ new java.io.FileOutputStream(p, true).close(); System.out.println("WORKED open " + p); }}
            catch (Exception e) {{}}
        }}
        try {{
            java.nio.file.Files.setPosixFilePermissions(java.nio.file.Paths.get("/dev/null"),
                java.nio.file.attribute.PosixFilePermissions.fromString("rw-rw-rw-"));
            System.out.println("WORKED chmod /dev/null");
        }} catch (Exception e) {{}}
        try {{ new java.net.DatagramSocket(0).close(); System.out.println("WORKED socket inet"); }}
        catch (Exception e) {{}}
        try {{
            java.nio.channels.SocketChannel.open(java.net.StandardProtocolFamily.UNIX).close();
            System.out.println("WORKED socket unix");
        }} catch (Exception e) {{}}
        System.out.println("probed");
    }}
}}
""",
    "cs": f"""
using System;
using System.Runtime.InteropServices;
class Problem {{
    [DllImport("libc", SetLastError = true)] static extern int chmod(string path, uint mode);
    [DllImport("libc", SetLastError = true)] static extern int socket(int domain, int type, int protocol);
    static void Main() {{
        foreach (var p in new[] {{{_LIST}}}) {{
            try {{
                System.IO.File.Open(p, System.IO.FileMode.Append, System.IO.FileAccess.Write).Close();
                Console.WriteLine("WORKED open " + p);
            }} catch (Exception) {{}}
        }}
        if (chmod("/dev/null", 438) == 0) Console.WriteLine("WORKED chmod /dev/null");
        try {{
            new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork,
                System.Net.Sockets.SocketType.Dgram, System.Net.Sockets.ProtocolType.Udp).Close();
            Console.WriteLine("WORKED socket inet");
        }} catch (Exception) {{}}
        if (socket(1, 1, 0) >= 0) Console.WriteLine("WORKED socket unix");
        Console.WriteLine("probed");
    }}
}}
""",
    "php": f"""<?php
foreach ([{_LIST}] as $p) {{
    $f = @fopen($p, "a");
    if ($f) {{ echo "WORKED open $p\\n"; fclose($f); }}
}}
if (@chmod("/dev/null", 0666)) echo "WORKED chmod /dev/null\\n";
if (@stream_socket_server("udp://0.0.0.0:0", $errno, $errstr, STREAM_SERVER_BIND)) echo "WORKED socket inet\\n";
if (function_exists("socket_create") && @socket_create(AF_UNIX, SOCK_STREAM, 0)) echo "WORKED socket unix\\n";
echo "probed\\n";
""",
    "sh": f"""
for p in {" ".join(PATHS)}; do
  ( : >> "$p" ) 2>/dev/null && echo "WORKED open $p"
done
chmod 666 /dev/null 2>/dev/null && echo "WORKED chmod /dev/null"
( exec 3<>/dev/udp/127.0.0.1/9 ) 2>/dev/null && echo "WORKED socket inet"
echo probed
""",
}
_NODE = f"""
const fs = require("fs");
for (const p of [{_LIST}]) {{
    try {{ fs.closeSync(fs.openSync(p, "a")); console.log("WORKED open " + p); }} catch (e) {{}}
}}
try {{ fs.chmodSync("/dev/null", 0o666); console.log("WORKED chmod /dev/null"); }} catch (e) {{}}
const dgram = require("dgram");
try {{
    const s = dgram.createSocket("udp4");
    s.on("error", () => console.log("probed"));
    s.bind(0, "0.0.0.0", () => {{ console.log("WORKED socket inet"); s.close(); console.log("probed"); }});
}} catch (e) {{ console.log("probed"); }}
"""
PROBES["js"] = _NODE
PROBES["ts"] = "declare var require: any;\n" + _NODE


@pytest.fixture(params=["bwrap", "rlimits"])
def level(request, monkeypatch) -> str:
    if request.param == "bwrap" and not sandbox.bwrap_works():
        pytest.skip("bubblewrap cannot run here")
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", request.param)
    return request.param


@pytest.mark.slow  # builds a program in every installed language, at each level
@pytest.mark.parametrize("language", sorted(PROBES))
def test_no_kernel_device_or_socket_door_in_any_language(level, language):
    problem = multiple.toolchain_problem(language)
    if problem:
        pytest.skip(problem)
    res = multiple.run_program(language, PROBES[language])
    out = res.stdout + res.stderr
    assert "probed" in res.stdout, (level, language, out[-3000:])
    assert "WORKED" not in out, (level, language, out[-3000:])
