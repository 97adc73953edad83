"""A Corral farm driven by a client that is not Bazel.

Run by tests/python.rs against `corral up`, with the farm's address in
CORRAL_TEST_ENDPOINT and the generated stubs on PYTHONPATH. Each test
salts its actions, so none is answered from another test's cache entry.
"""

import os
import time
import unittest

import grpc

import reapi_client as reapi
from reapi_client import Stage, digest_of, key, subject

ENDPOINT_VARIABLE = "CORRAL_TEST_ENDPOINT"

# Commands run in the sandbox, which shows the host's /usr, /bin and /lib
# read-only: /bin/sh and coreutils are there.
SH = "/bin/sh"


class FarmTest(unittest.TestCase):
    def setUp(self):
        endpoint = os.environ.get(ENDPOINT_VARIABLE)
        if not endpoint:
            self.fail(f"{ENDPOINT_VARIABLE} is not set: run through tests/python.rs")
        self.client = reapi.Client(endpoint)
        self.salt = os.urandom(16)

    def tearDown(self):
        self.client.close()

    def prepare(self, script, **kwargs):
        return reapi.prepare([SH, "-c", script], salt=self.salt, **kwargs)

    def run_action(self, prepared, skip_cache_lookup=False, inline_stdout=False):
        """Uploads everything, executes, and returns the ExecuteResponse
        after checking the operation stream's shape."""
        self.client.upload(*prepared.blobs())
        operations = self.client.execute(prepared.action_digest, skip_cache_lookup, inline_stdout)
        self.assertTrue(operations, "Execute streamed no Operation")
        for operation in operations[:-1]:
            self.assertFalse(operation.done, operations)
        self.assertEqual(len({o.name for o in operations}), 1, "one operation name per stream")
        return reapi.response(operations[-1])

    def assert_succeeded(self, response):
        self.assertEqual(response.status.code, reapi.OK, response.status)
        self.assertEqual(response.result.exit_code, 0, self.stderr(response))

    def stdout(self, response):
        result = response.result
        if result.stdout_raw:
            return result.stdout_raw
        return self.client.read(result.stdout_digest) if result.HasField("stdout_digest") else b""

    def sandbox_report(self, response):
        """The runner's report of the run, read from the CAS by the digest
        ExecuteResponse.server_logs gives it."""
        self.assertIn("sandbox.txt", response.server_logs, response)
        log = response.server_logs["sandbox.txt"]
        self.assertTrue(log.human_readable)
        return self.client.read(log.digest).decode()

    def stderr(self, response):
        result = response.result
        if result.HasField("stderr_digest"):
            return self.client.read(result.stderr_digest).decode(errors="replace")
        return result.stderr_raw.decode(errors="replace")


class MissingBlobs(FarmTest):
    def test_execute_names_every_missing_blob_then_runs_once_they_are_uploaded(self):
        data = b"input " + self.salt.hex().encode() + b"\n"
        # Salted too: no blob of this test may be in the CAS already.
        prepared = self.prepare(f"cat in.txt # {self.salt.hex()}", inputs={"in.txt": data})
        file_digest = digest_of(data)
        every = [prepared.action_digest, prepared.command_digest, prepared.input_root_digest, file_digest]
        self.assertEqual(self.client.find_missing(every), {key(d) for d in every})

        # Nothing uploaded: the Action itself is missing.
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.execute(prepared.action_digest)
        self.assert_missing(reapi.rpc_status(caught.exception), [prepared.action_digest])
        self.assertEqual(caught.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)

        # The Action alone: its Command and input root are missing, both
        # named in one answer so a client uploads once.
        self.client.upload(prepared.action_blob)
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.execute(prepared.action_digest)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assert_missing(
            reapi.rpc_status(caught.exception),
            [prepared.command_digest, prepared.input_root_digest],
        )

        # Command and root directory, but not the file in it. REAPI lets
        # the server say so as the call's error or in the response.
        self.client.upload(prepared.command_blob, prepared.input_root_blob)
        try:
            status = reapi.response(self.client.execute(prepared.action_digest)[-1]).status
        except grpc.RpcError as error:
            status = reapi.rpc_status(error)
        self.assert_missing(status, [file_digest])

        # Everything uploaded: it runs.
        self.assertEqual(self.client.find_missing(every), {key(file_digest)})
        self.client.upload(data)
        self.assertEqual(self.client.find_missing(every), set())
        response = reapi.response(self.client.execute(prepared.action_digest)[-1])
        self.assert_succeeded(response)
        self.assertFalse(response.cached_result)
        self.assertEqual(self.stdout(response), data)

    def assert_missing(self, status, digests):
        self.assertEqual(status.code, reapi.FAILED_PRECONDITION, status)
        self.assertCountEqual(
            reapi.violations(status),
            [("MISSING", subject(d)) for d in digests],
            f"PreconditionFailure of {status}",
        )


