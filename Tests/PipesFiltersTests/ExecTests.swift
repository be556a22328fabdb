#if canImport(Glibc)
import Glibc
#endif
import PipesBuffering
import PipesControl
import PipesFilters
import PipesRuntime
import PipesTestSupport
import Testing

// Serialized: the process limit is global, and one test fills it.
@Suite("exec: Unix processes as filters", .serialized)
struct ExecTests {
    // MARK: the command line

    @Test("words and quotes split as sh splits them", arguments: [
        ("grep -a foo", ["grep", "-a", "foo"]),
        ("  tr   a-z\tA-Z ", ["tr", "a-z", "A-Z"]),
        ("sh -c 'tr a-z A-Z | rev'", ["sh", "-c", "tr a-z A-Z | rev"]),
        ("grep \"two words\" x", ["grep", "two words", "x"]),
        ("echo 'it'\\''s'", ["echo", "it's"]),
        ("echo \"a\\\"b\\\\c\" d\\ e", ["echo", "a\"b\\c", "d e"]),
        ("echo ''", ["echo", ""]),
        ("grep \"end$\"", ["grep", "end$"]),
        ("awk '{print $1}'", ["awk", "{print $1}"]),
    ])
    func split(text: String, words: [String]) throws {
        #expect(try ExecCommand.split(text) == words)
    }

    @Test("shell syntax and broken quotes are refused with their position", arguments: [
        ("grep foo | wc -l", "'|' at position 10 is shell syntax"),
        ("cat > out", "'>' at position 5 is shell syntax"),
        ("echo $HOME", "'$' at position 6 is shell syntax"),
        ("echo \"$HOME\"", "'$' at position 7 is shell syntax"),
        ("sleep 1 &", "'&' at position 9 is shell syntax"),
        ("echo 'abc", "unterminated ' quote starting at position 6"),
        ("echo \"abc", "unterminated \" quote starting at position 6"),
        ("echo abc\\", "a backslash at the end"),
    ])
    func refused(text: String, fragment: String) {
        let e = filterError { _ = try ExecCommand.split(text) }
        #expect(e?.message.contains(fragment) == true, "\(text): \(e?.message ?? "accepted")")
        #expect(e?.errno == EINVAL)
    }

    @Test("the command is found in PATH; a match that is not executable is EACCES")
    func resolution() throws {
        #expect(try ExecCommand("sh -c true").executable.hasSuffix("/sh"))
        let plain = temporaryPath("notexec")
        try writeFile(plain, [0x23, 0x21])
        defer { unlink(plain) }
        let dir = String(plain[..<plain.lastIndex(of: "/")!])
        let name = String(plain[plain.index(after: plain.lastIndex(of: "/")!)...])
        let e = filterError { _ = try ExecCommand(name, path: "/nonexistent:" + dir) }
        #expect(e?.errno == EACCES)
        #expect(e?.message == "exec: '\(plain)' is not executable")
        #expect(filterError { _ = try ExecCommand("sh", path: "/nonexistent") }?.errno == ENOENT)
        #expect(try ExecCommand("tr 'a b' c").text == "tr 'a b' c")
    }

    @Test("errors name the command, with ENOENT, EACCES or EINVAL", arguments: [
        ("", EINVAL, "needs a command"),
        ("   ", EINVAL, "needs a command"),
        ("no-such-command-pipesfs", ENOENT, "'no-such-command-pipesfs': command not found in PATH"),
        ("/etc", EACCES, "'/etc' is a directory"),
        ("/no/such/file", ENOENT, "'/no/such/file': No such file or directory"),
    ])
    func badCommands(text: String, errno: Int32, fragment: String) {
        let e = filterError { _ = try Exec(arguments: text) }
        #expect(e?.errno == errno, "\(text): \(e?.message ?? "accepted")")
        #expect(e?.message.contains(fragment) == true, "\(text): \(e?.message ?? "accepted")")
    }

    // MARK: through the graph