class Timeout(FarmTest):
    def test_an_action_past_its_timeout_ends_with_deadline_exceeded(self):
        prepared = self.prepare("echo started; sleep 30", timeout_s=1)
        started = time.monotonic()
        response = self.run_action(prepared)
        elapsed = time.monotonic() - started
        self.assertEqual(response.status.code, reapi.DEADLINE_EXCEEDED, response)
        self.assertLess(elapsed, 15, "the action was not stopped at its 1 s timeout")
        self.assertFalse(response.cached_result)
        # A partial result is optional (REAPI: MAY); when given, it is
        # what the command printed before it was stopped.
        if response.result.HasField("stdout_digest"):
            self.assertEqual(self.stdout(response), b"started\n")
        # A timed-out action is no result to serve again.
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.get_action_result(prepared.action_digest)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)
        # The sandbox's report says why, without the farm's logs.
        report = self.sandbox_report(response)
        self.assertIn("ended: killed at its timeout after 1.0 s\n", report)
        self.assertIn("exit: signal SIGKILL", report)


class ServerLogs(FarmTest):
    def test_every_execution_carries_the_sandbox_report_in_the_cas(self):
        prepared = self.prepare("exit 3")
        response = self.run_action(prepared)
        self.assertEqual(response.status.code, reapi.OK, response.status)
        self.assertEqual(response.result.exit_code, 3)
        report = self.sandbox_report(response)
        for line in [
            "policy: default\n",
            "ended: exited by itself\n",
            "exit: code 3\n",
            "network: none (loopback only)\n",
        ]:
            self.assertIn(line, report)
        self.assertRegex(report, r"\nlandlock: (fully|partially|not) enforced")
        self.assertRegex(report, r"\nlimits: memory \S+ \S+, processes \d+")
        self.assertRegex(report, r"\nused: wall \d+\.\d+ s, user ")

    def test_the_server_logs_list_the_host_files_an_action_read_and_not_its_inputs(self):
        # /etc/hostname comes from the host's read-only /etc; in.txt is a
        # declared input.
        prepared = self.prepare(
            f"cat /etc/hostname in.txt > /dev/null # {self.salt.hex()}",
            inputs={"in.txt": b"declared\n"},
        )
        response = self.run_action(prepared)
        self.assert_succeeded(response)
        self.assertIn("undeclared-inputs.txt", response.server_logs, response)
        log = response.server_logs["undeclared-inputs.txt"]
        self.assertTrue(log.human_readable)
        listed = self.client.read(log.digest).decode().splitlines()
        self.assertRegex(listed[0], r"^undeclared inputs: \d+ files opened outside the input root$")
        self.assertIn("/etc/hostname", listed)
        self.assertFalse([p for p in listed if p.endswith("in.txt") or p.startswith("/build")], listed)
        self.assertEqual(listed[1:], sorted(set(listed[1:])), "sorted, without duplicates")
        self.assertIn("(listed in undeclared-inputs.txt)", self.sandbox_report(response))


# Builds out/ with nested files (one executable), an empty directory and a
# relative symlink inside, plus a file and a relative symlink beside it.
OUTPUTS_SCRIPT = """
set -e
mkdir -p out/sub/deeper out/empty
printf 'alpha\\n' > out/a.txt
printf '#!/bin/sh\\necho tool\\n' > out/sub/tool.sh
chmod 755 out/sub/tool.sh
printf 'deep\\n' > out/sub/deeper/d.txt
ln -s sub/tool.sh out/tool
printf 'beside\\n' > file.txt
ln -s file.txt link
echo made outputs
"""

TOOL = b"#!/bin/sh\necho tool\n"


class Outputs(FarmTest):
    def test_output_paths_of_reapi_2_1(self):
        prepared = self.prepare(OUTPUTS_SCRIPT, output_paths=["out", "file.txt", "link"])
        response = self.run_action(prepared)
        self.assert_succeeded(response)
        result = response.result
        self.check_common(response)
        self.assertEqual(
            [(s.path, s.target) for s in result.output_symlinks], [("link", "file.txt")]
        )

    def test_output_files_and_directories_of_reapi_2_0(self):
        prepared = self.prepare(
            OUTPUTS_SCRIPT, output_files=["file.txt", "link"], output_directories=["out"]
        )
        response = self.run_action(prepared)
        self.assert_succeeded(response)
        result = response.result
        self.check_common(response)
        self.assertEqual(
            [(s.path, s.target) for s in result.output_file_symlinks], [("link", "file.txt")]
        )
        # REAPI 2.1: output_symlinks only when output_paths was used.
        self.assertEqual(list(result.output_symlinks), [])

    def test_parents_of_declared_outputs_are_there_before_the_command_runs(self):
        # REAPI: the worker creates the directories leading up to each
        # output; the command need not.
        script = "echo x > gen/deep/x.txt && mkdir tree/out && echo y > tree/out/y.txt"
        for fields in (
            {"output_paths": ["gen/deep/x.txt", "tree/out"]},
            {"output_files": ["gen/deep/x.txt"], "output_directories": ["tree/out"]},
        ):
            with self.subTest(**fields):
                response = self.run_action(self.prepare(script, **fields))
                self.assert_succeeded(response)
                self.assertEqual([f.path for f in response.result.output_files], ["gen/deep/x.txt"])
                self.assertEqual([d.path for d in response.result.output_directories], ["tree/out"])

    def check_common(self, response):
        result = response.result
        self.assertEqual(self.stdout(response), b"made outputs\n")

        self.assertEqual([f.path for f in result.output_files], ["file.txt"])
        (beside,) = result.output_files
        self.assertFalse(beside.is_executable)
        self.assertEqual(self.client.read(beside.digest), b"beside\n")

        self.assertEqual([d.path for d in result.output_directories], ["out"])
        (out,) = result.output_directories
        tree = reapi.re_pb2.Tree.FromString(self.client.read(out.tree_digest))
        if out.HasField("root_directory_digest"):
            root = reapi.re_pb2.Directory.FromString(self.client.read(out.root_directory_digest))
            self.assertEqual(root, tree.root)
        children = {key(digest_of(reapi.encode(c))): c for c in tree.children}

        def child(node):
            self.assertIn(key(node.digest), children, f"{node.name} is not among the Tree's children")
            return children[key(node.digest)]

        root = tree.root
        self.assertEqual([(f.name, f.is_executable) for f in root.files], [("a.txt", False)])
        self.assertEqual(self.client.read(root.files[0].digest), b"alpha\n")
        self.assertEqual([(s.name, s.target) for s in root.symlinks], [("tool", "sub/tool.sh")])
        self.assertEqual([d.name for d in root.directories], ["empty", "sub"])
        empty, sub = root.directories
        self.assertEqual(child(empty), reapi.re_pb2.Directory())
        self.assertEqual(key(empty.digest), key(digest_of(b"")))

        sub = child(sub)
        self.assertEqual([(f.name, f.is_executable) for f in sub.files], [("tool.sh", True)])
        self.assertEqual(self.client.read(sub.files[0].digest), TOOL)
        self.assertEqual([d.name for d in sub.directories], ["deeper"])
        deeper = child(sub.directories[0])
        self.assertEqual([(f.name, f.is_executable) for f in deeper.files], [("d.txt", False)])
        self.assertEqual(self.client.read(deeper.files[0].digest), b"deep\n")
        self.assertEqual(len(children), 3, "sub, sub/deeper and empty, once each")