    /// A paused gen source with an exec below it, a tap on the exec's output; the caller starts the source.
    private func pipeline(_ command: String, blocks: Int = 64, size: Int = 65536,
                          _ body: (_ c: Controller, _ gen: Node, _ exec: Node, _ out: TapRing) throws -> Void) throws {
        let c = Controller()
        defer { c.shutdown() }
        let gen = try c.addSource("g=gen:size=\(size),count=\(blocks),paused")
        let exec = try c.makeDirectory(in: gen, named: "exec=" + command)
        let out = openTap(c, exec, capacity: 1 << 16)
        try body(c, gen, exec, out)
    }

    /// What gen produces: numbered blocks of a pattern.
    private func generated(blocks: Int, size: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(blocks * size)
        for k in 0..<blocks {
            withUnsafeBytes(of: UInt64(k).littleEndian) { out += $0 }
            for i in 8..<size { out.append(UInt8(truncatingIfNeeded: i &* 7 &+ 1)) }
        }
        return out
    }

    private func stat(_ c: Controller, _ node: Node, _ key: String) -> String? {
        for line in c.statsText(node).split(separator: "\n") where line.hasPrefix(key + ": ") {
            return String(line.dropFirst(key.count + 2))
        }
        return nil
    }

    /// True once `pid` is gone and reaped (a zombie still answers kill 0).
    private func reaped(_ pid: pid_t) -> Bool { kill(pid, 0) != 0 && errno == ESRCH }

    @Test("4 MiB through tr: exactly what tr makes of it, nothing dropped; the stream ends when tr exits")
    func throughTr() throws {
        try pipeline("tr a-z A-Z") { c, gen, exec, out in
            try c.control(gen, "start")
            let got = drainUntilEnded(out, within: 60)
            let want = generated(blocks: 64, size: 65536).map { $0 >= 0x61 && $0 <= 0x7a ? $0 - 0x20 : $0 }
            #expect(out.isEnded)
            #expect(got.count == want.count)
            #expect(got == want)
            #expect(stat(c, exec, "input_dropped") == "0")
            #expect(stat(c, exec, "input_bytes_written") == "\(64 * 65536)")
            #expect(stat(c, exec, "process") == "exited with status 0")
            #expect(stat(c, exec, "input") == "ended (stdin closed)")
            #expect(stat(c, exec, "input_policy") == "block (lossless)")
        }
    }

    @Test("output written after the end of input (wc) is delivered before the stream ends")
    func afterEndOfInput() throws {
        try pipeline("wc -c", blocks: 10, size: 1000) { c, gen, _, out in
            try c.control(gen, "start")
            let got = drainUntilEnded(out, within: 30)
            #expect(String(decoding: got, as: UTF8.self).trimmingCharacters(in: " \n") == "10000")
        }
    }

    @Test("stderr lines and a failing exit status go to .errors and stats")
    func stderrAndStatus() throws {
        try pipeline("sh -c 'echo first >&2; echo second >&2; exit 3'", blocks: 1, size: 100) { c, gen, exec, out in
            try c.control(gen, "start")
            _ = drainUntilEnded(out, within: 30)
            #expect(eventually(within: 10) { c.errors.text.contains("exited with status 3") })
            let log = c.errors.text
            #expect(log.contains("/g/exec=sh -c 'echo first >&2; echo second >&2; exit 3': stderr: first"))
            #expect(log.contains("stderr: second"))
            #expect(stat(c, exec, "process") == "exited with status 3")
            #expect(stat(c, exec, "stderr_lines") == "2")
            #expect(stat(c, exec, "last_stderr") == "second")
        }
    }

    @Test("a process that stops reading early (head -c) ends the stream; the source is not held up")
    func stopsReading() throws {
        try pipeline("head -c 10", blocks: 64, size: 65536) { c, gen, exec, out in
            try c.control(gen, "start")
            let got = drainUntilEnded(out, within: 30)
            #expect(got.count == 10)
            #expect(eventually(within: 30) { c.statsText(gen).contains("state: finished") }, "the source ran to its end")
            // EPIPE, or the exit seen first: either way the input is closed, not ended.
            #expect(stat(c, exec, "input")?.hasPrefix("closed") == true, "\(stat(c, exec, "input") ?? "")")
            #expect(Int(stat(c, exec, "input_dropped") ?? "") ?? 0 > 0)
        }
    }

    @Test("rmdir: SIGTERM, and the process is reaped")
    func rmdirTerminates() throws {
        let c = Controller()
        defer { c.shutdown() }
        let gen = try c.addSource("g=gen:size=100,paused")
        let exec = try c.makeDirectory(in: gen, named: "exec=sleep 1000")
        #expect(eventually(within: 10) { stat(c, exec, "process") == "running" })
        let pid = try #require(pid_t(stat(c, exec, "pid") ?? ""))
        #expect(kill(pid, 0) == 0)
        let started = monotonicNanoseconds()
        try c.removeDirectory(in: gen, named: "exec=sleep 1000")
        #expect(eventually(within: 10) { reaped(pid) })
        #expect(monotonicNanoseconds() - started < Exec.graceNanoseconds, "sleep dies of SIGTERM, no SIGKILL needed")
        #expect((exec.filter as! Exec).waitUntilStopped(timeoutNanoseconds: 5_000_000_000))
        #expect(c.statsText(exec).contains("process: killed by SIGTERM (SIGTERM sent)"))
    }

    @Test("a process that ignores SIGTERM is killed after the grace period")
    func sigkillAfterGrace() throws {
        let c = Controller()
        defer { c.shutdown() }
        let gen = try c.addSource("g=gen:size=100,paused")
        let name = "exec=sh -c 'trap \"\" TERM; while :; do sleep 1; done'"
        let exec = try c.makeDirectory(in: gen, named: name)
        #expect(eventually(within: 10) { stat(c, exec, "process") == "running" })
        pause(nanoseconds: 200_000_000)  // let sh install its trap
        let pid = try #require(pid_t(stat(c, exec, "pid") ?? ""))
        let started = monotonicNanoseconds()
        try c.removeDirectory(in: gen, named: name)
        #expect((exec.filter as! Exec).waitUntilStopped(timeoutNanoseconds: 10_000_000_000))
        #expect(reaped(pid))
        #expect(monotonicNanoseconds() - started >= Exec.graceNanoseconds)
        #expect(c.statsText(exec).contains("killed by SIGKILL (SIGKILL after the grace period)"))
    }

    @Test("unmount stops a running process and waits for it")
    func unmount() throws {
        let c = Controller()
        let gen = try c.addSource("g=gen:size=100,paused")
        let exec = try c.makeDirectory(in: gen, named: "exec=cat")
        #expect(eventually(within: 10) { stat(c, exec, "process") == "running" })
        let pid = try #require(pid_t(stat(c, exec, "pid") ?? ""))
        c.shutdown()
        #expect(reaped(pid))
        #expect((exec.filter as! Exec).finished)
    }

    @Test("mkdir of a missing or non-executable command fails with ENOENT or EACCES and a line in .errors")
    func mkdirRefused() throws {
        let c = Controller()
        defer { c.shutdown() }
        let gen = try c.addSource("g=gen:size=100,paused")
        do {
            try c.makeDirectory(in: gen, named: "exec=no-such-command-pipesfs -x")
            Issue.record("accepted")
        } catch {
            #expect(error.errno == ENOENT)
        }
        #expect(c.errors.text.contains("mkdir /g/exec=no-such-command-pipesfs -x: exec: 'no-such-command-pipesfs': command not found in PATH"))
        do {
            try c.makeDirectory(in: gen, named: "exec=grep foo | wc")
            Issue.record("accepted")
        } catch {
            #expect(error.errno == EINVAL)
        }
        #expect(gen.children.isEmpty)
    }

    @Test("only the daemon's user or root may create exec filters")
    func otherUsersRefused() throws {
        let c = Controller()
        defer { c.shutdown() }
        let gen = try c.addSource("g=gen:size=100,paused")
        let other: UInt32 = geteuid() == 0 ? 1000 : 0
        if other == 0 { return }  // run as a plain user: root is always allowed
        do {
            try c.makeDirectory(in: gen, named: "exec=cat", uid: other, gid: other)
            Issue.record("accepted")
        } catch {
            #expect(error.errno == EPERM)
        }
        #expect(c.errors.text.contains("only that user or root may create exec filters"))
        #expect(gen.children.isEmpty)
    }