class WaitExecution(FarmTest):
    def test_wait_execution_follows_an_operation_after_its_execute_stream_is_cancelled(self):
        prepared = self.prepare("sleep 2; echo waited")
        self.client.upload(*prepared.blobs())
        call = self.client.execute_call(prepared.action_digest)
        first = next(call)
        call.cancel()
        self.assertFalse(first.done, "a 2 s action was done at once")
        self.assertTrue(first.name)
        self.assertIn(metadata_stage(first), (Stage.CACHE_CHECK, Stage.QUEUED, Stage.EXECUTING))

        operations = list(self.client.wait_execution(first.name))
        self.assertTrue(operations)
        stages = [metadata_stage(o) for o in operations]
        for operation in operations:
            self.assertEqual(operation.name, first.name)
            meta = reapi.metadata(operation)
            self.assertEqual(key(meta.action_digest), key(prepared.action_digest))
        self.assertEqual(stages, sorted(stages), f"stages went backwards: {stages}")
        self.assertEqual(stages[-1], Stage.COMPLETED)
        self.assertTrue(set(stages[:-1]) <= {Stage.QUEUED, Stage.EXECUTING}, stages)
        self.assertEqual([o.done for o in operations], [False] * (len(operations) - 1) + [True])

        response = reapi.response(operations[-1])
        self.assert_succeeded(response)
        self.assertFalse(response.cached_result)
        self.assertEqual(self.stdout(response), b"waited\n")

    def test_wait_execution_of_an_unknown_operation_is_not_found(self):
        with self.assertRaises(grpc.RpcError) as caught:
            list(self.client.wait_execution("no-such-operation-" + self.salt.hex()))
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)


def metadata_stage(operation):
    return reapi.metadata(operation).stage


# Differs on every run: the clock to the nanosecond and the process's
# start time in clock ticks.
UNIQUE_SCRIPT = "date +%s.%N; cut -d' ' -f22 /proc/self/stat"


class Caching(FarmTest):
    def test_a_do_not_cache_action_runs_every_time_and_stays_out_of_the_cache(self):
        prepared = self.prepare(UNIQUE_SCRIPT, do_not_cache=True)
        first = self.run_action(prepared)
        second = self.run_action(prepared)
        for response in (first, second):
            self.assert_succeeded(response)
            self.assertFalse(response.cached_result)
        self.assertNotEqual(self.stdout(first), self.stdout(second), "it ran only once")
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.get_action_result(prepared.action_digest)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_a_failing_command_reports_its_exit_code_and_is_not_cached(self):
        prepared = self.prepare("echo failing >&2; exit 3")
        response = self.run_action(prepared)
        # The execution worked; the command failed.
        self.assertEqual(response.status.code, reapi.OK, response.status)
        self.assertEqual(response.result.exit_code, 3)
        self.assertEqual(self.stderr(response), "failing\n")
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.get_action_result(prepared.action_digest)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertFalse(self.run_action(prepared).cached_result)

    def test_a_cacheable_action_is_answered_from_the_cache_the_second_time(self):
        prepared = self.prepare(UNIQUE_SCRIPT)
        first = self.run_action(prepared)
        self.assert_succeeded(first)
        self.assertFalse(first.cached_result)
        stored = self.client.get_action_result(prepared.action_digest)
        self.assertEqual(key(stored.stdout_digest), key(first.result.stdout_digest))

        second = self.run_action(prepared)
        self.assert_succeeded(second)
        self.assertTrue(second.cached_result)
        self.assertEqual(self.stdout(second), self.stdout(first))

        # skip_cache_lookup runs it again.
        third = self.run_action(prepared, skip_cache_lookup=True)
        self.assert_succeeded(third)
        self.assertFalse(third.cached_result)
        self.assertNotEqual(self.stdout(third), self.stdout(first))


class Inlining(FarmTest):
    def test_stdout_comes_inline_when_asked_executed_or_cached_and_by_digest_always(self):
        prepared = self.prepare("echo out; echo err >&2")
        for cached in (False, True):
            response = self.run_action(prepared, inline_stdout=True)
            self.assert_succeeded(response)
            self.assertEqual(response.cached_result, cached)
            result = response.result
            self.assertEqual(result.stdout_raw, b"out\n")
            self.assertEqual(self.client.read(result.stdout_digest), b"out\n")
            self.assertEqual(result.stderr_raw, b"", "stderr inlined unasked")
            self.assertEqual(self.client.read(result.stderr_digest), b"err\n")

        unasked = self.run_action(prepared)
        self.assertTrue(unasked.cached_result)
        self.assertEqual(unasked.result.stdout_raw, b"", "stdout inlined unasked")


if __name__ == "__main__":
    unittest.main()