    @Test("at most maxProcesses at once: EAGAIN beyond, a slot comes back when one is removed")
    func processLimit() throws {
        var made: [Exec] = []
        var refusal: FilterError?
        for _ in 0...Exec.maxProcesses {
            do { made.append(try Exec(arguments: "cat")) } catch { refusal = error; break }
        }
        #expect(made.count == Exec.maxProcesses)
        #expect(refusal?.errno == EAGAIN)
        #expect(refusal?.message.contains("64 processes are running") == true)
        made.removeLast().shutdown()
        let again = filterError { made.append(try Exec(arguments: "cat")) }
        #expect(again == nil)
        for e in made { e.shutdown() }
    }

    @Test("the child holds no descriptor of the daemon but its three pipes")
    func descriptors() throws {
        try pipeline("sh -c 'ls /proc/$$/fd'", blocks: 1, size: 100) { c, gen, _, out in
            try c.control(gen, "start")
            let got = String(decoding: drainUntilEnded(out, within: 30), as: UTF8.self)
            #expect(got == "0\n1\n2\n")
        }
    }

    @Test("below a lossless source, a process that does not read holds the source up; nothing is dropped")
    func losslessHoldsUp() throws {
        let c = Controller()
        defer { c.shutdown() }
        let gen = try c.addSource("g=gen:size=1000,paused")
        let exec = try c.makeDirectory(in: gen, named: "exec=sleep 1000")
        try c.control(gen, "start")
        pause(nanoseconds: 500_000_000)
        let p1 = Int(stat(c, gen, "blocks_produced") ?? "") ?? -1
        pause(nanoseconds: 300_000_000)
        let p2 = Int(stat(c, gen, "blocks_produced") ?? "") ?? -1
        #expect(p1 == p2, "the source waits for the process")
        #expect(p1 > 0 && p1 < 3000, "about the input ring's high-water mark and a pipe's worth: \(p1)")
        #expect(stat(c, exec, "input_dropped") == "0")
        #expect(stat(c, exec, "input_policy") == "block (lossless)")
    }

    @Test("below live capture the input is lossy: what a process does not read is dropped and counted")
    func lossyBelowLive() throws {
        let c = Controller()
        defer { c.shutdown() }
        let src = Node(id: c.space.allocateID(), name: "live", descriptor: stubSourceDescriptor, filter: StubSource(live: true))
        c.space.lock.withLock {
            c.space.attach(src, under: nil)
            c.space.refresh()
        }
        let exec = try c.makeDirectory(in: src, named: "exec=sleep 1000")
        #expect(stat(c, exec, "input_policy") == "drop (live upstream)")
        let frame = [UInt8](repeating: 0x55, count: 1500)
        let batch = Batch()
        for _ in 0..<2000 {  // 3 MB: more than the 1 MiB input ring and the pipe
            frame.withUnsafeBytes { raw in
                var b = Block(bytes: raw, linkType: .ethernet)
                c.space.begin(batch)
                c.space.push(src, &b)
                c.space.end()
            }
            c.space.finishBatch(batch, mayWait: false)
        }
        let dropped = Int(stat(c, exec, "input_dropped") ?? "") ?? -1
        #expect(dropped > 1000 && dropped < 2000, "dropped \(dropped) of 2000")
        #expect(Int(stat(c, exec, "input_buffered") ?? "") ?? 0 <= Exec.inputCapacity, "the ring did not grow")
    }

    @Test("ctl args: a new process with the new command replaces the old one")
    func newArguments() throws {
        let c = Controller()
        defer { c.shutdown() }
        let gen = try c.addSource("g=gen:size=100,count=3,paused")
        let exec = try c.makeDirectory(in: gen, named: "exec=sleep 1000")
        #expect(eventually(within: 10) { stat(c, exec, "process") == "running" })
        let old = try #require(pid_t(stat(c, exec, "pid") ?? ""))
        try c.control(exec, "args wc -c")
        let out = openTap(c, exec)
        try c.control(gen, "start")
        let got = String(decoding: drainUntilEnded(out, within: 30), as: UTF8.self)
        #expect(got.trimmingCharacters(in: " \n") == "300")
        #expect(eventually(within: 10) { reaped(old) })
        #expect(c.controlText(exec).contains("args: wc -c"))
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
